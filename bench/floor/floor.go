package floor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"

	"github.com/jackc/pgx/v5/pgconn"
)

// Model names a forwarder design (see the package documentation).
type Model string

const (
	ModelCopy Model = "copy"
	ModelPool Model = "pool"
	ModelLoop Model = "loop"
	ModelPark Model = "park"
	// ModelPark1 is ModelPark with GOMAXPROCS set to 1 while it serves
	// (a process-wide setting, restored when Serve returns): one thread
	// runs the poller and every client goroutine, as PgBouncer's one
	// thread runs its loop.
	ModelPark1 Model = "park1"
)

// Models lists every model, in the order reports show them.
var Models = []Model{ModelCopy, ModelPool, ModelLoop, ModelPark, ModelPark1}

// Serve accepts clients on ln and forwards them to the PostgreSQL server
// that serverDSN names, using model with size server connections (ModelCopy
// opens one per client and ignores size). It returns when ln is closed or
// a server connection cannot be opened at start.
func Serve(ctx context.Context, ln net.Listener, model Model, serverDSN string, size int) error {
	switch model {
	case ModelCopy:
		cfg, err := pgconn.ParseConfig(serverDSN)
		if err != nil {
			return err
		}
		return serveCopy(ln, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	case ModelPool, ModelLoop, ModelPark, ModelPark1:
		if size < 1 {
			return errors.New("floor: pool size must be at least 1")
		}
		conns, params, err := openServers(ctx, serverDSN, size)
		if err != nil {
			return err
		}
		switch model {
		case ModelPool:
			return servePool(ln, conns, params)
		case ModelPark:
			return servePark(ln, conns, params)
		case ModelPark1:
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			return servePark(ln, conns, params)
		}
		return serveLoop(ln, conns, params)
	}
	return fmt.Errorf("floor: unknown model %q (want copy, pool, loop, park or park1)", model)
}

// openServers logs size connections in to the server and returns their
// sockets, plus the ParameterStatus frames a client is shown at login.
func openServers(ctx context.Context, dsn string, size int) (conns []net.Conn, params []byte, err error) {
	defer func() {
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
		}
	}()
	for i := 0; i < size; i++ {
		pc, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			return conns, nil, err
		}
		if i == 0 {
			for _, k := range []string{"server_version", "server_encoding", "client_encoding", "DateStyle",
				"integer_datetimes", "standard_conforming_strings", "TimeZone", "IntervalStyle"} {
				body := append(append([]byte(k), 0), pc.ParameterStatus(k)...)
				params = append(params, frame('S', append(body, 0))...)
			}
		}
		hj, err := pc.Hijack()
		if err != nil {
			pc.Close(ctx)
			return conns, nil, err
		}
		conns = append(conns, hj.Conn)
	}
	return conns, params, nil
}

func frame(t byte, body []byte) []byte {
	b := make([]byte, 5+len(body))
	b[0] = t
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	copy(b[5:], body)
	return b
}

const sslRequestCode = 80877103

// login answers a client's startup without asking for a password:
// SSLRequest gets 'N', the startup message gets AuthenticationOk, params,
// BackendKeyData and ReadyForQuery.
func login(c net.Conn, params []byte) error {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n < 8 || n > 10000 {
			return errors.New("floor: bad startup length")
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(c, body); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(body) == sslRequestCode {
			if _, err := c.Write([]byte{'N'}); err != nil {
				return err
			}
			continue
		}
		break
	}
	out := frame('R', []byte{0, 0, 0, 0})
	out = append(out, params...)
	out = append(out, frame('K', []byte{0, 0, 0, 1, 0, 0, 0, 1})...)
	out = append(out, frame('Z', []byte{'I'})...)
	_, err := c.Write(out)
	return err
}

// rfqScanner follows the server's frames across reads and reports the
// transaction status of the last ReadyForQuery that passed.
type rfqScanner struct {
	hdr  [5]byte
	nh   int  // header bytes collected
	skip int  // body bytes of the current frame still to pass
	z    bool // the current frame is a ReadyForQuery whose status is next
}

// feed scans p and returns the status byte ('I', 'T' or 'E') of the last
// ReadyForQuery whose status byte is in p, or 0 if there is none. How p
// is cut does not matter: over any cutting of a stream, the last status
// returned is the same (FuzzRFQScanner).
func (s *rfqScanner) feed(p []byte) (status byte) {
	for len(p) > 0 {
		if s.skip > 0 {
			if s.z {
				if b := p[0]; b == 'I' || b == 'T' || b == 'E' {
					status = b // anything else is no ReadyForQuery
				}
				s.z = false
			}
			n := min(s.skip, len(p))
			s.skip -= n
			p = p[n:]
			continue
		}
		n := copy(s.hdr[s.nh:], p)
		s.nh += n
		p = p[n:]
		if s.nh < 5 {
			break
		}
		s.nh = 0
		s.skip = int(binary.BigEndian.Uint32(s.hdr[1:])) - 4
		s.z = s.hdr[0] == 'Z' && s.skip > 0
	}
	return status
}

// isTerminate reports whether a client's read begins with Terminate.
func isTerminate(p []byte) bool { return len(p) > 0 && p[0] == 'X' }
