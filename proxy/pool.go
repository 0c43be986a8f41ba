package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// poolKey identifies a pool: one per (database, user, node).
type poolKey struct {
	database, user, addr string
}

// pool lends backend connections to one (database, user, node). Waiters are
// served first come, first served: a released connection goes straight to
// the oldest waiter. Safe for concurrent use.
type pool struct {
	key poolKey
	// cfgp and passwordp are the pool's settings and its login towards the
	// servers, swapped whole by Server.Reload (see reload.go).
	cfgp      atomic.Pointer[config.Config]
	passwordp atomic.Pointer[string]
	// epoch counts RECONNECTs (reconnect): connections dialled before the
	// last one are closed instead of reused.
	epoch atomic.Uint64
	// lims count this pool's connections against pool.max_db_connections
	// and pool.max_user_connections (dblimit.go); nil in unit tests.
	lims [2]*connLimit
	log  *slog.Logger
	m    *metrics

	mu      sync.Mutex
	idle    []*backend // LIFO: the most recently used is reused first
	total   int        // open + opening connections
	active  int        // lent to sessions
	waiters []*waiter  // FIFO
	closed  bool
	// expiry fails waiters whose pool.acquire_timeout has passed. One
	// timer per pool, armed for the earliest deadline while anyone waits
	// (expireWaiters), so that a wait costs no timer of its own.
	expiry   *time.Timer
	expiryAt time.Time // when the armed timer fires; zero while disarmed

	// params caches, by settings signature, the ParameterStatus values a
	// server connection reports once brought to those settings, so that a
	// login whose settings were seen before needs no server connection.
	// Guarded by mu; bounded (cleared when it grows past 1000 entries).
	params map[string]map[string]string
	// learning holds, per settings signature, a channel closed when the
	// login learning that signature's parameters finishes (mu).
	learning map[string]chan struct{}

	stop chan struct{}
}

// waiter is a client waiting for a connection. It receives either a backend
// or, with b == nil, the right to open a new connection itself.
type waiter struct {
	ch       chan grant
	since    time.Time // when the client started waiting (SHOW POOLS maxwait)
	deadline time.Time // since + pool.acquire_timeout at the time it queued
}

// waiterPool recycles waiters and their channels: a waiter goes back only
// once its channel is empty and no one holds it any more.
var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan grant, 1)} }}

type grant struct {
	b   *backend
	err error
}

func newPool(key poolKey, password string, cfg *config.Config, log *slog.Logger, m *metrics, lims func(*pool) [2]*connLimit) *pool {
	p := &pool{key: key, log: log, m: m, stop: make(chan struct{})}
	p.lims = lims(p)
	p.cfgp.Store(cfg)
	p.passwordp.Store(&password)
	go p.janitor()
	return p
}

// peekAfter is how long a server connection must have sat idle in the pool
// before acquire spends a syscall (a non-blocking MSG_PEEK, backend.quiet)
// to make sure the server has not ended the session meanwhile. Under load
// connections go from one client to the next within microseconds and the
// peek was one extra syscall per transaction; a server that ends a session
// within peekAfter of its release (pg_terminate_backend, shutdown) is
// noticed by the client that gets it next, as a lost server connection
// (08006), the same race PgBouncer has between its event loop and a
// client's query.
const peekAfter = 5 * time.Millisecond

// cfg returns the pool's current settings.
func (p *pool) cfg() *config.Config { return p.cfgp.Load() }

// password returns the pool's current login password.
func (p *pool) password() string { return *p.passwordp.Load() }

// adoptPassword makes the pool's next server logins use password, a
// secret auth.query returned for a user auth.users does not list (its
// pools are made with the secret of the login that made them).
func (p *pool) adoptPassword(password string) {
	if p.password() != password {
		p.passwordp.Store(&password)
	}
}

