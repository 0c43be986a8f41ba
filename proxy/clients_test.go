package proxy_test

import (
	"context"
	"fmt"
	"github.com/pgsluice/pgsluice/config"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// ---- 3. pgx default mode, 100 concurrent connections ----

// TestPgxConcurrentMixed runs 100 pgx connections in the default query
// exec mode (extended protocol with a prepared-statement cache) doing mixed
// parameterised reads, writes in transactions and batches, checking every
// value.
func TestPgxConcurrentMixed(t *testing.T) {
	dsn := startTarget(t, cluster, nil)
	asApp(t, `DROP TABLE IF EXISTS mixed_t, mixed_log;
		CREATE TABLE mixed_t (id int PRIMARY KEY, v text NOT NULL, n int8 NOT NULL);
		INSERT INTO mixed_t SELECT i, 'row-' || i, i * 3 FROM generate_series(1, 1000) i;
		CREATE TABLE mixed_log (id bigserial PRIMARY KEY, worker int NOT NULL, i int NOT NULL)`)
	const workers, iters = 100, 20
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	w := watchBackends(t, "app")
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := mixedWorker(ctx, dsn, wk, iters); err != nil {
				errs <- fmt.Errorf("worker %d: %w", wk, err)
			}
		}()
	}
	wg.Wait()
	maxBackends := w.stop()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n int
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT count(*) FROM mixed_log", nil, &n); err != nil {
		t.Fatal(err)
	}
	if n != workers*iters {
		t.Errorf("mixed_log has %d rows, want %d", n, workers*iters)
	}
	t.Logf("max app backends on primary: %d", maxBackends)
	if viaProxy && maxBackends > int64(defaultTargetConfig().PoolSize) {
		t.Errorf("saw %d backends, pool size %d", maxBackends, defaultTargetConfig().PoolSize)
	}
}

func mixedWorker(ctx context.Context, dsn string, wk, iters int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for i := range iters {
		var dbl int64
		var bang string
		if err := conn.QueryRow(ctx, "SELECT $1::int8 * 2, $2::text || '!'", int64(wk*1000+i), fmt.Sprint("w", wk)).Scan(&dbl, &bang); err != nil {
			return err
		}
		if dbl != int64(wk*1000+i)*2 || bang != fmt.Sprintf("w%d!", wk) {
			return fmt.Errorf("got %d %q", dbl, bang)
		}
		id := (wk*37+i*11)%1000 + 1
		var v string
		var n int64
		if err := conn.QueryRow(ctx, "SELECT v, n FROM mixed_t WHERE id = $1", id).Scan(&v, &n); err != nil {
			return err
		}
		if v != fmt.Sprintf("row-%d", id) || n != int64(id*3) {
			return fmt.Errorf("row %d: got %q %d", id, v, n)
		}
		var cnt int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM mixed_t WHERE id BETWEEN $1 AND $2", id, id+9).Scan(&cnt); err != nil {
			return err
		}
		if want := min(10, 1001-id); cnt != want {
			return fmt.Errorf("count from %d: got %d want %d", id, cnt, want)
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		var logID int64
		if err := tx.QueryRow(ctx, "INSERT INTO mixed_log (worker, i) VALUES ($1, $2) RETURNING id", wk, i).Scan(&logID); err != nil {
			tx.Rollback(ctx)
			return err
		}
		var seenWorker int
		if err := tx.QueryRow(ctx, "SELECT worker FROM mixed_log WHERE id = $1", logID).Scan(&seenWorker); err != nil || seenWorker != wk {
			tx.Rollback(ctx)
			return fmt.Errorf("read own insert: worker %d err %v", seenWorker, err)
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		b := &pgx.Batch{}
		b.Queue("SELECT $1::text", "batch-a")
		b.Queue("SELECT n FROM mixed_t WHERE id = $1", id)
		b.Queue("SELECT count(*) FROM mixed_log WHERE worker = $1", wk)
		br := conn.SendBatch(ctx, b)
		var s string
		var bn int64
		var mine int
		err1 := br.QueryRow().Scan(&s)
		err2 := br.QueryRow().Scan(&bn)
		err3 := br.QueryRow().Scan(&mine)
		if err := br.Close(); err != nil {
			return err
		}
		if err1 != nil || err2 != nil || err3 != nil || s != "batch-a" || bn != int64(id*3) || mine != i+1 {
			return fmt.Errorf("batch: %q %d %d (%v %v %v)", s, bn, mine, err1, err2, err3)
		}
	}
	return nil
}

// ---- 4. cancel ----

// TestCancel cancels a long pg_sleep through the context (pgx sends a
// CancelRequest) and expects SQLSTATE 57014 within a second; the same
// connection and a new one keep working, and a concurrent client's sleep
// is not cancelled.
func TestCancel(t *testing.T) {
	dsn := startTarget(t, cluster, nil)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, CancelRequestDelay: 0, DeadlineDelay: 10 * time.Second}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	// A bystander sleeping at the same time must not be cancelled.
	bystander, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close(ctx)
	byDone := make(chan error, 1)
	go func() {
		var s string
		err := bystander.QueryRow(ctx, "SELECT pg_sleep(1.5)::text || 'bystander'").Scan(&s)
		if err == nil && s != "bystander" {
			err = fmt.Errorf("got %q", s)
		}
		byDone <- err
	}()

	for round := range 3 {
		qctx, qcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		start := time.Now()
		_, err = conn.Exec(qctx, "SELECT pg_sleep(30)")
		elapsed := time.Since(start)
		qcancel()
		if got := sqlState(err); got != "57014" {
			t.Fatalf("round %d: err %v (SQLSTATE %q), want 57014 query_canceled", round, err, got)
		}
		// Far below the 30s sleep, so the statement was cancelled; wide
		// enough for a loaded machine to route the cancel request.
		if elapsed > 5*time.Second {
			t.Fatalf("round %d: cancel took %v, want < 5s (200ms timeout, far below the 30s sleep)", round, elapsed)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int * 3", round+1).Scan(&n); err != nil || n != 3*(round+1) {
			t.Fatalf("round %d: same connection after cancel: n=%d err=%v", round, n, err)
		}
	}

	// Explicit CancelRequest while a simple query runs.
	pc := conn.PgConn()
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = pc.CancelRequest(context.Background())
	}()
	_, err = pc.Exec(ctx, "SELECT pg_sleep(30)").ReadAll()
	if got := sqlState(err); got != "57014" {
		t.Fatalf("explicit CancelRequest: err %v, want 57014", err)
	}

	if err := <-byDone; err != nil {
		t.Fatalf("bystander: %v", err)
	}
	fresh, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close(ctx)
	var one int
	if err := fresh.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("new connection after cancel: %d %v", one, err)
	}
	// A cancel for a connection that is idle does nothing harmful.
	if err := fresh.PgConn().CancelRequest(ctx); err != nil {
		t.Fatalf("cancel of idle connection: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := fresh.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query after idle cancel: %d %v", one, err)
	}
}

