package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/auth"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
)

// startup runs the startup and authentication phases: SSL/GSS negotiation,
// the StartupMessage, CancelRequest, client authentication, then a first
// server connection to check the database and user and to learn the
// parameters the client must be told. On success the client has received
// AuthenticationOk, ParameterStatus, BackendKeyData and ReadyForQuery.
func (s *session) startup(ctx context.Context) error {
	deadline := time.Now().Add(s.cfg.Pool.ClientLoginTimeout)
	s.conn.SetDeadline(deadline)
	var st wire.Startup
	tlsDone := false
	// Login reads and writes through raw I/O on a plain socket
	// (rawio_linux.go); it is garbage once the client is logged in.
	var lio io.ReadWriter = s.conn
	if x := newRawIO(s.conn); x != nil {
		lio = x
	}
	for {
		var err error
		st, err = wire.ReadStartup(lio, 0)
		if err != nil {
			if !errors.Is(err, io.EOF) && !isNetErr(err) {
				s.sendFatal(err)
			}
			return err
		}
		switch st.Kind {
		case wire.SSLRequest:
			if tlsDone {
				err := pgerr.Fatal(pgerr.ProtocolViolation, "SSL negotiation already done")
				s.sendFatal(err)
				return err
			}
			if s.srv.tlsConfig == nil {
				if _, err := lio.Write([]byte{'N'}); err != nil {
					return err
				}
				continue
			}
			if _, err := lio.Write([]byte{'S'}); err != nil {
				return err
			}
			tc := tlsServer(s.conn, s.srv.tlsConfig)
			if err := tc.Handshake(); err != nil {
				return err
			}
			s.conn = tc
			lio = tc
			s.w.Reset(tc)
			if s.r != nil {
				s.r.Reset(tc)
			}
			tlsDone = true
			continue
		case wire.GSSENCRequest:
			if _, err := lio.Write([]byte{'N'}); err != nil {
				return err
			}
			continue
		case wire.CancelRequest:
			s.srv.cancel(cancelKey{st.ProcessID, st.SecretKey})
			return errors.New("cancel request served")
		}
		break
	}
	s.mu.Lock()
	s.setStateLocked(stateAuth)
	s.mu.Unlock()
	if s.srv.requireTLS && !tlsDone {
		err := pgerr.Fatal(pgerr.InvalidAuthorizationSpecification, "pgsluice requires SSL/TLS connections")
		s.sendFatal(err)
		return err
	}
	if st.NeedsNegotiation() {
		s.w.Write(encode(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: wire.ServerMinorVersion, UnrecognizedOptions: st.UnsupportedOptions}))
	}
	if _, ok := st.Params["replication"]; ok && st.Params["replication"] != "false" && st.Params["replication"] != "0" && st.Params["replication"] != "off" && st.Params["replication"] != "no" {
		err := pgerr.Fatal(pgerr.FeatureNotSupported, "pgsluice does not proxy replication connections")
		s.sendFatal(err)
		return err
	}
	s.user, s.database = st.User(), st.Database()
	s.appName = st.Params["application_name"]
	if !s.srv.admitClient() {
		err := pgerr.Fatal(pgerr.TooManyConnections, "sorry, too many clients already (pool.max_client_conn is %d)", s.cfg.Pool.MaxClientConn)
		s.srv.m.rejected.Inc()
		s.sendFatal(err)
		return err
	}
	s.admitted = true
	settings, err := newSettings(st.Params)
	if err != nil {
		s.sendFatal(pgerr.Wrap(err, pgerr.ProtocolViolation, "invalid options in startup packet"))
		return err
	}
	s.settings = settings

	// Authenticate the client against auth.users or the secret auth.query
	// returns (or admit it: trust).
	if err := s.w.Flush(); err != nil {
		return err
	}
	actx, cancel := context.WithDeadline(ctx, deadline)
	password, known, err := s.userSecret(actx)
	if err != nil {
		cancel()
		s.srv.m.authFailures.Inc()
		s.log.Warn("auth.query failed", "user", s.user, "err", err)
		s.sendFatal(authQueryFailed(s.user, err))
		return err
	}
	lookup := func(string) (string, bool) { return password, known }
	lw := &loginWriter{w: lio}
	be := pgproto3.NewBackend(lio, lw)
	err = auth.AuthenticateClient(actx, be, auth.Method(s.cfg.Auth.Method), s.user, lookup)
	cancel()
	if err != nil {
		s.srv.m.authFailures.Inc()
		if !isNetErr(err) {
			s.sendFatal(err)
		}
		return err
	}
	// AuthenticationOk (and SCRAM's final message) are still in be: they
	// go out with the rest of the answer below, or before its error, in
	// one write.
	authOK := lw.take(be)
	if s.database == adminDatabase {
		return s.adminLogin(authOK)
	}
	if _, disabled := s.srv.dbState(s.database); disabled {
		err := disabledErr(s.database)
		s.w.Write(authOK)
		s.sendFatal(err)
		return err
	}
	s.pool = s.srv.poolFor(s.database, s.user, password, s.srv.topo.writer().addr)
	if _, listed := s.cfg.UserPassword(s.user); !listed && known {
		// auth.query may have returned another secret than the pool was
		// made with (ALTER ROLE … PASSWORD): new server logins use the new
		// one, whose ClientKey this login has just left.
		s.pool.adoptPassword(password)
	}

	// A first server connection proves the database and user exist (its
	// refusal reaches the client verbatim) and tells us the parameters to
	// report, with the client's own settings applied.
	params, err := s.loginParams(deadline)
	if err != nil {
		if !isNetErr(err) || errors.Is(err, pgerr.ErrBackendUnavailable) {
			s.w.Write(authOK)
			s.sendFatal(err)
		}
		return err
	}
	s.key = s.srv.registerCancel(s)
	s.initClientBuffers() // so that the login's last answers go out through raw I/O too
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clientWriterLocked().Write(authOK)
	for _, name := range sortedKeys(params) {
		s.w.Write(encode(&pgproto3.ParameterStatus{Name: name, Value: params[name]}))
	}
	var secret [4]byte
	binary.BigEndian.PutUint32(secret[:], s.key.secret)
	s.w.Write(encode(&pgproto3.BackendKeyData{ProcessID: s.key.pid, SecretKey: secret[:]}))
	s.w.Write([]byte{'Z', 0, 0, 0, 5, 'I'})
	s.txStatus = 'I'
	if s.b == nil {
		s.setStateLocked(stateIdle)
	}
	s.conn.SetDeadline(time.Time{})
	return s.flushClientLocked()
}

