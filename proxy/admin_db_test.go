package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// adminRows runs one admin command and returns its rows (text).
func adminRows(t *testing.T, ctx context.Context, admin *pgconn.PgConn, sql string) ([][]string, error) {
	t.Helper()
	res, err := admin.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, r := range res[0].Rows {
		row := make([]string, len(r))
		for i, v := range r {
			row[i] = string(v)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// waitsUntil runs fn in the background and checks it is still blocked
// after a while; release must unblock it, and fn must then succeed.
func waitsUntil(t *testing.T, what string, fn func() error, release func()) {
	t.Helper()
	if err := blockedUntil(t, what, fn, release); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// blockedUntil runs fn in the background, checks it is still blocked
// after a while, calls release and returns what fn returns then (within
// 10 s).
func blockedUntil(t *testing.T, what string, fn func() error, release func()) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		t.Fatalf("%s returned (%v) before it should", what, err)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked", what)
	}
	return nil
}

// The per-database admin commands of PgBouncer's console: SHOW VERSION and
// DATABASES, PAUSE/RESUME db, DISABLE/ENABLE db, KILL db and WAIT_CLOSE,
// with database "app" acted on and "postgres" beside it, unaffected.
func TestAdminDatabases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) { cfg.Admin.Users = []string{local.AppUser} }))
	other := dsnFor(t, dsn, local.AppUser, local.AppPassword, "postgres")
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	run := func(sql string) [][]string {
		t.Helper()
		rows, err := adminRows(t, ctx, admin, sql)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return rows
	}
	one := func(c *pgx.Conn) error { return queryOne(ctx, c) }

	if v := run("SHOW VERSION"); len(v) != 1 || !strings.HasPrefix(v[0][0], "pgsluice ") {
		t.Fatalf("SHOW VERSION = %q", v)
	}
	a, b := connect(t, ctx, dsn), connect(t, ctx, other)
	for _, c := range []*pgx.Conn{a, b} {
		if err := one(c); err != nil {
			t.Fatal(err)
		}
	}
	dbRow := func(name string) []string {
		t.Helper()
		for _, r := range run("SHOW DATABASES") {
			if r[0] == name {
				return r
			}
		}
		t.Fatalf("SHOW DATABASES has no row for %s", name)
		return nil
	}
	// name, host, port, database, pool_size, pool_mode, current_connections, clients, paused, disabled
	if r := dbRow("app"); r[1] != cluster.Primary.Host || r[5] != "transaction" || r[6] == "0" || r[7] != "1" || r[8] != "0" || r[9] != "0" {
		t.Fatalf("SHOW DATABASES app = %q", r)
	}

	t.Run("PAUSE db", func(t *testing.T) {
		tx, err := a.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		// PAUSE app returns once app's transaction ends; postgres goes on.
		waitsUntil(t, "PAUSE app", func() error { _, err := adminRows(t, ctx, admin, "PAUSE app"); return err },
			func() {
				if err := one(b); err != nil {
					t.Errorf("the other database while app pauses: %v", err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			})
		if r := dbRow("app"); r[8] != "1" {
			t.Fatalf("paused = %q", r[8])
		}
		if err := one(b); err != nil {
			t.Fatalf("the other database while app is paused: %v", err)
		}
		// app's next query waits for RESUME app.
		admin2, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
		if err != nil {
			t.Fatal(err)
		}
		defer admin2.Close(ctx)
		waitsUntil(t, "a query on paused app", func() error { return one(a) }, func() {
			if _, err := adminRows(t, ctx, admin2, "RESUME app"); err != nil {
				t.Fatal(err)
			}
		})
		wantAdminErr(t, ctx, admin, "RESUME app", "55000", `database "app" is not paused`)
	})

	t.Run("DISABLE db", func(t *testing.T) {
		run("DISABLE app")
		if r := dbRow("app"); r[9] != "1" {
			t.Fatalf("disabled = %q", r[9])
		}
		_, err := pgconn.Connect(ctx, dsn)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "55000" || pe.Severity != "FATAL" || !strings.Contains(pe.Message, `database "app" is not currently accepting connections`) {
			t.Fatalf("a new client of a disabled database: %v", err)
		}
		if err := one(a); err != nil { // connected clients go on
			t.Fatalf("a connected client of the disabled database: %v", err)
		}
		connect(t, ctx, other).Close(ctx)
		run("ENABLE app")
		connect(t, ctx, dsn).Close(ctx)
	})

	t.Run("KILL db", func(t *testing.T) {
		direct := connect(t, ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
		if _, err := direct.Exec(ctx, "DROP TABLE IF EXISTS admin_kill; CREATE TABLE admin_kill(v int)"); err != nil {
			t.Fatal(err)
		}
		idle := connect(t, ctx, dsn)
		if err := one(idle); err != nil {
			t.Fatal(err)
		}
		busy := connect(t, ctx, dsn)
		tx, err := busy.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var pid int32
		if _, err := tx.Exec(ctx, "INSERT INTO admin_kill VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		sleeping := make(chan error, 1)
		go func() { _, err := tx.Exec(ctx, "SELECT pg_sleep(30)"); sleeping <- err }()
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		run("KILL app")
		var pe *pgconn.PgError
		select {
		case err := <-sleeping:
			if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Severity != "FATAL" {
				t.Fatalf("a client running a statement: %v, want FATAL 57P01", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("KILL left a running statement alone")
		}
		if err := one(idle); !errors.As(err, &pe) || pe.Code != "57P01" {
			t.Fatalf("an idle client after KILL: %v, want 57P01", err)
		}
		if time.Since(start) > 3*time.Second {
			t.Errorf("KILL took %v", time.Since(start))
		}
		// Its transaction was rolled back and its server session ended.
		waitBackendsGone(t, ctx, []int32{pid})
		var rows int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM admin_kill").Scan(&rows); err != nil || rows != 0 {
			t.Fatalf("the killed client's INSERT: %d rows, %v", rows, err)
		}
		if err := one(b); err != nil {
			t.Fatalf("the other database after KILL app: %v", err)
		}
		// app stays paused until RESUME app.
		late := connect(t, ctx, dsn)
		waitsUntil(t, "a query on killed app", func() error { return one(late) }, func() { run("RESUME app") })
	})

	t.Run("WAIT_CLOSE", func(t *testing.T) {
		c := connect(t, ctx, dsn)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		run("RECONNECT app")
		run("WAIT_CLOSE postgres") // nothing of postgres is stale
		waitsUntil(t, "WAIT_CLOSE", func() error { _, err := adminRows(t, ctx, admin, "WAIT_CLOSE app"); return err },
			func() {
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			})
		run("WAIT_CLOSE")
	})

	// SHUTDOWN needs the program's hook (cmd/pgsluice has it:
	// TestBinaryAdminShutdown); this in-process proxy has none. SUSPEND
	// (PgBouncer's online restart) points to the handover instead.
	for sql, code := range map[string]string{"KILL": "42601", "DISABLE": "42601", "PAUSE a b": "42601", "RESUME nosuchdb": "55000",
		"SHUTDOWN": "0A000", "SHUTDOWN now": "42601"} {
		wantAdminErr(t, ctx, admin, sql, code, "")
	}
	wantAdminErr(t, ctx, admin, "SUSPEND", "0A000", "SIGUSR2")
}

// KILL in session pooling: the client holds its server connection while
// idle; it gets 57P01 and that server session ends.
func TestAdminKillSessionMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) {
		cfg.Admin.Users = []string{local.AppUser}
		cfg.Pool.Mode = config.ModeSession
	}))
	c := connect(t, ctx, dsn)
	var pid int32
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := adminRows(t, ctx, admin, "KILL app"); err != nil {
		t.Fatal(err)
	}
	var n int
	err = c.QueryRow(ctx, "SELECT 1").Scan(&n)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Fatalf("after KILL: %v, want 57P01", err)
	}
	waitBackendsGone(t, ctx, []int32{pid})
	if _, err := adminRows(t, ctx, admin, "RESUME app"); err != nil {
		t.Fatal(err)
	}
	connect(t, ctx, dsn).Close(ctx)
}

