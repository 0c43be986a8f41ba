package cachelayer

import (
	"context"
	"sync"
	"time"
)

// flightBackend is what single flight needs from a tier.
type flightBackend interface {
	Get(ctx context.Context, db string, key Key, tables []string) ([]byte, bool)
	Generations(ctx context.Context, db string, tables []string) (Gens, bool)
	Set(ctx context.Context, key Key, frames []byte, gens Gens, ttl time.Duration) bool
}

// flightGroup deduplicates concurrent fills of one key. The zero value is
// ready to use; it is safe for concurrent use.
type flightGroup struct {
	mu    sync.Mutex
	calls map[Key]*flightCall
}

// flightCall is one in-progress fill. frames and shared are written by the
// leader before done is closed and only read by waiters after.
type flightCall struct {
	done   chan struct{}
	frames []byte
	shared bool
}

// do implements Cache.Do.
//
// The leader snapshots generations, runs fill, unregisters the call and only
// then stores the result; the store re-checks the generations. Every waiter
// joined before the unregistration, hence before that check, so a result the
// store accepted was not made stale by any invalidation acknowledged before a
// waiter started, and waiters may share it. When the store refuses (stale
// generations, Redis unreachable, not cacheable, fill error, too large),
// waiters run fill themselves, as they do after waiting longer than wait.
func (g *flightGroup) do(ctx context.Context, b flightBackend, m *metrics, wait time.Duration,
	db string, key Key, tables []string, ttl time.Duration,
	fill func() ([]byte, bool, error)) ([]byte, bool, error) {
	if f, ok := b.Get(ctx, db, key, tables); ok {
		return f, true, nil
	}
	g.mu.Lock()
	if c := g.calls[key]; c != nil {
		g.mu.Unlock()
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case <-c.done:
			if c.shared {
				m.flight.WithLabelValues("shared").Inc()
				return c.frames, true, nil
			}
			m.flight.WithLabelValues("fallthrough").Inc()
		case <-timer.C:
			m.flight.WithLabelValues("timeout").Inc()
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		return fillAndStore(ctx, b, db, key, tables, ttl, fill)
	}
	c := &flightCall{done: make(chan struct{})}
	if g.calls == nil {
		g.calls = make(map[Key]*flightCall)
	}
	g.calls[key] = c
	g.mu.Unlock()
	m.flight.WithLabelValues("leader").Inc()

	unregister := func() {
		g.mu.Lock()
		if g.calls[key] == c {
			delete(g.calls, key)
		}
		g.mu.Unlock()
	}
	defer close(c.done)
	defer unregister() // on panic in fill
	gens, gok := b.Generations(ctx, db, tables)
	frames, cacheable, err := fill()
	unregister()
	if err == nil && cacheable && gok && b.Set(ctx, key, frames, gens, ttl) {
		c.frames, c.shared = frames, true
	}
	return frames, false, err
}

// fillAndStore runs fill outside single flight, still caching its result.
func fillAndStore(ctx context.Context, b flightBackend, db string, key Key, tables []string, ttl time.Duration,
	fill func() ([]byte, bool, error)) ([]byte, bool, error) {
	gens, gok := b.Generations(ctx, db, tables)
	frames, cacheable, err := fill()
	if err == nil && cacheable && gok {
		b.Set(ctx, key, frames, gens, ttl)
	}
	return frames, false, err
}
