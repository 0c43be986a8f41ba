package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// updateGolden rewrites testdata/*.out from the current run (review the diff).
var updateGolden = flag.Bool("update-integration", false, "rewrite proxy/testdata/*.out golden files")

// The package shares one cluster (primary + replica + redis) started by
// TestMain; tests create their own schemas/tables so they do not collide.
var (
	cluster *local.Cluster
	// testTLS holds the self-signed certificate PostgreSQL serves (and the
	// proxy may serve when TargetConfig.TLS is set). caFile is its PEM
	// path, usable as sslrootcert.
	testTLS struct {
		certPEM, keyPEM []byte
		cert            tls.Certificate
		caFile          string
	}
	serverLog logRing
)

// logRing keeps the last server log lines; they are printed when the
// package fails, or streamed live with PGSLUICE_TEST_SERVER_LOGS=1.
type logRing struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRing) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	if os.Getenv("PGSLUICE_TEST_SERVER_LOGS") != "" {
		fmt.Fprintln(os.Stderr, line)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) >= 300 {
		r.lines = r.lines[1:]
	}
	r.lines = append(r.lines, line)
}

func (r *logRing) dump(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "---- last %d server log lines ----\n%s\n", len(r.lines), strings.Join(r.lines, "\n"))
}

func TestMain(m *testing.M) {
	flag.Parse()
	if addr := os.Getenv(stormChildEnv); addr != "" {
		os.Exit(stormChild(addr)) // storm_test.go: a client process, no cluster
	}
	if fuzzOnly() {
		// The fuzz targets here are pure; a cluster per fuzz worker
		// process costs seconds of start-up and shutdown that eat into
		// -fuzztime (CI once failed with "context deadline exceeded").
		os.Exit(m.Run())
	}
	os.Exit(runTests(m))
}

// fuzzOnly reports whether this process only fuzzes: a fuzz worker, or the
// fuzz coordinator with -run matching no test.
func fuzzOnly() bool {
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return true
	}
	fz, run := flag.Lookup("test.fuzz"), flag.Lookup("test.run")
	return fz != nil && fz.Value.String() != "" && run != nil && run.Value.String() == "^$"
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pgsluice-proxy-test-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := makeTestCert(dir); err != nil {
		fmt.Fprintln(os.Stderr, "test certificate:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	cluster, err = local.Start(ctx, local.Options{
		Replica: true,
		Redis:   true,
		Dir:     filepath.Join(dir, "cluster"),
		Logf:    serverLog.logf,
		Users:   []local.User{{Name: "md5u", Password: "md5pass", Auth: "md5"}},
		// TestPgbench runs 200 clients straight through when direct; the
		// harness default of 300 is what makes that possible. Spelled out
		// here because the suite depends on it.
		// pg_stat_statements counts executions for the cache tests.
		PGConf:        []string{"max_connections = 300", "shared_preload_libraries = 'pg_stat_statements'"},
		ServerCertPEM: testTLS.certPEM,
		ServerKeyPEM:  testTLS.keyPEM,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start local cluster:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "proxy tests: cluster up in %v (primary %s, replica %s, redis %s)\n",
		time.Since(start).Round(time.Millisecond), cluster.Primary.Addr(), cluster.Replica.Addr(), cluster.Redis.Addr())
	code := m.Run()
	if code != 0 {
		serverLog.dump(os.Stderr)
	}
	if err := cluster.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// makeTestCert creates a self-signed ECDSA certificate for 127.0.0.1 and
// localhost, valid for a day, and writes it to dir/ca.crt.
func makeTestCert(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"pgsluice tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	testTLS.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	testTLS.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if testTLS.cert, err = tls.X509KeyPair(testTLS.certPEM, testTLS.keyPEM); err != nil {
		return err
	}
	testTLS.caFile = filepath.Join(dir, "ca.crt")
	return os.WriteFile(testTLS.caFile, testTLS.certPEM, 0o644)
}

