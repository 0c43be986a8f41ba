package main

// Tests against the real binary: hot reload on SIGHUP and on file change,
// and the SO_REUSEPORT handover under pgbench.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/deploy/local"
)

var (
	cluster *local.Cluster
	binPath string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pgsluice-cmd-test-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "pgsluice")
	if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err = local.Start(ctx, local.Options{
		Replica: true,
		Dir:     filepath.Join(dir, "cluster"),
		Users:   []local.User{{Name: "md5u", Password: "md5pass", Auth: "md5"}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start local cluster (make deps installs PostgreSQL 15):", err)
		return 1
	}
	code := m.Run()
	if err := cluster.Stop(); err != nil && code == 0 {
		fmt.Fprintln(os.Stderr, "stop cluster:", err)
		code = 1
	}
	return code
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type proc struct {
	name    string
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  chan struct{}
	exitErr error
}

// waitExit fails the test unless the process exits with status 0 within
// d; when says after what it should have exited.
func (p *proc) waitExit(t *testing.T, d time.Duration, when string) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("pgsluice %s still running %v %s", p.name, d, when)
	}
	if p.exitErr != nil {
		t.Fatalf("pgsluice %s exited with %v %s", p.name, p.exitErr, when)
	}
}

// startBinary runs pgsluice --config path args… and stops it in Cleanup.
func startBinary(t *testing.T, name, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binPath, append([]string{"--config", path}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(15 * time.Second):
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
		t.Logf("pgsluice %s output:\n%s", p.name, p.out.String())
	})
	p.waitLog(t, "pgsluice listening", 1)
	return p
}

