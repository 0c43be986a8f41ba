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
// and protocol or feature errors pass through unchanged. Anything else —
// refused, reset, or timed out (the server or the network path to it
// stalled during the TCP connect, TLS, authentication or startup) —
// becomes FATAL 08000 naming the server, and pool.connect_timeout when it
// was a timeout.
//
// The cause is kept for logs but flattened (%v): an I/O error from the
// server side must not read as "the client is gone" further up
// (isNetErr), which closed the client's socket without any ErrorResponse.
func connectFailed(p *pool, err error) error {
	var pe *pgerr.Error
	if errors.As(err, &pe) || errors.Is(err, pgerr.ErrProtocol) || errors.Is(err, pgerr.ErrUnsupported) {
		return err
	}
	var e *pgerr.Error
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		e = pgerr.Fatal(pgerr.ConnectionException,
			"pgsluice: could not connect to server %s within pool.connect_timeout (%s)", p.key.addr, p.cfg().Pool.ConnectTimeout)
	} else {
		e = pgerr.Fatal(pgerr.ConnectionException, "pgsluice: could not connect to server %s", p.key.addr)
	}
	e.Cause = fmt.Errorf("%w: %v", pgerr.ErrBackendUnavailable, err)
	return e
}
