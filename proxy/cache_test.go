package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
	"github.com/pgsluice/pgsluice/proxy"
)

// withCache configures the cache on top of the default target config.
func withCache(backend string, rules ...config.CacheRule) func(*TargetConfig) {
	return func(tc *TargetConfig) {
		tc.Tweak = func(cfg *config.Config) {
			cfg.Cache.Backend = backend
			cfg.Cache.Rules = rules
			if backend == config.CacheRedis || backend == config.CacheTiered {
				cfg.Cache.Redis.Addr = cluster.Redis.Addr()
				// The machine is shared and slow at times: a generous
				// timeout keeps these tests about the proxy, not Redis
				// latency (TestCacheRedisKilled covers the outage).
				cfg.Cache.Redis.Timeout = 500 * time.Millisecond
			}
		}
	}
}

// rawConn is a hijacked protocol connection: tests send frontend messages
// and read the exact backend bytes.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	fe *pgproto3.Frontend
}

func rawConnect(t *testing.T, ctx context.Context, dsn string) *rawConn {
	t.Helper()
	pc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	// hc.Frontend, not a new one on hc.Conn: pgconn's background reader
	// (started when a write during login was slow) may still have a read
	// pending or bytes read ahead, which only its Frontend returns.
	return &rawConn{t: t, c: hc.Conn, fe: hc.Frontend}
}

// roundTrip sends msgs and returns every backend message, encoded, up to
// and including ReadyForQuery.
func (r *rawConn) roundTrip(msgs ...pgproto3.FrontendMessage) [][]byte {
	r.t.Helper()
	for _, m := range msgs {
		r.fe.Send(m)
	}
	if err := r.fe.Flush(); err != nil {
		r.t.Fatal(err)
	}
	r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var out [][]byte
	for {
		m, err := r.fe.Receive()
		if err != nil {
			r.t.Fatalf("receive: %v (after %d messages)", err, len(out))
		}
		if _, ok := m.(*pgproto3.ParameterStatus); ok {
			continue
		}
		b, err := m.Encode(nil)
		if err != nil {
			r.t.Fatal(err)
		}
		out = append(out, b)
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return out
		}
	}
}

func describe(msgs [][]byte) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "%c(%d) ", m[0], len(m))
	}
	return b.String()
}

func sameBytes(t *testing.T, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages %s, want %d %s", what, len(got), describe(got), len(want), describe(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: message %d differs:\n got %q\nwant %q", what, i, got[i], want[i])
		}
	}
}

func cacheStats(srv *proxy.Server) proxy.CacheStats { return srv.CacheStats() }

// A ruled query is answered from the cache the second time, with exactly
// the bytes PostgreSQL sends, over the simple and the extended protocol.
// Proof that the server did not run it: the table is changed directly on
// the primary (bypassing the proxy) between the two reads, and the second
// read still returns the old row.
func TestCacheHitByteIdentical(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, backend := range []string{config.CacheMemory, config.CacheRedis, config.CacheTiered} {
		t.Run(backend, func(t *testing.T) {
			tbl := "cache_hit_" + backend
			asApp(t, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s(id int primary key, name text, price numeric); INSERT INTO %[1]s VALUES (1, 'a', 1.5), (2, 'b', 2.5)", tbl))
			dsn, srv := startProxy(t, cluster, withCache(backend, config.CacheRule{Tables: []string{"public." + tbl}, TTL: time.Minute}))
			direct := rawConnect(t, ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
			via := rawConnect(t, ctx, dsn)

			q := &pgproto3.Query{String: fmt.Sprintf("SELECT id, name, price FROM %s ORDER BY id", tbl)}
			ext := []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: fmt.Sprintf("SELECT id, name, price FROM %s WHERE id >= $1 ORDER BY id", tbl), ParameterOIDs: []uint32{23}},
				&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}, ResultFormatCodes: []int16{1, 0, 0}},
				&pgproto3.Describe{ObjectType: 'P'},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			}
			wantQ := direct.roundTrip(q)
			wantE := direct.roundTrip(ext...)
			sameBytes(t, "simple miss", via.roundTrip(q), wantQ)
			sameBytes(t, "extended miss", via.roundTrip(ext...), wantE)
			before := cacheStats(srv)
			if before.Stored < 2 {
				t.Fatalf("after two misses: %+v, want 2 results stored", before)
			}
			asApp(t, fmt.Sprintf("UPDATE %s SET name = 'changed behind the proxy'", tbl))
			sameBytes(t, "simple hit", via.roundTrip(q), wantQ)
			sameBytes(t, "extended hit", via.roundTrip(ext...), wantE)
			after := cacheStats(srv)
			if after.Hits-before.Hits != 2 {
				t.Fatalf("hits %d -> %d, want +2", before.Hits, after.Hits)
			}
			// Without Describe the cached reply has no RowDescription: a
			// different key, filled from the server (which now has the
			// new value), then cached too.
			noDesc := []pgproto3.FrontendMessage{ext[0], ext[1], ext[3], ext[4]}
			got := via.roundTrip(noDesc...)
			if !bytes.Contains(bytes.Join(got, nil), []byte("changed behind the proxy")) {
				t.Fatalf("extended without Describe: %s, want the server's current row", describe(got))
			}
			// A named statement prepared lazily, then bound twice.
			named := []pgproto3.FrontendMessage{
				&pgproto3.Parse{Name: "s1", Query: fmt.Sprintf("SELECT name FROM %s WHERE id = $1", tbl)},
				&pgproto3.Sync{},
			}
			via.roundTrip(named...)
			bindExec := []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("2")}}, &pgproto3.Execute{}, &pgproto3.Sync{}}
			first := via.roundTrip(bindExec...)
			h := cacheStats(srv).Hits
			second := via.roundTrip(bindExec...)
			sameBytes(t, "named statement hit", second, first)
			if cacheStats(srv).Hits != h+1 {
				t.Fatalf("named statement: no hit")
			}
		})
	}
}

