package proxy

import (
	"bufio"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
)

// The admin console: a client that logs in to the database "pgsluice" as a
// user listed in admin.users (authenticated like any client, with its
// auth.users password) talks to pgsluice itself, not to PostgreSQL, as with
// PgBouncer's "pgbouncer" database. It speaks the simple query protocol
// (what psql uses) and answers SHOW POOLS, CLIENTS, SERVERS, STATS,
// QUERIES, REPLICAS, CACHE, CONFIG, DATABASES, VERSION, HELP (admin_show.go
// builds the rows), and RELOAD, PAUSE, RESUME, RECONNECT, WAIT_CLOSE,
// DISABLE, ENABLE, KILL (admin_db.go for the per-database ones) and
// SHUTDOWN. Other users are refused with 28000.

// adminDatabase is the database name that opens the admin console.
const adminDatabase = "pgsluice"

// adminParams are the ParameterStatus values the console reports.
var adminParams = [][2]string{
	{"application_name", ""},
	{"client_encoding", "UTF8"},
	{"DateStyle", "ISO, MDY"},
	{"integer_datetimes", "on"},
	{"IntervalStyle", "postgres"},
	{"is_superuser", "off"},
	{"server_encoding", "UTF8"},
	{"server_version", "15.0 (pgsluice admin console)"},
	{"standard_conforming_strings", "on"},
	{"TimeZone", "UTC"},
}

// adminLogin finishes the login of an authenticated client that asked for
// the admin database: admin.users only.
func (s *session) adminLogin(authOK []byte) error {
	if !slices.Contains(s.cfg.Admin.Users, s.user) {
		err := pgerr.Fatal(pgerr.InvalidAuthorizationSpecification,
			"pgsluice admin console: user %q is not in admin.users", s.user)
		s.w.Write(authOK)
		s.sendFatal(err)
		return err
	}
	s.admin = true
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clientWriterLocked().Write(authOK)
	for _, p := range adminParams {
		v := p[1]
		if p[0] == "application_name" {
			v = s.appName
		}
		s.w.Write(encode(&pgproto3.ParameterStatus{Name: p[0], Value: v}))
	}
	s.w.Write(encode(&pgproto3.BackendKeyData{ProcessID: 0, SecretKey: []byte{0, 0, 0, 0}}))
	s.w.Write([]byte{'Z', 0, 0, 0, 5, 'I'})
	s.txStatus = 'I'
	s.setStateLocked(stateIdle)
	s.conn.SetDeadline(time.Time{})
	return s.flushClientLocked()
}

