package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/wire"
	"github.com/pgsluice/pgsluice/routing"
)

// Options carries what the caller wires in: where metrics go and where logs
// go. Zero values get private defaults, so tests can build many servers in
// one process.
type Options struct {
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	Reload     func() error // re-reads and applies the configuration (admin RELOAD); nil: RELOAD reports it is not available
	// Shutdown asks the program to shut down as on SIGTERM (admin
	// SHUTDOWN); it must not wait for the shutdown, which closes the
	// console's own connection. nil: SHUTDOWN reports it is not available.
	Shutdown func()
	Version  string // SHOW VERSION ("dev" when empty)
}

// Server is a running pgsluice proxy: the client listener, the pools and the
// admin HTTP endpoint. Its methods are safe for concurrent use.
type Server struct {
	cfg        atomic.Pointer[config.Config]
	authq      authQuerier             // auth.query lookups
	limits     map[limitKey]*connLimit // pool.max_db/user_connections (mu)
	version    string
	log        *slog.Logger
	m          *metrics
	qs         *queryStats
	gatherer   prometheus.Gatherer
	classifier *routing.Classifier
	topo       *topology
	topoOnce   sync.Once
	idleOnce   sync.Once    // starts idleJanitor (idle.go)
	cache      *serverCache // nil when cache.backend is off
	tlsConfig  *tls.Config
	requireTLS bool
	// pumps counts pump goroutines started (inline.go), pumpsRunning
	// those not yet ended; tests read them.
	pumps, pumpsRunning atomic.Int64

	// The result cache's Registerer and logical-replication streams
	// (cacheinval.go): databases whose stream runs (mu).
	reg         prometheus.Registerer
	logrepl     map[string]bool
	logreplCtx  context.Context
	logreplStop context.CancelFunc
	logreplWG   sync.WaitGroup

	mu       sync.Mutex
	pools    map[poolKey]*pool
	sessions map[*session]struct{}
	lns      []net.Listener
	admin    *http.Server

	// Admin console (admin.go): RELOAD hook and PAUSE/RESUME gate.
	reload     func() error
	shutdown   func()
	gate       pauseGate
	pausedFlag atomic.Bool

	clients  atomic.Int64
	draining atomic.Bool
	cancels  sync.Map // cancelKey -> *session
	// vanishCancels bounds the CancelRequests sent for clients that
	// vanished mid-statement (session.cleanup): a fleet killed at once
	// must not make PostgreSQL fork a cancel process per connection.
	vanishCancels chan struct{}
	wg            sync.WaitGroup
	done          chan struct{}

	reloadMu sync.Mutex // serialises Reload (reload.go)

	// handover state (handover.go)
	handingOver  atomic.Bool
	handoverLeft atomic.Int32  // listeners not yet closed
	handoverLns  chan struct{} // closed when they all are
}

// New builds a Server from a validated config. It opens nothing; call
// Serve (and ServeAdmin) to start.
func New(cfg config.Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg := opts.Registerer
	gat := opts.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gat = r, r
	}
	if gat == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gat = g
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:      log,
		gatherer: gat,
		pools:    map[poolKey]*pool{},
		sessions: map[*session]struct{}{},
		done:     make(chan struct{}),
		reload:   opts.Reload,
		shutdown: opts.Shutdown,
		version:  cmp.Or(opts.Version, "dev"),

		vanishCancels: make(chan struct{}, maxVanishCancels),
	}
	s.cfg.Store(&cfg)
	s.classifier = routing.New(routing.Options{CacheSize: cfg.Routing.ShapeCacheSize})
	if cfg.TLS.CertFile != "" && cfg.TLS.Client != "disable" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, err
		}
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.requireTLS = cfg.TLS.Client == "require"
	s.qs = newQueryStats(func() int { return s.cfgNow().Metrics.MaxFingerprints })
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, err
	}
	s.m = m
	if s.topo, err = newTopology(&cfg, log, reg); err != nil {
		return nil, err
	}
	s.topo.classifier = s.classifier
	s.reg = reg
	if s.cache, err = newServerCache(cfg.Cache, reg, log); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) cfgNow() *config.Config { return s.cfg.Load() }

// ListenAndServe listens on cfg.Listen and serves until Shutdown.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.cfgNow().Listen)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve accepts clients on ln until Shutdown. It returns nil after a
// Shutdown and the accept error otherwise.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	s.topoOnce.Do(s.topo.start)
	s.idleOnce.Do(func() { go s.idleJanitor() })
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.handingOver.Load() {
				if s.handoverAcceptFailed(ln, err) {
					return nil
				}
				continue
			}
			if s.draining.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				// EMFILE and friends: back off rather than spin.
				if tempDelay == 0 {
					tempDelay = 5 * time.Millisecond
				} else if tempDelay *= 2; tempDelay > time.Second {
					tempDelay = time.Second
				}
				s.log.Warn("accept failed; retrying", "err", err, "delay", tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}
		tempDelay = 0
		if s.handingOver.Load() {
			s.handoverAccepted(ln)
		}
		// No socket options here: Go's Accept sets TCP_NODELAY, and
		// keepalive comes from Listen's listener (or Go's default).
		sess := newSession(s, c)
		s.mu.Lock()
		s.sessions[sess] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sess.run(context.Background())
		}()
	}
}

// isTemporaryAccept reports accept errors worth retrying (out of file
// descriptors, aborted connections).
func isTemporaryAccept(err error) bool {
	var se interface{ Temporary() bool }
	return errors.As(err, &se) && se.Temporary()
}

// admitClient counts a logged-in client against pool.max_client_conn.
func (s *Server) admitClient() bool {
	n := s.clients.Add(1)
	if n > int64(s.cfgNow().Pool.MaxClientConn) {
		s.clients.Add(-1)
		return false
	}
	s.m.clients.Inc()
	return true
}