// The extended-protocol hook keeps held messages in a buffer the session
// reuses from one statement to the next. What a hit makes the client's
// unnamed statement must outlive that buffer: after a hit, a Bind of the
// unnamed statement with other parameters (a miss, so the statement is
// prepared again on whichever server runs it) must run the same text. And
// a pipeline of a hit, a miss and more in one Sync must
// give the bytes PostgreSQL gives.
func TestCacheHeldMessagesReuse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS cache_held; CREATE TABLE cache_held(id int primary key, name text); INSERT INTO cache_held SELECT g, 'name ' || g FROM generate_series(1, 20) g")
	dsn, srv := startProxy(t, cluster, withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_held"}, TTL: time.Minute}))
	direct := rawConnect(t, ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	via := rawConnect(t, ctx, dsn)

	long := "SELECT id, name, id * 2 AS twice, id + 1 AS next FROM cache_held WHERE id >= $1 ORDER BY id"
	short := "SELECT name FROM cache_held WHERE id = $1"
	stmt := func(text, param string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: text},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(param)}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
		}
	}
	bindOnly := func(param string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Bind{Parameters: [][]byte{[]byte(param)}}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}}
	}
	sync := []pgproto3.FrontendMessage{&pgproto3.Sync{}}
	batch := func(parts ...[]pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
		var out []pgproto3.FrontendMessage
		for _, p := range parts {
			out = append(out, p...)
		}
		return append(out, sync...)
	}
	check := func(what string, msgs []pgproto3.FrontendMessage) {
		t.Helper()
		sameBytes(t, what, via.roundTrip(msgs...), direct.roundTrip(msgs...))
	}

	check("fill long", batch(stmt(long, "3")))
	check("fill short", batch(stmt(short, "4")))
	h := cacheStats(srv).Hits
	check("hit long", batch(stmt(long, "3")))
	if got := cacheStats(srv).Hits - h; got != 1 {
		t.Fatalf("second read of the long text: %d hits, want 1: the test proves nothing", got)
	}
	// The unnamed statement is now the long text, answered from the cache
	// and not prepared on any server; this Bind is a miss.
	check("bind after a hit", batch(bindOnly("15")))
	// Hit, miss (held messages released), then the other text (not looked
	// up: the miss is in flight) and a Bind of the unnamed statement, in
	// one Sync.
	h = cacheStats(srv).Hits
	check("pipeline", batch(stmt(long, "3"), stmt(long, "9"), stmt(short, "4"), bindOnly("6")))
	if got := cacheStats(srv).Hits - h; got != 1 {
		t.Fatalf("pipeline: %d hits, want 1", got)
	}
}

