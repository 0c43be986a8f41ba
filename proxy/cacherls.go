package proxy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsluice/pgsluice/routing"
)

// Row-level security and the cache.
//
// A table with row-level security (pg_class.relrowsecurity or
// relforcerowsecurity) answers according to its policies, which may read
// anything: current_user, but also current_setting('app.tenant'), a table
// of grants, the time. The cache key cannot capture that, so a statement
// that reads such a table, or a view built on one, is never looked up nor
// stored (skipped_total{reason="rls"}).
//
// The set of such relations is per database. It is loaded from the node
// that takes writes through the monitor login (routing.monitor.user, or the
// first auth.users entry) connected to that database: the first time a
// cacheable statement of the database comes (the statement waits for the
// load at most rlsWait), after DDL that went through the proxy committed,
// and every routing.catalog_refresh. Until a database's set is loaded, and
// while a reload after DDL is pending, its statements bypass the cache
// (reason "rls_unknown"): never cache what might be protected.
//
// Names. A statement names a table as written ("t", "s.t", "db.s.t"). A
// qualified name matches the relation of that schema; an unqualified one
// matches a relation of that name in any schema, since search_path decides
// which it is: caching is refused for "t" when any "s.t" has row-level
// security, which may refuse too much, never too little.
//
// Ordering with DDL. ALTER TABLE t ENABLE ROW LEVEL SECURITY through the
// proxy marks the database's set stale (cacheCatalogChangedLocked) at its
// commit's ReadyForQuery, before the invalidation of t that the same
// ReadyForQuery triggers. A fill checks the set again after snapshotting
// the generations: if its snapshot follows that invalidation, it sees the
// set stale and stores nothing; if it precedes it, its Set is refused.
//
// Not seen: row-level security enabled directly on the primary until the
// next routing.catalog_refresh, and protected tables read inside a
// function the statement calls.

var errNoMonitorLogin = errors.New("no monitor login (set routing.monitor.user or auth.users)")

// rlsWait bounds how long a statement waits for its database's set.
const rlsWait = 3 * time.Second

// rlsSQL lists the relations with row-level security and, transitively,
// the views (and materialized views) whose rules read one.
const rlsSQL = `WITH RECURSIVE rls(oid) AS (
  SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relrowsecurity OR c.relforcerowsecurity
  UNION
  SELECT r.ev_class FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
    JOIN rls ON rls.oid = d.refobjid
  WHERE r.ev_class <> d.refobjid
)
SELECT n.nspname, c.relname FROM rls
  JOIN pg_catalog.pg_class c ON c.oid = rls.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`

// rlsSet is one database's protected relations. Immutable once built.
type rlsSet struct {
	qualified map[string]bool // "schema.name"
	names     map[string]bool // "name", whatever the schema
}

// protects reports whether reading table (as a statement names it) may
// read a relation of the set.
func (rs *rlsSet) protects(table string) bool {
	if len(rs.names) == 0 {
		return false
	}
	i := strings.LastIndexByte(table, '.')
	if i < 0 {
		return rs.names[table]
	}
	schema := table[:i]
	if j := strings.LastIndexByte(schema, '.'); j >= 0 {
		schema = schema[j+1:] // db.schema.name
	}
	return rs.qualified[schema+"."+table[i+1:]]
}

// rlsDB is the state of one database's set. cur is the set when it is
// current (loaded after the last change), nil otherwise.
type rlsDB struct {
	cur     atomic.Pointer[rlsSet]
	mu      sync.Mutex
	want    uint64        // bumped by every change (mu)
	loaded  uint64        // the want the last successful load started at (mu)
	last    *rlsSet       // the last set loaded, current or not (mu)
	failed  bool          // the last load failed (mu)
	changed chan struct{} // closed and replaced after each load attempt (mu)
}

// rlsCatalog is the cache's view of row-level security in every database
// its clients use. Safe for concurrent use.
type rlsCatalog struct {
	dbs   sync.Map // database -> *rlsDB
	req   chan struct{}
	stop  chan struct{}
	start sync.Once
	done  chan struct{}
	// closeOnce: Server.Shutdown may run more than once.
	closeOnce sync.Once
}

