package proxy_test

// Fault tests (issue #7): the primary restarted, backends terminated, a
// stalled network path, clients killed mid-stream. Every wait is bounded by
// a deadline; a hang fails the test instead of stalling the suite.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy"
)

// ---- helpers ----

// serveAdmin serves the proxy's /metrics on a free port and returns its
// base URL. Shutdown (t.Cleanup of startProxy) closes it.
func serveAdmin(t *testing.T, srv *proxy.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeAdmin(ln)
	return "http://" + ln.Addr().String()
}

// scrape returns the /metrics text of the proxy.
func scrape(t testing.TB, base string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// metricSum adds up every sample of metric name (all label sets) in a
// Prometheus text exposition; -1 when there is none.
func metricSum(text, name string) float64 {
	sum, seen := 0.0, false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		seen = true
	}
	if !seen {
		return -1
	}
	return sum
}

// waitPoolDrained waits until no server connection is lent and no client
// waits, in every pool of the proxy.
func waitPoolDrained(t *testing.T, admin string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := scrape(t, admin)
		active, waiting := metricSum(m, "pgsluice_pool_active_connections"), metricSum(m, "pgsluice_pool_waiting_clients")
		if active <= 0 && waiting <= 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool slots not returned after 10s: active=%v waiting=%v", active, waiting)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGoroutines waits until the process runs at most base+slack
// goroutines, and fails with a dump of them otherwise.
func waitGoroutines(t *testing.T, base, slack int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+slack {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutine leak: %d goroutines, baseline %d (+%d allowed)\n%s", n, base, slack, buf)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// within runs f and fails the test when it takes longer than d: the
// guard against a client hanging.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: no answer within %s (hang)", what, d)
	}
	panic("unreachable")
}

// oneOf reports whether the SQLSTATE of err is one of codes.
func oneOf(err error, codes ...string) bool {
	c := sqlState(err)
	for _, x := range codes {
		if c == x {
			return true
		}
	}
	return false
}

// relay is a TCP relay between the proxy and PostgreSQL that can stop
// forwarding (a stalled network path: packets go nowhere, nothing is
// reset) and cut every connection (a network reset).
type relay struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	stalled bool
	resume  chan struct{} // closed when the stall ends
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	accepts atomic.Int64
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(r.resume)
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() (string, int) {
	a := r.ln.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.accepts.Add(1)
		r.track(c, true)
		r.wg.Add(1)
		go r.serve(c)
	}
}

func (r *relay) track(c net.Conn, add bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
}

// gate blocks while the relay is stalled; false when c was closed meanwhile.
func (r *relay) gate(c net.Conn) bool {
	r.mu.Lock()
	ch := r.resume
	_, open := r.conns[c]
	r.mu.Unlock()
	<-ch
	r.mu.Lock()
	defer r.mu.Unlock()
	_, still := r.conns[c]
	return open && still
}

func (r *relay) serve(down net.Conn) {
	defer r.wg.Done()
	defer func() { down.Close(); r.track(down, false) }()
	if !r.gate(down) {
		return
	}
	up, err := net.DialTimeout("tcp", r.target, 5*time.Second)
	if err != nil {
		return
	}
	r.track(up, true)
	defer func() { up.Close(); r.track(up, false) }()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !r.gate(src) {
					return
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(up, down)
	go pipe(down, up)
	<-done
	down.Close()
	up.Close()
	<-done
}

// stall stops all forwarding (new and existing connections) until unstall.
func (r *relay) stall() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stalled {
		r.stalled = true
		r.resume = make(chan struct{})
	}
}

func (r *relay) unstall() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stalled {
		r.stalled = false
		close(r.resume)
	}
}

// cut closes every relayed connection (both sides), as a network reset.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

// live is the number of sockets the relay holds open (two per relayed
// connection once it is forwarding, one while stalled before dialling).
func (r *relay) live() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func (r *relay) close() {
	r.ln.Close()
	r.unstall()
	r.cut()
	r.wg.Wait()
}

// ---- 1. primary restarted ----