// acquire lends a backend, waiting at most pool.acquire_timeout. The error
// names the setting when the wait times out.
func (p *pool) acquire(ctx context.Context) (*backend, error) {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		b, err := p.acquireOnce(ctx, start)
		if err != nil {
			return nil, err
		}
		idleFor := time.Since(b.lastUsed)
		// A server that ended the session while it sat idle has left a
		// FATAL message or EOF on the socket: never lend it. Checked only
		// when the connection sat idle for peekAfter or longer (see there).
		if idleFor >= peekAfter && !b.quiet() {
			p.log.Debug("discarding server connection closed by the server", "pool", p.key.addr)
			p.discard(b)
			continue
		}
		// A connection idle for long may have died silently (network):
		// prove it alive with a round trip before use.
		if cc := p.cfg(); cc.Pool.CheckAfter > 0 && idleFor > cc.Pool.CheckAfter {
			if err := b.check(); err != nil {
				p.log.Debug("discarding dead server connection", "pool", p.key.addr, "err", err)
				p.discard(b)
				continue
			}
		}
		p.m.acquireWait.Observe(time.Since(start).Seconds())
		return b, nil
	}
}

func (p *pool) acquireOnce(ctx context.Context, start time.Time) (*backend, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, pgerr.New(pgerr.AdminShutdown, "pgsluice is shutting down")
	}
	if n := len(p.idle); n > 0 {
		b := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.active++
		p.mu.Unlock()
		return b, nil
	}
	if p.total < p.cfg().Pool.Size {
		p.total++
		p.active++
		p.mu.Unlock()
		return p.open(ctx)
	}
	w := waiterPool.Get().(*waiter)
	w.since, w.deadline = start, start.Add(p.cfg().Pool.AcquireTimeout)
	p.waiters = append(p.waiters, w)
	if p.expiryAt.IsZero() || w.deadline.Before(p.expiryAt) {
		// Deadlines grow in queue order unless a reload shortened
		// pool.acquire_timeout.
		p.armExpiryLocked(w.deadline)
	}
	p.mu.Unlock()

	var g grant
	if done := ctx.Done(); done == nil {
		g = <-w.ch
	} else {
		select {
		case g = <-w.ch:
		case <-done:
			p.mu.Lock()
			removed := p.removeWaiterLocked(w)
			p.mu.Unlock()
			if removed {
				waiterPool.Put(w)
				return nil, ctx.Err()
			}
			// Granted concurrently with the cancellation: take it.
			g = <-w.ch
		}
	}
	waiterPool.Put(w)
	return p.takeGrant(ctx, g)
}

