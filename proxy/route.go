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
	if d == nil || !rc.Enabled || len(topo.list()) == 1 || d.Target != routing.TargetReplica || s.cache.fillPrimary ||
		s.routeOverride == "primary" || d.Hints.Route == "primary" {
		return writer()
	}
	s.mu.Lock()
	pinned := s.pinned != routing.PinNone
	last := s.rywSinceLocked()
	s.mu.Unlock()
	if pinned {
		return writer()
	}
	load := func(n *node) int {
		active, _, _, _ := s.poolOn(n).stats()
		return active
	}
	n := topo.reader(last, load)
	if n == nil && !last.IsZero() && rc.RYWWait > 0 {
		n = topo.waitReader(last, rc.RYWWait, load)
	}
	if n == nil {
		return writer()
	}
	s.srv.m.routed("replica", d.Reason)
	return s.poolOn(n), n
}

// rywSinceLocked returns when the last write visible to this client's
// reads committed (zero: none, or read_your_writes off). mu held.
func (s *session) rywSinceLocked() time.Time {
	last := s.lastWrite
	switch s.srv.cfgNow().Routing.ReadYourWrites {
	case "off":
		last = time.Time{}
	case "user":
		if u := s.srv.topo.lastWrite(s.database, s.user); u.After(last) {
			last = u
		}
	}
	return last
}

// noteAttachedLocked runs in lockAttached, with a server attached and mu
// held, before the message of decision d (nil: no statement) is sent.
func (s *session) noteAttachedLocked(d *routing.Decision) {
	if d != nil && d.Target == routing.TargetPrimary && changesCatalog(d) {
		s.catalogDDL = true
	}
	s.noteRetryLocked(d)
}

// poolOn returns this client's pool on node n.
func (s *session) poolOn(n *node) *pool {
	if n.addr == s.pool.key.addr {
		return s.pool
	}
	password, ok := s.srv.cfgNow().UserPassword(s.user)
	if !ok { // from auth.query, or removed by a reload: its sessions carry on
		password = s.pool.password()
	}
	p := s.srv.poolFor(s.database, s.user, password, n.addr)
	if !ok {
		p.adoptPassword(password)
	}
	return p
}

// noteReadyLocked runs at each ReadyForQuery the client sees: a transaction
// that wrote and has now ended starts the read-your-writes window.
func (s *session) noteReadyLocked(status byte) {
	if status == 'I' && s.catalogDDL {
		s.catalogDDL = false
		s.srv.topo.requestCatalog()
	}
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
	s.pushLocked(op{kind: opSynth, msg: readyMsg(st)})
	s.cycle++
	return s.flushClientLocked()
}

// rywPoll is how often a read waiting for a replica to catch up
// (routing.ryw_wait) asks the monitors for fresh samples.
const rywPoll = 10 * time.Millisecond

// waitReader waits up to wait for a replica to replay what the primary had
// when lastWrite committed, sampling the nodes as it goes, and returns it;
// nil when none did in time (or none is healthy).
func (t *topology) waitReader(lastWrite time.Time, wait time.Duration, load func(*node) int) *node {
	deadline := time.Now().Add(wait)
	for {
		healthy := false
		for _, n := range t.list() {
			if n.state.Load().healthy && n != t.writer() {
				healthy = true
			}
			select {
			case n.kick <- struct{}{}:
			default:
			}
		}
		left := time.Until(deadline)
		if !healthy || left <= 0 {
			return nil
		}
		time.Sleep(min(rywPoll, left))
		if n := t.reader(lastWrite, load); n != nil {
			return n
		}
	}
}