// ---- small helpers shared by the integration tests ----

// dsnFor returns base with user, password and database replaced.
func dsnFor(t testing.TB, base, user, password, db string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	if password == "" {
		u.User = url.User(user)
	} else {
		u.User = url.UserPassword(user, password)
	}
	u.Path = "/" + db
	return u.String()
}

// withParams returns dsn with the given query parameters set (k, v, k, v...).
func withParams(t testing.TB, dsn string, kv ...string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// hostPort returns the host:port of a DSN.
func hostPort(t testing.TB, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	return u.Host
}

// sqlState returns the SQLSTATE of err, or "" when it carries none.
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// asApp runs sql (simple protocol, multi-statement allowed) as `app`
// directly on the primary, so test tables are owned by `app`.
func asApp(t testing.TB, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	if err != nil {
		t.Fatalf("connect primary as app: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("setup SQL %q: %v", sql, err)
	}
}

// backendWatcher polls pg_stat_activity on the primary every 100ms and
// records the largest number of client backends of user `app` it saw.
type backendWatcher struct {
	max    atomic.Int64
	polls  atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
}

func watchBackends(t testing.TB, user string) *backendWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := cluster.Conn(ctx, cluster.Primary)
	if err != nil {
		cancel()
		t.Fatalf("watcher connect: %v", err)
	}
	w := &backendWatcher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var n int64
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = $1 AND application_name NOT LIKE 'pgsluice\\_%'", user).Scan(&n); err == nil {
				w.polls.Add(1)
				for {
					cur := w.max.Load()
					if n <= cur || w.max.CompareAndSwap(cur, n) {
						break
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// stop ends polling and returns the maximum seen.
func (w *backendWatcher) stop() int64 {
	w.cancel()
	<-w.done
	return w.max.Load()
}

// ---- 1. psql scripts against golden output ----

// TestPsqlScripts runs every testdata/*.sql through psql (read from stdin
// so messages say <stdin>, echoing input with -a) and compares stdout+stderr
// with testdata/NAME.out. Run with -update-integration to rewrite them.
func TestPsqlScripts(t *testing.T) {
	dsn := startTarget(t, cluster, nil)
	scripts, err := filepath.Glob("testdata/*.sql")
	if err != nil || len(scripts) < 4 {
		t.Fatalf("want at least 4 testdata/*.sql scripts, got %v (%v)", scripts, err)
	}
	for _, script := range scripts {
		name := strings.TrimSuffix(filepath.Base(script), ".sql")
		t.Run(name, func(t *testing.T) {
			in, err := os.Open(script)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, cluster.Bin("psql"), "-X", "-a", "-v", "ON_ERROR_STOP=0", "-d", dsn, "-f", "-")
			cmd.Env = cleanPGEnv()
			cmd.Stdin = in
			var out bytes.Buffer
			cmd.Stdout = &out
			cmd.Stderr = &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("psql: %v\n%s", err, out.String())
			}
			golden := strings.TrimSuffix(script, ".sql") + ".out"
			if *updateGolden {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run with -update-integration to create): %v", err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("psql output differs from %s\n%s", golden, lineDiff(string(want), out.String()))
			}
		})
	}
}

// cleanPGEnv returns the environment without libpq variables that could
// change what psql/pgbench do, and with a fixed locale.
func cleanPGEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "PGCONNECT_TIMEOUT=10")
}

// lineDiff shows the first differing lines of want and got with context.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			lo := max(0, i-3)
			var b strings.Builder
			for j := lo; j < i; j++ {
				if j < len(g) {
					fmt.Fprintf(&b, "   %4d  %s\n", j+1, g[j])
				}
			}
			fmt.Fprintf(&b, "-  %4d  %s\n+  %4d  %s\n", i+1, wl, i+1, gl)
			return b.String()
		}
	}
	return "(no difference)"
}

// ---- 2. pgbench ----