// removeWaiterLocked takes w out of the queue; false when it was no longer
// there (a grant is on its way).
func (p *pool) removeWaiterLocked(w *waiter) bool {
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// armExpiryLocked arms the pool's expiry timer for at (mu held).
func (p *pool) armExpiryLocked(at time.Time) {
	d := time.Until(at)
	if p.expiry == nil {
		p.expiry = time.AfterFunc(d, p.expireWaiters)
	} else {
		p.expiry.Reset(d)
	}
	p.expiryAt = at
}

// expireWaiters runs when the earliest waiter's deadline is due: it fails
// every waiter past its deadline with 53300 and re-arms for the next one.
// A waiter served before its deadline leaves the timer armed for a time
// nobody waits for; the early run then just re-arms.
func (p *pool) expireWaiters() {
	now := time.Now()
	p.mu.Lock()
	p.expiryAt = time.Time{}
	var next time.Time
	kept := p.waiters[:0]
	var expired []*waiter
	for _, w := range p.waiters {
		if !w.deadline.After(now) {
			expired = append(expired, w)
			continue
		}
		if next.IsZero() || w.deadline.Before(next) {
			next = w.deadline
		}
		kept = append(kept, w)
	}
	clear(p.waiters[len(kept):])
	p.waiters = kept
	if !next.IsZero() && !p.closed {
		p.armExpiryLocked(next)
	}
	p.mu.Unlock()
	if len(expired) == 0 {
		return
	}
	cfg := p.cfg()
	err := pgerr.Wrap(pgerr.ErrAcquireTimeout, pgerr.TooManyConnections,
		"pgsluice: no server connection became free within pool.acquire_timeout (%s); pool.size is %d for database %q user %q",
		cfg.Pool.AcquireTimeout, cfg.Pool.Size, p.key.database, p.key.user)
	for _, w := range expired {
		p.m.acquireTimeouts.Inc()
		w.ch <- grant{err: err}
	}
}

func (p *pool) takeGrant(ctx context.Context, g grant) (*backend, error) {
	if g.err != nil {
		return nil, g.err
	}
	if g.b != nil {
		return g.b, nil
	}
	return p.open(ctx)
}

// open dials a new connection for a slot already counted in total/active.
func (p *pool) open(ctx context.Context) (*backend, error) {
	b, err := dialBackend(ctx, p, true)
	if err != nil {
		err = connectFailed(p, err)
		p.mu.Lock()
		p.total--
		p.active--
		p.handOffSlotLocked()
		p.mu.Unlock()
		p.m.connectErrors.Inc()
		return nil, err
	}
	p.m.serverConnects.Inc()
	return b, nil
}

// release returns a lent backend. Broken, too old (max_lifetime or from
// before a RECONNECT) or closed-pool backends are closed instead and their
// slot handed on.
func (p *pool) release(b *backend) {
	b.lastUsed = time.Now()
	cfg := p.cfg()
	tooOld := cfg.Pool.MaxLifetime > 0 && time.Since(b.created) > cfg.Pool.MaxLifetime
	p.mu.Lock()
	// The epoch is read under mu: reconnect advances it before it takes
	// mu to empty the idle list, so a connection checked against the old
	// epoch here is in that list by then.
	tooOld = tooOld || b.epoch != p.epoch.Load()
	p.active--
	// p.total > pool.size: the pool was shrunk by a reload.
	if b.broken || tooOld || p.closed || p.total > cfg.Pool.Size {
		p.total--
		p.handOffSlotLocked()
		p.mu.Unlock()
		b.close()
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.active++
		p.mu.Unlock()
		w.ch <- grant{b: b}
		return
	}
	if p.limitWaiting() {
		// Another pool waits for a slot of this database or user
		// (pool.max_db_connections, max_user_connections): this
		// connection's go to it.
		p.total--
		p.mu.Unlock()
		b.close()
		return
	}
	p.idle = append(p.idle, b)
	p.mu.Unlock()
}

// reconnect makes the pool open new server connections (the admin
// console's RECONNECT, as PgBouncer's): idle ones are closed now, lent
// ones when they come back; a dial under way completes but its connection
// is not reused either. It returns how many it closed now.
func (p *pool) reconnect() int {
	p.epoch.Add(1)
	p.mu.Lock()
	doomed := p.idle
	p.idle = nil
	p.total -= len(doomed)
	for range doomed {
		p.handOffSlotLocked()
	}
	p.mu.Unlock()
	for _, b := range doomed {
		b.close()
	}
	return len(doomed)
}

// discard closes a lent backend that must not be reused.
func (p *pool) discard(b *backend) {
	b.broken = true
	p.release(b)
}

// handOffSlotLocked gives a freed slot to the oldest waiter, who will dial,
// unless the pool is at pool.size (a reload shrank it).
func (p *pool) handOffSlotLocked() {
	if len(p.waiters) == 0 || p.closed || p.total >= p.cfg().Pool.Size {
		return
	}
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	p.total++
	p.active++
	w.ch <- grant{}
}

// janitor closes connections idle longer than pool.idle_timeout or older
// than pool.max_lifetime and keeps pool.min_idle connections open.
func (p *pool) janitor() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		cfg := p.cfg()
		var doomed []*backend
		p.mu.Lock()
		keep := p.idle[:0]
		for i, b := range p.idle {
			idleTooLong := cfg.Pool.IdleTimeout > 0 && now.Sub(b.lastUsed) > cfg.Pool.IdleTimeout && len(p.idle)-i > cfg.Pool.MinIdle
			tooOld := cfg.Pool.MaxLifetime > 0 && now.Sub(b.created) > cfg.Pool.MaxLifetime
			if idleTooLong || tooOld {
				doomed = append(doomed, b)
				p.total--
				continue
			}
			keep = append(keep, b)
		}
		p.idle = keep
		need := 0
		if cfg.Pool.MinIdle > len(p.idle) && !p.closed {
			need = max(0, min(cfg.Pool.MinIdle-len(p.idle), cfg.Pool.Size-p.total))
			p.total += need
		}
		p.mu.Unlock()
		for _, b := range doomed {
			b.close()
		}
		for i := 0; i < need; i++ {
			b, err := dialBackend(context.Background(), p, false)
			p.mu.Lock()
			if err != nil {
				p.total--
				p.mu.Unlock()
				if err != errNoSlot {
					p.log.Warn("cannot open min_idle server connection", "addr", p.key.addr, "err", err)
				}
				continue
			}
			p.active++
			p.mu.Unlock()
			p.release(b)
		}
	}
}