// TestPrimaryRestart stops the primary (fast shutdown) under clients that
// are in the middle of a transaction or a query, and starts it again.
// In-flight clients get a clean 57P01/08006 error (never a hang); a client
// that queries while the primary is down gets a connection-class error
// quickly; once it is back, new and old clients succeed — idle clients whose
// pooled server connections died meanwhile never notice — and the pool
// refills. The transaction cut by the restart left no row.
func TestPrimaryRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS prs_t; CREATE TABLE prs_t(id int primary key)")
	const poolSize = 4
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) {
		c.PoolSize = poolSize
		c.Tweak = func(cfg *config.Config) { cfg.Pool.ConnectTimeout = 2 * time.Second }
	})
	admin := serveAdmin(t, srv)
	// Whatever happens, the shared cluster gets its primary back.
	t.Cleanup(func() {
		if err := cluster.StartNode(cluster.Primary); err != nil {
			t.Errorf("restart primary in cleanup: %v", err)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer ccancel()
		if err := cluster.WaitReplicaCaughtUp(cctx); err != nil {
			t.Logf("replica not caught up after the primary restart: %v", err)
		}
	})

	// Idle clients, each of which has used a server connection (now idle
	// in the pool).
	idle := make([]*pgx.Conn, 3)
	for i := range idle {
		idle[i] = connect(t, ctx, dsn)
		if _, err := idle[i].Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	// In flight: one idle in a transaction after an INSERT, one running a
	// long query.
	inTx := connect(t, ctx, dsn)
	tx, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO prs_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	sleeper := connect(t, ctx, dsn)
	sleepErr := make(chan error, 1)
	go func() {
		_, err := sleeper.Exec(ctx, "SELECT pg_sleep(60)")
		sleepErr <- err
	}()
	waitActivity(t, ctx, "state = 'active' AND query LIKE 'SELECT pg_sleep(60)%'", 1)

	stopAt := time.Now()
	if err := cluster.StopNode(cluster.Primary, "fast"); err != nil {
		t.Fatal(err)
	}
	t.Logf("primary stopped in %s", time.Since(stopAt).Round(time.Millisecond))

	// In flight: a clean error from the admin_shutdown / connection
	// failure family, promptly.
	select {
	case err := <-sleepErr:
		if err == nil || !oneOf(err, "57P01", "08006") {
			t.Errorf("running query when the primary stopped: got %v, want SQLSTATE 57P01 or 08006", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("running query did not end within 15s of the primary stopping")
	}
	err = within(t, 15*time.Second, "query in a transaction cut by the restart", func() error {
		_, err := tx.Exec(ctx, "INSERT INTO prs_t VALUES (2)")
		return err
	})
	if err == nil || !oneOf(err, "57P01", "08006") {
		t.Errorf("transaction cut by the restart: got %v, want SQLSTATE 57P01 or 08006", err)
	}

	// While the primary is down: a prompt connection-class error, no hang.
	downErr := within(t, 15*time.Second, "query while the primary is down", func() error {
		_, err := idle[0].Exec(ctx, "SELECT 1")
		return err
	})
	if downErr == nil || !strings.HasPrefix(sqlState(downErr), "08") && !strings.HasPrefix(sqlState(downErr), "57") {
		t.Errorf("query while the primary is down: got %v, want a 08xxx/57xxx SQLSTATE", downErr)
	} else if sqlState(downErr) == "08000" && !strings.Contains(downErr.Error(), "could not connect to server "+cluster.Primary.Addr()) {
		t.Errorf("query while the primary is down: %v does not name the server", downErr)
	}

	if err := cluster.StartNode(cluster.Primary); err != nil {
		t.Fatal(err)
	}
	t.Logf("primary back after %s", time.Since(stopAt).Round(time.Millisecond))

	// Idle clients that did nothing while it was down see nothing: their
	// pooled server connections died, and the pool never lends a dead one.
	for i, c := range idle[1:] {
		var n int
		err := within(t, 15*time.Second, "idle client after the restart", func() error {
			return c.QueryRow(ctx, "SELECT $1::int", i).Scan(&n)
		})
		if err != nil || n != i {
			t.Errorf("idle client %d, first query after the restart: n=%d err=%v (a dead pooled connection was lent)", i+1, n, err)
		}
	}
	// New clients succeed, many at once: the pool refills to its size.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- fmt.Errorf("new client %d: %w", w, err)
				return
			}
			defer c.Close(context.Background())
			for i := 0; i < 20; i++ {
				if _, err := c.Exec(ctx, "SELECT pg_sleep(0.005)"); err != nil {
					errs <- fmt.Errorf("new client %d query %d: %w", w, i, err)
					return
				}
			}
		}(w)
	}
	within(t, 60*time.Second, "8 new clients after the restart", func() struct{} { wg.Wait(); return struct{}{} })
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m := scrape(t, admin)
	if idleN, active := metricSum(m, "pgsluice_pool_idle_connections"), metricSum(m, "pgsluice_pool_active_connections"); idleN+active < 2 || idleN+active > poolSize {
		t.Errorf("pool after the restart: %v idle + %v active, want it refilled (2..%d)", idleN, active, poolSize)
	}
	var rows int
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT count(*) FROM prs_t", nil, &rows); err != nil || rows != 0 {
		t.Errorf("rows of the transaction cut by the restart: %d (err %v), want 0", rows, err)
	}
}