// ---- 6. 2,000 clients at once ----

// TestManyClients connects 2,000 clients at once, each running SELECT with
// its own number and holding the connection briefly. Every one must be
// served. Direct PostgreSQL has max_connections=300, so the direct run
// gates concurrency at 150; through the proxy all 2,000 are concurrent and
// the backends on the primary stay within the pool size.
func TestManyClients(t *testing.T) {
	dsn := startTarget(t, cluster, func(tc *TargetConfig) {
		// md5 between the clients and the proxy too: with the default
		// SCRAM every client ran PBKDF2 in this process under -race.
		tc.AuthMethod = "md5"
		tc.Tweak = func(cfg *config.Config) {
			// The 2,000 clients' logins (SCRAM until md5 was chosen
			// above, PBKDF2 under -race) run in this very process and
			// starve the proxy's
			// goroutines that dial PostgreSQL: on an idle 2-core machine
			// the pool's first ten dials took 0.4-7.6 s, past the default
			// 5 s connect_timeout, and logins queued behind them past the
			// 15 s login timeout. What is tested here is multiplexing, not
			// dial latency (TestStalledNetworkPath covers the timeouts),
			// so give both room.
			cfg.Pool.ConnectTimeout = 60 * time.Second
			cfg.Pool.ClientLoginTimeout = 90 * time.Second
			// Likewise the queue: 2,000 clients on 10 backends under
			// -race on a loaded machine once waited past 10 s.
			cfg.Pool.AcquireTimeout = 60 * time.Second
		}
	})
	const clients = 2000
	gate := make(chan struct{}, clients)
	if !viaProxy {
		gate = make(chan struct{}, 150)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	w := watchBackends(t, "md5u")
	start := time.Now()
	var served atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	// md5u: md5 auth keeps 2,000 handshakes cheap on two cores (SCRAM is
	// exercised by TestAuth and every other test).
	md5dsn := dsnFor(t, dsn, "md5u", "md5pass", "app")
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gate <- struct{}{}
			defer func() { <-gate }()
			conn, err := pgconn.Connect(ctx, withParams(t, md5dsn, "connect_timeout", "60"))
			if err != nil {
				errs <- fmt.Errorf("client %d connect: %w", i, err)
				return
			}
			defer conn.Close(context.Background())
			res, err := conn.Exec(ctx, "SELECT "+strconv.Itoa(i)).ReadAll()
			if err != nil {
				errs <- fmt.Errorf("client %d query: %w", i, err)
				return
			}
			if got := string(res[0].Rows[0][0]); got != strconv.Itoa(i) {
				errs <- fmt.Errorf("client %d got %q", i, got)
				return
			}
			time.Sleep(20 * time.Millisecond)
			served.Add(1)
		}()
	}
	wg.Wait()
	maxBackends := w.stop()
	close(errs)
	nerr := 0
	for err := range errs {
		if nerr < 10 {
			t.Error(err)
		}
		nerr++
	}
	t.Logf("%d/%d clients served in %v; max md5u backends on primary %d (%d errors)",
		served.Load(), clients, time.Since(start).Round(time.Millisecond), maxBackends, nerr)
	if served.Load() != clients {
		t.Fatalf("served %d of %d clients", served.Load(), clients)
	}
	if viaProxy && maxBackends > int64(defaultTargetConfig().PoolSize) {
		t.Errorf("saw %d md5u backends, pool size %d", maxBackends, defaultTargetConfig().PoolSize)
	}
}

