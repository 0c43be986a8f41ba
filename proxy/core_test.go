package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
)

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// A client that cannot get a server connection within acquire_timeout gets
// 53300 naming the setting, and the pool serves it once one frees up.
func TestAcquireTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 1; c.AcquireTimeout = 300 * time.Millisecond })
	a := connect(t, ctx, dsn)
	b := connect(t, ctx, dsn)
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = b.Exec(ctx, "SELECT 1")
	waited := time.Since(start)
	if sqlState(err) != "53300" || !strings.Contains(err.Error(), "pool.acquire_timeout") {
		t.Fatalf("want 53300 naming pool.acquire_timeout, got %v", err)
	}
	if waited < 250*time.Millisecond || waited > 3*time.Second {
		t.Errorf("error after %s, want about 300ms", waited)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := b.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("after the pool freed up: %v %d", err, n)
	}
}

// Beyond max_client_conn new clients get FATAL 53300; a freed slot is reused.
func TestMaxClientConn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.MaxClientConn = 3 })
	var conns []*pgx.Conn
	for i := 0; i < 3; i++ {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	_, err := pgx.Connect(ctx, dsn)
	if sqlState(err) != "53300" {
		t.Fatalf("4th client: want 53300, got %v", err)
	}
	conns[0].Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := pgx.Connect(ctx, dsn)
		if err == nil {
			c.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after a client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range conns[1:] {
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
}

// Session mode: a client keeps its server connection (temp tables, SET
// work without pinning); when it leaves, DISCARD ALL cleans the connection
// before the next client gets it.
func TestSessionMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) {
		c.PoolSize = 1
		c.PoolMode = "session"
		c.AcquireTimeout = 500 * time.Millisecond
	})
	a, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var pidA int
	if err := a.QueryRow(ctx, "CREATE TEMP TABLE scratch(x int); SET statement_timeout = '123s'; SELECT pg_backend_pid()").Scan(&pidA); err != nil {
		// pgx runs multi-statement text only in simple protocol.
		if _, err := a.Exec(ctx, "CREATE TEMP TABLE scratch(x int)"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Exec(ctx, "SET statement_timeout = '123s'"); err != nil {
			t.Fatal(err)
		}
		if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidA); err != nil {
			t.Fatal(err)
		}
	}
	// While A holds the only server connection, B cannot log in.
	if _, err := pgx.Connect(ctx, dsn); sqlState(err) != "53300" {
		t.Fatalf("second client in session mode with pool 1: want 53300, got %v", err)
	}
	if _, err := a.Exec(ctx, "INSERT INTO scratch VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	a.Close(ctx)
	b := connect(t, ctx, dsn)
	var pidB int
	var timeout string
	if err := b.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('statement_timeout')").Scan(&pidB, &timeout); err != nil {
		t.Fatal(err)
	}
	if pidB != pidA {
		t.Errorf("pool of 1 used a new server connection (%d then %d)", pidA, pidB)
	}
	if timeout != "0" {
		t.Errorf("statement_timeout leaked to the next client: %q", timeout)
	}
	var exists bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('pg_temp.scratch') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Errorf("temp table leaked to the next client (exists=%v, err=%v)", exists, err)
	}
}

// A server connection terminated while idle in the pool is never lent: the
// next client does not see the termination.
func TestServerTerminatedWhileIdle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 2 })
	c := connect(t, ctx, dsn)
	var pid int
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var killed bool
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT pg_terminate_backend($1)", []any{pid}, &killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend: %v %v", killed, err)
	}
	// Wait until the server has ended the session (pg_terminate_backend
	// only signals): a client racing with that moment may see 57P01, as
	// through any pooler; the test is about a connection already dead.
	waitBackendsGone(t, ctx, []int32{int32(pid)})
	for i := 0; i < 5; i++ {
		var got int
		if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&got); err != nil || got != i {
			t.Fatalf("query %d after the idle server connection was terminated: %v", i, err)
		}
	}
}

// A server connection terminated while a client uses it in a transaction:
// that client gets an error, other clients do not.
func TestServerTerminatedInTransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 3 })
	victim := connect(t, ctx, dsn)
	other := connect(t, ctx, dsn)
	tx, err := victim.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, cluster.Primary, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	_, err = tx.Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("query on a terminated server connection succeeded")
	}
	if code := sqlState(err); code != "" && code != "57P01" && code != "08006" {
		t.Errorf("victim got SQLSTATE %s, want 57P01/08006 or a closed connection", code)
	}
	var n int
	if err := other.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
		t.Fatalf("other client affected: %v", err)
	}
}

// A message from an idle client that arrives after Shutdown has begun,
// but before Shutdown's wake-up has reached its session, is refused with
// 57P01 like any idle client's: never served.
func TestShutdownRefusesIdleClientBeforeWakeUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, srv := startProxy(t, cluster, nil)
	idle := connect(t, ctx, dsn)
	if _, err := idle.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	srv.StartDrainingOnly()
	_, err := idle.Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("an idle client's query was served after shutdown began")
	}
	if code := sqlState(err); code != "57P01" {
		t.Fatalf("idle client during shutdown: %v, want 57P01", err)
	}
}

