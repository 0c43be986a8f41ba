package cachelayer

import (
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Bypass reasons (label values of pgsluice_cache_bypasses_total{reason}).
const (
	reasonTimeout      = "timeout"      // the store did not answer within the timeout
	reasonUnavailable  = "unavailable"  // connection refused/reset, no route
	reasonOOM          = "oom"          // Redis refused a write (maxmemory)
	reasonBreakerOpen  = "breaker_open" // the circuit breaker skipped the call
	reasonError        = "error"        // any other store error
	reasonUnverifiable = "unverifiable" // tiered: memory entry could not be verified and is older than StaleBound
	reasonCorrupt      = "corrupt"      // a stored entry or generation could not be decoded
)

// SingleFlightHelp is the help text of pgsluice_cache_singleflight_total.
// The proxy, whose fills do not go through Do, counts its own single flight
// in the same family under tier="proxy"; a registry accepts both only if
// their help texts are identical.
const SingleFlightHelp = "Cache fills by single-flight outcome (leader, shared, fallthrough, timeout)."

// metrics holds one tier's collectors plus atomic mirrors used by Stats. All
// collectors carry a constant label tier=<memory|redis> so several tiers can
// share one registry.
type metrics struct {
	hits          prometheus.Counter
	misses        prometheus.Counter
	bypasses      *prometheus.CounterVec // op, reason
	evictions     *prometheus.CounterVec // reason
	invalidations *prometheus.CounterVec // scope
	setDrops      *prometheus.CounterVec // reason
	flight        *prometheus.CounterVec // outcome
	bytes         prometheus.Gauge
	entries       prometheus.Gauge
	breakerState  prometheus.Gauge
	pending       prometheus.Gauge

	nHits, nMisses, nBypasses, nEvictions, nInvalidations atomic.Uint64
	nBytes, nEntries                                      atomic.Int64
}

func newMetrics(tier string, reg prometheus.Registerer) *metrics {
	cl := prometheus.Labels{"tier": tier}
	c := func(name, help string) prometheus.Counter {
		return register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pgsluice", Subsystem: "cache", Name: name, Help: help, ConstLabels: cl,
		})).(prometheus.Counter)
	}
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgsluice", Subsystem: "cache", Name: name, Help: help, ConstLabels: cl,
		}, labels)).(*prometheus.CounterVec)
	}
	// g registers a gauge only for the tier it describes; the other tier
	// keeps an unregistered one so callers need no nil checks.
	g := func(forTier, name, help string) prometheus.Gauge {
		gauge := prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pgsluice", Subsystem: "cache", Name: name, Help: help, ConstLabels: cl,
		})
		if forTier != tier {
			return gauge
		}
		return register(reg, gauge).(prometheus.Gauge)
	}
	return &metrics{
		hits:          c("hits_total", "Cache lookups answered by this tier."),
		misses:        c("misses_total", "Cache lookups that found nothing usable in this tier."),
		bypasses:      cv("bypasses_total", "Cache operations skipped because the store was unavailable or failed.", "op", "reason"),
		evictions:     cv("evictions_total", "Entries removed from this tier, by reason.", "reason"),
		invalidations: cv("invalidations_total", "Invalidations applied, by scope (table, db, all).", "scope"),
		setDrops:      cv("set_drops_total", "Results not stored, by reason.", "reason"),
		flight:        cv("singleflight_total", SingleFlightHelp, "outcome"),
		bytes:         g("memory", "memory_bytes", "Bytes held by the in-process tier."),
		entries:       g("memory", "memory_entries", "Entries held by the in-process tier."),
		breakerState:  g("redis", "redis_breaker_state", "Redis circuit breaker state: 0 closed, 1 half-open, 2 open."),
		pending:       g("redis", "redis_pending_invalidations", "Generation keys whose invalidation still has to reach Redis."),
	}
}

// register registers c on reg, reusing an identical collector that is
// already registered. reg may be nil (metrics are then only kept for Stats).
func register(reg prometheus.Registerer, c prometheus.Collector) prometheus.Collector {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector
		}
		panic(err) // a descriptor clash is a programming error
	}
	return c
}

func (m *metrics) hit()  { m.hits.Inc(); m.nHits.Add(1) }
func (m *metrics) miss() { m.misses.Inc(); m.nMisses.Add(1) }

func (m *metrics) bypass(op, reason string) {
	m.bypasses.WithLabelValues(op, reason).Inc()
	m.nBypasses.Add(1)
}

func (m *metrics) evict(reason string, n int) {
	if n == 0 {
		return
	}
	m.evictions.WithLabelValues(reason).Add(float64(n))
	m.nEvictions.Add(uint64(n))
}

func (m *metrics) invalidated(scope string, n int) {
	m.invalidations.WithLabelValues(scope).Add(float64(n))
	m.nInvalidations.Add(uint64(n))
}

func (m *metrics) sizeDelta(bytes int64, entries int64) {
	m.bytes.Set(float64(m.nBytes.Add(bytes)))
	m.entries.Set(float64(m.nEntries.Add(entries)))
}

func (m *metrics) stats() Stats {
	return Stats{
		Hits:          m.nHits.Load(),
		Misses:        m.nMisses.Load(),
		Bypasses:      m.nBypasses.Load(),
		Bytes:         m.nBytes.Load(),
		Entries:       m.nEntries.Load(),
		Evictions:     m.nEvictions.Load(),
		Invalidations: m.nInvalidations.Load(),
	}
}
