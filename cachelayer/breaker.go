package cachelayer

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	breakerClosed = iota
	breakerHalfOpen
	breakerOpen
)

// breaker is a consecutive-failure circuit breaker. After threshold
// consecutive failures it opens for backoff; the first call after that is a
// half-open probe whose success closes the breaker and whose failure reopens
// it with a doubled backoff (capped at maxBackoff). Safe for concurrent use.
type breaker struct {
	mu         sync.Mutex
	state      int
	fails      int
	threshold  int
	base       time.Duration
	maxBackoff time.Duration
	backoff    time.Duration
	openUntil  time.Time
	now        func() time.Time
	gauge      prometheus.Gauge
}

func newBreaker(threshold int, base, maxBackoff time.Duration, now func() time.Time, g prometheus.Gauge) *breaker {
	return &breaker{threshold: threshold, base: base, maxBackoff: maxBackoff, backoff: base, now: now, gauge: g}
}

func (b *breaker) setState(s int) {
	b.state = s
	b.gauge.Set(float64(s))
}

// allow reports whether a call may go to the store. A true result must be
// followed by exactly one of success, failure or neutral.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerClosed:
		return true
	case breakerOpen:
		if b.now().Before(b.openUntil) {
			return false
		}
		b.setState(breakerHalfOpen)
		return true
	default: // half-open: one probe at a time
		return false
	}
}

func (b *breaker) success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fails = 0
	b.backoff = b.base
	if b.state != breakerClosed {
		b.setState(breakerClosed)
	}
}

func (b *breaker) failure() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fails++
	switch b.state {
	case breakerHalfOpen:
		b.backoff = min(b.backoff*2, b.maxBackoff)
		b.openUntil = b.now().Add(b.backoff)
		b.setState(breakerOpen)
	case breakerClosed:
		if b.fails >= b.threshold {
			b.backoff = b.base
			b.openUntil = b.now().Add(b.backoff)
			b.setState(breakerOpen)
		}
	}
}

// neutral ends a call that says nothing about the store's health (the
// caller's context was cancelled): a probe lets the next call probe again.
func (b *breaker) neutral() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == breakerHalfOpen {
		b.openUntil = b.now()
		b.setState(breakerOpen)
	}
}

func (b *breaker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == breakerClosed
}

// probeDue reports whether a call now would reach the store.
func (b *breaker) probeDue() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerClosed:
		return true
	case breakerOpen:
		return !b.now().Before(b.openUntil)
	default:
		return false
	}
}
