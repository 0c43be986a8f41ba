package proxy

import (
	"slices"
	"strconv"
	"time"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// Per-database admin commands, as in PgBouncer's console:
//
//	PAUSE db      new queries of db wait; returns once none of its server
//	              connections is lent (RESUME db lifts it)
//	RESUME db     lifts PAUSE db or KILL db
//	DISABLE db    new clients of db are refused (55000); connected ones go on
//	ENABLE db     lifts DISABLE db
//	KILL db       closes every client of db at once (57P01), and its server
//	              connections; db stays paused until RESUME db
//	WAIT_CLOSE    returns once no server connection opened before the last
//	[db]          RECONNECT (of db) is left
//
// PAUSE and RESUME without a database (admin.go) act on every database;
// RESUME lifts the per-database pauses too.

// pauseDB pauses database db; with wait it returns once none of db's
// server connections is lent (or the pause was lifted, or the proxy
// drains).
func (s *Server) pauseDB(db string, wait bool) {
	s.gate.mu.Lock()
	if s.gate.dbs == nil {
		s.gate.dbs = map[string]chan struct{}{}
	}
	if _, ok := s.gate.dbs[db]; !ok {
		s.gate.dbs[db] = make(chan struct{})
	}
	s.setFlagLocked()
	s.gate.mu.Unlock()
	if wait {
		s.waitLent(db)
	}
}

// resumeDB lifts a pause of database db.
func (s *Server) resumeDB(db string) error {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	if s.gate.paused {
		return pgerr.New(pgerr.ObjectNotInPrerequisiteState, "pgsluice is paused as a whole: RESUME without a database lifts it")
	}
	ch, ok := s.gate.dbs[db]
	if !ok {
		return pgerr.New(pgerr.ObjectNotInPrerequisiteState, "database %q is not paused", truncate(db, 64))
	}
	close(ch)
	delete(s.gate.dbs, db)
	s.setFlagLocked()
	return nil
}

// setDisabled turns DISABLE db on or off.
func (s *Server) setDisabled(db string, on bool) {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	if on {
		if s.gate.disabled == nil {
			s.gate.disabled = map[string]bool{}
		}
		s.gate.disabled[db] = true
	} else {
		delete(s.gate.disabled, db)
	}
}

// dbState reports whether database db is paused (by itself or with every
// database) and disabled.
func (s *Server) dbState(db string) (paused, disabled bool) {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	_, paused = s.gate.dbs[db]
	return paused || s.gate.paused, s.gate.disabled[db]
}

// disabledErr is what a new client of a disabled database gets, as from
// PostgreSQL for a database that does not allow connections.
func disabledErr(db string) error {
	return pgerr.Fatal(pgerr.ObjectNotInPrerequisiteState,
		"database %q is not currently accepting connections (pgsluice admin DISABLE; ENABLE lifts it)", db)
}

// killGrace is how long KILL leaves a client that is neither waiting for
// its next message, nor holding or queued for a server connection (those
// get 57P01 at once), to notice, before its socket is closed: one in the
// middle of its password exchange, say.
const killGrace = time.Second

// kill closes every client of database db and its server connections,
// and leaves db paused. It returns the number of clients.
func (s *Server) kill(db string) int {
	s.pauseDB(db, false)
	// Every victim is marked before any server connection closes: a
	// closed connection makes room (in its pool, under a connection cap),
	// and a victim queued there must find its mark when it gets the
	// connection (attach).
	var victims []*session
	for _, sess := range s.sessionList() {
		if sess.admin || sess.database != db {
			continue
		}
		victims = append(victims, sess)
		sess.idleKill.Store(idleKillAdmin)
	}
	// Then, so that every server connection a killed session releases
	// from now on is closed, not pooled: idle server connections close now,
	// lent ones on release.
	s.reconnect(db)
	for _, sess := range victims {
		sess.conn.SetReadDeadline(time.Now()) // wakes its wait for the client
		sess.mu.Lock()
		b, running := sess.b, sess.b != nil && sess.ops.len() > 0
		sess.mu.Unlock()
		if b != nil {
			// Its transaction ends now: a running statement is cancelled
			// first (PostgreSQL would otherwise finish it before noticing
			// the closed socket), then the connection is closed, which
			// rolls back. The session tells its client (pumpFailed).
			go func() {
				if running {
					s.cancelVanished(b)
				}
				b.conn.Close()
			}()
		}
	}
	if len(victims) > 0 {
		time.AfterFunc(killGrace, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, sess := range victims {
				if _, alive := s.sessions[sess]; alive {
					sess.conn.Close()
				}
			}
		})
	}
	return len(victims)
}

// staleServers counts the server connections of database db (every
// database: "") opened before their pool's last RECONNECT that are still
// lent (idle ones close at the RECONNECT itself).
func (s *Server) staleServers(db string) int {
	n := 0
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		if b := sess.b; b != nil && (db == "" || b.pool.key.database == db) && b.epoch < b.pool.epoch.Load() {
			n++
		}
		sess.mu.Unlock()
	}
	return n
}

// waitClose waits until staleServers(db) is 0 or the proxy drains.
func (s *Server) waitClose(db string) {
	for s.staleServers(db) > 0 && !s.draining.Load() {
		time.Sleep(20 * time.Millisecond)
	}
}

// showDatabases lists the databases pgsluice knows of: those with pools,
// and those paused or disabled by name.
func showDatabases(s *Server) *resultSet {
	// PgBouncer's column names where the meaning is the same
	// (current_connections: server connections, all users and nodes).
	r := &resultSet{cols: []string{"name", "host", "port", "database", "pool_size", "pool_mode", "current_connections", "clients", "paused", "disabled"}, tag: "SHOW"}
	cfg := s.cfgNow()
	servers := map[string]int{}
	for _, p := range s.poolList() {
		_, _, _, total := p.stats()
		servers[p.key.database] += total
	}
	clients := map[string]int{}
	for _, sess := range s.sessionList() {
		if !sess.admin && sess.database != "" {
			clients[sess.database]++
		}
	}
	names := make([]string, 0, len(servers))
	for db := range servers {
		names = append(names, db)
	}
	s.gate.mu.Lock()
	for db := range s.gate.dbs {
		names = append(names, db)
	}
	for db := range s.gate.disabled {
		names = append(names, db)
	}
	s.gate.mu.Unlock()
	slices.Sort(names)
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	for _, db := range slices.Compact(names) {
		paused, disabled := s.dbState(db)
		r.rows = append(r.rows, []string{db, cfg.Primary.Host, strconv.Itoa(cfg.Primary.Port), db, strconv.Itoa(cfg.Pool.Size),
			cfg.Pool.Mode, strconv.Itoa(servers[db]), strconv.Itoa(clients[db]), b(paused), b(disabled)})
	}
	return r
}

func showVersion(s *Server) *resultSet {
	return &resultSet{cols: []string{"version"}, rows: [][]string{{"pgsluice " + s.version}}, tag: "SHOW"}
}
