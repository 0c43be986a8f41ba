package proxy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// fullPool returns a pool with no room for a connection (pool.size 0), so
// that every acquire waits, and the given acquire timeout.
func fullPool(t *testing.T, timeout time.Duration) *pool {
	cfg := config.Default()
	cfg.Pool.Size = 0
	cfg.Pool.AcquireTimeout = timeout
	m := &metrics{acquireTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "t"})}
	p := &pool{key: poolKey{database: "db", user: "u"}, log: slog.Default(), m: m, stop: make(chan struct{})}
	p.cfgp.Store(&cfg)
	t.Cleanup(p.close)
	return p
}

func setAcquireTimeout(p *pool, d time.Duration) {
	cfg := *p.cfg()
	cfg.Pool.AcquireTimeout = d
	p.cfgp.Store(&cfg)
}

func waitersQueued(t *testing.T, p *pool, n int) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		p.mu.Lock()
		got := len(p.waiters)
		p.mu.Unlock()
		if got == n {
			return
		}
	}
	t.Fatalf("waiters never reached %d", n)
}

// Waiters share one expiry timer: each still fails with 53300 at its own
// deadline (the timeout in force when it queued, so a reload can put a
// later waiter's deadline first), and a waiter served in time is not
// failed by the timer armed for it.
func TestPoolWaiterExpiry(t *testing.T) {
	t.Run("deadlines", func(t *testing.T) {
		p := fullPool(t, 1500*time.Millisecond)
		type result struct {
			name string
			at   time.Duration
			err  error
		}
		var mu sync.Mutex
		var got []result
		start := time.Now()
		var wg sync.WaitGroup
		queue := func(name string) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := p.acquireOnce(context.Background(), time.Now())
				mu.Lock()
				got = append(got, result{name, time.Since(start), err})
				mu.Unlock()
			}()
		}
		queue("a") // 1.5 s
		waitersQueued(t, p, 1)
		setAcquireTimeout(p, 100*time.Millisecond)
		queue("b") // 100 ms: due before a, even on a loaded machine
		waitersQueued(t, p, 2)
		setAcquireTimeout(p, 1800*time.Millisecond)
		queue("c") // 1.8 s
		waitersQueued(t, p, 3)
		wg.Wait()
		if len(got) != 3 {
			t.Fatalf("got %d results", len(got))
		}
		for i, want := range []struct {
			name string
			min  time.Duration
		}{{"b", 100 * time.Millisecond}, {"a", 1500 * time.Millisecond}, {"c", 1800 * time.Millisecond}} {
			r := got[i]
			if r.name != want.name {
				t.Errorf("expiry %d: waiter %s, want %s (order %v)", i, r.name, want.name, got)
			}
			if r.at < want.min {
				t.Errorf("waiter %s failed after %v, before its deadline %v", r.name, r.at, want.min)
			}
			if !errors.Is(r.err, pgerr.ErrAcquireTimeout) || pgerr.ToError(r.err).Code != "53300" {
				t.Errorf("waiter %s: %v, want the 53300 acquire timeout", r.name, r.err)
			}
		}
		if n := testutil.ToFloat64(p.m.acquireTimeouts); n != 3 {
			t.Errorf("acquire timeouts counted %v, want 3", n)
		}
		p.mu.Lock()
		armed, left := !p.expiryAt.IsZero(), len(p.waiters)
		p.mu.Unlock()
		if armed || left != 0 {
			t.Errorf("after the last expiry: timer armed %v, %d waiters", armed, left)
		}
	})
	t.Run("served in time", func(t *testing.T) {
		p := fullPool(t, 150*time.Millisecond)
		done := make(chan error, 1)
		var got *backend
		go func() {
			b, err := p.acquireOnce(context.Background(), time.Now())
			got = b
			done <- err
		}()
		waitersQueued(t, p, 1)
		b := &backend{created: time.Now()}
		p.mu.Lock()
		p.active++ // as if lent
		p.mu.Unlock()
		p.release(b)
		if err := <-done; err != nil || got != b {
			t.Fatalf("served waiter: %v, %p (want %p)", err, got, b)
		}
		// The timer armed for it runs (150 ms; polled, as a loaded
		// machine may run it late), disarms and fails nobody.
		armed := true
		for end := time.Now().Add(5 * time.Second); armed && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			p.mu.Lock()
			armed = !p.expiryAt.IsZero()
			p.mu.Unlock()
		}
		if armed {
			t.Error("timer still armed 5 s after a deadline nobody waits for")
		}
		if n := testutil.ToFloat64(p.m.acquireTimeouts); n != 0 {
			t.Errorf("acquire timeouts counted %v, want 0", n)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		p := fullPool(t, time.Minute)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := p.acquireOnce(ctx, time.Now())
			done <- err
		}()
		waitersQueued(t, p, 1)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter: %v", err)
		}
		waitersQueued(t, p, 0)
	})
}

// RECONNECT racing a release: whichever takes the pool's mutex first, no
// connection from before the RECONNECT stays in the idle list (release
// reads the epoch under the mutex; reconnect advances it before it takes
// the mutex to empty the list). The test holds the mutex while both start,
// so that each round lets either go first.
func TestPoolReconnectRacesRelease(t *testing.T) {
	cfg := config.Default()
	cfg.Pool.Size = 10
	p := &pool{key: poolKey{database: "db", user: "u"}, log: slog.Default(), m: &metrics{}, stop: make(chan struct{})}
	p.cfgp.Store(&cfg)
	for i := 0; i < 300; i++ {
		b := &backend{created: time.Now(), epoch: p.epoch.Load()}
		p.mu.Lock()
		p.total++
		p.active++ // lent
		before := p.epoch.Load()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); p.release(b) }()
		go func() { defer wg.Done(); p.reconnect() }()
		for p.epoch.Load() == before { // reconnect waits for the mutex
			time.Sleep(10 * time.Microsecond)
		}
		time.Sleep(200 * time.Microsecond) // and release, most likely
		p.mu.Unlock()
		wg.Wait()
		p.mu.Lock()
		for _, idle := range p.idle {
			if idle.epoch != p.epoch.Load() {
				p.mu.Unlock()
				t.Fatalf("round %d: a connection of epoch %d is idle after RECONNECT to epoch %d", i, idle.epoch, p.epoch.Load())
			}
		}
		if p.total != 0 || p.active != 0 {
			t.Fatalf("round %d: total %d active %d, want 0 0", i, p.total, p.active)
		}
		p.mu.Unlock()
	}
}
