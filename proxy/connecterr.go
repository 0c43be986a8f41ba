package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// connectFailed turns the error of a failed attempt to open a server
// connection into one a client can be told. A server's own refusal (an
// ErrorResponse: unknown database, too many connections, wrong password)
// and protocol or feature errors pass through unchanged. A timeout — the
// server or the network path to it stalled after the TCP connect, during
// TLS, authentication or startup — becomes FATAL 08000 naming
// pool.connect_timeout; any other I/O failure becomes FATAL 08000 too.
//
// Without this, an I/O error from the authentication exchange reached the
// session as a bare net.Error, which the session treats as "the client is
// gone": the client's socket was closed without any ErrorResponse.
func connectFailed(p *pool, err error) error {
	var pe *pgerr.Error
	if errors.As(err, &pe) || errors.Is(err, pgerr.ErrProtocol) || errors.Is(err, pgerr.ErrUnsupported) {
		return err
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		e := pgerr.Fatal(pgerr.ConnectionException,
			"pgsluice: could not connect to server %s within pool.connect_timeout (%s)", p.key.addr, p.cfg.Pool.ConnectTimeout)
		// %v, not %w: the cause must not read as a client-side network
		// error further up (isNetErr).
		e.Cause = fmt.Errorf("%w: %v", pgerr.ErrBackendUnavailable, err)
		return e
	}
	if errors.Is(err, pgerr.ErrBackendUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %s: %v", pgerr.ErrBackendUnavailable, p.key.addr, err)
}