// A write through the proxy makes the next read fresh: autocommit, explicit
// transaction (invalidated at commit), TRUNCATE, and a write in another
// schema-qualified spelling of the table.
func TestCacheWriteInvalidates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS cache_w; CREATE TABLE cache_w(id int primary key, v int); INSERT INTO cache_w VALUES (1, 0)")
	dsn, srv := startProxy(t, cluster, withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_w"}, TTL: time.Hour}))
	c := connect(t, ctx, dsn)
	other := connect(t, ctx, dsn)
	read := func(conn *pgx.Conn, mode pgx.QueryExecMode) int {
		t.Helper()
		var v int
		err := conn.QueryRow(ctx, "SELECT coalesce(sum(v), -1) FROM cache_w WHERE id >= $1", mode, 0).Scan(&v)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec}
	expect := func(want int, step string) {
		t.Helper()
		for _, m := range modes {
			for _, conn := range []*pgx.Conn{c, other} {
				if got := read(conn, m); got != want {
					t.Fatalf("%s: mode %v read %d, want %d (stale cache)", step, m, got, want)
				}
			}
		}
	}
	expect(0, "initial")
	expect(0, "cached")
	if cacheStats(srv).Hits == 0 {
		t.Fatal("nothing was served from the cache")
	}
	if _, err := c.Exec(ctx, "UPDATE cache_w SET v = 5 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	expect(5, "after autocommit UPDATE")
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE public.cache_w SET v = 7 WHERE id = $1", 1); err != nil {
		t.Fatal(err)
	}
	// Inside the transaction the writer's own read must see its write
	// (no cache inside a transaction that wrote).
	var v int
	if err := tx.QueryRow(ctx, "SELECT coalesce(sum(v), -1) FROM cache_w WHERE id >= $1", 0).Scan(&v); err != nil || v != 7 {
		t.Fatalf("read inside the writing transaction: %d %v, want 7", v, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	expect(7, "after COMMIT")
	if _, err := c.Exec(ctx, "TRUNCATE cache_w"); err != nil {
		t.Fatal(err)
	}
	expect(-1, "after TRUNCATE")
	if _, err := c.Exec(ctx, "INSERT INTO cache_w VALUES (1, 3)"); err != nil {
		t.Fatal(err)
	}
	expect(3, "after INSERT")
	// Opaque write: DO flushes the database.
	if _, err := c.Exec(ctx, "DO $$BEGIN UPDATE cache_w SET v = 9; END$$"); err != nil {
		t.Fatal(err)
	}
	expect(9, "after DO")
	// Writes outside the proxy are invisible until invalidated: the admin
	// endpoint does it.
	asApp(t, "UPDATE cache_w SET v = 11")
	if got := read(c, pgx.QueryExecModeSimpleProtocol); got != 9 {
		t.Fatalf("read after a write behind the proxy = %d, want the cached 9 (proves the cache answers)", got)
	}
	admin := serveAdmin(t, srv)
	post(t, admin+"/cache/flush?table=public.cache_w")
	expect(11, "after POST /cache/flush?table=")
	asApp(t, "UPDATE cache_w SET v = 12")
	post(t, admin+"/cache/flush")
	expect(12, "after POST /cache/flush")
	// A read filled between an UPDATE and its COMMIT caches the old
	// value with generations taken after the statement's invalidation:
	// only the invalidation at commit drops it.
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE cache_w SET v = 20"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if got := read(other, pgx.QueryExecModeSimpleProtocol); got != 12 {
			t.Fatalf("read during the other transaction = %d, want 12", got)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	expect(20, "after COMMIT, with a read filled before it")
}

func post(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

// Hints: ttl caches with no rule; nocache wins over a rule; a rule does not
// apply to statements outside it.
func TestCacheHints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS cache_h, cache_h2; CREATE TABLE cache_h(v int); INSERT INTO cache_h VALUES (1); CREATE TABLE cache_h2(v int); INSERT INTO cache_h2 VALUES (1)")
	dsn, _ := startProxy(t, cluster, withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_h"}, TTL: time.Hour}))
	c := connect(t, ctx, dsn)
	get := func(sql string) int {
		t.Helper()
		var v int
		if err := c.QueryRow(ctx, sql).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct {
		sql    string
		cached bool
	}{
		{"SELECT v FROM cache_h", true},
		{"/* pgsluice: nocache */ SELECT v FROM cache_h", false},
		{"SELECT v FROM cache_h2", false},
		// A ttl long enough to outlast the write and reconnect between
		// the two reads on a loaded machine; expiry is checked below.
		{"/* pgsluice: cache ttl=30s */ SELECT v FROM cache_h2", true},
		{"SELECT cache_h.v FROM cache_h, cache_h2 LIMIT 1", false}, // reads a table outside the rule
	}
	for i, tc := range cases {
		get(tc.sql)
		asApp(t, fmt.Sprintf("UPDATE cache_h SET v = %d; UPDATE cache_h2 SET v = %d", 100+i, 100+i))
		got := get(tc.sql)
		if cached := got != 100+i; cached != tc.cached {
			t.Errorf("%q: second read %d, cached=%v want %v", tc.sql, got, cached, tc.cached)
		}
	}
	// The ttl hint expires. (Its own statement text, so the ttl=30s entry
	// above cannot answer it; the deadline is generous for a loaded
	// machine, far below the rule's hour or any other ttl.)
	sql := "/* pgsluice: cache ttl=300ms */ SELECT v FROM cache_h2"
	get(sql)
	asApp(t, "UPDATE cache_h2 SET v = 555")
	deadline := time.Now().Add(15 * time.Second)
	for get(sql) != 555 {
		if time.Now().After(deadline) {
			t.Fatal("ttl=300ms entry still served after 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A cache hint at the end of the text (ActiveRecord's annotate) caches
// the result like a leading one, over the simple protocol and an unnamed
// Parse, also with no rules configured (where the proxy looks for hints
// only in texts that may carry one).
func TestCacheTrailingHint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withCache(config.CacheMemory))
	c := connect(t, ctx, dsn)
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		tbl := fmt.Sprintf("cache_th%d", i)
		asApp(t, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s(v int); INSERT INTO %[1]s VALUES (1)", tbl))
		sql := fmt.Sprintf("SELECT v FROM %s /* pgsluice: cache ttl=30s */", tbl)
		read := func() int {
			t.Helper()
			var v int
			if err := c.QueryRow(ctx, sql, mode).Scan(&v); err != nil {
				t.Fatalf("%v: %v", mode, err)
			}
			return v
		}
		read()
		asApp(t, fmt.Sprintf("UPDATE %s SET v = 2", tbl)) // behind the proxy
		if got := read(); got != 1 {
			t.Errorf("%v %q: second read %d, want the cached 1", mode, sql, got)
		}
	}
}

// Tracing comments do not defeat the cache: sqlcommenter's traceparent
// differs per request, yet the second request is answered from the entry
// the first one stored, in every pgx protocol mode (the key drops comments:
// routing.AppendCacheText). A pgsluice hint stays in the key, so a text
// asking for its own ttl gets its own entry.
func TestCacheIgnoresTracingComments(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec}
	var tables []string // one per mode: the modes' keys may coincide
	for i := range modes {
		tables = append(tables, fmt.Sprintf("cache_tc%d", i))
	}
	dsn, srv := startProxy(t, cluster, withCache(config.CacheMemory, config.CacheRule{Tables: tables, TTL: time.Hour}))
	c := connect(t, ctx, dsn)
	req := 0
	read := func(mode pgx.QueryExecMode, tbl, prefix string) int {
		t.Helper()
		req++
		sql := fmt.Sprintf("%sSELECT v FROM %s WHERE id = $1 /*traceparent='00-%032x-%016x-01'*/", prefix, tbl, req, req)
		var v int
		if err := c.QueryRow(ctx, sql, mode, 1).Scan(&v); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return v
	}
	for i, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			tbl := tables[i]
			asApp(t, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s(id int, v int); INSERT INTO %[1]s VALUES (1, %[2]d)", tbl, 10*i))
			if got := read(mode, tbl, ""); got != 10*i {
				t.Fatalf("first read: %d, want %d", got, 10*i)
			}
			asApp(t, fmt.Sprintf("UPDATE %s SET v = %d", tbl, 10*i+1)) // behind the proxy
			h := cacheStats(srv).Hits
			if got := read(mode, tbl, ""); got != 10*i {
				t.Errorf("another traceparent: %d, want the cached %d", got, 10*i)
			}
			if cacheStats(srv).Hits != h+1 {
				t.Errorf("hits %d -> %d, want +1", h, cacheStats(srv).Hits)
			}
			if got := read(mode, tbl, "/* pgsluice: cache ttl=30s */ "); got != 10*i+1 {
				t.Errorf("with a ttl hint: %d, want the server's %d (a key of its own)", got, 10*i+1)
			}
		})
	}
}

// appMemberRole creates role name (NOLOGIN) afresh, with the app user as a
// member, so that the app user may SET ROLE to it.
func appMemberRole(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if err := cluster.Exec(ctx, cluster.Primary, "DROP ROLE IF EXISTS "+name+"; CREATE ROLE "+name+" NOLOGIN; GRANT "+name+" TO "+local.AppUser); err != nil {
		t.Fatal(err)
	}
}

// current_user is cacheable: it has one value per cache key. The login
// user's second read is a hit; another login user and, in session
// pooling, the same client after SET ROLE get their own role's name, not
// the cached one.
func TestCacheCurrentUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	appMemberRole(t, ctx, "cache_cu_role")
	asApp(t, "DROP TABLE IF EXISTS cache_cu; CREATE TABLE cache_cu(v int); INSERT INTO cache_cu VALUES (7); GRANT SELECT ON cache_cu TO md5u, cache_cu_role")
	dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
		tc.PoolMode = config.ModeSession
		withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_cu"}, TTL: time.Hour})(tc)
	})
	const q = "SELECT current_user::text, v FROM cache_cu"
	who := func(c *pgx.Conn) string {
		t.Helper()
		var u string
		var v int
		if err := c.QueryRow(ctx, q).Scan(&u, &v); err != nil {
			t.Fatal(err)
		}
		return u
	}
	a := connect(t, ctx, dsn)
	who(a)
	h := cacheStats(srv).Hits
	if got := who(a); got != local.AppUser || cacheStats(srv).Hits != h+1 {
		t.Fatalf("second read: %q, hits %d -> %d; want %q from the cache", got, h, cacheStats(srv).Hits, local.AppUser)
	}
	b := connect(t, ctx, dsnFor(t, dsn, "md5u", "md5pass", "app"))
	if got := who(b); got != "md5u" {
		t.Errorf("another login user read %q, want md5u", got)
	}
	if _, err := a.Exec(ctx, "SET ROLE cache_cu_role"); err != nil {
		t.Fatal(err)
	}
	if got := who(a); got != "cache_cu_role" {
		t.Errorf("after SET ROLE: %q, want cache_cu_role", got)
	}
}

