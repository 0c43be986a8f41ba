package bench_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgsluice/pgsluice/bench"
	"github.com/pgsluice/pgsluice/deploy/local"
)

func login(cache *bench.ScramCache) bench.Login {
	return bench.Login{User: local.AppUser, Password: local.AppPassword, DB: local.AppDatabase, Cache: cache}
}

func TestRawClientLogin(t *testing.T) {
	c, proxyAddr := env(t)
	for _, tc := range []struct {
		name, addr, password string
		wantErr              string
	}{
		{"direct", c.Primary.Addr(), local.AppPassword, ""},
		{"pgsluice", proxyAddr, local.AppPassword, ""},
		{"direct wrong password", c.Primary.Addr(), "nope", "28P01"},
		{"pgsluice wrong password", proxyAddr, "nope", "28P01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cache := &bench.ScramCache{}
			for i := 0; i < 2; i++ {
				rc, err := bench.ConnectRaw(ctx, tc.addr, local.AppUser, tc.password, local.AppDatabase, cache)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("login with a wrong password: err %v, want %s", err, tc.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if err := rc.SimpleQuery(ctx, "SELECT 1"); err != nil {
					t.Fatal(err)
				}
				if err := rc.SimpleQuery(ctx, "SELECT * FROM no_such_table"); err == nil || !strings.Contains(err.Error(), "42P01") {
					t.Fatalf("query error not reported: %v", err)
				}
				rc.Idle()
				if err := rc.SimpleQuery(ctx, "SELECT 2"); err != nil {
					t.Fatalf("query after Idle: %v", err)
				}
				rc.Close()
			}
			// Both servers announce a stable salt, so two logins derive once.
			if cache.Len() != 1 {
				t.Errorf("SCRAM cache holds %d key sets after two logins, want 1", cache.Len())
			}
		})
	}
}