// loginParams borrows a server connection, brings it to the client's
// settings and returns the parameters it reports. In session mode the
// connection stays attached.
func (s *session) loginParams(deadline time.Time) (map[string]string, error) {
	if s.cfg.Pool.Mode == config.ModeTransaction {
		// A login with settings seen before needs no server connection:
		// connection storms then cost the pool nothing.
		if params, ok := s.pool.cachedParams(s.settings.sig); ok {
			return params, nil
		}
		// A storm of first logins with the same settings: one learns the
		// parameters, the others wait for it instead of each queueing for
		// a server connection.
		params, learn, done, err := s.pool.learnParams(s.settings.sig, deadline)
		if !learn {
			return params, err
		}
		defer done()
	}
	if err := s.srv.waitIfPaused(s.database, &s.idleKill); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	b, err := s.pool.acquire(ctx)
	if err != nil {
		return nil, err
	}
	if err := killedErr(&s.idleKill); err != nil {
		s.pool.discard(b)
		return nil, err
	}
	if b.settingsSig != s.settings.sig {
		sql := s.settings.replaySQL(b.settingsSig != "")
		if err := b.exec(sql); err != nil {
			b.settingsSig = "?"
			var pe *pgerr.Error
			if errors.As(err, &pe) && pe.Server != nil {
				s.pool.release(b)
				return nil, pe.AsFatal()
			}
			s.pool.discard(b)
			return nil, err
		}
		b.settingsSig = s.settings.sig
		b.unnamedBy = nil
	}
	params := make(map[string]string, len(b.params))
	for k, v := range b.params {
		params[k] = v
	}
	s.pool.cacheParams(s.settings.sig, params)
	if s.cfg.Pool.Mode == config.ModeSession {
		s.mu.Lock()
		s.b = b
		s.node = s.srv.topo.writer()
		s.setStateLocked(stateBusy)
		s.ensurePumpLocked()
		s.mu.Unlock()
		return params, nil
	}
	s.pool.release(b)
	return params, nil
}