// A client that switches role with SET ROLE never reads what the cache
// stored for its login role: in transaction pooling SET ROLE pins the
// session (pinned sessions bypass the cache), in session pooling the role
// is part of the settings the key hashes. The new role may not read the
// table, so PostgreSQL must answer 42501.
func TestCacheSetRoleIsolation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	appMemberRole(t, ctx, "cache_ro")
	asApp(t, "DROP TABLE IF EXISTS cache_sec; CREATE TABLE cache_sec(v int); INSERT INTO cache_sec VALUES (1); REVOKE ALL ON cache_sec FROM PUBLIC")
	for _, mode := range []string{config.ModeSession, config.ModeTransaction} {
		t.Run(mode, func(t *testing.T) {
			dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
				tc.PoolMode = mode
				withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_sec"}, TTL: time.Hour})(tc)
			})
			c := connect(t, ctx, dsn)
			var v int
			for i := 0; i < 2; i++ {
				if err := c.QueryRow(ctx, "SELECT v FROM cache_sec").Scan(&v); err != nil {
					t.Fatal(err)
				}
			}
			if cacheStats(srv).Hits == 0 {
				t.Fatal("the login role's second read was not a hit: the test proves nothing")
			}
			if _, err := c.Exec(ctx, "SET ROLE cache_ro"); err != nil {
				t.Fatal(err)
			}
			err := c.QueryRow(ctx, "SELECT v FROM cache_sec").Scan(&v)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42501" {
				t.Fatalf("after SET ROLE cache_ro: v=%d err=%v, want 42501 from PostgreSQL", v, err)
			}
		})
	}
}

