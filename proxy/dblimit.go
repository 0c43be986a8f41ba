package proxy

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// connLimit enforces pool.max_db_connections (at most that many server
// connections to one database on one node, across the pools of all its
// users) or pool.max_user_connections (to one node as one user, across its
// databases), PgBouncer's max_db_connections and max_user_connections.
// Every pool belongs to one of each. A pool takes a slot of both before it
// dials, and the slots come back when the connection closes
// (backend.close), whichever of the ~10 ways a connection ends. When no
// slot is free, the dialer closes an idle connection of another pool under
// the same limit to make one (as PgBouncer evicts), and otherwise waits,
// first come first served, at most pool.acquire_timeout. With a setting at
// 0 (the default) slots are still counted, so a reload that sets it applies
// to what is open. Slots are taken database first, then user, so no one
// holds a user slot while waiting for a database slot.
type connLimit struct {
	kind limitKind
	name string // the database or the user
	addr string // the node

	mu      sync.Mutex
	used    int
	waiters []chan struct{}
	pools   []*pool // the pools under this limit, for eviction
	// nwait is len(waiters), read without mu by pool.release: while
	// anyone waits, a released connection that would go idle is closed
	// instead, so that its slot reaches the waiter.
	nwait atomic.Int32
}

type limitKind uint8

const (
	limitDB   limitKind = iota // pool.max_db_connections
	limitUser                  // pool.max_user_connections
)

// limitKey identifies a connLimit.
type limitKey struct {
	kind       limitKind
	name, addr string
}

// max returns the limit's setting in cfg (0: no cap).
func (l *connLimit) max(cfg *config.Config) int {
	if l.kind == limitDB {
		return cfg.Pool.MaxDBConnections
	}
	return cfg.Pool.MaxUserConnections
}

// limitsForLocked returns p's database and user limits and registers p
// with them (s.mu held).
func (s *Server) limitsForLocked(p *pool) [2]*connLimit {
	if s.limits == nil {
		s.limits = map[limitKey]*connLimit{}
	}
	var out [2]*connLimit
	for i, k := range []limitKey{{limitDB, p.key.database, p.key.addr}, {limitUser, p.key.user, p.key.addr}} {
		l := s.limits[k]
		if l == nil {
			l = &connLimit{kind: k.kind, name: k.name, addr: k.addr}
			s.limits[k] = l
		}
		l.mu.Lock()
		l.pools = append(l.pools, p)
		l.mu.Unlock()
		out[i] = l
	}
	return out
}

// take gets a slot for a new server connection of p. With wait false it
// fails at once when none is free (min_idle fills).
func (l *connLimit) take(ctx context.Context, p *pool, wait bool) error {
	cfg := p.cfg()
	max := l.max(cfg)
	l.mu.Lock()
	if max <= 0 || l.used < max {
		l.used++
		l.mu.Unlock()
		return nil
	}
	if !wait {
		l.mu.Unlock()
		return errNoSlot
	}
	ch := make(chan struct{}, 1)
	l.waiters = append(l.waiters, ch)
	l.nwait.Store(int32(len(l.waiters)))
	l.mu.Unlock()
	l.evictIdle(p)

	deadline := time.Now().Add(cfg.Pool.AcquireTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	case <-timer.C:
	}
	l.mu.Lock()
	for i, w := range l.waiters {
		if w == ch {
			l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
			l.nwait.Store(int32(len(l.waiters)))
			l.mu.Unlock()
			p.m.acquireTimeouts.Inc()
			what := fmt.Sprintf("database %q has its pool.max_db_connections (%d) on %s, across all users", l.name, max, l.addr)
			if l.kind == limitUser {
				what = fmt.Sprintf("user %q has its pool.max_user_connections (%d) on %s, across all databases", l.name, max, l.addr)
			}
			return pgerr.Wrap(pgerr.ErrAcquireTimeout, pgerr.TooManyConnections,
				"pgsluice: no server connection became free within pool.acquire_timeout (%s): %s", cfg.Pool.AcquireTimeout, what)
		}
	}
	l.mu.Unlock()
	<-ch // handed a slot while giving up: take it
	return nil
}

// give returns a slot: to the oldest waiter, unless a reload lowered the
// limit below what is open.
func (l *connLimit) give(max int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiters) > 0 && (max <= 0 || l.used <= max) {
		w := l.waiters[0]
		l.waiters = l.waiters[1:]
		l.nwait.Store(int32(len(l.waiters)))
		w <- struct{}{}
		return
	}
	l.used--
}

// evictIdle closes the least recently used idle connection of another
// pool under this limit, if there is one; its slots then go to the oldest
// waiters. Connections that go idle later while anyone waits
// are closed by pool.release instead.
func (l *connLimit) evictIdle(p *pool) {
	l.mu.Lock()
	pools := append([]*pool(nil), l.pools...)
	l.mu.Unlock()
	for _, q := range pools {
		if q == p {
			continue
		}
		if b := q.takeOldestIdle(); b != nil {
			q.log.Debug("closing an idle server connection for another pool under the same limit",
				"database", q.key.database, "user", q.key.user, "for_database", p.key.database, "for_user", p.key.user)
			b.close()
			return
		}
	}
}

// errNoSlot: a min_idle fill found the database or user at its limit.
var errNoSlot = pgerr.Wrap(pgerr.ErrAcquireTimeout, pgerr.TooManyConnections, "pool.max_db_connections or max_user_connections reached")

// takeSlots takes a slot of each of p's limits (database first), giving
// back what it took if one fails.
func (p *pool) takeSlots(ctx context.Context, wait bool) error {
	for i, l := range p.lims {
		if err := l.take(ctx, p, wait); err != nil {
			for _, t := range p.lims[:i] {
				t.give(t.max(p.cfg()))
			}
			return err
		}
	}
	return nil
}

// giveSlots gives back a slot of each of p's limits.
func (p *pool) giveSlots() {
	for _, l := range p.lims {
		l.give(l.max(p.cfg()))
	}
}

// limitWaiting reports whether anyone waits for a slot of p's limits
// (pool.release, once per transaction: two atomic loads).
func (p *pool) limitWaiting() bool {
	return p.lims[0] != nil && (p.lims[0].nwait.Load() > 0 || p.lims[1].nwait.Load() > 0)
}

// connSlots is a backend's claim on its pool's limits, released once by
// close.
type connSlots struct {
	held atomic.Bool
}

func (d *connSlots) release(p *pool) {
	if d.held.CompareAndSwap(true, false) {
		p.giveSlots()
	}
}