// encode encodes a backend message; encoding our own well-formed messages
// cannot fail.
func encode(m pgproto3.BackendMessage) []byte {
	out, _ := m.Encode(nil)
	return out
}

// cancelKey is the BackendKeyData pgsluice mints for a client.
type cancelKey struct{ pid, secret uint32 }

func newCancelKey() cancelKey {
	var b [8]byte
	rand.Read(b[:])
	return cancelKey{pid: binary.BigEndian.Uint32(b[:4]) & 0x7fffffff, secret: binary.BigEndian.Uint32(b[4:])}
}

func newSession(srv *Server, c net.Conn) *session {
	s := &session{
		srv:   srv,
		cfg:   srv.cfgNow(),
		log:   srv.log,
		conn:  c,
		since: time.Now(),
		w:     bufio.NewWriterSize(c, idleWriterSize), // pooled full-size writers: buffers.go
		wake:  make(chan struct{}, 1),
	}
	s.cond = sync.NewCond(&s.mu)
	s.trace = s.log.Enabled(context.Background(), slog.LevelDebug)
	if s.trace {
		s.log = s.log.With("client", c.RemoteAddr().String())
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func tlsServer(c net.Conn, cfg *tls.Config) *tls.Conn { return tls.Server(c, cfg) }

// userSecret returns the configured password or stored secret of the
// client's user: from auth.users, else from auth.query when it is set. An
// error means auth.query could not run.
func (s *session) userSecret(ctx context.Context) (string, bool, error) {
	if pw, ok := s.cfg.UserPassword(s.user); ok || s.cfg.Auth.Method == config.AuthTrust || s.cfg.Auth.Query.SQL == "" {
		return pw, ok, nil
	}
	secret, found, shared, err := s.srv.authq.lookup(ctx, s.cfg, s.srv.topo.writer().addr, s.user)
	switch {
	case shared:
		s.srv.m.authQueries.WithLabelValues("shared").Inc()
		if err != nil {
			return "", false, err
		}
	case err != nil:
		s.srv.m.authQueries.WithLabelValues("error").Inc()
		return "", false, err
	case found:
		s.srv.m.authQueries.WithLabelValues("found").Inc()
	default:
		s.srv.m.authQueries.WithLabelValues("not_found").Inc()
	}
	return secret, found, nil
}

// loginWriter is the writer of the pgproto3.Backend that authenticates a
// client: it writes through to the connection until take keeps what the
// backend still holds (auth.AuthenticateClient leaves AuthenticationOk
// unflushed).
type loginWriter struct {
	w    io.Writer
	keep bool
	kept []byte
}

func (lw *loginWriter) Write(p []byte) (int, error) {
	if lw.keep {
		lw.kept = append(lw.kept, p...)
		return len(p), nil
	}
	return lw.w.Write(p)
}

// take returns the messages be has queued but not flushed.
func (lw *loginWriter) take(be *pgproto3.Backend) []byte {
	lw.keep = true
	be.Flush() // into lw.kept: cannot fail
	return lw.kept
}