// Role A never receives role B's cached rows: the same statement, with the
// same client settings, reads a different table for each role, because
// md5u's role default search_path (set in the server, unknown to the proxy)
// finds its own cache_ri first. Tables with row-level security are never
// cached (TestCacheRowLevelSecurity).
func TestCacheRoleIsolation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cluster.Exec(ctx, cluster.Primary, `CREATE SCHEMA IF NOT EXISTS cache_ri_md5u AUTHORIZATION md5u;
		DROP TABLE IF EXISTS public.cache_ri, cache_ri_md5u.cache_ri;
		CREATE TABLE public.cache_ri(secret text); INSERT INTO public.cache_ri VALUES ('app-secret');
		CREATE TABLE cache_ri_md5u.cache_ri(secret text); INSERT INTO cache_ri_md5u.cache_ri VALUES ('md5u-secret');
		GRANT SELECT ON public.cache_ri TO app; GRANT SELECT ON cache_ri_md5u.cache_ri TO md5u;
		ALTER ROLE md5u IN DATABASE app SET search_path = cache_ri_md5u, public`); err != nil {
		t.Fatal(err)
	}
	dsn, srv := startProxy(t, cluster, withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_ri"}, TTL: time.Hour}))
	a := connect(t, ctx, dsn)
	b := connect(t, ctx, dsnFor(t, dsn, "md5u", "md5pass", "app"))
	for i := 0; i < 3; i++ {
		for _, x := range []struct {
			c    *pgx.Conn
			want string
		}{{a, "app-secret"}, {b, "md5u-secret"}} {
			for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
				rows, err := x.c.Query(ctx, "SELECT secret FROM cache_ri", mode)
				if err != nil {
					t.Fatal(err)
				}
				got, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != 1 || got[0] != x.want {
					t.Fatalf("round %d: got %q, want only %q", i, got, x.want)
				}
			}
		}
	}
	if cacheStats(srv).Hits < 4 {
		t.Fatalf("stats %+v: the test did not exercise hits", cacheStats(srv))
	}
}

// checker runs writers and readers on shared rows through several proxies
// and counts reads older than a write acknowledged before the read began.
type checker struct {
	rows                       int
	acked                      []atomic.Int64 // highest acknowledged value per row
	reads, writes, stale, errs atomic.Int64
	mu                         sync.Mutex
	staleAt                    []time.Time // start times of stale reads
	firstErr                   atomic.Value
}

func (c *checker) noteErr(err error) {
	c.errs.Add(1)
	c.firstErr.CompareAndSwap(nil, err.Error())
}

