package proxy

import (
	"strings"
	"time"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/routing"
)

// errWriteToReplica answers a /* pgsluice: route=replica */ hint on a
// statement that writes: a write is never sent to a replica.
var errWriteToReplica = pgerr.New(pgerr.ReadOnlySQLTransaction,
	"pgsluice: route=replica hint on a statement that writes; writes always go to the primary")

// choose picks the pool for a transaction that starts with the statement
// d (nil: a message with no statement of its own). Reads go to a replica
// that has replayed the client's last committed write (read-your-writes);
// everything else, and everything when routing is off, goes to the node
// that takes writes.
func (s *session) choose(d *routing.Decision) (*pool, *node) {
	topo := s.srv.topo
	w := topo.writer()
	writer := func() (*pool, *node) {
		if d != nil {
			s.srv.m.routed("primary", d.Reason)
		}
		return s.poolOn(w), w
	}
	rc := s.srv.cfgNow().Routing // routing settings reload live
	if d == nil || !rc.Enabled || len(topo.list()) == 1 || d.Target != routing.TargetReplica ||
		s.routeOverride == "primary" || d.Hints.Route == "primary" {
		return writer()
	}
	s.mu.Lock()
	pinned := s.pinned != routing.PinNone
	last := s.lastWrite
	s.mu.Unlock()
	if pinned {
		return writer()
	}
	switch rc.ReadYourWrites {
	case "off":
		last = time.Time{}
	case "user":
		if u := topo.lastWrite(s.database, s.user); u.After(last) {
			last = u
		}
	}
	n := topo.reader(last, func(n *node) int {
		active, _, _, _ := s.poolOn(n).stats()
		return active
	})
	if n == nil {
		return writer()
	}
	s.srv.m.routed("replica", d.Reason)
	return s.poolOn(n), n
}

// poolOn returns this client's pool on node n.
func (s *session) poolOn(n *node) *pool {
	if n.addr == s.pool.key.addr {
		return s.pool
	}
	password, ok := s.srv.cfgNow().UserPassword(s.user)
	if !ok { // the user was removed by a reload: its sessions carry on
		password = s.pool.password()
	}
	return s.srv.poolFor(s.database, s.user, password, n.addr)
}

// noteReadyLocked runs at each ReadyForQuery the client sees: a transaction
// that wrote and has now ended starts the read-your-writes window.
func (s *session) noteReadyLocked(status byte) {
	if status == 'I' && s.wrote {
		s.wrote = false
		now := time.Now()
		s.lastWrite = now
		if s.srv.cfgNow().Routing.ReadYourWrites == "user" {
			s.srv.topo.noteWrite(s.database, s.user, now)
		}
	}
	s.cond.Broadcast()
}

// setRoute answers SET pgsluice.route = primary | replica | default itself
// (PostgreSQL would reject "primary", a reserved word, and the setting is
// the proxy's).
func (s *session) setRoute(set routing.SessionSet) error {
	v := strings.ToLower(strings.TrimSpace(set.SQL))
	switch {
	case set.Kind != routing.SetValue || strings.HasSuffix(v, "default") || strings.HasSuffix(v, "'auto'") || strings.HasSuffix(v, "auto"):
		s.routeOverride = ""
	case strings.HasSuffix(v, "primary") || strings.HasSuffix(v, "'primary'"):
		s.routeOverride = "primary"
	case strings.HasSuffix(v, "replica") || strings.HasSuffix(v, "'replica'"):
		s.routeOverride = ""
	default:
		return s.localError(pgerr.New(pgerr.InvalidParameterValue, "invalid value for pgsluice.route: want primary, replica or default"), true)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tag := "SET"
	if set.Kind != routing.SetValue {
		tag = "RESET"
	}
	msg := append([]byte{'C', 0, 0, 0, byte(4 + len(tag) + 1)}, tag...)
	msg = append(msg, 0)
	s.pushLocked(op{kind: opSynth, msg: msg})
	st := s.txStatus
	if s.b == nil {
		st = 'I'
	}
	s.pushLocked(op{kind: opSynth, msg: []byte{'Z', 0, 0, 0, 5, st}})
	s.cycle++
	return s.flushClientLocked()
}