// adminLoop serves the console until the client leaves. It keeps its own
// reader (admin sessions are few; buffers.go pools those of clients).
func (s *session) adminLoop() {
	max := int(s.cfg.MaxMessageSize)
	if s.r == nil {
		s.r = bufio.NewReaderSize(s.conn, wire.BufferSize)
	}
	skipping := false
	for {
		typ, n, err := wire.PeekHeader(s.r, max)
		if err != nil {
			s.readFailed(err)
			return
		}
		if typ == 'X' {
			return
		}
		body, err := wire.ReadBody(s.r, n, &s.scratch)
		if err != nil {
			return
		}
		var out []byte
		switch typ {
		case 'Q':
			skipping = false
			if len(body) == 0 || body[len(body)-1] != 0 {
				s.sendFatal(pgerr.Fatal(pgerr.ProtocolViolation, "invalid Query message"))
				return
			}
			out = s.adminQuery(string(body[:len(body)-1]))
			out = append(out, 'Z', 0, 0, 0, 5, 'I')
		case 'S':
			skipping = false
			out = []byte{'Z', 0, 0, 0, 5, 'I'}
		case 'P', 'B', 'D', 'E', 'C', 'H', 'F':
			if !skipping {
				skipping = true
				out = pgerr.AppendResponse(nil, pgerr.New(pgerr.FeatureNotSupported,
					"the pgsluice admin console supports the simple query protocol only"))
				s.srv.m.errors.WithLabelValues(pgerr.Class(pgerr.FeatureNotSupported)).Inc()
			}
		case 'd', 'c', 'f':
			// Not in COPY: ignored, as PostgreSQL does.
		default:
			s.sendFatal(pgerr.Fatal(pgerr.ProtocolViolation, "invalid frontend message type %d", typ))
			return
		}
		if len(out) == 0 {
			continue
		}
		s.mu.Lock()
		s.clientWriterLocked().Write(out)
		err = s.flushClientLocked()
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// adminQuery runs the ';'-separated commands of one Query message and
// returns the encoded responses (without ReadyForQuery). The first failing
// command ends the string, as in PostgreSQL.
func (s *session) adminQuery(sql string) []byte {
	var out []byte
	ran := false
	for _, stmt := range strings.Split(sql, ";") {
		words := strings.Fields(stripSQLComments(stmt))
		if len(words) == 0 {
			continue
		}
		ran = true
		res, err := s.adminCommand(words)
		if err != nil {
			s.srv.m.errors.WithLabelValues(pgerr.Class(pgerr.ToError(err).Code)).Inc()
			return pgerr.AppendResponse(out, err)
		}
		out = res.append(out)
	}
	if !ran {
		out = append(out, 'I', 0, 0, 0, 4) // EmptyQueryResponse
	}
	return out
}

// stripSQLComments removes -- and /* */ comments (psql keeps them).
func stripSQLComments(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], "--"):
			j := strings.IndexByte(s[i:], '\n')
			if j < 0 {
				return b.String()
			}
			i += j
			b.WriteByte(' ')
		case strings.HasPrefix(s[i:], "/*"):
			j := strings.Index(s[i+2:], "*/")
			if j < 0 {
				return b.String()
			}
			i += j + 3
			b.WriteByte(' ')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// adminCommand runs one command.
func (s *session) adminCommand(words []string) (*resultSet, error) {
	verb := strings.ToUpper(words[0])
	switch verb {
	case "SHOW":
		if len(words) != 2 {
			return nil, pgerr.New(pgerr.SyntaxError, "syntax error: want SHOW <item>; SHOW HELP lists them")
		}
		item := strings.ToUpper(words[1])
		show, ok := adminShows[item]
		if !ok {
			return nil, pgerr.New(pgerr.UndefinedObject, "unrecognized SHOW item %q (SHOW HELP lists them)", truncate(words[1], 64))
		}
		return show.fn(s.srv), nil
	case "RECONNECT":
		if len(words) > 2 {
			return nil, pgerr.New(pgerr.SyntaxError, "syntax error: want RECONNECT or RECONNECT <database>")
		}
		db := ""
		if len(words) == 2 {
			db = words[1]
		}
		pools, closed := s.srv.reconnect(db)
		if db != "" && pools == 0 {
			return nil, pgerr.New(pgerr.InvalidCatalogName, "no pool for database %q: no client of it has connected", truncate(db, 64))
		}
		s.srv.log.Info("reconnecting server connections (admin RECONNECT)", "user", s.user, "database", db, "pools", pools, "closed_idle", closed)
		return &resultSet{tag: "RECONNECT"}, nil
	case "PAUSE", "RESUME", "WAIT_CLOSE":
		if len(words) > 2 {
			return nil, pgerr.New(pgerr.SyntaxError, "syntax error: want %s or %s <database>", verb, verb)
		}
		if len(words) == 2 {
			return s.adminDBCommand(verb, words[1])
		}
	case "DISABLE", "ENABLE", "KILL":
		if len(words) != 2 {
			return nil, pgerr.New(pgerr.SyntaxError, "syntax error: want %s <database>", verb)
		}
		return s.adminDBCommand(verb, words[1])
	case "SUSPEND":
		// PgBouncer's SUSPEND prepares its online restart (-R), which
		// passes sockets to the new process; pgsluice's is the handover.
		return nil, pgerr.New(pgerr.FeatureNotSupported, "SUSPEND is not supported: for a restart without dropping clients, start the new pgsluice on the same addresses and send SIGUSR2 to this one (handover)")
	case "RELOAD", "SHUTDOWN":
		if len(words) != 1 {
			return nil, pgerr.New(pgerr.SyntaxError, "syntax error: %s takes no argument", verb)
		}
	}
	switch verb {
	case "RELOAD":
		if s.srv.reload == nil {
			return nil, pgerr.New(pgerr.FeatureNotSupported, "RELOAD is not available: this pgsluice was started without a reloadable configuration")
		}
		if err := s.srv.reload(); err != nil {
			return nil, pgerr.New(pgerr.ConfigFileError, "RELOAD failed, the previous configuration stays in force: %s", err)
		}
		s.srv.log.Info("configuration reloaded (admin RELOAD)", "user", s.user)
		return &resultSet{tag: "RELOAD"}, nil
	case "SHUTDOWN":
		if s.srv.shutdown == nil {
			return nil, pgerr.New(pgerr.FeatureNotSupported, "SHUTDOWN is not available: this pgsluice is embedded in a program that did not provide it")
		}
		s.srv.log.Warn("shutting down (admin SHUTDOWN)", "user", s.user)
		s.srv.shutdown()
		return &resultSet{tag: "SHUTDOWN"}, nil
	case "PAUSE":
		s.srv.log.Info("pausing (admin PAUSE): new queries wait", "user", s.user)
		s.srv.pause()
		return &resultSet{tag: "PAUSE"}, nil
	case "RESUME":
		s.srv.resume()
		s.srv.log.Info("resumed (admin RESUME)", "user", s.user)
		return &resultSet{tag: "RESUME"}, nil
	case "WAIT_CLOSE":
		s.srv.waitClose("")
		return &resultSet{tag: "WAIT_CLOSE"}, nil
	}
	return nil, pgerr.New(pgerr.SyntaxError, "syntax error at or near %q: the admin console accepts SHOW, RELOAD, PAUSE, RESUME, RECONNECT, WAIT_CLOSE, DISABLE, ENABLE, KILL and SHUTDOWN (SHOW HELP)", truncate(words[0], 64))
}

// adminDBCommand runs a command on one database (admin_db.go).
func (s *session) adminDBCommand(verb, db string) (*resultSet, error) {
	log := s.srv.log.With("user", s.user, "database", db)
	switch verb {
	case "PAUSE":
		log.Info("pausing a database (admin PAUSE db): its new queries wait")
		s.srv.pauseDB(db, true)
	case "RESUME":
		if err := s.srv.resumeDB(db); err != nil {
			return nil, err
		}
		log.Info("resumed a database (admin RESUME db)")
	case "DISABLE":
		s.srv.setDisabled(db, true)
		log.Info("database disabled (admin DISABLE): new clients are refused")
	case "ENABLE":
		s.srv.setDisabled(db, false)
		log.Info("database enabled (admin ENABLE)")
	case "KILL":
		n := s.srv.kill(db)
		log.Warn("closed every client of a database (admin KILL); it stays paused until RESUME", "clients", n)
	case "WAIT_CLOSE":
		s.srv.waitClose(db)
	}
	return &resultSet{tag: verb}, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// resultSet is one command's answer in text format.
type resultSet struct {
	cols []string
	rows [][]string
	tag  string
}

func (r *resultSet) append(dst []byte) []byte {
	if len(r.cols) > 0 {
		rd := &pgproto3.RowDescription{}
		for _, c := range r.cols {
			rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1})
		}
		dst, _ = rd.Encode(dst)
		for _, row := range r.rows {
			dr := &pgproto3.DataRow{Values: make([][]byte, len(row))}
			for i, v := range row {
				dr.Values[i] = []byte(v)
			}
			dst, _ = dr.Encode(dst)
		}
	}
	dst, _ = (&pgproto3.CommandComplete{CommandTag: []byte(r.tag)}).Encode(dst)
	return dst
}