var (
	processedRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failedRE    = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// TestPgbench initialises pgbench tables directly on the primary, then runs
// the select-only (-S) and simple-update (-N) scripts through the target
// with 200 clients in each query mode, asserting every transaction ran and
// none failed. A watcher counts app backends on the primary meanwhile: via
// the proxy they must never exceed the pool size.
func TestPgbench(t *testing.T) {
	cfg := defaultTargetConfig()
	dsn := startTarget(t, cluster, nil)
	appDirect := cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase)
	init := exec.Command(cluster.Bin("pgbench"), "-i", "-s", "1", "-q", appDirect)
	init.Env = cleanPGEnv()
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	const clients, perClient = 200, 20
	for _, script := range []string{"-S", "-N"} {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			t.Run(strings.TrimPrefix(script, "-")+"_"+mode, func(t *testing.T) {
				w := watchBackends(t, local.AppUser)
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()
				start := time.Now()
				cmd := exec.CommandContext(ctx, cluster.Bin("pgbench"), script, "-M", mode,
					"-c", strconv.Itoa(clients), "-j", "2", "-t", strconv.Itoa(perClient), "-n", dsn)
				cmd.Env = cleanPGEnv()
				out, err := cmd.CombinedOutput()
				maxBackends := w.stop()
				if err != nil {
					t.Fatalf("pgbench %s -M %s: %v\n%s", script, mode, err, out)
				}
				m := processedRE.FindSubmatch(out)
				if m == nil {
					t.Fatalf("no processed count in output:\n%s", out)
				}
				processed, _ := strconv.Atoi(string(m[1]))
				if processed != clients*perClient {
					t.Errorf("processed %d transactions, want %d\n%s", processed, clients*perClient, out)
				}
				f := failedRE.FindSubmatch(out)
				if f == nil || string(f[1]) != "0" {
					t.Errorf("want 'number of failed transactions: 0' in output:\n%s", out)
				}
				t.Logf("pgbench %s -M %s: %d txns in %v, max app backends on primary %d (%d polls)",
					script, mode, processed, time.Since(start).Round(time.Millisecond), maxBackends, w.polls.Load())
				if w.polls.Load() == 0 {
					t.Fatal("backend watcher never polled")
				}
				if viaProxy {
					if maxBackends > int64(cfg.PoolSize) {
						t.Errorf("saw %d app backends on the primary, pool size is %d", maxBackends, cfg.PoolSize)
					}
				} else if maxBackends <= int64(cfg.PoolSize) {
					// Direct: every pgbench client has its own backend; the
					// watcher must see far more than a pool's worth.
					t.Errorf("direct run: watcher saw only %d app backends with %d clients", maxBackends, clients)
				}
			})
		}
	}
	var n int
	if err := cluster.QueryRow(context.Background(), cluster.Primary, "SELECT count(*) FROM pgbench_history", nil, &n); err != nil {
		t.Fatal(err)
	}
	if n != 3*clients*perClient {
		t.Errorf("pgbench_history has %d rows, want %d (one per -N transaction)", n, 3*clients*perClient)
	}
}

// ---- 5. client killed in the middle of a transaction ----

