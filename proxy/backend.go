package proxy

import (
	"bufio"
	"container/list"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/proxy/auth"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
)

// backend is one connection to a PostgreSQL server. It belongs to exactly one
// pool. While idle it is owned by the pool; while lent it is owned by one
// client session, whose two goroutines share it under the session's mutex
// (the session goroutine writes, the pump goroutine reads). Nothing here is
// safe for unsynchronised concurrent use.
type backend struct {
	pool *pool
	conn net.Conn
	// raw is the TCP socket under conn (under TLS too), for the cheap
	// liveness peek.
	raw syscall.RawConn
	r   *bufio.Reader
	w   *bufio.Writer
	// io is the raw I/O under r and w (plain TCP on Linux), else nil.
	io *rawIO

	// pid and secret are the server's real cancel key.
	pid, secret uint32
	// params mirrors the ParameterStatus values the server has reported,
	// kept current as they change.
	params map[string]string

	created  time.Time
	lastUsed time.Time
	// epoch is the pool's epoch when the dial began: a connection from
	// before the pool's last RECONNECT is closed when released.
	epoch uint64

	// settingsSig identifies the session settings applied on this server
	// connection ("" = the server defaults of a fresh connection).
	settingsSig string

	// prepared is the LRU of proxy-wide statement names this server
	// connection has prepared.
	prepared *stmtLRU

	// unnamedBy/unnamedGen record which client's unnamed statement (and
	// which generation of it) the server currently holds.
	unnamedBy  *session
	unnamedGen uint64

	// broken marks a connection that must be closed, not reused.
	broken bool
	// slots are its pool.max_db_connections and max_user_connections
	// slots, given back by close.
	slots connSlots

	id uint64
}

var backendIDs atomic.Uint64

// dialBackend takes a slot of pool.max_db_connections and
// max_user_connections (waiting for them when wait is set) and dials a
// backend holding them.
func dialBackend(ctx context.Context, p *pool, wait bool) (*backend, error) {
	if p.lims[0] == nil {
		return dialBackendConn(ctx, p)
	}
	if err := p.takeSlots(ctx, wait); err != nil {
		return nil, err
	}
	b, err := dialBackendConn(ctx, p)
	if err != nil {
		p.giveSlots()
		return nil, err
	}
	b.slots.held.Store(true)
	return b, nil
}

// dialBackendConn connects and authenticates to node as user on database,
// reads the server's startup parameters and returns an idle backend.
func dialBackendConn(ctx context.Context, p *pool) (*backend, error) {
	cfg := p.cfg()
	epoch := p.epoch.Load()
	d := net.Dialer{Timeout: cfg.Pool.ConnectTimeout}
	ctx, cancel := context.WithTimeout(ctx, cfg.Pool.ConnectTimeout)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", p.key.addr)
	if err != nil {
		return nil, fmt.Errorf("%w: connect to %s: %w", pgerr.ErrBackendUnavailable, p.key.addr, err)
	}
	var raw syscall.RawConn
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		raw, _ = tc.SyscallConn()
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	conn, err = negotiateServerTLS(conn, cfg.TLS.Server)
	if err != nil {
		conn.Close()
		return nil, err
	}
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters:      map[string]string{"user": p.key.user, "database": p.key.database},
	})
	if err := fe.Flush(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %w", pgerr.ErrBackendUnavailable, err)
	}
	if err := auth.AuthenticateServer(fe, p.key.user, p.password()); err != nil {
		conn.Close()
		return nil, err
	}
	b := &backend{
		pool:     p,
		conn:     conn,
		raw:      raw,
		params:   map[string]string{},
		created:  time.Now(),
		epoch:    epoch,
		prepared: newStmtLRU(cfg.Pool.PreparedStatements),
		id:       backendIDs.Add(1),
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: %w", pgerr.ErrBackendUnavailable, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParameterStatus:
			b.params[m.Name] = m.Value
		case *pgproto3.BackendKeyData:
			b.pid, b.secret = m.ProcessID, binary.BigEndian.Uint32(padKey(m.SecretKey))
		case *pgproto3.ErrorResponse:
			conn.Close()
			return nil, pgerr.FromServer(m)
		case *pgproto3.NoticeResponse:
		case *pgproto3.ReadyForQuery:
			conn.SetDeadline(time.Time{})
			var bio io.ReadWriter = conn
			if x := newRawIO(conn); x != nil { // not under TLS
				bio, b.io = x, x
			}
			b.r = bufio.NewReaderSize(bio, wire.BufferSize)
			b.w = bufio.NewWriterSize(bio, wire.BufferSize)
			b.lastUsed = time.Now()
			return b, nil
		default:
			conn.Close()
			return nil, fmt.Errorf("%w: unexpected %T during server startup", pgerr.ErrProtocol, msg)
		}
	}
}

func padKey(k []byte) []byte {
	if len(k) >= 4 {
		return k[:4]
	}
	out := make([]byte, 4)
	copy(out[4-len(k):], k)
	return out
}

// negotiateServerTLS sends an SSLRequest unless mode is disable and wraps
// conn in TLS when the server accepts. "require" fails when it refuses.
// Server certificates are not verified (like libpq's sslmode=require).
func negotiateServerTLS(conn net.Conn, mode string) (net.Conn, error) {
	if mode == "disable" {
		return conn, nil
	}
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], wire.SSLRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		return nil, fmt.Errorf("%w: %w", pgerr.ErrBackendUnavailable, err)
	}
	var resp [1]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil {
		return nil, fmt.Errorf("%w: %w", pgerr.ErrBackendUnavailable, err)
	}
	switch resp[0] {
	case 'S':
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // sslmode=require semantics, documented
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("%w: TLS handshake with server: %v", pgerr.ErrBackendUnavailable, err)
		}
		return tc, nil
	case 'N':
		if mode == "require" {
			return nil, fmt.Errorf("%w: server refused TLS and tls.server is require", pgerr.ErrBackendUnavailable)
		}
		return conn, nil
	}
	return nil, fmt.Errorf("%w: unexpected answer %q to SSLRequest", pgerr.ErrProtocol, resp[0])
}