// takeOldestIdle removes the least recently used idle connection from the
// pool for closing, or returns nil (pool.max_db_connections eviction).
func (p *pool) takeOldestIdle() *backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return nil
	}
	b := p.idle[0]
	p.idle = slices.Delete(p.idle, 0, 1)
	p.total--
	return b
}

// stats returns a snapshot for metrics and the admin console.
func (p *pool) stats() (active, idle, waiting, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.active, len(p.idle), len(p.waiters), p.total
}

// close closes idle connections, fails waiters and stops the janitor.
// Lent connections are closed as they come back.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.total -= len(idle)
	waiters := p.waiters
	p.waiters = nil
	if p.expiry != nil {
		p.expiry.Stop()
		p.expiryAt = time.Time{}
	}
	p.mu.Unlock()
	close(p.stop)
	for _, b := range idle {
		b.close()
	}
	for _, w := range waiters {
		w.ch <- grant{err: pgerr.New(pgerr.AdminShutdown, "pgsluice is shutting down")}
	}
}

var errPoolClosed = errors.New("pool closed")

func (k poolKey) String() string { return fmt.Sprintf("%s/%s@%s", k.database, k.user, k.addr) }

// cachedParams returns the parameters cached for a settings signature.
// The map is shared and must not be modified.
func (p *pool) cachedParams(sig string) (map[string]string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.params[sig]
	return m, ok
}

// learnParams returns the cached parameters for sig, or makes the caller
// the one login that learns them (learn true: call the returned done when
// finished, whatever the outcome). Logins with the same signature wait for
// that one until their deadline instead of each queueing for a server
// connection; different signatures do not wait for each other.
func (p *pool) learnParams(sig string, deadline time.Time) (params map[string]string, learn bool, done func(), err error) {
	for {
		p.mu.Lock()
		if m, ok := p.params[sig]; ok {
			p.mu.Unlock()
			return m, false, nil, nil
		}
		ch, busy := p.learning[sig]
		if !busy {
			if p.learning == nil {
				p.learning = map[string]chan struct{}{}
			}
			ch = make(chan struct{})
			p.learning[sig] = ch
			p.mu.Unlock()
			return nil, true, func() {
				p.mu.Lock()
				delete(p.learning, sig)
				p.mu.Unlock()
				close(ch)
			}, nil
		}
		p.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
			t.Stop()
		case <-t.C:
			return nil, false, nil, pgerr.ErrAcquireTimeout
		}
	}
}

// cacheParams records the parameters seen for a settings signature.
func (p *pool) cacheParams(sig string, params map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.params == nil || len(p.params) > 1000 {
		p.params = map[string]map[string]string{}
	}
	p.params[sig] = params
}