// pauseGate implements PAUSE/RESUME, for every database or one (admin_db.go):
// while paused, a client that needs a server connection waits. It also
// holds the databases DISABLE closed to new clients. Safe for concurrent
// use; Server.pausedFlag is true while anything is paused.
type pauseGate struct {
	mu      sync.Mutex
	paused  bool // PAUSE: every database
	resumed chan struct{}
	// dbs are the databases paused one by one (PAUSE db, KILL db), each
	// with the channel RESUME closes.
	dbs      map[string]chan struct{}
	disabled map[string]bool // DISABLE db
}

// setFlagLocked keeps Server.pausedFlag in step with the gate (gate.mu held).
func (s *Server) setFlagLocked() {
	s.pausedFlag.Store(s.gate.paused || len(s.gate.dbs) > 0)
}

// waitIfPaused blocks while the proxy, or database db, is paused (or until
// it drains). It returns killedErr's FATAL when the admin console KILLed
// the session's database (kill is the session's idleKill) before or
// during a wait; callers check again after they acquire a connection.
func (s *Server) waitIfPaused(db string, kill *atomic.Uint32) error {
	if !s.pausedFlag.Load() {
		return nil
	}
	s.gate.mu.Lock()
	ch, paused := s.gate.resumed, s.gate.paused
	if !paused {
		ch, paused = s.gate.dbs[db]
	}
	s.gate.mu.Unlock()
	if !paused {
		return killedErr(kill)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ch:
			return killedErr(kill)
		case <-tick.C:
			if s.draining.Load() {
				return nil
			}
			if err := killedErr(kill); err != nil {
				return err
			}
		}
	}
}

