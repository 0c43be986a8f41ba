package logrepl

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the stream's collectors, labelled with the database (bounded
// by configuration). Without a Registerer they are kept but not exported.
type metrics struct {
	connected    prometheus.Gauge   // 1 while streaming
	streams      prometheus.Counter // connections that reached streaming
	failures     prometheus.Counter // connections that failed or could not be set up
	transactions prometheus.Counter // commits reported through Changed
	lagBytes     prometheus.Gauge   // server WAL end minus the last reported position
}

func newMetrics(reg prometheus.Registerer, database string) (*metrics, error) {
	labels := prometheus.Labels{"database": database}
	var errs []error
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pgsluice", Subsystem: "logrepl", Name: name, Help: help, ConstLabels: labels})
		c, err := register(reg, g)
		errs = append(errs, err)
		return c.(prometheus.Gauge)
	}
	counter := func(name, help string) prometheus.Counter {
		k := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pgsluice", Subsystem: "logrepl", Name: name, Help: help, ConstLabels: labels})
		c, err := register(reg, k)
		errs = append(errs, err)
		return c.(prometheus.Counter)
	}
	m := &metrics{
		connected:    gauge("connected", "1 while the logical replication stream used for cache invalidation is streaming, else 0."),
		streams:      counter("streams_total", "Logical replication connections that reached streaming (each one began with a cache reset)."),
		failures:     counter("failures_total", "Logical replication connections that failed or could not be set up."),
		transactions: counter("transactions_total", "Committed transactions reported for cache invalidation."),
		lagBytes:     gauge("lag_bytes", "Bytes of WAL between the primary's end of WAL and the last position reported to the handler."),
	}
	return m, errors.Join(errs...)
}

// register registers c on reg, reusing an identical collector already
// registered (another Run for the same database). reg may be nil.
func register(reg prometheus.Registerer, c prometheus.Collector) (prometheus.Collector, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector, nil
		}
		return c, fmt.Errorf("logrepl: register metric: %w", err)
	}
	return c, nil
}