// run drives the workload for d, calling mid (if any) halfway through.
func (c *checker) run(t *testing.T, ctx context.Context, dsns []string, d time.Duration) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec}
	for i, dsn := range dsns {
		w := connect(t, ctx, dsn)
		wg.Add(1)
		go func(seed int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(seed), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := rnd.IntN(c.rows)
				var v int64
				if err := w.QueryRow(ctx, "UPDATE cache_chk SET v = v + 1 WHERE id = $1 RETURNING v", id).Scan(&v); err != nil {
					c.noteErr(err)
					continue
				}
				c.writes.Add(1)
				for {
					cur := c.acked[id].Load()
					if v <= cur || c.acked[id].CompareAndSwap(cur, v) {
						break
					}
				}
				time.Sleep(time.Duration(5+rnd.IntN(20)) * time.Millisecond)
			}
		}(i)
		for j := 0; j < 2; j++ {
			r := connect(t, ctx, dsn)
			wg.Add(1)
			go func(seed int) {
				defer wg.Done()
				rnd := rand.New(rand.NewPCG(uint64(seed), 2))
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					id := rnd.IntN(c.rows)
					floor := c.acked[id].Load()
					start := time.Now()
					var v int64
					var err error
					if n%4 == 3 {
						err = r.QueryRow(ctx, fmt.Sprintf("SELECT v FROM cache_chk WHERE id = %d", id), pgx.QueryExecModeSimpleProtocol).Scan(&v)
					} else {
						err = r.QueryRow(ctx, "SELECT v FROM cache_chk WHERE id = $1", modes[n%3], id).Scan(&v)
					}
					if err != nil {
						c.noteErr(err)
						continue
					}
					c.reads.Add(1)
					if v < floor {
						c.stale.Add(1)
						c.mu.Lock()
						c.staleAt = append(c.staleAt, start)
						c.mu.Unlock()
					}
				}
			}(i*10 + j)
		}
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
}

func newChecker(t *testing.T, rows int) *checker {
	t.Helper()
	sql := "DROP TABLE IF EXISTS cache_chk; CREATE TABLE cache_chk(id int primary key, v bigint not null); INSERT INTO cache_chk SELECT g, 0 FROM generate_series(0, " + fmt.Sprint(rows-1) + ") g"
	asApp(t, sql)
	return &checker{rows: rows, acked: make([]atomic.Int64, rows)}
}

// startCheckerProxies starts n proxies in tiered mode sharing the cluster's
// Redis.
func startCheckerProxies(t *testing.T, n int) ([]string, []*proxy.Server) {
	t.Helper()
	var dsns []string
	var srvs []*proxy.Server
	for i := 0; i < n; i++ {
		dsn, srv := startProxy(t, cluster, withCache(config.CacheTiered, config.CacheRule{Tables: []string{"cache_chk"}, TTL: time.Minute}))
		dsns = append(dsns, dsn)
		srvs = append(srvs, srv)
	}
	return dsns, srvs
}

func totalHits(srvs []*proxy.Server) uint64 {
	var n uint64
	for _, s := range srvs {
		n += s.CacheStats().Hits
	}
	return n
}

// Writers and readers on shared rows through three proxy instances sharing
// Redis (tiered): no read returns a value older than a write acknowledged
// before the read started.
func TestCacheCheckerThreeProxies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := newChecker(t, 4)
	dsns, srvs := startCheckerProxies(t, 3)
	c.run(t, ctx, dsns, 8*time.Second)
	hits := totalHits(srvs)
	t.Logf("writes=%d reads=%d hits=%d stale=%d errors=%d", c.writes.Load(), c.reads.Load(), hits, c.stale.Load(), c.errs.Load())
	if c.errs.Load() != 0 {
		t.Errorf("%d client errors, first: %v", c.errs.Load(), c.firstErr.Load())
	}
	// Loose floors: the machine may be very loaded; what matters is that
	// reads, writes and hits interleaved at all.
	if c.writes.Load() < 20 || c.reads.Load() < 100 || hits < 10 {
		t.Fatalf("workload too small to mean anything: writes=%d reads=%d hits=%d", c.writes.Load(), c.reads.Load(), hits)
	}
	if c.stale.Load() != 0 {
		t.Fatalf("%d stale reads after acknowledged writes", c.stale.Load())
	}
}

