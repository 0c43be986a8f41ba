package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// groupAlive reports which of the given process groups still have members.
func groupsAlive(t *testing.T, pgids []int) []string {
	t.Helper()
	out, err := exec.Command("ps", "-e", "-o", "pgid=,pid=,args=").Output()
	if err != nil {
		t.Fatalf("ps: %v", err)
	}
	want := map[int]bool{}
	for _, g := range pgids {
		want[g] = true
	}
	var alive []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		g, _ := strconv.Atoi(f[0])
		if want[g] {
			alive = append(alive, line)
		}
	}
	return alive
}

func (c *Cluster) pgids() []int {
	var ids []int
	for _, n := range []*Node{c.Primary, c.Replica} {
		if n != nil && n.proc != nil {
			ids = append(ids, n.proc.pgid)
		}
	}
	if c.Redis != nil && c.Redis.proc != nil {
		ids = append(ids, c.Redis.proc.pgid)
	}
	return ids
}

func TestFullClusterLifecycle(t *testing.T) {
	start := time.Now()
	var logMu sync.Mutex
	var logLines []string
	c, err := Start(context.Background(), Options{
		Replica: true, Redis: true, Dir: t.TempDir(),
		Logf: func(format string, args ...any) {
			logMu.Lock()
			logLines = append(logLines, fmt.Sprintf(format, args...))
			logMu.Unlock()
		},
		Users: []User{
			{Name: "md5u", Password: "md5pass", Auth: "md5"},
			{Name: "plain", Password: "pw", Auth: "password"},
			{Name: "trusty", Auth: "trust"},
		},
		PGConf: []string{"application_name = 'harness'"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary+replica+redis started in %v", time.Since(start))
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if c.Primary.Port == c.Replica.Port || c.Primary.Port == c.Redis.Port {
		t.Fatalf("ports collide: %d %d %d", c.Primary.Port, c.Replica.Port, c.Redis.Port)
	}

	// Roles and auth methods.
	for _, tc := range []struct {
		user, pw, method string
		ok               bool
	}{
		{"app", "secret", "SCRAM-SHA-256", true},
		{"app", "wrong", "", false},
		{"md5u", "md5pass", "md5", true},
		{"md5u", "nope", "", false},
		{"plain", "pw", "", true},
		{"trusty", "", "", true},
	} {
		conn, err := pgx.Connect(ctx, c.Primary.DSN(tc.user, tc.pw, "app"))
		if tc.ok != (err == nil) {
			t.Errorf("%s/%s: connect err=%v, want ok=%v", tc.user, tc.pw, err, tc.ok)
		}
		if err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Errorf("%s/%s: want SQLSTATE 28P01, got %v", tc.user, tc.pw, err)
			}
			continue
		}
		var who, db string
		if err := conn.QueryRow(ctx, "SELECT current_user, current_database()").Scan(&who, &db); err != nil || who != tc.user || db != "app" {
			t.Errorf("%s: current_user=%q db=%q err=%v", tc.user, who, db, err)
		}
		conn.Close(ctx)
	}
	// md5u's stored password really is md5.
	var stored string
	if err := c.QueryRow(ctx, c.Primary, "SELECT rolpassword FROM pg_authid WHERE rolname='md5u'", nil, &stored); err != nil || !strings.HasPrefix(stored, "md5") {
		t.Errorf("md5u password %q err %v", stored, err)
	}
	// Extra PGConf lines applied.
	var appName string
	if err := c.QueryRow(ctx, c.Primary, "SELECT current_setting('application_name')", nil, &appName); err != nil {
		t.Fatal(err)
	}
	// pgx sets no application_name, so the server default from PGConf shows.
	if appName != "harness" {
		t.Errorf("application_name = %q, want harness from PGConf", appName)
	}

	// Replica streams and sees rows inserted on the primary.
	if err := c.Exec(ctx, c.Primary, "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'one')"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := c.QueryRow(ctx, c.Replica, "SELECT v FROM t WHERE id = 1", nil, &v); err != nil || v != "one" {
		t.Fatalf("replica read v=%q err=%v", v, err)
	}
	var inRecovery bool
	if err := c.QueryRow(ctx, c.Replica, "SELECT pg_is_in_recovery()", nil, &inRecovery); err != nil || !inRecovery {
		t.Fatalf("replica pg_is_in_recovery=%v err=%v", inRecovery, err)
	}
	if err := c.Exec(ctx, c.Replica, "INSERT INTO t VALUES (9, 'x')"); err == nil {
		t.Fatal("write on replica succeeded")
	}

	// PauseReplay makes the replica lag; ResumeReplay lets it catch up.
	if err := c.PauseReplay(); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, c.Primary, "INSERT INTO t VALUES (2, 'two')"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	var n int
	if err := c.QueryRow(ctx, c.Replica, "SELECT count(*) FROM t WHERE id = 2", nil, &n); err != nil || n != 0 {
		t.Fatalf("paused replica sees row 2: n=%d err=%v", n, err)
	}
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	if err := c.WaitReplicaCaughtUp(short); err == nil {
		t.Error("WaitReplicaCaughtUp succeeded while replay paused")
	}
	cancelShort()
	if err := c.ResumeReplay(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, c.Replica, "SELECT count(*) FROM t WHERE id = 2", nil, &n); err != nil || n != 1 {
		t.Fatalf("resumed replica: n=%d err=%v", n, err)
	}

	// StopNode / StartNode on the replica, then on the primary (immediate).
	if err := c.StopNode(c.Replica, "fast"); err != nil {
		t.Fatal(err)
	}
	if c.Replica.Running() {
		t.Fatal("replica still running after StopNode")
	}
	if _, err := pgconn.Connect(ctx, c.Replica.SuperuserDSN("app")+"&connect_timeout=1"); err == nil {
		t.Fatal("connected to a stopped replica")
	}
	if err := c.StartNode(c.Replica); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode(c.Primary, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, c.Primary, "SELECT 1"); err == nil {
		t.Fatal("query on stopped primary succeeded")
	}
	if err := c.StartNode(c.Primary); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, c.Primary, "INSERT INTO t VALUES (3, 'three')"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, c.Replica, "SELECT count(*) FROM t", nil, &n); err != nil || n != 3 {
		t.Fatalf("replica after primary restart: n=%d err=%v", n, err)
	}
	if err := c.RestartNode(c.Primary); err != nil {
		t.Fatal(err)
	}

	// Redis stop/start.
	if err := ping(c.Redis.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := c.StopRedis(); err != nil {
		t.Fatal(err)
	}
	if err := ping(c.Redis.Addr()); err == nil {
		t.Fatal("redis answers after StopRedis")
	}
	if err := c.StartRedis(); err != nil {
		t.Fatal(err)
	}
	if err := ping(c.Redis.Addr()); err != nil {
		t.Fatal(err)
	}

	// Logs were streamed with prefixes.
	logMu.Lock()
	var sawPrimary, sawReplica, sawRedis bool
	for _, l := range logLines {
		sawPrimary = sawPrimary || strings.HasPrefix(l, "primary| ")
		sawReplica = sawReplica || strings.HasPrefix(l, "replica| ")
		sawRedis = sawRedis || strings.HasPrefix(l, "redis| ")
	}
	logMu.Unlock()
	if !sawPrimary || !sawReplica || !sawRedis {
		t.Errorf("log prefixes seen: primary=%v replica=%v redis=%v", sawPrimary, sawReplica, sawRedis)
	}

	// Stop leaves no process behind and is idempotent.
	pgids := c.pgids()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive := groupsAlive(t, pgids); len(alive) > 0 {
		t.Fatalf("processes left after Stop:\n%s", strings.Join(alive, "\n"))
	}
	for _, addr := range []string{c.Primary.Addr(), c.Replica.Addr(), c.Redis.Addr()} {
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			t.Errorf("%s still accepting after Stop", addr)
		}
	}
}

func TestStartTPrimaryOnly(t *testing.T) {
	var pgids []int
	t.Run("inner", func(t *testing.T) {
		c := StartT(t, Options{})
		if c.Replica != nil || c.Redis != nil {
			t.Fatal("unexpected replica/redis")
		}
		conn, err := pgx.Connect(context.Background(), c.Primary.DSN(AppUser, AppPassword, AppDatabase))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var s string
		if err := conn.QueryRow(context.Background(), "SHOW wal_level").Scan(&s); err != nil || s != "logical" {
			t.Fatalf("wal_level=%q err=%v", s, err)
		}
		if err := conn.QueryRow(context.Background(), "SHOW max_connections").Scan(&s); err != nil || s != "300" {
			t.Fatalf("max_connections=%q err=%v", s, err)
		}
		pgids = c.pgids()
	})
	// t.Cleanup of the subtest stopped everything.
	if alive := groupsAlive(t, pgids); len(alive) > 0 {
		t.Fatalf("processes left after cleanup:\n%s", strings.Join(alive, "\n"))
	}
}

func TestStartTempDirRemoved(t *testing.T) {
	c, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := c.Dir
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.Command("test", "-e", dir).Output(); err == nil {
		t.Fatalf("%s still exists after Stop", dir)
	}
}

func TestDSN(t *testing.T) {
	n := &Node{Host: "127.0.0.1", Port: 5433}
	for _, tc := range []struct{ user, pw, db, want string }{
		{"app", "secret", "app", "postgres://app:secret@127.0.0.1:5433/app?sslmode=disable"},
		{"postgres", "", "postgres", "postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable"},
		{"u", "p@ss/w:rd", "d", "postgres://u:p%40ss%2Fw%3Ard@127.0.0.1:5433/d?sslmode=disable"},
	} {
		if got := n.DSN(tc.user, tc.pw, tc.db); got != tc.want {
			t.Errorf("DSN(%q,%q,%q) = %q, want %q", tc.user, tc.pw, tc.db, got, tc.want)
		}
		if _, err := pgconn.ParseConfig(n.DSN(tc.user, tc.pw, tc.db)); err != nil {
			t.Errorf("DSN does not parse: %v", err)
		}
	}
}

func TestBadAuthMethod(t *testing.T) {
	_, err := Start(context.Background(), Options{Users: []User{{Name: "x", Auth: "ident"}}})
	if err == nil || !strings.Contains(err.Error(), "ident") {
		t.Fatalf("want error naming the method, got %v", err)
	}
}