func TestStormAndIdleThroughPgsluice(t *testing.T) {
	_, proxyAddr := env(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := bench.Storm(ctx, proxyAddr, login(&bench.ScramCache{}), 200, 30*time.Second)
	if st.Failures != 0 || st.OK != 200 {
		t.Fatalf("storm of 200: %d ok, %d failed (%s)", st.OK, st.Failures, st.FirstErr)
	}
	if st.ConnP50 <= 0 || st.ConnP99 < st.ConnP50 || st.Wall < st.ConnP50 {
		t.Errorf("storm timings inconsistent: %+v", st)
	}
	// The proxy runs in this process, so its RSS is ours.
	res, err := bench.Idle(ctx, os.Getpid(), proxyAddr, login(&bench.ScramCache{}), 300, 32, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != 300 || res.FirstErr != "" || res.RSSAfterKiB <= 0 || res.RSSBeforeKiB <= 0 {
		t.Fatalf("idle: %+v", res)
	}
}

func TestPgbenchRun(t *testing.T) {
	c, _ := env(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	init := exec.CommandContext(ctx, c.Bin("pgbench"), "-i", "-q", "-s", "1", "-h", c.Primary.Host, "-p", c.Primary.Addr()[strings.LastIndex(c.Primary.Addr(), ":")+1:], "-U", local.AppUser, local.AppDatabase)
	init.Env = []string{"PGPASSWORD=" + local.AppPassword}
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	run := bench.PgbenchRun{Bin: c.Bin("pgbench"), Host: c.Primary.Host, Port: c.Primary.Port, User: local.AppUser, Password: local.AppPassword,
		DB: local.AppDatabase, Mode: "extended", Clients: 2, Threads: 2, Transactions: 50, LogDir: t.TempDir()}
	res, err := run.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Txns != 100 || len(res.Logged) != 100 || res.P50us <= 0 || res.P99us < res.P50us || res.TPS <= 0 || res.FirstErr != "" {
		t.Fatalf("pgbench result %+v (logged %d)", res, len(res.Logged))
	}
	// A failing target is a result with an error, not a harness error.
	run.Port, run.LogDir = 1, ""
	res, err = run.Run(ctx)
	if err != nil || res.Txns != 0 || res.FirstErr == "" {
		t.Fatalf("pgbench against a closed port: %+v, %v", res, err)
	}
}

// TestStartPgBouncer starts PgBouncer the way the harness does (SCRAM secret
// from pg_authid, setpriv as postgres when root) and checks logins, the
// inherited RLIMIT_NOFILE and that Stop leaves no process behind.
func TestStartPgBouncer(t *testing.T) {
	c, _ := env(t)
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err != nil {
		t.Fatalf("pgbouncer is not installed (apt-get install pgbouncer): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var secret string
	if err := c.QueryRow(ctx, c.Primary, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", []any{local.AppUser}, &secret); err != nil {
		t.Fatal(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	p, tgt, err := bench.StartPgBouncer(ctx, bench.PgBouncerConfig{
		Bin: "/usr/sbin/pgbouncer", Dir: filepath.Join(t.TempDir(), "pgb"), ServerHost: c.Primary.Host, ServerPort: c.Primary.Port,
		DB: local.AppDatabase, User: local.AppUser, Password: local.AppPassword, AuthFileSecret: secret, AuthType: "scram-sha-256",
		PoolSize: 5, MaxClientConn: 100, ListenBacklog: 128,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(5 * time.Second)
	st := bench.Storm(ctx, tgt.Addr(), login(&bench.ScramCache{}), 20, 10*time.Second)
	if st.Failures != 0 {
		t.Fatalf("20 logins through PgBouncer: %d failed: %s", st.Failures, st.FirstErr)
	}
	if _, err := bench.ConnectRaw(ctx, tgt.Addr(), local.AppUser, "nope", local.AppDatabase, &bench.ScramCache{}); err == nil {
		t.Fatal("PgBouncer accepted a wrong password")
	}
	limits, err := os.ReadFile("/proc/" + itoa(tgt.PID) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(limits), itoa(int(lim.Cur))) {
		t.Errorf("PgBouncer's limits do not show our RLIMIT_NOFILE %d:\n%s", lim.Cur, limits)
	}
	p.Stop(5 * time.Second)
	if err := syscall.Kill(tgt.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("PgBouncer pid %d still exists after Stop: %v", tgt.PID, err)
	}
}

// TestStartPgsluiceBinary builds cmd/pgsluice and starts it the way the
// harness does (clean environment, PGSLUICE_* only).
func TestStartPgsluiceBinary(t *testing.T) {
	c, _ := env(t)
	bin := buildBinary(t, "github.com/pgsluice/pgsluice/cmd/pgsluice")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, tgt, err := bench.StartPgsluice(ctx, bench.PgsluiceConfig{
		Bin: bin, Name: "pgsluice", LogPath: filepath.Join(t.TempDir(), "pgsluice.log"), ServerHost: c.Primary.Host, ServerPort: c.Primary.Port,
		User: local.AppUser, Password: local.AppPassword, DB: local.AppDatabase, AuthMethod: "scram-sha-256", PoolSize: 5, MaxClientConn: 100,
		Env: []string{"PGSLUICE_ROUTING_ENABLED=false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(5 * time.Second)
	before, err := bench.ReadProc(tgt.PID)
	if err != nil {
		t.Fatal(err)
	}
	st := bench.Storm(ctx, tgt.Addr(), login(&bench.ScramCache{}), 50, 10*time.Second)
	if st.Failures != 0 {
		t.Fatalf("50 logins through pgsluice: %d failed: %s", st.Failures, st.FirstErr)
	}
	after, err := bench.ReadProc(tgt.PID)
	if err != nil {
		t.Fatal(err)
	}
	if after.CPU < before.CPU || after.RSSKiB <= 0 {
		t.Errorf("proc samples: before %+v after %+v", before, after)
	}
	p.Stop(10 * time.Second)
	if !p.Exited() {
		t.Error("pgsluice still running after Stop")
	}
}

// buildBinary builds pkg into the test's temporary directory.
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, pkg)
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestStartFloorBinary builds cmd/pgsluice-floor and starts each model the
// way scenario 8 does; pgbench runs through it with both protocols.
func TestStartFloorBinary(t *testing.T) {
	c, _ := env(t)
	bin := buildBinary(t, "github.com/pgsluice/pgsluice/bench/cmd/pgsluice-floor")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Exec(ctx, c.Primary, `CREATE TABLE IF NOT EXISTS floor_t(id int primary key, v text);
		INSERT INTO floor_t SELECT g, 'v' || g FROM generate_series(1, 100) g ON CONFLICT DO NOTHING;
		GRANT SELECT ON floor_t TO PUBLIC`); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "floor.sql")
	if err := os.WriteFile(script, []byte("\\set id random(1, 100)\nSELECT v FROM floor_t WHERE id = :id;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, model := range []string{"copy", "pool", "loop", "park", "park1"} {
		t.Run(model, func(t *testing.T) {
			p, tgt, err := bench.StartFloor(ctx, bench.FloorConfig{
				Bin: bin, Name: "floor " + model, Model: model, LogPath: filepath.Join(t.TempDir(), "floor.log"),
				ServerHost: c.Primary.Host, ServerPort: c.Primary.Port, User: local.AppUser, Password: local.AppPassword,
				DB: local.AppDatabase, PoolSize: 3,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop(5 * time.Second)
			for _, mode := range []string{"simple", "extended"} {
				res, err := bench.PgbenchRun{Bin: c.Bin("pgbench"), Host: tgt.Host, Port: tgt.Port, User: local.AppUser, Password: local.AppPassword,
					DB: local.AppDatabase, Mode: mode, Clients: 8, Threads: 2, Transactions: 50, Script: script}.Run(ctx)
				if err != nil || res.Txns != 400 || res.Failed != 0 || res.FirstErr != "" {
					t.Errorf("pgbench -M %s through floor %s: %v, %d transactions (want 400), %d failed, %q", mode, model, err, res.Txns, res.Failed, res.FirstErr)
				}
			}
		})
	}
}
