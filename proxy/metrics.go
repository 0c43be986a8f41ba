package proxy

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics holds the proxy's instruments, registered on the Registerer the
// caller passes in (never the global one). Safe for concurrent use.
type metrics struct {
	clients         prometheus.Gauge
	rejected        prometheus.Counter
	authFailures    prometheus.Counter
	authQueries     *prometheus.CounterVec
	acquireWait     prometheus.Histogram
	acquireTimeouts prometheus.Counter
	idleClosed      *prometheus.CounterVec
	serverConnects  prometheus.Counter
	connectErrors   prometheus.Counter
	pins            *prometheus.CounterVec
	errors          *prometheus.CounterVec
	cancels         prometheus.Counter
	decisions       *prometheus.CounterVec
	// decisionCache holds the decision counters by label pair, so the hot
	// path does no label hashing and no allocation: a copy-on-write map
	// (the label pairs are a small fixed set), read without locking.
	decisionCache atomic.Pointer[map[decisionKey]prometheus.Counter]
	decisionMu    sync.Mutex // serialises decisionCache updates
}

type decisionKey struct{ target, reason string }

// routed counts one routing decision.
func (m *metrics) routed(target, reason string) {
	k := decisionKey{target, reason}
	if cur := m.decisionCache.Load(); cur != nil {
		if c, ok := (*cur)[k]; ok {
			c.Inc()
			return
		}
	}
	m.decisionMu.Lock()
	defer m.decisionMu.Unlock()
	next := map[decisionKey]prometheus.Counter{}
	if cur := m.decisionCache.Load(); cur != nil {
		for kk, c := range *cur {
			next[kk] = c
		}
	}
	c, ok := next[k]
	if !ok {
		c = m.decisions.WithLabelValues(target, reason)
		next[k] = c
		m.decisionCache.Store(&next)
	}
	c.Inc()
}

func newMetrics(reg prometheus.Registerer, srv *Server) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgsluice_client_connections", Help: "Client connections logged in now.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgsluice_client_rejected_total", Help: "Clients refused with 53300 beyond pool.max_client_conn.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgsluice_auth_failures_total", Help: "Client authentication failures.",
		}),
		authQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgsluice_auth_queries_total", Help: "auth.query lookups of client users, by result (found, not_found, error; shared: answered by a lookup of the same user another login had running).",
		}, []string{"result"}),
		acquireWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgsluice_pool_wait_seconds",
			Help:    "Time a client waited for a server connection.",
			Buckets: []float64{.00001, .00005, .0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10},
		}),
		acquireTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgsluice_pool_acquire_timeouts_total", Help: "Clients that gave up waiting after pool.acquire_timeout.",
		}),
		idleClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgsluice_clients_idle_closed_total",
			Help: "Clients closed for silence: in=transaction after pool.idle_transaction_timeout, in=session after pool.client_idle_timeout.",
		}, []string{"in"}),
		serverConnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgsluice_pool_server_connects_total", Help: "Server connections opened.",
		}),
		connectErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgsluice_pool_connect_errors_total", Help: "Failed attempts to open a server connection.",
		}),
		pins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgsluice_session_pins_total", Help: "Sessions pinned to their server connection, by reason.",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgsluice_errors_total", Help: "ErrorResponses sent to clients, by SQLSTATE class.",
		}, []string{"class"}),
		cancels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgsluice_cancel_requests_total", Help: "Cancel requests forwarded to a server.",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgsluice_routing_decisions_total", Help: "Transactions routed, by target node role and the reason of the statement that started them.",
		}, []string{"target", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.clients, m.rejected, m.authFailures, m.authQueries, m.acquireWait, m.acquireTimeouts, m.idleClosed,
		m.serverConnects, m.connectErrors, m.pins, m.errors, m.cancels, m.decisions, &poolCollector{srv: srv}, queryCollector{srv.qs}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var (
	poolActiveDesc  = prometheus.NewDesc("pgsluice_pool_active_connections", "Server connections lent to clients.", []string{"database", "user", "node"}, nil)
	poolIdleDesc    = prometheus.NewDesc("pgsluice_pool_idle_connections", "Idle server connections.", []string{"database", "user", "node"}, nil)
	poolWaitingDesc = prometheus.NewDesc("pgsluice_pool_waiting_clients", "Clients waiting for a server connection.", []string{"database", "user", "node"}, nil)
	poolMaxDesc     = prometheus.NewDesc("pgsluice_pool_max_connections", "pool.size.", []string{"database", "user", "node"}, nil)
)

// poolCollector reports pool gauges at scrape time.
type poolCollector struct{ srv *Server }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolActiveDesc
	ch <- poolIdleDesc
	ch <- poolWaitingDesc
	ch <- poolMaxDesc
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.srv.mu.Lock()
	pools := make([]*pool, 0, len(c.srv.pools))
	for _, p := range c.srv.pools {
		pools = append(pools, p)
	}
	c.srv.mu.Unlock()
	for _, p := range pools {
		active, idle, waiting, _ := p.stats()
		l := []string{p.key.database, p.key.user, p.key.addr}
		ch <- prometheus.MustNewConstMetric(poolActiveDesc, prometheus.GaugeValue, float64(active), l...)
		ch <- prometheus.MustNewConstMetric(poolIdleDesc, prometheus.GaugeValue, float64(idle), l...)
		ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(waiting), l...)
		ch <- prometheus.MustNewConstMetric(poolMaxDesc, prometheus.GaugeValue, float64(p.cfg().Pool.Size), l...)
	}
}
