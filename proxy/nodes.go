package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/routing"
)

// node is one PostgreSQL server pgsluice may send queries to. Its health
// and WAL position are refreshed by a monitor goroutine and read lock-free.
type node struct {
	name       string // "primary" or "replica0", "replica1"… (a bounded metric label)
	addr       string
	weight     int
	configured bool // the configured primary
	state      atomic.Pointer[nodeState]
	// kick asks the monitor for a sample now (routing.ryw_wait).
	kick chan struct{}

	// watchStop and watchDone belong to the node's monitor goroutine while
	// it runs (nil otherwise). Guarded by topology.mu.
	watchStop, watchDone chan struct{}
}

// nodeState is one immutable health sample.
type nodeState struct {
	reachable  bool
	inRecovery bool
	// lsn is the primary's current WAL position, or the replica's replay
	// position.
	lsn        uint64
	lagBytes   int64
	lagSeconds float64
	healthy    bool // usable for reads (replica) or writes (primary)
	sampled    time.Time
}

// topology is the set of nodes and what the monitor knows of them. Safe for
// concurrent use.
type topology struct {
	cfgp    atomic.Pointer[config.Config] // swapped by reload
	log     *slog.Logger
	set     atomic.Pointer[[]*node] // immutable list, [0] is the configured primary; swapped by reload
	primary *node                   // the configured primary (cannot change live)
	stop    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex // serialises start, reload and the watchers' bookkeeping
	started bool

	healthy *prometheus.GaugeVec
	lagB    *prometheus.GaugeVec
	lagS    *prometheus.GaugeVec

	// writes records, per (database, user), when a transaction that wrote
	// last committed: the read-your-writes scope "user".
	writesMu sync.Mutex
	writes   map[string]time.Time

	// classifier receives the function catalog loaded from the primary;
	// catalogReq asks for a reload (catalog.go).
	classifier *routing.Classifier
	catalogReq chan struct{}
	// shared publishes writes to other instances (writeclock.go); nil
	// unless read_your_writes is user and a Redis is configured.
	shared *writeClock
}

func newTopology(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*topology, error) {
	t := &topology{log: log, stop: make(chan struct{}), writes: map[string]time.Time{}, catalogReq: make(chan struct{}, 1), shared: newWriteClock(cfg)}
	t.cfgp.Store(cfg)
	t.primary = &node{name: "primary", addr: cfg.Primary.Addr(), weight: 1, configured: true, kick: make(chan struct{}, 1)}
	nodes := []*node{t.primary}
	for i, r := range cfg.Replicas {
		nodes = append(nodes, newReplicaNode(i, r))
	}
	// Until the first check, the configured roles are assumed, but
	// replicas take no reads: they must prove they are streaming.
	t.primary.state.Store(&nodeState{reachable: true, healthy: true})
	t.set.Store(&nodes)
	t.healthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgsluice_replica_healthy", Help: "1 when the node is in rotation (replicas) or accepting writes (primary)."}, []string{"node"})
	t.lagB = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgsluice_replica_lag_bytes", Help: "WAL bytes the replica's replay is behind the primary."}, []string{"node"})
	t.lagS = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgsluice_replica_lag_seconds", Help: "Replay delay of the replica (0 when it has replayed all it received)."}, []string{"node"})
	for _, c := range []prometheus.Collector{t.healthy, t.lagB, t.lagS} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// newReplicaNode is the i-th configured replica, not yet proven healthy.
func newReplicaNode(i int, r config.Node) *node {
	w := r.Weight
	if w <= 0 {
		w = 1
	}
	n := &node{name: "replica" + strconv.Itoa(i), addr: r.Addr(), weight: w, kick: make(chan struct{}, 1)}
	n.state.Store(&nodeState{inRecovery: true})
	return n
}

func (t *topology) conf() *config.Config { return t.cfgp.Load() }

// list returns the current nodes; [0] is the configured primary.
func (t *topology) list() []*node { return *t.set.Load() }

// start launches one monitor goroutine per node when there are replicas
// (with none, there is nothing to decide).
func (t *topology) start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.started = true
	if cfg := t.conf(); cfg.Routing.Enabled {
		if user, password := monitorLogin(cfg); user != "" && t.classifier != nil {
			t.wg.Add(1)
			go t.watchCatalog(user, password)
		}
	}
	t.startWatchersLocked()
}