// TestClientKilledMidTransaction opens a transaction that updates a row and
// then vanishes (socket closed without Terminate, psql SIGKILLed, or a
// polite Terminate without COMMIT). The update must be rolled back, its lock
// released, and no backend left 'idle in transaction'.
func TestClientKilledMidTransaction(t *testing.T) {
	dsn := startTarget(t, cluster, nil)
	asApp(t, "DROP TABLE IF EXISTS kill_t; CREATE TABLE kill_t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO kill_t VALUES (1, 0)")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	openTxn := func(t *testing.T) *pgconn.PgConn {
		conn, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		res, err := conn.Exec(ctx, "BEGIN; UPDATE kill_t SET v = v + 1 WHERE id = 1").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if got := res[1].CommandTag.String(); got != "UPDATE 1" {
			t.Fatalf("command tag %q, want UPDATE 1", got)
		}
		if conn.TxStatus() != 'T' {
			t.Fatalf("TxStatus %q, want T", conn.TxStatus())
		}
		waitIdleInTxn(t, ctx, 1)
		return conn
	}

	cases := []struct {
		name string
		kill func(t *testing.T)
	}{
		{"close_socket", func(t *testing.T) {
			conn := openTxn(t)
			if err := conn.Conn().Close(); err != nil {
				t.Fatal(err)
			}
		}},
		{"close_socket_mid_statement", func(t *testing.T) {
			// The client vanishes while a long statement of its
			// transaction runs: the proxy cancels the statement, so the
			// rollback (and the lock) does not wait for the statement.
			conn := openTxn(t)
			q := "SELECT pg_sleep(60) /* kill_t */"
			msg := binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(4+len(q)+1))
			if _, err := conn.Conn().Write(append(append(msg, q...), 0)); err != nil {
				t.Fatal(err)
			}
			running := func() int {
				var n int
				if err := cluster.QueryRow(ctx, cluster.Primary,
					"SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active' AND query LIKE 'SELECT pg_sleep(60)%'", nil, &n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			defer wcancel()
			waitFor(t, wctx, "the statement to run", func() bool { return running() == 1 })
			if err := conn.Conn().Close(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, wctx, "the statement to be cancelled", func() bool { return running() == 0 })
		}},
		{"terminate_without_commit", func(t *testing.T) {
			conn := openTxn(t)
			if err := conn.Close(ctx); err != nil {
				t.Fatal(err)
			}
		}},
		{"kill_psql", func(t *testing.T) {
			cmd := exec.Command(cluster.Bin("psql"), "-X", "-q", "-d", dsn)
			cmd.Env = cleanPGEnv()
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				cmd.Process.Kill() // also when the test fails before the kill below
				cmd.Wait()
			}()
			if _, err := io.WriteString(stdin, "BEGIN;\nUPDATE kill_t SET v = v + 1 WHERE id = 1;\n"); err != nil {
				t.Fatal(err)
			}
			// stdin stays open: psql waits for more input inside the
			// transaction until it is killed.
			waitIdleInTxn(t, ctx, 1)
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.kill(t)
			waitIdleInTxn(t, ctx, 0)
			var v int
			if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT v FROM kill_t WHERE id = 1", nil, &v); err != nil {
				t.Fatal(err)
			}
			if v != 0 {
				t.Fatalf("v = %d after the client died mid-transaction, want 0 (rolled back)", v)
			}
			// The row lock is gone: an update with a lock_timeout succeeds.
			// (10s: time for a rollback still finishing on a loaded
			// machine, while a lock that is never released still fails.)
			if err := cluster.Exec(ctx, cluster.Primary, "SET lock_timeout = '10s'; UPDATE kill_t SET v = v WHERE id = 1"); err != nil {
				t.Fatalf("row still locked: %v", err)
			}
			// And the target still serves new clients.
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			if err := conn.QueryRow(ctx, "SELECT v FROM kill_t WHERE id = $1", 1).Scan(&v); err != nil || v != 0 {
				t.Fatalf("new client reads v=%d err=%v", v, err)
			}
		})
	}
}