// KILL reaches clients that are queued, not only those that hold a server
// connection or wait for their next message: one waiting for the pool's
// only connection and one held by PAUSE db get FATAL 57P01 too, instead of
// running their statement on the killed database or losing their socket
// without a word.
func TestAdminKillQueued(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) {
		cfg.Admin.Users = []string{local.AppUser}
		cfg.Pool.Size = 1
		cfg.Pool.AcquireTimeout = 20 * time.Second
	}))
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	run := func(sql string) {
		t.Helper()
		if _, err := adminRows(t, ctx, admin, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// killWhileWaiting runs fn in the background, checks that it waits,
	// then KILLs app and wants FATAL 57P01 from fn.
	killWhileWaiting := func(what string, fn func() error) {
		t.Helper()
		err := blockedUntil(t, what, fn, func() { run("KILL app") })
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Severity != "FATAL" {
			t.Fatalf("%s: %v, want FATAL 57P01", what, err)
		}
	}
	// Queued for the pool's only server connection, which a transaction
	// holds, with an INSERT that must not run.
	asApp(t, "DROP TABLE IF EXISTS admin_kill_queued; CREATE TABLE admin_kill_queued(v int)")
	holder, queued := connect(t, ctx, dsn), connect(t, ctx, dsn)
	tx := beginTx(t, ctx, holder)
	killWhileWaiting("a client queued for a server connection", func() error {
		_, err := queued.Exec(ctx, "INSERT INTO admin_kill_queued VALUES (1)")
		return err
	})
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the transaction holding the connection survived KILL")
	}
	direct := connect(t, ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	var rows int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM admin_kill_queued").Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("the queued client's INSERT after KILL: %d rows, %v", rows, err)
	}
	run("RESUME app")

	// Held by PAUSE app.
	paused := connect(t, ctx, dsn)
	run("PAUSE app")
	killWhileWaiting("a client held by PAUSE", func() error { return queryOne(ctx, paused) })
	run("RESUME app")
	connect(t, ctx, dsn).Close(ctx)
}

func wantAdminErr(t *testing.T, ctx context.Context, admin *pgconn.PgConn, sql, code, msg string) {
	t.Helper()
	_, err := admin.Exec(ctx, sql).ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code || !strings.Contains(pe.Message, msg) {
		t.Fatalf("%s: %v, want %s %q", sql, err, code, msg)
	}
}

// queryOne runs one query that needs a server connection on c.
func queryOne(ctx context.Context, c *pgx.Conn) error {
	var n int
	return c.QueryRow(ctx, "SELECT 1").Scan(&n)
}