// startWatchersLocked starts the monitor of every node that has none.
func (t *topology) startWatchersLocked() {
	cfg := t.conf()
	nodes := t.list()
	if len(nodes) < 2 || !cfg.Routing.Enabled {
		return
	}
	user, password := monitorLogin(cfg)
	if user == "" {
		t.log.Warn("routing: no monitor login (set routing.monitor.user or auth.users); replicas take no reads")
		return
	}
	for _, n := range nodes {
		if n.watchStop != nil {
			continue
		}
		n.watchStop, n.watchDone = make(chan struct{}), make(chan struct{})
		t.wg.Add(1)
		go t.watch(n, cfg, user, password)
	}
}

func (t *topology) close() {
	select {
	case <-t.stop:
	default:
		close(t.stop)
		t.shared.close()
	}
	t.wg.Wait()
}

func monitorLogin(cfg *config.Config) (string, string) {
	m := cfg.Routing.Monitor
	if m.User != "" {
		return m.User, string(m.Password)
	}
	if len(cfg.Auth.Users) > 0 {
		return cfg.Auth.Users[0].Name, string(cfg.Auth.Users[0].Password)
	}
	return "", ""
}

// monitorDSN is the connection string of the monitor's login on addr.
func monitorDSN(cfg *config.Config, addr, user, password string) string {
	return loginDSN(cfg, addr, user, password, cfg.Routing.Monitor.Database, "pgsluice_monitor")
}

// loginDSN is the connection string of one of pgsluice's own pgx logins.
func loginDSN(cfg *config.Config, addr, user, password, database, appName string) string {
	ssl := "prefer"
	if cfg.TLS.Server == "disable" {
		ssl = "disable"
	} else if cfg.TLS.Server == "require" {
		ssl = "require"
	}
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=%s&application_name=%s&connect_timeout=2",
		url.PathEscape(user), url.PathEscape(password), addr, url.PathEscape(database), ssl, appName)
}

const healthSQL = `SELECT pg_catalog.pg_is_in_recovery(),
  (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END)::text,
  CASE WHEN NOT pg_catalog.pg_is_in_recovery() OR pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn() THEN 0
       ELSE COALESCE(extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()), 0) END::float8`

// watch checks one node every routing.health_interval until close or
// until its watchStop closes.
func (t *topology) watch(n *node, cfg *config.Config, user, password string) {
	defer t.wg.Done()
	defer close(n.watchDone)
	stop := n.watchStop
	dsn := monitorDSN(cfg, n.addr, user, password)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(cfg.Routing.HealthInterval)
	defer tick.Stop()
	for {
		st := &nodeState{sampled: time.Now()}
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Routing.HealthInterval*4+time.Second)
		if conn == nil || conn.IsClosed() {
			c, err := pgx.Connect(ctx, dsn)
			if err == nil {
				conn = c
			} else {
				conn = nil
			}
		}
		if conn != nil {
			var lsn string
			if err := conn.QueryRow(ctx, healthSQL).Scan(&st.inRecovery, &lsn, &st.lagSeconds); err == nil {
				st.reachable = true
				st.lsn = parseLSN(lsn)
			} else {
				conn.Close(context.Background())
				conn = nil
			}
		}
		cancel()
		t.assess(n, st)
		select {
		case <-t.stop:
			return
		case <-stop:
			return
		case <-tick.C:
		case <-n.kick:
		}
	}
}

