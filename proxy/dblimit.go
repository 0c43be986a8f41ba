package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// dbLimit enforces pool.max_db_connections: at most that many server
// connections to one database on one node, across the pools of all its
// users (PgBouncer's max_db_connections). A pool takes a slot before it
// dials and the slot comes back when the connection closes
// (backend.close), whichever of the ~10 ways a connection ends. When no
// slot is free, the dialer closes an idle connection of another user's
// pool of the same database to make one (as PgBouncer evicts), and
// otherwise waits, first come first served, at most
// pool.acquire_timeout. With the setting at 0 (the default) slots are
// still counted, so a reload that sets it applies to what is open.
type dbLimit struct {
	mu      sync.Mutex
	used    int
	waiters []chan struct{}
	pools   []*pool // the pools of this database and node, for eviction
	// nwait is len(waiters), read without mu by pool.release: while
	// anyone waits, a released connection that would go idle is closed
	// instead, so that its slot reaches the waiter.
	nwait atomic.Int32
}

// dbLimitKey identifies a dbLimit: one per (database, node).
type dbLimitKey struct{ database, addr string }

// limitForLocked returns the dbLimit of database on addr and registers p with
// it (s.mu held).
func (s *Server) limitForLocked(p *pool) *dbLimit {
	k := dbLimitKey{p.key.database, p.key.addr}
	if s.limits == nil {
		s.limits = map[dbLimitKey]*dbLimit{}
	}
	l := s.limits[k]
	if l == nil {
		l = &dbLimit{}
		s.limits[k] = l
	}
	l.mu.Lock()
	l.pools = append(l.pools, p)
	l.mu.Unlock()
	return l
}

// take gets a slot for a new server connection of p. With wait false it
// fails at once when none is free (min_idle fills).
func (l *dbLimit) take(ctx context.Context, p *pool, wait bool) error {
	cfg := p.cfg()
	max := cfg.Pool.MaxDBConnections
	l.mu.Lock()
	if max <= 0 || l.used < max {
		l.used++
		l.mu.Unlock()
		return nil
	}
	if !wait {
		l.mu.Unlock()
		return errNoDBSlot
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
			return pgerr.Wrap(pgerr.ErrAcquireTimeout, pgerr.TooManyConnections,
				"pgsluice: no server connection became free within pool.acquire_timeout (%s): database %q has its pool.max_db_connections (%d) on %s, across all users",
				cfg.Pool.AcquireTimeout, p.key.database, max, p.key.addr)
		}
	}
	l.mu.Unlock()
	<-ch // handed a slot while giving up: take it
	return nil
}

// give returns a slot: to the oldest waiter, unless a reload lowered the
// limit below what is open.
func (l *dbLimit) give(max int) {
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
// pool of this database and node, if there is one; its slot then goes to
// the oldest waiter. Connections that go idle later while anyone waits
// are closed by pool.release instead.
func (l *dbLimit) evictIdle(p *pool) {
	l.mu.Lock()
	pools := append([]*pool(nil), l.pools...)
	l.mu.Unlock()
	for _, q := range pools {
		if q == p {
			continue
		}
		if b := q.takeOldestIdle(); b != nil {
			q.log.Debug("closing an idle server connection for another user of the database (pool.max_db_connections)",
				"database", q.key.database, "user", q.key.user, "for", p.key.user)
			b.close()
			return
		}
	}
}

// errNoDBSlot: a min_idle fill found the database at its limit.
var errNoDBSlot = pgerr.Wrap(pgerr.ErrAcquireTimeout, pgerr.TooManyConnections, "pool.max_db_connections reached")

// dbSlot is a backend's claim on its dbLimit, released once by close.
type dbSlot struct {
	lim  *dbLimit
	held atomic.Bool
}

func (d *dbSlot) release(p *pool) {
	if d.lim != nil && d.held.CompareAndSwap(true, false) {
		d.lim.give(p.cfg().Pool.MaxDBConnections)
	}
}