// Killing Redis mid-run causes no client error; stale reads can only come
// from the documented bounds (cachelayer/doc.go): a memory entry verified
// against Redis at most StaleBound=1s before Redis went away, and, just
// after the restart, a write whose invalidation the writer could not yet
// write while another instance could already reach Redis again (go-redis
// keeps returning its last dial error for about a second); caching resumes
// when Redis is back.
func TestCacheRedisKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := newChecker(t, 4)
	dsns, srvs := startCheckerProxies(t, 3)
	t.Cleanup(func() { cluster.StartRedis() })
	var stopped, restarting, restarted time.Time
	var hitsAtRestart uint64
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		time.Sleep(2 * time.Second)
		stopped = time.Now()
		if err := cluster.StopRedis(); err != nil {
			t.Error(err)
		}
		time.Sleep(3 * time.Second)
		restarting = time.Now()
		if err := cluster.StartRedis(); err != nil {
			t.Error(err)
		}
		restarted = time.Now()
		hitsAtRestart = totalHits(srvs)
	}()
	c.run(t, ctx, dsns, 10*time.Second)
	<-killed
	hits := totalHits(srvs)
	t.Logf("writes=%d reads=%d hits=%d (at restart %d) stale=%d errors=%d", c.writes.Load(), c.reads.Load(), hits, hitsAtRestart, c.stale.Load(), c.errs.Load())
	if restarted.IsZero() {
		t.Fatal("redis was not restarted during the run")
	}
	if c.errs.Load() != 0 {
		t.Errorf("%d client errors with Redis killed, first: %v", c.errs.Load(), c.firstErr.Load())
	}
	// The window after the restart lasts until the writer's queued
	// invalidations are written (about a second of go-redis dial errors,
	// then its next Redis operation or prober tick): 3s allows for a
	// loaded machine and still fails on stale reads that never stop.
	const restartWindow = 3 * time.Second
	for _, at := range c.staleAt {
		afterStop := !at.Before(stopped.Add(-100*time.Millisecond)) && !at.After(stopped.Add(1500*time.Millisecond))
		afterRestart := !at.Before(restarting) && !at.After(restarted.Add(restartWindow))
		if !afterStop && !afterRestart {
			t.Errorf("stale read started at %s: outside [redis stopped %s, +StaleBound] and [restart %s, restarted %s +%v]",
				at.Format("15:04:05.000"), stopped.Format("15:04:05.000"), restarting.Format("15:04:05.000"), restarted.Format("15:04:05.000"), restartWindow)
		}
	}
	// Caching resumes: hits grow again after the restart. The run's own
	// reads after the restart may be few on a loaded machine, so keep
	// reading through every instance (no writes any more: entries stay
	// valid) until they do, for up to 30s.
	if hits <= hitsAtRestart+10 {
		readers := make([]*pgx.Conn, len(dsns))
		for i, dsn := range dsns {
			readers[i] = connect(t, ctx, dsn)
		}
		deadline := time.Now().Add(30 * time.Second)
		for n := 0; totalHits(srvs) <= hitsAtRestart+10; n++ {
			if time.Now().After(deadline) {
				t.Fatalf("caching did not resume after Redis came back: hits %d at restart, %d 30s after the run", hitsAtRestart, totalHits(srvs))
			}
			var v int64
			if err := readers[n%len(readers)].QueryRow(ctx, "SELECT v FROM cache_chk WHERE id = $1", n%c.rows).Scan(&v); err != nil {
				t.Fatalf("read after the run: %v", err)
			}
			if n%len(readers) == len(readers)-1 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		t.Logf("hits resumed after the run: %d", totalHits(srvs))
	}
}

// With read_your_writes=user and a shared Redis, a user's write through one
// instance is visible to that user's next read through another instance
// while the replica's replay is paused; other users keep reading from the
// replica.
func TestReadYourWritesAcrossInstances(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS ryw_x; CREATE TABLE ryw_x(id int primary key)")
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	shared := func(tc *TargetConfig) {
		withReplica(tc)
		replica := tc.Tweak
		tc.Tweak = func(cfg *config.Config) {
			replica(cfg)
			cfg.Routing.ReadYourWrites = "user"
			cfg.Cache.Backend = config.CacheTiered
			cfg.Cache.Redis.Addr = cluster.Redis.Addr()
			// The shared write clock lives in this Redis: a timeout
			// there loses the writer's published time (or the
			// reader's lookup of it) and the read goes to the paused
			// replica. Generous, so a loaded machine does not hit it.
			cfg.Cache.Redis.Timeout = 3 * time.Second
		}
	}
	// Three instances sharing one Redis: each write goes through one of
	// them and is read back at once through the other two, by the same
	// user on connections of its own (the Lambda case).
	var dsns []string
	for range 3 {
		dsns = append(dsns, startTarget(t, cluster, shared))
	}
	conns := make([]*pgx.Conn, 3)
	for i, d := range dsns {
		conns[i] = connect(t, ctx, d)
		waitReplicaReads(t, ctx, conns[i])
	}
	other := connect(t, ctx, dsnFor(t, dsns[1], "md5u", "md5pass", "app"))
	waitReplicaReads(t, ctx, other)
	if err := cluster.PauseReplay(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.ResumeReplay() })
	for i := 0; i < 60; i++ {
		w := i % 3
		if _, err := conns[w].Exec(ctx, "INSERT INTO ryw_x VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		for _, r := range []int{(w + 1) % 3, (w + 2) % 3} {
			var n int
			if err := conns[r].QueryRow(ctx, "SELECT count(*) FROM ryw_x WHERE id = $1", i).Scan(&n); err != nil || n != 1 {
				t.Fatalf("write %d through instance %d not visible to the same user through instance %d: n=%d err=%v", i, w, r, n, err)
			}
		}
	}
	var rec bool
	if err := other.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
		t.Fatalf("another user's read left the replica: in_recovery=%v err=%v", rec, err)
	}
}