// SIGTERM semantics: Shutdown stops new clients, tells idle ones 57P01,
// lets a running transaction commit, then returns.
func TestShutdownDrains(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS drain_t; CREATE TABLE drain_t(id int primary key, v int); INSERT INTO drain_t VALUES (1, 0)")
	dsn, srv := startProxy(t, cluster, nil)
	busy := connect(t, ctx, dsn)
	idle := connect(t, ctx, dsn)
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE drain_t SET v = v + 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// Longer than the wait for shutdown to begin below, so that
		// Shutdown cannot give up while the transaction is still open.
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		done <- srv.Shutdown(sctx)
	}()
	// Shutdown has begun once new clients are refused (it closes the
	// listeners, then tells idle clients at once): wait for that rather
	// than for a fixed time, which a loaded machine may not honour.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, dsn)
		ccancel()
		if err != nil {
			break
		}
		conn.Close(ctx)
		if time.Now().After(deadline) {
			t.Fatal("new clients still accepted 10s after Shutdown was called")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := idle.Exec(ctx, "SELECT 1"); err == nil {
		t.Error("idle client could still query during shutdown")
	} else if code := sqlState(err); code != "" && code != "57P01" {
		t.Errorf("idle client: want 57P01 or closed, got %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a transaction was open", err)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last transaction ended")
	}
	var v int
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT v FROM drain_t WHERE id = 1", nil, &v); err != nil || v != 1 {
		t.Fatalf("committed update lost: v=%d err=%v", v, err)
	}
}

// LISTEN pins the session; notifications reach the listener through the proxy.
func TestListenNotify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 3 })
	listener := connect(t, ctx, dsn)
	sender := connect(t, ctx, dsn)
	if _, err := listener.Exec(ctx, "LISTEN sluice_events"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := sender.Exec(ctx, "SELECT pg_notify('sluice_events', $1)", strings.Repeat("x", i+1)); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := listener.WaitForNotification(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("notification %d: %v", i, err)
		}
		if n.Channel != "sluice_events" || n.Payload != strings.Repeat("x", i+1) {
			t.Fatalf("notification %d = %+v", i, n)
		}
	}
}

// FunctionCall (the legacy fast-path protocol) is forwarded.
func TestFunctionCall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, nil)
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// int4abs(int4) has OID 1397 in every PostgreSQL release.
	hj, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	fe := hj.Frontend
	arg := make([]byte, 4)
	binary.BigEndian.PutUint32(arg, uint32(0xFFFFFFFB)) // -5
	fe.Send(&pgproto3.FunctionCall{Function: 1397, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{arg}, ResultFormatCode: 1})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	hj.Conn.SetDeadline(time.Now().Add(5 * time.Second))
	var got int32 = -1
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.FunctionCallResponse:
			got = int32(binary.BigEndian.Uint32(m.Result))
		case *pgproto3.ErrorResponse:
			t.Fatalf("FunctionCall error: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			if got != 5 {
				t.Fatalf("int4abs(-5) = %d, want 5", got)
			}
			return
		}
	}
}

// Concurrent clients with different settings on one server connection:
// each sees its own application_name and DateStyle, whichever server runs
// its transaction.
func TestStartupParametersFollowClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 1 })
	styles := []string{"ISO, DMY", "SQL, MDY", "German, DMY"}
	var wg sync.WaitGroup
	errs := make(chan error, len(styles))
	for i, style := range styles {
		wg.Add(1)
		go func(i int, style string) {
			defer wg.Done()
			cfg, err := pgx.ParseConfig(dsn)
			if err != nil {
				errs <- err
				return
			}
			cfg.RuntimeParams["application_name"] = "client" + string(rune('A'+i))
			cfg.RuntimeParams["DateStyle"] = style
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(ctx)
			if got := c.PgConn().ParameterStatus("DateStyle"); got != style {
				errs <- errors.New("ParameterStatus DateStyle = " + got + ", want " + style)
				return
			}
			for j := 0; j < 50; j++ {
				var app, ds string
				if err := c.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('DateStyle')").Scan(&app, &ds); err != nil {
					errs <- err
					return
				}
				if app != cfg.RuntimeParams["application_name"] || ds != style {
					errs <- errors.New("client " + cfg.RuntimeParams["application_name"] + " saw application_name=" + app + " DateStyle=" + ds)
					return
				}
			}
		}(i, style)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The config used by the tests must itself be valid (guards the harness).
func TestTargetConfigValid(t *testing.T) {
	cfg := config.Default()
	cfg.Primary.Host = "127.0.0.1"
	cfg.Auth.Users = []config.User{{Name: "app", Password: "secret"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}
