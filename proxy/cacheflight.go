package proxy

import (
	"time"

	"github.com/pgsluice/pgsluice/cachelayer"
)

// Single flight for cache fills.
//
// The proxy fills the cache by capturing PostgreSQL's reply while the pump
// forwards it, so cachelayer's Do (which runs a fill function) does not fit:
// the fill is spread over the session goroutine (lookup, send) and the pump
// (capture, store). The same idea is kept here. The first session that
// misses a key leads the key's flight; a session that misses the same key
// while the flight is open waits for it, at most cache.flight_wait, and then
//
//   - looks the key up again when the leader stored its result (outcome
//     shared, a hit; if the entry is already unreachable, e.g. a write
//     invalidated it, fallthrough);
//   - runs the statement itself, outside any flight, when the leader's
//     result was not stored (an error, too large, not a plain result,
//     filled on a replica, the leader's client or server went away: outcome
//     fallthrough) or when the wait ran out (timeout).
//
// A leader always ends its flight: at its CommandComplete (stored or not),
// at the first message that makes the result uncacheable, when its op is
// dropped after an error earlier in its batch (startSkipLocked), when its
// capture is not sent (cacheDropCapture) and when its session ends with the
// op still queued (cacheSessionEnded: client gone mid-result, server lost).
// A flight older than cache.flight_wait no longer takes waiters: the next
// miss leads a new one, so even a leader stuck on a lock cannot hold up
// more than one wait per client.
//
// Sharing keeps the cache's guarantee (cachelayer/doc.go): a waiter is
// answered only by a Get after the leader's Set, and Get checks the
// generations as for any hit.

// flight is one fill in progress. stored is written before done is closed
// and read only after.
type flight struct {
	done    chan struct{}
	started time.Time
	stored  bool
}

// Single-flight outcomes: label values of
// pgsluice_cache_singleflight_total{tier="proxy",outcome}.
const (
	flightLeader      = iota // a miss that leads a fill
	flightShared             // a waiter answered by the leader's stored result
	flightFallthrough        // a waiter whose leader stored nothing: it runs the statement
	flightTimeout            // a waiter that waited cache.flight_wait: it runs the statement
	flightOutcomes
)

var flightOutcomeNames = [flightOutcomes]string{"leader", "shared", "fallthrough", "timeout"}

func (sc *serverCache) flightCount(outcome int) {
	sc.flightOut.WithLabelValues(flightOutcomeNames[outcome]).Inc()
	sc.nFlight[outcome].Add(1)
}

// join returns the open flight of key and false, or a new flight the caller
// leads and true. A flight older than wait takes no more waiters.
func (sc *serverCache) join(key cachelayer.Key, wait time.Duration) (*flight, bool) {
	sc.flightMu.Lock()
	defer sc.flightMu.Unlock()
	if f := sc.flights[key]; f != nil && time.Since(f.started) < wait {
		return f, false
	}
	f := &flight{done: make(chan struct{}), started: time.Now()}
	sc.flights[key] = f
	sc.flightCount(flightLeader)
	return f, true
}

// leave ends a flight; stored tells waiters whether the result is in the
// cache. Called once per flight (cacheCapture.finish).
func (sc *serverCache) leave(key cachelayer.Key, f *flight, stored bool) {
	sc.flightMu.Lock()
	if sc.flights[key] == f {
		delete(sc.flights, key)
	}
	sc.flightMu.Unlock()
	f.stored = stored
	close(f.done)
}

// await waits for f at most wait and reports whether its leader stored a
// result; a timeout is counted here, the other outcomes by the caller.
func (sc *serverCache) await(f *flight, wait time.Duration) (stored, timedOut bool) {
	sc.nWaiting.Add(1)
	sc.flightWaiting.Inc()
	defer func() {
		sc.nWaiting.Add(-1)
		sc.flightWaiting.Dec()
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-f.done:
		return f.stored, false
	case <-timer.C:
		sc.flightCount(flightTimeout)
		return false, true
	}
}

// finish ends the capture's flight, once, telling waiters whether the
// result was stored. Safe on a nil capture and on one without a flight.
func (c *cacheCapture) finish(stored bool) {
	if c != nil && c.flight != nil {
		c.sc.leave(c.key, c.flight, stored)
		c.flight = nil
	}
}

// abandon gives up a capture whose op will get no more server messages.
func (c *cacheCapture) abandon() {
	if c == nil {
		return
	}
	c.bad, c.done, c.buf = true, true, nil
	c.finish(false)
}

// cacheOpDroppedLocked runs for an op removed from the queue without its
// response (skipped after an error earlier in its batch). mu held.
func (s *session) cacheOpDroppedLocked(o *op) {
	if o.cap != nil {
		o.cap.abandon()
	}
}