// ---- 7. authentication ----

// TestAuth checks SCRAM (app) and md5 (md5u) logins with right and wrong
// passwords, an unknown user and an unknown database.
func TestAuth(t *testing.T) {
	dsn := startTarget(t, cluster, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name, user, password, db string
		wantCode                 string // "" = success
	}{
		{"scram_ok", "app", "secret", "app", ""},
		{"scram_wrong_password", "app", "Secret", "app", "28P01"},
		{"scram_empty_password", "app", "", "app", "28P01"},
		{"md5_ok", "md5u", "md5pass", "app", ""},
		{"md5_wrong_password", "md5u", "md5pas", "app", "28P01"},
		{"unknown_user", "nosuchuser", "x", "app", "28P01"},
		{"unknown_database", "app", "secret", "nosuchdb", "3D000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pgconn.Connect(ctx, dsnFor(t, dsn, tc.user, tc.password, tc.db))
			if tc.wantCode != "" {
				if err == nil {
					conn.Close(ctx)
					t.Fatalf("connected, want SQLSTATE %s", tc.wantCode)
				}
				if got := sqlState(err); got != tc.wantCode {
					t.Fatalf("err %v (SQLSTATE %q), want %s", err, got, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			res, err := conn.Exec(ctx, "SELECT current_user, session_user").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if row := res[0].Rows[0]; string(row[0]) != tc.user || string(row[1]) != tc.user {
				t.Fatalf("current_user/session_user = %s/%s, want %s", row[0], row[1], tc.user)
			}
		})
	}
}

// ---- 8. SET search_path isolation ----

// TestSearchPathIsolation has client A set search_path to a schema only it
// uses and query it many times, while other clients on a tiny pool check
// they never see that search_path or its table.
func TestSearchPathIsolation(t *testing.T) {
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 2 })
	asApp(t, `DROP SCHEMA IF EXISTS iso_s1 CASCADE; CREATE SCHEMA iso_s1;
		CREATE TABLE iso_s1.only_in_s1 (id int PRIMARY KEY, v text); INSERT INTO iso_s1.only_in_s1 VALUES (1, 'secret-s1')`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	a, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	if _, err := a.Exec(ctx, "SET search_path TO iso_s1"); err != nil {
		t.Fatal(err)
	}
	const rounds, others = 150, 6
	var wg sync.WaitGroup
	errs := make(chan error, others+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range rounds {
			var v, sp string
			if err := a.QueryRow(ctx, "SELECT v FROM only_in_s1 WHERE id = $1", 1).Scan(&v); err != nil || v != "secret-s1" {
				errs <- fmt.Errorf("A round %d: v=%q err=%v", i, v, err)
				return
			}
			if err := a.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil || sp != "iso_s1" {
				errs <- fmt.Errorf("A round %d: search_path=%q err=%v", i, sp, err)
				return
			}
		}
	}()
	for b := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgconn.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for i := range rounds {
				res, err := conn.Exec(ctx, "SHOW search_path; SELECT to_regclass('only_in_s1') IS NULL").ReadAll()
				if err != nil {
					errs <- fmt.Errorf("B%d round %d: %w", b, i, err)
					return
				}
				if sp := string(res[0].Rows[0][0]); sp != `"$user", public` {
					errs <- fmt.Errorf("B%d round %d: search_path %q leaked from another client", b, i, sp)
					return
				}
				if hidden := string(res[1].Rows[0][0]); hidden != "t" {
					errs <- fmt.Errorf("B%d round %d: only_in_s1 visible without schema", b, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var sp string
	if err := a.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil || sp != "iso_s1" {
		t.Fatalf("A at the end: search_path=%q err=%v", sp, err)
	}
}

// ---- 9. named prepared statements ----

// TestNamedPreparedStatements has several clients prepare statements with
// the same names but different SQL on a tiny pool, execute them many times
// interleaved (also inside transactions), then Deallocate and re-Prepare.
func TestNamedPreparedStatements(t *testing.T) {
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const clients, iters = 6, 60
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for ci := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := preparedClient(ctx, dsn, ci, iters); err != nil {
				errs <- fmt.Errorf("client %d: %w", ci, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func preparedClient(ctx context.Context, dsn string, ci, iters int) error {
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	execOne := func(name string, params ...string) (string, error) {
		vals := make([][]byte, len(params))
		for i, p := range params {
			vals[i] = []byte(p)
		}
		res := conn.ExecPrepared(ctx, name, vals, nil, nil).Read()
		if res.Err != nil {
			return "", res.Err
		}
		if len(res.Rows) != 1 {
			return "", fmt.Errorf("%s: %d rows", name, len(res.Rows))
		}
		return string(res.Rows[0][0]), nil
	}
	sd, err := conn.Prepare(ctx, "s1", fmt.Sprintf("SELECT $1::int + %d", ci*1000), nil)
	if err != nil {
		return err
	}
	if len(sd.ParamOIDs) != 1 || len(sd.Fields) != 1 {
		return fmt.Errorf("s1 description: %d params, %d fields", len(sd.ParamOIDs), len(sd.Fields))
	}
	if _, err := conn.Prepare(ctx, "s2", "SELECT $1::text || '/' || $2::text", nil); err != nil {
		return err
	}
	for j := range iters {
		got, err := execOne("s1", strconv.Itoa(j))
		if err != nil {
			return fmt.Errorf("s1 iter %d: %w", j, err)
		}
		if want := strconv.Itoa(j + ci*1000); got != want {
			return fmt.Errorf("s1 iter %d: got %s want %s (another client's statement?)", j, got, want)
		}
		got, err = execOne("s2", fmt.Sprint("c", ci), strconv.Itoa(j))
		if err != nil || got != fmt.Sprintf("c%d/%d", ci, j) {
			return fmt.Errorf("s2 iter %d: %q %v", j, got, err)
		}
		if j%10 == 0 {
			// Interleave simple queries and a transaction using the statement.
			if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				return err
			}
			if got, err := execOne("s1", "5"); err != nil || got != strconv.Itoa(5+ci*1000) {
				return fmt.Errorf("s1 in txn: %q %v", got, err)
			}
			if _, err := conn.Exec(ctx, "COMMIT").ReadAll(); err != nil {
				return err
			}
		}
	}
	if err := conn.Deallocate(ctx, "s1"); err != nil {
		return fmt.Errorf("deallocate: %w", err)
	}
	if _, err := execOne("s1", "1"); sqlState(err) != "26000" {
		return fmt.Errorf("s1 after Deallocate: err %v, want SQLSTATE 26000", err)
	}
	// The connection is fine after that error and s2 still exists.
	if got, err := execOne("s2", "a", "b"); err != nil || got != "a/b" {
		return fmt.Errorf("s2 after failed s1: %q %v", got, err)
	}
	if _, err := conn.Prepare(ctx, "s1", "SELECT $1::int * 10", nil); err != nil {
		return fmt.Errorf("re-prepare: %w", err)
	}
	for j := range 10 {
		got, err := execOne("s1", strconv.Itoa(j))
		if err != nil || got != strconv.Itoa(j*10) {
			return fmt.Errorf("re-prepared s1: %q %v", got, err)
		}
	}
	// Preparing a name twice without Deallocate is an error (42P05).
	if _, err := conn.Prepare(ctx, "s1", "SELECT 2", nil); sqlState(err) != "42P05" {
		return fmt.Errorf("duplicate prepare: err %v, want 42P05", err)
	}
	return nil
}