// With cache.invalidation.logical_replication on, a write made directly on
// the primary (bypassing the proxy) is seen through the proxy promptly
// (normally well under 1 s, which the test logs; it allows 15 s for a
// loaded machine, far below the rule's TTL of an hour).
// It runs in its own database: the publication FOR ALL TABLES it creates
// would refuse UPDATEs on keyless tables of other tests.
func TestCacheLogicalReplication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const db = "cache_lr"
	if err := cluster.Exec(ctx, cluster.Primary, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, cluster.Primary, "CREATE DATABASE "+db+" OWNER "+local.AppUser); err != nil {
		t.Fatal(err)
	}
	direct, err := pgx.Connect(ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	if _, err := direct.Exec(ctx, "CREATE TABLE lr_t(id int primary key, v int); INSERT INTO lr_t VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
		withCache(config.CacheMemory, config.CacheRule{Tables: []string{"lr_t"}, TTL: time.Hour})(tc)
		cacheTweak := tc.Tweak
		tc.Tweak = func(cfg *config.Config) {
			cacheTweak(cfg)
			cfg.Cache.Invalidation.LogicalReplication = true
			cfg.Routing.Monitor = config.MonitorConfig{User: local.Superuser, Database: "postgres"}
		}
	})
	c := connect(t, ctx, dsnFor(t, dsn, local.AppUser, local.AppPassword, db))
	// Wait for the stream: its temporary slot is active.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active AND plugin = 'pgoutput'", db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no active pgoutput slot for the database after 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	read := func() int {
		t.Helper()
		var v int
		if err := c.QueryRow(ctx, "SELECT v FROM lr_t WHERE id = 1").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	for round := 1; round <= 3; round++ {
		read()
		hits := srv.CacheStats().Hits
		read()
		if srv.CacheStats().Hits != hits+1 {
			t.Fatalf("round %d: the read was not cached", round)
		}
		if _, err := direct.Exec(ctx, "UPDATE lr_t SET v = $1 WHERE id = 1", round); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for read() != round {
			if time.Since(start) > 15*time.Second {
				t.Fatalf("round %d: a direct write on the primary not seen through the proxy after 15s", round)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("round %d: direct write seen through the proxy after %v", round, time.Since(start).Round(time.Millisecond))
	}
}

// Cache rules reload live: a rule added by Reload caches from the next
// statement, a rule removed stops new fills, and the backend cannot change
// while the process runs (reported, old value kept).
func TestCacheRulesReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS cache_rl; CREATE TABLE cache_rl(v int); INSERT INTO cache_rl VALUES (1)")
	dsn, srv := startProxy(t, cluster, withCache(config.CacheMemory))
	c := connect(t, ctx, dsn)
	get := func(sql string) int {
		t.Helper()
		var v int
		if err := c.QueryRow(ctx, sql).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	// cached reports whether the second read of sql misses a write made
	// behind the proxy's back (so it came from the cache).
	step := 0
	cached := func(sql string) bool {
		t.Helper()
		step++
		get(sql)
		asApp(t, fmt.Sprintf("UPDATE cache_rl SET v = %d", 1000+step))
		return get(sql) != 1000+step
	}
	const q = "SELECT v FROM cache_rl"
	if cached(q) {
		t.Fatal("cached with no rule")
	}
	next := srv.RunningConfig()
	next.Cache.Rules = []config.CacheRule{{Tables: []string{"cache_rl"}, TTL: time.Hour}}
	if err := srv.Reload(next); err != nil {
		t.Fatalf("reload with a new rule: %v", err)
	}
	if !cached(q + " WHERE v > 0") {
		t.Fatal("rule added by reload does not cache")
	}
	next = srv.RunningConfig()
	next.Cache.Rules = nil
	next.Cache.Backend = config.CacheRedis
	next.Cache.Redis.Addr = cluster.Redis.Addr()
	err := srv.Reload(next)
	if !proxy.IsNotReloaded(err) || !strings.Contains(err.Error(), "cache.backend") {
		t.Fatalf("backend change: got %v, want a not-reloaded error naming cache.backend", err)
	}
	if got := srv.RunningConfig().Cache.Backend; got != config.CacheMemory {
		t.Fatalf("running backend %q after reload, want memory kept", got)
	}
	if cached(q + " WHERE v >= 0") {
		t.Fatal("rule removed by reload still caches new statements")
	}
}