// waitLog waits until the output holds n lines matching re.
func (p *proc) waitLog(t *testing.T, re string, n int) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var hits []string
		for _, l := range strings.Split(p.out.String(), "\n") {
			if rx.MatchString(l) {
				hits = append(hits, l)
			}
		}
		if len(hits) >= n {
			return hits[n-1]
		}
		select {
		case <-p.exited:
			t.Fatalf("pgsluice %s exited (%v) before logging %q:\n%s", p.name, p.exitErr, re, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgsluice %s: no %d lines matching %q after 30s:\n%s", p.name, n, re, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fileConfig is what the tests vary in the YAML file.
type fileConfig struct {
	port, adminPort int
	poolSize        int
	users           string // YAML list items
	adminUsers      string // admin.users as a YAML flow list, e.g. "[app]"
	replicas        bool
	extra           string // appended verbatim
}

func (c fileConfig) write(t *testing.T, path string) {
	t.Helper()
	replicas := "[]"
	if c.replicas {
		replicas = fmt.Sprintf("[{host: %s, port: %d}]", cluster.Replica.Host, cluster.Replica.Port)
	}
	adminUsers := ""
	if c.adminUsers != "" {
		adminUsers = "\n  users: " + c.adminUsers
	}
	y := fmt.Sprintf(`listen: 127.0.0.1:%d
shutdown_timeout: 30s
admin:
  listen: 127.0.0.1:%d%s
primary: {host: %s, port: %d}
replicas: %s
pool:
  size: %d
  acquire_timeout: 30s
auth:
  method: scram-sha-256
  users:
%s
tls: {server: disable}
routing:
  health_interval: 100ms
  monitor: {database: app}
%s`, c.port, c.adminPort, adminUsers, cluster.Primary.Host, cluster.Primary.Port, replicas, c.poolSize, c.users, c.extra)
	// Write then rename, as editors and ConfigMaps do: the watcher never
	// sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const (
	appUser = "    - {name: app, password: secret}\n"
	md5User = "    - {name: md5u, password: md5pass}\n"
)

func (c fileConfig) dsn(user, password string) string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/app?sslmode=disable", user, password, c.port)
}

// console opens the admin console (database pgsluice) as app, closed when
// the test ends.
func (c fileConfig) console(t *testing.T, ctx context.Context) *pgconn.PgConn {
	t.Helper()
	admin, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://app:secret@127.0.0.1:%d/pgsluice?sslmode=disable", c.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	return admin
}

// serverBackends counts user's server connections on the primary.
func serverBackends(t *testing.T, ctx context.Context, user string) int {
	t.Helper()
	var n int
	if err := cluster.QueryRow(ctx, cluster.Primary, `SELECT count(*) FROM pg_stat_activity
		WHERE usename = $1 AND backend_type = 'client backend' AND application_name <> 'pgsluice_monitor'`, []any{user}, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func metric(t *testing.T, adminPort int, name string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// The real binary reloads on SIGHUP (the file watcher is off here): a
// bigger pool grows while 100 clients keep querying with no error; a
// broken file is rejected with a log line naming the key and nothing
// changes; an added replica takes reads; a new listen address is reported
// and not applied.
func TestBinaryReloadSIGHUP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "pgsluice.yaml")
	fc := fileConfig{port: freePort(t), adminPort: freePort(t), poolSize: 4, users: appUser}
	fc.write(t, path)
	p := startBinary(t, "reload", path, "--watch-config=0")

	// 100 clients querying throughout.
	const clients = 100
	var queries, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		c, err := pgx.Connect(ctx, fc.dsn("app", "secret"))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var one int
				if err := c.QueryRow(ctx, "SELECT 1 FROM pg_sleep(0.02)").Scan(&one); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				queries.Add(1)
			}
		}()
	}
	stopClients := func() {
		close(stop)
		wg.Wait()
		if f := failures.Load(); f > 0 {
			t.Fatalf("%d of %d clients failed; first error: %v", f, clients, firstErr.Load())
		}
	}
	time.Sleep(time.Second)
	if n := serverBackends(t, ctx, "app"); n > 4 {
		t.Fatalf("%d server connections with pool.size 4", n)
	}

	// SIGHUP with a bigger pool.
	fc.poolSize = 16
	fc.write(t, path)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `configuration reload done.*trigger=SIGHUP`, 1)
	deadline := time.Now().Add(20 * time.Second)
	for serverBackends(t, ctx, "app") <= 4 {
		if time.Now().After(deadline) {
			t.Fatal("pool did not grow after SIGHUP with pool.size 16")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m := metric(t, fc.adminPort, "pgsluice_pool_max_connections"); !strings.Contains(m, "} 16") {
		t.Fatalf("pgsluice_pool_max_connections after the reload:\n%s", m)
	}

	// Broken files: rejected with the key named, nothing changes.
	for i, bad := range []struct{ extra, key string }{
		{"log: {levle: debug}\n", `key=log.levle `},
		{"log: {level: loud}\n", `key=log.level `},
	} {
		broken := fc
		broken.poolSize = 2
		broken.extra = bad.extra
		broken.write(t, path)
		p.signal(t, syscall.SIGHUP)
		line := p.waitLog(t, `configuration reload rejected`, i+1)
		if !strings.Contains(line, bad.key) || !strings.Contains(line, "trigger=SIGHUP") {
			t.Fatalf("rejection log line does not name the key (%s): %s", bad.key, line)
		}
		if m := metric(t, fc.adminPort, "pgsluice_pool_max_connections"); !strings.Contains(m, "} 16") {
			t.Fatalf("a rejected file changed pool.size:\n%s", m)
		}
	}
	before := queries.Load()
	time.Sleep(500 * time.Millisecond)
	if queries.Load() == before {
		t.Fatal("clients stalled after the rejected reloads")
	}
	stopClients()

	// A replica added by SIGHUP takes reads.
	a := conns[0]
	var rec bool
	if err := a.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
		t.Fatalf("read with no replica: in_recovery=%v err=%v", rec, err)
	}
	fc.replicas = true
	fc.write(t, path)
	p.signal(t, syscall.SIGHUP)
	deadline = time.Now().Add(20 * time.Second)
	for {
		if err := a.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
			t.Fatal(err)
		}
		if rec {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("reads never reached the replica added by reload")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// What cannot change live is reported and kept.
	moved := fc
	moved.port = freePort(t)
	moved.write(t, path)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `cannot change while pgsluice runs.*keys=listen`, 1)
	c, err := pgx.Connect(ctx, fc.dsn("app", "secret"))
	if err != nil {
		t.Fatalf("old listen address after a reload that changed listen: %v", err)
	}
	c.Close(ctx)
}