// waitIdleInTxn waits (up to 30s: the machine may be loaded) until exactly
// want backends of user app on the primary are idle in a transaction that
// touched kill_t.
func waitIdleInTxn(t *testing.T, ctx context.Context, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var n int
	for {
		err := cluster.QueryRow(ctx, cluster.Primary,
			"SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%' AND query LIKE '%kill_t%'", nil, &n)
		if err != nil {
			t.Fatal(err)
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backends idle in transaction after 30s, want %d", n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- 10. malformed input over raw TCP ----

// TestBadInput sends malformed bytes before and after startup. Each time
// the server must answer with an ErrorResponse carrying a protocol-level
// SQLSTATE or close the connection, within a few seconds, while a healthy
// client keeps querying without a single failure.
func TestBadInput(t *testing.T) {
	dsn := startTarget(t, cluster, nil)
	addr := hostPort(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The healthy client.
	healthy, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer healthy.Close(ctx)
	stopHealthy := make(chan struct{})
	healthyDone := make(chan error, 1)
	// waitHealthy stops the healthy client and returns its outcome; the
	// defer makes sure it stops before its connection is closed even when
	// the test fails early.
	waitHealthy := sync.OnceValue(func() error { close(stopHealthy); return <-healthyDone })
	defer waitHealthy()
	var healthyQueries atomic.Int64
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stopHealthy:
				healthyDone <- nil
				return
			default:
			}
			var got int
			if err := healthy.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&got); err != nil || got != i+1 {
				healthyDone <- fmt.Errorf("healthy client query %d: got %d, err %v", i, got, err)
				return
			}
			healthyQueries.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	startupMsg := func(major, minor uint16, params ...string) []byte {
		body := binary.BigEndian.AppendUint16(nil, major)
		body = binary.BigEndian.AppendUint16(body, minor)
		for _, p := range params {
			body = append(append(body, p...), 0)
		}
		body = append(body, 0)
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
	}
	// Allowed codes: 08P01 protocol_violation; PostgreSQL itself answers an
	// unsupported protocol version with 0A000 feature_not_supported.
	allowed := map[string]bool{"08P01": true, "0A000": true}

	type bad struct {
		name     string
		startup  bool   // authenticate first (pgconn), then send payload
		payload  []byte // bytes to send
		halfShut bool   // close our write side after sending
		// survives: the payload is a malformed extended-protocol message
		// followed by Sync; the server must answer ErrorResponse 08P01,
		// then ReadyForQuery, and the session must keep working.
		survives bool
	}
	cases := []bad{
		{name: "http_request_as_startup", payload: []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")},
		{name: "random_garbage_startup", payload: []byte{0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef, 0x42}},
		{name: "unsupported_protocol_version", payload: startupMsg(9, 0, "user", "app", "database", "app")},
		{name: "startup_length_over_limit", payload: append(binary.BigEndian.AppendUint32(nil, 0x7fffffff), startupMsg(3, 0, "user", "app")[4:]...)},
		{name: "startup_length_too_small", payload: []byte{0, 0, 0, 2, 0, 3}},
		{name: "truncated_startup_then_close", payload: startupMsg(3, 0, "user", "app", "database", "app")[:10], halfShut: true},
		{name: "unknown_message_type", startup: true, payload: []byte{'z', 0, 0, 0, 4}},
		{name: "message_length_over_limit", startup: true, payload: []byte{'Q', 0x7f, 0xff, 0xff, 0xf0, 'S', 'E', 'L'}},
		{name: "message_length_below_4", startup: true, payload: []byte{'Q', 0, 0, 0, 2}},
		{name: "truncated_query_then_close", startup: true, payload: append([]byte{'Q', 0, 0, 0, 100}, "SELECT 1"...), halfShut: true},
		{name: "bind_with_unterminated_string_then_sync", startup: true, survives: true,
			payload: []byte{'B', 0, 0, 0, 6, 0xff, 0xff, 'S', 0, 0, 0, 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var conn net.Conn
			if tc.startup {
				pc, err := pgconn.Connect(ctx, withParams(t, dsn, "application_name", "badinput"))
				if err != nil {
					t.Fatal(err)
				}
				hc, err := pc.Hijack()
				if err != nil {
					t.Fatal(err)
				}
				conn = hc.Conn
			} else {
				var err error
				if conn, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			defer conn.Close()
			if _, err := conn.Write(tc.payload); err != nil {
				t.Fatalf("write: %v", err)
			}
			if tc.halfShut {
				if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			fe := pgproto3.NewFrontend(bufio.NewReader(conn), conn)
			if tc.survives {
				expectSurvives(t, fe)
				return
			}
			var gotError string
			for {
				msg, err := fe.Receive()
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatalf("no ErrorResponse and no close within 5s (got error %q so far)", gotError)
					}
					break // closed (EOF / reset / undecodable tail): acceptable
				}
				switch m := msg.(type) {
				case *pgproto3.ErrorResponse:
					if !allowed[m.Code] {
						t.Errorf("ErrorResponse %s %q, want one of 08P01/0A000", m.Code, m.Message)
					}
					gotError = m.Code + " " + m.Message
				case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
				default:
					t.Fatalf("unexpected %T after malformed input", msg)
				}
			}
			t.Logf("outcome: error=%q, then closed", gotError)
		})
	}
	if err := waitHealthy(); err != nil {
		t.Fatal(err)
	}
	if healthyQueries.Load() == 0 {
		t.Fatal("healthy client ran no queries")
	}
	// No backend of the hijacked clients lingers. Through the pool a
	// server connection that served a malformed client may rest idle in
	// the pool (still showing its last application_name); it must not be
	// busy or in a transaction.
	q := "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'badinput'"
	if viaProxy {
		q += " AND state <> 'idle'"
	}
	waitCountZero(t, ctx, 3*time.Second, "backends of malformed clients still alive", q)
}

// expectSurvives reads ErrorResponse 08P01 then ReadyForQuery, then checks
// that a simple query still works on the same session.
func expectSurvives(t *testing.T, fe *pgproto3.Frontend) {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("want ErrorResponse, got %v", err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "08P01" {
		t.Fatalf("want ErrorResponse 08P01, got %#v", msg)
	}
	if msg, err = fe.Receive(); err != nil {
		t.Fatalf("want ReadyForQuery, got %v", err)
	}
	if _, ok := msg.(*pgproto3.ReadyForQuery); !ok {
		t.Fatalf("want ReadyForQuery, got %T", msg)
	}
	fe.Send(&pgproto3.Query{String: "SELECT 'alive'"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("session after malformed message: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("query after malformed message: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			if got != "alive" {
				t.Fatalf("got %q, want alive", got)
			}
			return
		}
	}
}

// ---- 11. TLS ----

// TestTLS connects with sslmode=require and verify-full (against the test
// CA) and checks the session really is encrypted; sslmode=disable stays
// plaintext; verify-full against a foreign CA is refused.
func TestTLS(t *testing.T) {
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.TLS = true })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	otherCA := filepath.Join(t.TempDir(), "other.crt")
	{
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "other"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(otherCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name    string
		params  []string
		wantTLS bool
		wantErr bool
	}{
		{"require", []string{"sslmode", "require"}, true, false},
		{"verify_full", []string{"sslmode", "verify-full", "sslrootcert", testTLS.caFile}, true, false},
		{"verify_full_wrong_ca", []string{"sslmode", "verify-full", "sslrootcert", otherCA}, false, true},
		{"disable", []string{"sslmode", "disable"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, withParams(t, dsn, tc.params...))
			if tc.wantErr {
				if err == nil {
					conn.Close(ctx)
					t.Fatal("connected although the server certificate is not signed by the given CA")
				}
				if !strings.Contains(err.Error(), "certificate") {
					t.Errorf("error %v does not mention the certificate", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			_, isTLS := conn.PgConn().Conn().(*tls.Conn)
			if isTLS != tc.wantTLS {
				t.Fatalf("connection TLS=%v, want %v", isTLS, tc.wantTLS)
			}
			var who string
			var sum int
			if err := conn.QueryRow(ctx, "SELECT current_user, $1::int + $2::int", 20, 22).Scan(&who, &sum); err != nil || who != "app" || sum != 42 {
				t.Fatalf("query over %s: user=%q sum=%d err=%v", tc.name, who, sum, err)
			}
			if !viaProxy {
				// Direct: the server agrees about this session.
				var ssl bool
				if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || ssl != tc.wantTLS {
					t.Fatalf("pg_stat_ssl.ssl=%v err=%v, want %v", ssl, err, tc.wantTLS)
				}
			}
		})
	}
}
