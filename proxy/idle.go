package proxy

import (
	"time"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// Idle clients (pool.client_idle_timeout, pool.idle_transaction_timeout).
//
// A client that has sent nothing for too long is closed, as PgBouncer's
// client_idle_timeout and idle_transaction_timeout do. The second matters
// most: in transaction pooling a client idle inside a transaction (a
// Lambda frozen mid-invocation, a worker stuck elsewhere) holds a server
// connection that the pool cannot lend; closing it rolls the transaction
// back and frees the connection. The first sheds connections of clients
// that went away without closing them (frozen or killed Lambdas), which
// count against pool.max_client_conn.
//
// Nothing is added to the hot path but an atomic add per client message
// and two atomic stores per wait for the client: one janitor goroutine
// per server (idleJanitor) looks at every session a few times per
// timeout. A session is idle when its goroutine waits for the client's
// next message (not for a server connection, not for a replica), nothing
// is in flight (no answer pending, no write under way) and its message
// counter has not moved since the janitor last saw it move; a statement
// that runs for an hour is not idle, and neither is its client. Nor is a
// client that has sent LISTEN, outside a transaction: it waits for
// notifications, silent by design.
//
// A session idle beyond the timeout that applies (inside a transaction or
// an unsynced extended batch: idle_transaction_timeout; otherwise
// client_idle_timeout) gets its kill flag and a read deadline in the
// past, which wakes its goroutine from its wait for the client; the
// goroutine sends the FATAL (25P03 or 57P05, PostgreSQL's own codes for
// its equivalent timeouts) and ends the session, and cleanup closes a
// server connection left in a transaction. A message that arrives just
// as the janitor decides loses the race, as with PostgreSQL's own
// timeouts: the client gets the FATAL instead of its answer, or right
// after it.
// The precision is the janitor's tick: a quarter of the shorter timeout,
// between 50 ms and 1 s.

// Values of session.idleKill.
const (
	idleKillNone uint32 = iota
	idleKillClient
	idleKillTransaction
	idleKillAdmin // admin KILL (admin_db.go)
)

// idleKillErr is the FATAL a client closed by the janitor receives.
func idleKillErr(kind uint32) error {
	if kind == idleKillAdmin {
		return pgerr.Fatal(pgerr.AdminShutdown, "terminating connection due to administrator command (pgsluice KILL)")
	}
	if kind == idleKillTransaction {
		return pgerr.Fatal(pgerr.IdleInTransactionSessionTimeout,
			"terminating connection due to idle-in-transaction timeout (pgsluice pool.idle_transaction_timeout)")
	}
	return pgerr.Fatal(pgerr.IdleSessionTimeout,
		"terminating connection due to idle-session timeout (pgsluice pool.client_idle_timeout)")
}

// idleTick is how often the janitor looks, for the given settings (0:
// both timeouts off).
func idleTick(pc config.PoolConfig) time.Duration {
	shortest := time.Duration(0)
	for _, d := range []time.Duration{pc.ClientIdleTimeout, pc.IdleTransactionTimeout} {
		if d > 0 && (shortest == 0 || d < shortest) {
			shortest = d
		}
	}
	if shortest == 0 {
		return 0
	}
	return min(max(shortest/4, 50*time.Millisecond), time.Second)
}

// idleJanitor closes idle clients until the server drains. The settings
// reload live: it reads them on every tick.
func (s *Server) idleJanitor() {
	for !s.draining.Load() {
		pc := s.cfgNow().Pool
		tick := idleTick(pc)
		if tick == 0 {
			time.Sleep(time.Second)
			continue
		}
		time.Sleep(tick)
		s.closeIdleClients(pc, time.Now())
	}
}

// closeIdleClients runs one janitor round at time now.
func (s *Server) closeIdleClients(pc config.PoolConfig, now time.Time) {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		// The admin console's sessions never set waiting (adminLoop):
		// never idle.
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		if kind := sess.idleCheck(pc, now); kind != idleKillNone {
			s.log.Info("closing an idle client", "user", sess.user, "database", sess.database,
				"idle", time.Duration(now.UnixNano()-sess.idleSince).Round(time.Millisecond).String(), "in_transaction", kind == idleKillTransaction)
			in := "session"
			if kind == idleKillTransaction {
				in = "transaction"
			}
			s.m.idleClosed.WithLabelValues(in).Inc()
			sess.idleKill.Store(kind)
			sess.conn.SetReadDeadline(time.Now()) // wakes its wait for the client
		}
	}
}

// idleCheck updates the session's idle mark (janitor only) and returns
// the kill it deserves at time now, if any.
func (s *session) idleCheck(pc config.PoolConfig, now time.Time) uint32 {
	if s.idleKill.Load() != idleKillNone {
		return idleKillNone // already told
	}
	s.mu.Lock()
	busy := !s.waiting.Load() || s.ops.len() > 0 || s.inflight > 0 || s.state != stateIdle && s.state != stateBusy
	inTx := s.b != nil && (s.txStatus == 'T' || s.txStatus == 'E' || s.unsynced)
	listening := s.listening
	s.mu.Unlock()
	if n := s.messages.Load(); busy || n != s.idleSeen || s.idleSince == 0 {
		s.idleSeen, s.idleSince = n, now.UnixNano()
		return idleKillNone
	}
	limit, kind := pc.ClientIdleTimeout, idleKillClient
	switch {
	case inTx:
		limit, kind = pc.IdleTransactionTimeout, idleKillTransaction
	case listening:
		return idleKillNone // silent by design: it waits for NOTIFY
	}
	if limit > 0 && time.Duration(now.UnixNano()-s.idleSince) >= limit {
		return kind
	}
	return idleKillNone
}