// Editing the file is enough (the watcher reloads it): a user added can
// log in, a user removed cannot, its connected clients carry on.
func TestBinaryReloadFileChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "pgsluice.yaml")
	fc := fileConfig{port: freePort(t), adminPort: freePort(t), poolSize: 4, users: appUser}
	fc.write(t, path)
	p := startBinary(t, "watch", path, "--watch-config=200ms")
	app, err := pgx.Connect(ctx, fc.dsn("app", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	if _, err := pgx.Connect(ctx, fc.dsn("md5u", "md5pass")); sqlState(err) != "28P01" {
		t.Fatalf("md5u before it is configured: %v, want 28P01", err)
	}
	fc.users = md5User
	fc.write(t, path)
	p.waitLog(t, `configuration reload done.*trigger="file change"`, 1)
	m, err := pgx.Connect(ctx, fc.dsn("md5u", "md5pass"))
	if err != nil {
		t.Fatalf("md5u after it was added: %v", err)
	}
	defer m.Close(context.Background())
	if _, err := pgx.Connect(ctx, fc.dsn("app", "secret")); sqlState(err) != "28P01" {
		t.Fatalf("app after it was removed: %v, want 28P01", err)
	}
	if err := app.Ping(ctx); err != nil {
		t.Fatalf("a connected app client after app was removed: %v", err)
	}
	// A broken edit is rejected by the watcher too, naming the key.
	broken := fc
	broken.extra = "max_message_size: 10\n"
	broken.write(t, path)
	p.waitLog(t, `configuration reload rejected.*trigger="file change".*key=max_message_size `, 1)
	if err := m.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// pgbenchRun runs pgbench through port and returns its output; it fails
// the test if pgbench reports a failed or aborted transaction.
func pgbenchRun(t *testing.T, port int, args ...string) (string, error) {
	cmd := exec.Command(cluster.Bin("pgbench"), append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "app", "-n"}, append(args, "app")...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD=secret", "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A handover under pgbench: a second pgsluice starts on the same port, the
// first gets SIGUSR2 and serves its clients until they leave; pgbench
// (long-lived connections, and -C reconnecting every transaction) ends with
// 0 failed transactions.
func TestBinaryHandoverPgbench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	init := exec.CommandContext(ctx, cluster.Bin("pgbench"), "-i", "-q", "-s", "1", "-h", cluster.Primary.Host, "-p", fmt.Sprint(cluster.Primary.Port), "-U", "app", "app")
	init.Env = append(os.Environ(), "PGPASSWORD=secret", "PGSSLMODE=disable")
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"persistent", []string{"-c", "50", "-j", "2", "-T", "10"}},
		{"reconnect", []string{"-C", "-c", "50", "-j", "2", "-T", "10"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pgsluice.yaml")
			fc := fileConfig{port: freePort(t), adminPort: freePort(t), poolSize: 20, users: appUser}
			fc.write(t, path)
			old := startBinary(t, "old", path)
			type result struct {
				out string
				err error
			}
			done := make(chan result, 1)
			go func() {
				out, err := pgbenchRun(t, fc.port, mode.args...)
				done <- result{out, err}
			}()
			time.Sleep(3 * time.Second)
			next := startBinary(t, "new", path)
			time.Sleep(500 * time.Millisecond)
			old.signal(t, syscall.SIGUSR2)
			old.waitLog(t, "handover: listeners closed", 1)
			r := <-done
			t.Logf("pgbench %s:\n%s", strings.Join(mode.args, " "), r.out)
			if r.err != nil {
				t.Fatalf("pgbench failed: %v", r.err)
			}
			if !regexp.MustCompile(`number of failed transactions: 0 \(`).MatchString(r.out) {
				t.Fatal("pgbench reports failed transactions")
			}
			if !regexp.MustCompile(`number of transactions actually processed: [1-9]`).MatchString(r.out) {
				t.Fatal("pgbench processed no transaction")
			}
			old.waitExit(t, 30*time.Second, "after its clients left")
			old.waitLog(t, "handover done", 1)
			// The new process serves the port now.
			c, err := pgx.Connect(ctx, fc.dsn("app", "secret"))
			if err != nil {
				t.Fatalf("after the handover: %v", err)
			}
			c.Close(ctx)
			if mode.name == "reconnect" {
				if m := metric(t, fc.adminPort, "pgsluice_pool_server_connects_total"); m == "" || strings.HasSuffix(m, " 0") {
					t.Fatalf("the new process served no pgbench transaction:\n%s", m)
				}
			}
			_ = next
		})
	}
}