func (s *Server) sessionEnded(sess *session) {
	if sess.admitted {
		s.clients.Add(-1)
		s.m.clients.Dec()
	}
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

// poolFor returns the pool of (database, user, node), creating it.
func (s *Server) poolFor(database, user, password, addr string) *pool {
	k := poolKey{database: database, user: user, addr: addr}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pools[k]
	if p == nil {
		p = newPool(k, password, s.cfgNow(), s.log, s.m, s.limitsForLocked)
		s.pools[k] = p
		s.startLogreplLocked(database)
	}
	return p
}

// classify classifies SQL text through the shared shape cache.
func (s *Server) classify(sql string) routing.Decision {
	if !s.cfgNow().Routing.Enabled && s.cache == nil && !routing.MayAffectSession(sql) {
		// Not routing and not caching (the cache needs the tables a
		// statement reads and writes): only pins, SETs and resets
		// matter, and this text has none (a substring test ~7x cheaper
		// than a cache hit).
		return routing.SessionNeutralDecision()
	}
	return s.classifier.Classify(sql)
}

// classifyBytes classifies a message body without copying it when its
// shape is cached.
func (s *Server) classifyBytes(sql []byte) routing.Decision {
	return s.classifier.ClassifyBytes(sql)
}

// registerCancel mints a unique cancel key for a session.
func (s *Server) registerCancel(sess *session) cancelKey {
	for {
		k := newCancelKey()
		if _, loaded := s.cancels.LoadOrStore(k, sess); !loaded {
			return k
		}
	}
}

// cancel forwards a CancelRequest to the server connection currently
// running the query of the client that owns key, and to nothing else.
func (s *Server) cancel(key cancelKey) {
	v, ok := s.cancels.Load(key)
	if !ok {
		return
	}
	sess := v.(*session)
	// Hold the session's lock so that its server connection cannot be
	// released to another client while the cancel is on its way.
	sess.mu.Lock()
	defer sess.mu.Unlock()
	b := sess.b
	if b == nil || sess.ops.len() == 0 {
		return
	}
	if err := b.cancel(); err != nil {
		s.log.Warn("cannot forward cancel request", "err", err)
		return
	}
	s.m.cancels.Inc()
}

// maxVanishCancels is how many CancelRequests for vanished clients may be
// on their way at once; beyond it a vanished client's server connection is
// only closed (PostgreSQL then ends the statement when it next writes).
const maxVanishCancels = 16

// cancelVanished cancels what b runs for a client that vanished, unless
// maxVanishCancels such cancels are already on their way. It reports
// whether it sent one.
func (s *Server) cancelVanished(b *backend) bool {
	select {
	case s.vanishCancels <- struct{}{}:
	default:
		return false
	}
	defer func() { <-s.vanishCancels }()
	if err := b.cancel(); err != nil {
		s.log.Debug("cannot cancel the statement of a vanished client", "err", err)
		return false
	}
	return true
}

// cancel sends PostgreSQL a CancelRequest for what b is running, and waits
// (2 s at most) until PostgreSQL has handled it.
func (b *backend) cancel() error {
	c, err := net.DialTimeout("tcp", b.pool.key.addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	var req [16]byte
	binary.BigEndian.PutUint32(req[0:], 16)
	binary.BigEndian.PutUint32(req[4:], wire.CancelRequestCode)
	binary.BigEndian.PutUint32(req[8:], b.pid)
	binary.BigEndian.PutUint32(req[12:], b.secret)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(req[:]); err == nil {
		// PostgreSQL closes the connection when it has handled it.
		var one [1]byte
		c.Read(one[:])
	}
	return nil
}

// ServeAdmin serves /healthz, /readyz and /metrics on ln until Shutdown.
func (s *Server) ServeAdmin(ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("/queries", s.serveQueries)
	mux.HandleFunc("/cache/flush", s.serveCacheFlush)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.admin = srv
	s.mu.Unlock()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting clients, closes idle clients with 57P01, lets
// clients in the middle of a transaction finish until ctx ends, then closes
// everything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.mu.Lock()
	for _, ln := range s.lns {
		ln.Close()
	}
	admin := s.admin
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	if admin != nil {
		admin.Close()
	}
	// Idle clients are told and closed now; busy ones when their
	// transaction ends (the session loop checks draining at safe points).
	for _, sess := range sessions {
		sess.mu.Lock()
		idle := sess.b == nil && sess.state >= stateIdle
		sess.mu.Unlock()
		if idle {
			sess.conn.SetReadDeadline(time.Now())
		}
	}
	finished := make(chan struct{})
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			s.mu.Lock()
			n := len(s.sessions)
			var idle []*session
			for sess := range s.sessions {
				sess.mu.Lock()
				if sess.b == nil {
					idle = append(idle, sess)
				}
				sess.mu.Unlock()
			}
			s.mu.Unlock()
			if n == 0 {
				close(finished)
				return
			}
			for _, sess := range idle {
				sess.conn.SetReadDeadline(time.Now())
			}
			<-tick.C
		}
	}()
	var err error
	select {
	case <-finished:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for sess := range s.sessions {
			sess.conn.Close()
		}
		s.mu.Unlock()
	}
	if err != nil {
		// Forced: wait for the sessions to notice their closed sockets,
		// but not forever.
		waited := make(chan struct{})
		go func() { s.wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			s.log.Warn("shutdown: some sessions did not exit")
		}
	} else {
		s.wg.Wait()
	}
	s.mu.Lock()
	for _, p := range s.pools {
		p.close()
	}
	s.mu.Unlock()
	s.topoOnce.Do(func() {})
	s.topo.close()
	s.stopLogrepl()
	s.cache.close()
	s.authq.close()
	return err
}