// waitActivity waits (10s) until exactly want client backends of app on
// the primary match the pg_stat_activity condition cond.
func waitActivity(t *testing.T, ctx context.Context, cond string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var n int
	for {
		err := cluster.QueryRow(ctx, cluster.Primary,
			"SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND "+cond, nil, &n)
		if err == nil && n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pg_stat_activity: %d backends where %s after 10s (err %v), want %d", n, cond, err, want)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ---- 2. pg_terminate_backend ----

// waitBackendsGone waits (up to 10s) until none of pids is left in
// pg_stat_activity on the primary: pg_terminate_backend only signals, the
// server ends the session a moment later.
func waitBackendsGone(t *testing.T, ctx context.Context, pids []int32) {
	t.Helper()
	waitCountZero(t, ctx, 10*time.Second, "terminated backends still there",
		"SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids)
}

// waitCountZero polls the count query q on the primary until it returns
// 0, failing the test with what after timeout.
func waitCountZero(t *testing.T, ctx context.Context, timeout time.Duration, what, q string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var n int
		if err := cluster.QueryRow(ctx, cluster.Primary, q, args, &n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s after %v", n, what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTerminatedBackends terminates every idle server connection of a pool
// at once: no client ever sees it (sequential and concurrent clients, pool
// of 2). Then, with two clients in transactions, terminating one's server
// connection fails only that client; the other commits.
func TestTerminatedBackends(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS term_t; CREATE TABLE term_t(id int primary key)")
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 2 })
	clients := make([]*pgx.Conn, 4)
	for i := range clients {
		clients[i] = connect(t, ctx, dsn)
	}
	// terminateIdle terminates every idle server connection of app and
	// waits until they are gone (pg_terminate_backend only signals; the
	// server ends the session a moment later). A client racing with that
	// moment may see 57P01, as it would through any pooler: the test is
	// about connections that died while idle in the pool.
	terminateIdle := func() int {
		rows, err := cluster.Query(ctx, cluster.Primary,
			"SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' AND state = 'idle' AND pid <> pg_backend_pid()")
		if err != nil {
			t.Fatal(err)
		}
		var pids []int32
		for _, r := range rows {
			pids = append(pids, r[0].(int32))
		}
		waitBackendsGone(t, ctx, pids)
		return len(pids)
	}
	for round := 0; round < 5; round++ {
		// Fill the pool with two server connections.
		var wg sync.WaitGroup
		for _, c := range clients[:2] {
			wg.Add(1)
			go func(c *pgx.Conn) {
				defer wg.Done()
				if _, err := c.Exec(ctx, "SELECT pg_sleep(0.05)"); err != nil {
					t.Errorf("round %d, filling the pool: %v", round, err)
				}
			}(c)
		}
		wg.Wait()
		if n := terminateIdle(); n == 0 {
			t.Fatalf("round %d: no idle server connection to terminate", round)
		}
		// Concurrent clients right after: none sees the termination.
		errs := make(chan error, len(clients))
		for i, c := range clients {
			wg.Add(1)
			go func(i int, c *pgx.Conn) {
				defer wg.Done()
				var got int
				if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&got); err != nil || got != i {
					errs <- fmt.Errorf("round %d client %d after idle server connections were terminated: got %d, %v", round, i, got, err)
				}
			}(i, c)
		}
		within(t, 30*time.Second, "clients after termination", func() struct{} { wg.Wait(); return struct{}{} })
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}

	// In a transaction: only the victim fails.
	victim, bystander := clients[0], clients[1]
	vtx, err := victim.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	btx, err := bystander.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var vpid int
	if err := vtx.QueryRow(ctx, "INSERT INTO term_t VALUES (1) RETURNING pg_backend_pid()").Scan(&vpid); err != nil {
		t.Fatal(err)
	}
	if _, err := btx.Exec(ctx, "INSERT INTO term_t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, cluster.Primary, "SELECT pg_terminate_backend($1)", vpid); err != nil {
		t.Fatal(err)
	}
	verr := within(t, 15*time.Second, "victim's commit", func() error { return vtx.Commit(ctx) })
	if verr == nil || !oneOf(verr, "57P01", "08006") {
		t.Errorf("victim: commit on a terminated server connection: %v, want SQLSTATE 57P01 or 08006", verr)
	}
	if err := within(t, 15*time.Second, "bystander's commit", func() error { return btx.Commit(ctx) }); err != nil {
		t.Fatalf("bystander's transaction failed: %v", err)
	}
	var ids []int
	rows, err := cluster.Query(ctx, cluster.Primary, "SELECT id FROM term_t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		ids = append(ids, int(r[0].(int32)))
	}
	if fmt.Sprint(ids) != "[2]" {
		t.Errorf("rows after the victim was terminated: %v, want [2] (victim's insert rolled back, bystander's committed)", ids)
	}
	// The victim reconnects and works; the pool is intact.
	again := connect(t, ctx, dsn)
	if _, err := again.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("new client after the termination: %v", err)
	}
}

// ---- 3. a stalled network path ----

// TestStalledNetworkPath puts a relay between the proxy and PostgreSQL.
// With the path stalled, opening a server connection fails after
// pool.connect_timeout with FATAL 08000 naming the setting (at login and
// mid-session), and a client waiting for the pool's only slot meanwhile
// gets 53300 naming pool.acquire_timeout. When the path recovers the same
// clients work again, and nothing leaks: no pool slot stays lent, no
// relayed connection stays open, no goroutine is left behind.
func TestStalledNetworkPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const connectTimeout = 1500 * time.Millisecond
	const acquireTimeout = 400 * time.Millisecond
	r := startRelay(t, cluster.Primary.Addr())
	host, port := r.addr()
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) {
		c.PoolSize = 1
		c.AcquireTimeout = acquireTimeout
		c.Tweak = func(cfg *config.Config) {
			cfg.Primary = config.Node{Host: host, Port: port, Weight: 1}
			cfg.Pool.ConnectTimeout = connectTimeout
			cfg.Pool.ClientLoginTimeout = 10 * time.Second
		}
	})
	admin := serveAdmin(t, srv)

	t.Run("login", func(t *testing.T) {
		// The very first login needs a server connection: stalled, it
		// fails after connect_timeout with a clear error.
		r.stall()
		defer r.unstall()
		start := time.Now()
		lerr := within(t, 20*time.Second, "login over a stalled path", func() error {
			c, err := pgconn.Connect(ctx, dsn)
			if err == nil {
				c.Close(ctx)
			}
			return err
		})
		took := time.Since(start)
		if lerr == nil {
			t.Fatal("login succeeded over a stalled path")
		}
		if sqlState(lerr) != "08000" || !strings.Contains(lerr.Error(), "pool.connect_timeout") {
			t.Fatalf("login over a stalled path: %v, want FATAL 08000 naming pool.connect_timeout", lerr)
		}
		if took < connectTimeout*2/3 {
			t.Errorf("login failed after %s, before pool.connect_timeout (%s)", took, connectTimeout)
		}
	})
	r.cut()
	waitPoolDrained(t, admin)

	a := connect(t, ctx, dsn)
	b := connect(t, ctx, dsn)
	if _, err := a.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waitPoolDrained(t, admin)
	// Baseline: two logged-in clients, one pooled server connection
	// relayed, the admin endpoint and its keep-alive connection.
	base := runtime.NumGoroutine()
	// The pooled connection must have sat idle for longer than
	// proxy.PeekAfter, or acquire lends it without checking it, by design,
	// and a gets 08006 on the cut connection instead of dialling through
	// the stalled path (on a quiet machine waitPoolDrained returns within
	// that time).
	time.Sleep(4 * proxy.PeekAfter)

	// The path stalls and the pooled server connection is reset.
	r.stall()
	r.cut()
	aErr := make(chan error, 1)
	aStart := time.Now()
	go func() {
		_, err := a.Exec(ctx, "SELECT 1")
		aErr <- err
	}()
	// Let a take the pool's only slot (it is now dialling through the
	// stalled path), then b waits for it.
	deadline := time.Now().Add(5 * time.Second)
	for metricSum(scrape(t, admin), "pgsluice_pool_active_connections") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("client a never took the pool slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	bStart := time.Now()
	_, berr := b.Exec(ctx, "SELECT 1")
	bTook := time.Since(bStart)
	if sqlState(berr) != "53300" || !strings.Contains(berr.Error(), "pool.acquire_timeout") {
		t.Errorf("client waiting for the slot: %v, want 53300 naming pool.acquire_timeout", berr)
	}
	if bTook < acquireTimeout/2 || bTook > connectTimeout+5*time.Second {
		t.Errorf("acquire timeout fired after %s, want about %s", bTook, acquireTimeout)
	}
	select {
	case err := <-aErr:
		took := time.Since(aStart)
		if sqlState(err) != "08000" || !strings.Contains(err.Error(), "pool.connect_timeout") {
			t.Errorf("client whose server connection could not be opened: %v, want 08000 naming pool.connect_timeout", err)
		}
		if took < connectTimeout/2 {
			t.Errorf("connect timeout fired after %s, want about %s", took, connectTimeout)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("client a hung on a stalled path (no connect timeout)")
	}

	// The path recovers: b (still connected) and a new a work again.
	r.unstall()
	var n int
	if err := within(t, 15*time.Second, "query after recovery", func() error { return b.QueryRow(ctx, "SELECT 42").Scan(&n) }); err != nil || n != 42 {
		t.Fatalf("after the path recovered: n=%d err=%v", n, err)
	}
	a2 := connect(t, ctx, dsn)
	if err := a2.QueryRow(ctx, "SELECT 43").Scan(&n); err != nil || n != 43 {
		t.Fatalf("new client after the path recovered: n=%d err=%v", n, err)
	}
	a.Close(ctx)
	b.Close(ctx)
	a2.Close(ctx)
	waitPoolDrained(t, admin)
	// One idle server connection may stay pooled: two relay sockets.
	deadline = time.Now().Add(10 * time.Second)
	for r.live() > 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d relayed sockets still open, want at most 2 (one pooled server connection)", r.live())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The same state as the baseline, less two client sessions.
	waitGoroutines(t, base, 2)
}

// ---- 4. clients killed mid-stream ----

// TestClientKilledMidStream kills a client (socket closed, no Terminate)
// in the middle of COPY FROM STDIN, in the middle of a large result, and
// after an INSERT in an open transaction, on a pool of one server
// connection. Each time: no row is written, no backend is left idle in a
// transaction or busy, the pool slot comes back and the pool keeps
// serving.
func TestClientKilledMidStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS kms_t; CREATE TABLE kms_t(id int primary key, pad text)")
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) { c.PoolSize = 1; c.AcquireTimeout = 5 * time.Second })
	admin := serveAdmin(t, srv)

	// hijack logs in through the proxy and returns the raw connection.
	hijack := func(t *testing.T) (net.Conn, *pgproto3.Frontend) {
		pc, err := pgconn.Connect(ctx, withParams(t, dsn, "application_name", "kms"))
		if err != nil {
			t.Fatal(err)
		}
		hc, err := pc.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hc.Conn.Close() })
		hc.Conn.SetDeadline(time.Now().Add(30 * time.Second))
		// hc.Frontend, not a new reader on hc.Conn: pgconn may have a
		// background read in flight (its write-deadlock guard), whose
		// bytes only its own reader sees.
		return hc.Conn, hc.Frontend
	}
	// until reads messages until one satisfies stop.
	until := func(t *testing.T, fe *pgproto3.Frontend, stop func(pgproto3.BackendMessage) bool) {
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("server error %s %s", e.Code, e.Message)
			}
			if stop(msg) {
				return
			}
		}
	}
	cases := []struct {
		name string
		run  func(t *testing.T, conn net.Conn, fe *pgproto3.Frontend)
	}{
		{"mid_copy_from_stdin", func(t *testing.T, conn net.Conn, fe *pgproto3.Frontend) {
			fe.Send(&pgproto3.Query{String: "COPY kms_t (id, pad) FROM STDIN"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			until(t, fe, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyInResponse); return ok })
			for i := 1; i <= 1000; i++ {
				fe.Send(&pgproto3.CopyData{Data: []byte(fmt.Sprintf("%d\tx\n", i))})
			}
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			waitActivity(t, ctx, "application_name = 'kms' AND state = 'active' AND query LIKE 'COPY kms_t%'", 1)
		}},
		{"mid_result", func(t *testing.T, conn net.Conn, fe *pgproto3.Frontend) {
			fe.Send(&pgproto3.Query{String: "SELECT g, repeat('x', 200) FROM generate_series(1, 5000000) g"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			rows := 0
			until(t, fe, func(m pgproto3.BackendMessage) bool {
				if _, ok := m.(*pgproto3.DataRow); ok {
					rows++
				}
				return rows == 1000
			})
		}},
		{"mid_transaction_after_insert", func(t *testing.T, conn net.Conn, fe *pgproto3.Frontend) {
			fe.Send(&pgproto3.Query{String: "BEGIN; INSERT INTO kms_t VALUES (1, 'half')"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			until(t, fe, func(m pgproto3.BackendMessage) bool {
				z, ok := m.(*pgproto3.ReadyForQuery)
				if ok && z.TxStatus != 'T' {
					t.Fatalf("status %q after BEGIN; INSERT, want T", z.TxStatus)
				}
				return ok
			})
			waitActivity(t, ctx, "application_name = 'kms' AND state = 'idle in transaction'", 1)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, fe := hijack(t)
			tc.run(t, conn, fe)
			conn.Close() // killed: no Terminate, no COMMIT
			waitPoolDrained(t, admin)
			waitActivity(t, ctx, "application_name = 'kms' AND state <> 'idle'", 0)
			// The pool of one serves the next client, which sees no row.
			next := connect(t, ctx, dsn)
			var n int
			if err := within(t, 15*time.Second, "next client", func() error {
				return next.QueryRow(ctx, "SELECT count(*) FROM kms_t").Scan(&n)
			}); err != nil {
				t.Fatalf("next client on the pool of one: %v", err)
			}
			if n != 0 {
				t.Fatalf("%d rows in kms_t after the client was killed, want 0", n)
			}
			next.Close(ctx)
			waitPoolDrained(t, admin)
		})
	}
	var n int
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'", nil, &n); err != nil || n != 0 {
		t.Fatalf("%d sessions idle in transaction at the end (err %v)", n, err)
	}
}