// boundWait makes the next read of b wait at most d for data, endWait
// ends that bound. With raw I/O the deadline is set only if the socket is
// empty (rawIO.boundWait); under TLS, or off Linux, always.
func (b *backend) boundWait(d time.Duration) {
	if b.io != nil {
		b.io.boundWait(d)
		return
	}
	b.conn.SetReadDeadline(time.Now().Add(d))
}

func (b *backend) endWait() {
	if b.io != nil {
		b.io.endWait()
		return
	}
	b.conn.SetReadDeadline(time.Time{})
}

// quiet reports whether an idle connection has nothing to say: a server
// that terminated the session (pg_terminate_backend, shutdown, crash) has
// sent a FATAL error or closed the socket, which shows up as readable data
// or EOF. One non-blocking recv with MSG_PEEK; no timers, no allocation.
func (b *backend) quiet() bool {
	if b.r.Buffered() > 0 {
		return false
	}
	if b.raw == nil {
		return true
	}
	quiet := true
	b.raw.Read(func(fd uintptr) bool {
		quiet = !peekReadable(fd)
		return true
	})
	return quiet
}

// check runs an empty query to prove an idle connection is alive. Used on
// connections idle longer than pool.check_after.
func (b *backend) check() error {
	b.conn.SetDeadline(time.Now().Add(b.pool.cfg().Pool.ConnectTimeout))
	defer b.conn.SetDeadline(time.Time{})
	if err := wire.WriteMessage(b.w, 'Q', []byte{0}); err != nil {
		return err
	}
	if err := b.w.Flush(); err != nil {
		return err
	}
	return b.drainUntilReady()
}

// exec runs one simple query on an idle backend and discards its results,
// updating params; an ErrorResponse becomes the returned error.
func (b *backend) exec(sql string) error {
	body := append([]byte(sql), 0)
	if err := wire.WriteMessage(b.w, 'Q', body); err != nil {
		return err
	}
	if err := b.w.Flush(); err != nil {
		return err
	}
	return b.drainUntilReady()
}

// drainUntilReady reads and discards server messages up to ReadyForQuery.
func (b *backend) drainUntilReady() error {
	var firstErr error
	var scratch []byte
	for {
		typ, n, err := wire.PeekHeader(b.r, 1<<30)
		if err != nil {
			return err
		}
		switch typ {
		case 'S', 'E', 'Z':
			body, err := wire.ReadBody(b.r, n, &scratch)
			if err != nil {
				return err
			}
			switch typ {
			case 'S':
				b.noteParameterStatus(body)
			case 'E':
				if firstErr == nil {
					er := &pgproto3.ErrorResponse{}
					if er.Decode(body) == nil {
						firstErr = pgerr.FromServer(er)
					} else {
						firstErr = errors.New("server error")
					}
				}
			case 'Z':
				b.lastUsed = time.Now()
				if len(body) == 1 && body[0] != 'I' {
					b.broken = true
				}
				return firstErr
			}
		default:
			if err := wire.Skip(b.r, n); err != nil {
				return err
			}
		}
	}
}

// noteParameterStatus records a ParameterStatus body (name\0value\0).
func (b *backend) noteParameterStatus(body []byte) {
	name, rest, ok := wire.CString(body)
	if !ok {
		return
	}
	val, _, ok := wire.CString(rest)
	if !ok {
		return
	}
	if b.params[string(name)] != string(val) {
		b.params[string(name)] = string(val)
	}
}

// close terminates the server session politely and closes the socket.
func (b *backend) close() {
	if b.conn == nil {
		return
	}
	b.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if b.w != nil {
		wire.WriteMessage(b.w, 'X', nil)
		b.w.Flush()
	}
	b.conn.Close()
	b.slots.release(b.pool)
}

// stmtLRU is a bounded set of statement names with least-recently-used
// eviction. Not safe for concurrent use.
type stmtLRU struct {
	max   int
	ll    *list.List
	items map[string]*list.Element
}

func newStmtLRU(max int) *stmtLRU {
	return &stmtLRU{max: max, ll: list.New(), items: map[string]*list.Element{}}
}

// has reports whether name is present and marks it recently used.
func (l *stmtLRU) has(name string) bool {
	if e, ok := l.items[name]; ok {
		l.ll.MoveToFront(e)
		return true
	}
	return false
}

// add records name; it returns the name evicted to make room, or "".
func (l *stmtLRU) add(name string) (evicted string) {
	if e, ok := l.items[name]; ok {
		l.ll.MoveToFront(e)
		return ""
	}
	l.items[name] = l.ll.PushFront(name)
	if l.ll.Len() > l.max {
		last := l.ll.Back()
		l.ll.Remove(last)
		evicted = last.Value.(string)
		delete(l.items, evicted)
	}
	return evicted
}

func (l *stmtLRU) remove(name string) {
	if e, ok := l.items[name]; ok {
		l.ll.Remove(e)
		delete(l.items, name)
	}
}

func (l *stmtLRU) reset() {
	l.ll.Init()
	clear(l.items)
}

func (l *stmtLRU) len() int { return l.ll.Len() }