// assess completes a sample with lag and health and publishes it.
func (t *topology) assess(n *node, st *nodeState) {
	prev := n.state.Load()
	if !st.inRecovery {
		st.healthy = st.reachable
	} else {
		p := t.primary.state.Load()
		if p.reachable && p.lsn > st.lsn {
			st.lagBytes = int64(p.lsn - st.lsn)
		} else if p.reachable && st.reachable {
			// It has replayed all the primary had: the time since its
			// last replayed transaction is idleness, not lag.
			st.lagSeconds = 0
		}
		rc := t.conf().Routing
		st.healthy = st.reachable &&
			(rc.MaxReplicaLag == 0 || st.lagBytes <= int64(rc.MaxReplicaLag)) &&
			(rc.MaxReplicaLagTime == 0 || st.lagSeconds <= rc.MaxReplicaLagTime.Seconds())
	}
	n.state.Store(st)
	if prev.healthy != st.healthy {
		t.log.Info("node health changed", "node", n.name, "addr", n.addr, "healthy", st.healthy, "in_recovery", st.inRecovery, "lag_bytes", st.lagBytes)
	}
	h := 0.0
	if st.healthy {
		h = 1
	}
	t.healthy.WithLabelValues(n.name).Set(h)
	if n != t.primary {
		t.lagB.WithLabelValues(n.name).Set(float64(st.lagBytes))
		t.lagS.WithLabelValues(n.name).Set(st.lagSeconds)
	}
}

// markDown takes a node out of rotation at once (a query on it failed);
// the monitor puts it back when it answers again.
func (t *topology) markDown(n *node) {
	st := *n.state.Load()
	st.healthy = false
	st.reachable = false
	n.state.Store(&st)
	t.healthy.WithLabelValues(n.name).Set(0)
}

// parseLSN parses "16/B374D848".
func parseLSN(s string) uint64 {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0
	}
	return h<<32 | l
}

// writer returns the node that takes writes: the configured primary, unless
// it is in recovery and a replica has been promoted.
func (t *topology) writer() *node {
	p := t.primary.state.Load()
	if !p.reachable || !p.inRecovery {
		return t.primary
	}
	for _, n := range t.list()[1:] {
		if st := n.state.Load(); st.reachable && !st.inRecovery {
			return n
		}
	}
	return t.primary
}

// noteWrite records that a transaction of (database, user) that wrote has
// committed, for read-your-writes in scope "user".
func (t *topology) noteWrite(database, user string, at time.Time) {
	t.writesMu.Lock()
	t.writes[database+"\x00"+user] = at
	t.writesMu.Unlock()
	if t.shared != nil {
		t.shared.note(database, user, at)
	}
}

func (t *topology) lastWrite(database, user string) time.Time {
	t.writesMu.Lock()
	at := t.writes[database+"\x00"+user]
	t.writesMu.Unlock()
	if t.shared != nil {
		if r := t.shared.last(database, user); r.After(at) {
			at = r
		}
	}
	return at
}

// reader picks the node for a read whose client last committed a write at
// lastWrite (zero: never): a healthy replica whose replay position has
// reached everything the primary had written when it was sampled after
// lastWrite, with the fewest server connections in use per unit of weight.
// load reports that for a node. nil means "use the primary".
func (t *topology) reader(lastWrite time.Time, load func(*node) int) *node {
	var need uint64
	if !lastWrite.IsZero() {
		p := t.writer().state.Load()
		if !p.reachable || !p.sampled.After(lastWrite) {
			return nil // no primary position known after the write yet
		}
		need = p.lsn
	}
	var best *node
	bestScore := 0.0
	w := t.writer()
	for _, n := range t.list() {
		if n == w {
			continue
		}
		st := n.state.Load()
		if !st.healthy || !st.inRecovery || st.lsn < need {
			continue
		}
		score := float64(load(n)+1) / float64(n.weight)
		if best == nil || score < bestScore {
			best, bestScore = n, score
		}
	}
	if best != nil && t.conf().Routing.PrimaryReads && lastWrite.IsZero() {
		if score := float64(load(w)+1) / float64(w.weight); score < bestScore {
			return nil
		}
	}
	return best
}

// writesData reports whether a statement may have changed data, so that
// the transaction running it counts for read-your-writes.
func writesData(d *routing.Decision) bool {
	if d.Target != routing.TargetPrimary {
		return false
	}
	switch d.Reason {
	case routing.ReasonTransaction, routing.ReasonSet, routing.ReasonShow, routing.ReasonEmpty, routing.ReasonExplain:
		return false
	case routing.ReasonHint:
		// a read a route=primary hint moved off the replicas (on the
		// primary, a hint is the reason only for reads)
		return false
	}
	return true
}