// killedErr is the FATAL of a session whose database the admin console
// KILLed (kill is its idleKill), nil for any other.
func killedErr(kill *atomic.Uint32) error {
	if kill.Load() == idleKillAdmin {
		return idleKillErr(idleKillAdmin)
	}
	return nil
}

// pause stops lending server connections and waits until every lent one
// is back (PgBouncer's PAUSE): then no query runs on any server.
func (s *Server) pause() {
	s.gate.mu.Lock()
	if !s.gate.paused {
		s.gate.paused = true
		s.gate.resumed = make(chan struct{})
		s.setFlagLocked()
	}
	s.gate.mu.Unlock()
	s.waitLent("")
}

// waitLent waits until no server connection of database db (every
// database: "") is lent, or the pause it waits for is lifted, or the proxy
// drains.
func (s *Server) waitLent(db string) {
	for !s.draining.Load() {
		s.gate.mu.Lock()
		still := s.gate.paused
		if db != "" && !still {
			_, still = s.gate.dbs[db]
		}
		s.gate.mu.Unlock()
		if !still || s.activeServers(db) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reconnect has the pools of database db (all when "") open new server
// connections: idle ones close now, lent ones when released (after the
// transaction in transaction mode, when the client leaves in session mode
// or when pinned). It returns how many pools it touched and how many idle
// connections it closed.
func (s *Server) reconnect(db string) (pools, closed int) {
	for _, p := range s.poolList() {
		if db == "" || p.key.database == db {
			pools++
			closed += p.reconnect()
		}
	}
	return pools, closed
}

// resume lets waiting clients go.
func (s *Server) resume() {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	if s.gate.paused {
		s.gate.paused = false
		close(s.gate.resumed)
	}
	for db, ch := range s.gate.dbs {
		close(ch)
		delete(s.gate.dbs, db)
	}
	s.setFlagLocked()
}

// activeServers counts server connections lent to clients, of database db
// (every database: "").
func (s *Server) activeServers(db string) int {
	n := 0
	for _, p := range s.poolList() {
		if db == "" || p.key.database == db {
			active, _, _, _ := p.stats()
			n += active
		}
	}
	return n
}

// poolList returns the pools in a stable order.
func (s *Server) poolList() []*pool {
	s.mu.Lock()
	pools := make([]*pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	slices.SortFunc(pools, func(a, b *pool) int { return strings.Compare(a.key.String(), b.key.String()) })
	return pools
}