func newRLSCatalog() *rlsCatalog {
	return &rlsCatalog{req: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

func (rc *rlsCatalog) request() {
	select {
	case rc.req <- struct{}{}:
	default:
	}
}

func (rc *rlsCatalog) db(name string) *rlsDB {
	if v, ok := rc.dbs.Load(name); ok {
		return v.(*rlsDB)
	}
	v, loaded := rc.dbs.LoadOrStore(name, &rlsDB{want: 1, changed: make(chan struct{})})
	if !loaded {
		rc.request()
	}
	return v.(*rlsDB)
}

// changed marks a database's set stale and asks for a reload. Statements
// of the database bypass the cache until it is loaded.
func (rc *rlsCatalog) changed(name string) {
	d := rc.db(name)
	d.mu.Lock()
	d.want++
	d.cur.Store(nil)
	d.mu.Unlock()
	rc.request()
}

// current returns the database's set, waiting for a pending load at most
// rlsWait; ok is false when no current set is known.
func (rc *rlsCatalog) current(srv *Server, name string) (*rlsSet, bool) {
	d := rc.db(name)
	if set := d.cur.Load(); set != nil {
		return set, true
	}
	rc.start.Do(func() { go rc.watch(srv) })
	deadline := time.Now().Add(rlsWait)
	for {
		d.mu.Lock()
		if d.loaded >= d.want && d.last != nil {
			set := d.last
			d.mu.Unlock()
			return set, true
		}
		ch, failed := d.changed, d.failed
		d.mu.Unlock()
		left := time.Until(deadline)
		if failed || left <= 0 {
			return nil, false
		}
		t := time.NewTimer(left)
		select {
		case <-ch:
		case <-t.C:
		case <-rc.stop:
			t.Stop()
			return nil, false
		}
		t.Stop()
	}
}

// watch loads the sets of every known database when asked, every
// routing.catalog_refresh, and again catalogRetry after a failure, until
// close.
func (rc *rlsCatalog) watch(srv *Server) {
	defer close(rc.done)
	refreshLoop(srv.cfgNow().Routing.CatalogRefresh, rc.stop, rc.req, func() bool { return rc.loadAll(srv) })
}

// loadAll loads every known database's set; false if one failed.
func (rc *rlsCatalog) loadAll(srv *Server) bool {
	ok := true
	rc.dbs.Range(func(k, v any) bool {
		name, d := k.(string), v.(*rlsDB)
		d.mu.Lock()
		want := d.want
		d.mu.Unlock()
		set, err := loadRLS(srv, name, rc.stop)
		d.mu.Lock()
		if err != nil {
			ok = false
			if !d.failed {
				srv.log.Warn("cache: loading row-level security tables failed; the database's statements bypass the cache until it succeeds", "database", name, "err", err)
			}
			d.failed = true
		} else {
			d.failed = false
			d.last, d.loaded = set, want
			if d.loaded >= d.want {
				d.cur.Store(set)
			}
		}
		close(d.changed)
		d.changed = make(chan struct{})
		d.mu.Unlock()
		return true
	})
	return ok
}

// loadRLS reads one database's protected relations on the node that takes
// writes.
func loadRLS(srv *Server, db string, stop <-chan struct{}) (*rlsSet, error) {
	cfg := *srv.cfgNow()
	user, password := monitorLogin(&cfg)
	if user == "" {
		return nil, errNoMonitorLogin
	}
	cfg.Routing.Monitor.Database = db
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := pgx.Connect(ctx, monitorDSN(&cfg, srv.topo.writer().addr, user, password))
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, rlsSQL, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	set := &rlsSet{qualified: map[string]bool{}, names: map[string]bool{}}
	var schema, name string
	_, err = pgx.ForEachRow(rows, []any{&schema, &name}, func() error {
		set.qualified[schema+"."+name] = true
		set.names[name] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	return set, nil
}

func (rc *rlsCatalog) close() {
	rc.closeOnce.Do(rc.closeNow)
}

func (rc *rlsCatalog) closeNow() {
	close(rc.stop)
	started := true
	rc.start.Do(func() { started = false })
	if started {
		<-rc.done
	}
}

// cacheRLSReason returns why d must not use the cache because of row-level
// security ("rls", "rls_unknown"), or "".
func (s *session) cacheRLSReason(d *routing.Decision) string {
	if len(d.ReadTables) == 0 {
		return ""
	}
	set, ok := s.srv.cache.rls.current(s.srv, s.database)
	if !ok {
		return "rls_unknown"
	}
	for _, t := range d.ReadTables {
		if set.protects(t) {
			return "rls"
		}
	}
	return ""
}

// cacheCatalogChangedLocked runs at each ReadyForQuery from the server,
// before the cache invalidations it triggers: a transaction that ran DDL
// and has ended marks its database's row-level security set stale. mu
// held.
func (s *session) cacheCatalogChangedLocked(status byte) {
	if status == 'I' && s.catalogDDL && s.srv.cache != nil {
		s.srv.cache.rls.changed(s.database)
	}
}
