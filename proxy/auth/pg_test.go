package auth

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgBinDir holds the PostgreSQL 15 server binaries on the test machines.
const pgBinDir = "/usr/lib/postgresql/15/bin"

// Passwords of the roles created in the throwaway cluster.
var pgPasswords = map[string]string{
	"scram_u": "scram-pw",
	"md5_u":   "md5-pw",
	"clear_u": "clear-pw",
	// Exercises SASLprep on both sides: soft hyphen (mapped to nothing),
	// ROMAN NUMERAL NINE (NFKC to "IX"), NO-BREAK SPACE (mapped to space).
	"uni_u": "I\u00adX-p\u00e4ss\u00a0\u2168",
}

// testPG is a throwaway PostgreSQL server listening on 127.0.0.1.
type testPG struct {
	port int
}

func (p *testPG) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// startPG starts a throwaway PostgreSQL 15 cluster for the test: initdb and
// postgres run as the OS user "postgres" (PostgreSQL refuses root), data
// lives in a temporary directory removed at cleanup, the server listens on a
// free TCP port on 127.0.0.1, its log is streamed through t.Logf with a "pg:"
// prefix, and pg_hba.conf requires scram-sha-256 for scram_u, md5 for md5_u,
// cleartext password for clear_u and trust for postgres. The roles of
// pgPasswords are created (md5_u with an md5-hashed password).
func startPG(t *testing.T) *testPG {
	t.Helper()
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("OS user postgres is required to run PostgreSQL: %v", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	cred := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}

	dir, err := os.MkdirTemp("", "pgsluice-auth-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")

	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(pgBinDir, name), args...)
		cmd.SysProcAttr = cred
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")

	port := freePort(t)
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"+
		"fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nlogging_collector = off\n"+
		"log_connections = on\nshared_buffers = 16MB\nmax_connections = 30\n", port, dir)
	appendFile(t, filepath.Join(data, "postgresql.conf"), conf)
	hba := "host all scram_u 127.0.0.1/32 scram-sha-256\n" +
		"host all md5_u 127.0.0.1/32 md5\n" +
		"host all clear_u 127.0.0.1/32 password\n" +
		"host all postgres 127.0.0.1/32 trust\n" +
		"host all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(filepath.Join(data, "pg_hba.conf"), uid, gid)

	cmd := exec.Command(filepath.Join(pgBinDir, "postgres"), "-D", data)
	cmd.SysProcAttr = cred
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs sync.WaitGroup
	var mu sync.Mutex
	done := false
	logs.Add(1)
	go func() {
		defer logs.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			if !done {
				t.Logf("pg: %s", sc.Text())
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		waited := make(chan struct{})
		go func() { cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-waited
		}
		logs.Wait()
		mu.Lock()
		done = true
		mu.Unlock()
	})

	p := &testPG{port: port}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var conn *pgconn.PgConn
	for {
		conn, err = pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", port))
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("PostgreSQL did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer conn.Close(context.Background())
	sql := fmt.Sprintf(`SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_u LOGIN PASSWORD '%s';
CREATE ROLE clear_u LOGIN PASSWORD '%s';
CREATE ROLE uni_u LOGIN PASSWORD '%s';
SET password_encryption = 'md5';
CREATE ROLE md5_u LOGIN PASSWORD '%s';`, pgPasswords["scram_u"], pgPasswords["clear_u"], pgPasswords["uni_u"], pgPasswords["md5_u"])
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("create roles: %v", err)
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