// admin SHUTDOWN drains the real binary as SIGTERM does: the console gets
// its answer, an idle client FATAL 57P01, and the process exits 0.
func TestBinaryAdminShutdown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fc := fileConfig{port: freePort(t), adminPort: freePort(t), poolSize: 2, users: appUser, adminUsers: "[app]"}
	path := filepath.Join(t.TempDir(), "pgsluice.yaml")
	fc.write(t, path)
	p := startBinary(t, "shutdown", path)
	idle, err := pgx.Connect(ctx, fc.dsn("app", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(ctx)
	if _, err := idle.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	admin := fc.console(t, ctx)
	res, err := admin.Exec(ctx, "SHUTDOWN").ReadAll()
	if err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	if len(res) != 1 || res[0].CommandTag.String() != "SHUTDOWN" {
		t.Fatalf("SHUTDOWN answered %+v", res)
	}
	p.waitExit(t, 20*time.Second, "after SHUTDOWN")
	p.waitLog(t, `shutting down: waiting for running transactions.*reason="admin SHUTDOWN"`, 1)
	if _, err := idle.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" {
		t.Fatalf("an idle client after SHUTDOWN: %v, want 57P01", err)
	}
}

// admin SHUTDOWN from a console session still connected to a process that
// is handing over (SIGUSR2) ends the handover as SIGTERM does: the
// remaining clients are closed as on SIGTERM (5 s of grace for open
// transactions) instead of being served until shutdown_timeout (30 s
// here), and the open transaction is not committed.
func TestBinaryAdminShutdownDuringHandover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fc := fileConfig{port: freePort(t), adminPort: freePort(t), poolSize: 2, users: appUser, adminUsers: "[app]"}
	path := filepath.Join(t.TempDir(), "pgsluice.yaml")
	fc.write(t, path)
	p := startBinary(t, "handover-shutdown", path)
	direct, err := pgx.Connect(ctx, cluster.Primary.DSN("app", "secret", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	if _, err := direct.Exec(ctx, "CREATE TABLE IF NOT EXISTS handover_shutdown_t(id int)"); err != nil {
		t.Fatal(err)
	}
	holder, err := pgx.Connect(ctx, fc.dsn("app", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, "INSERT INTO handover_shutdown_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	admin := fc.console(t, ctx)

	p.signal(t, syscall.SIGUSR2)
	p.waitLog(t, "handover: listeners closed", 1) // no new process: the quiet window ends it
	start := time.Now()
	if _, err := admin.Exec(ctx, "SHUTDOWN").ReadAll(); err != nil {
		t.Fatalf("SHUTDOWN during the handover: %v", err)
	}
	p.waitExit(t, 10*time.Second, "after SHUTDOWN during the handover (it waits for the open transaction)")
	t.Logf("exited %v after SHUTDOWN", time.Since(start).Round(time.Millisecond))
	p.waitLog(t, "handover: ended with clients still connected", 1)
	p.waitLog(t, "handover done", 1)
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM handover_shutdown_t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("the open transaction's row was committed (%d rows)", n)
	}
}
