package routing

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
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

	"github.com/jackc/pgx/v5"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json golden files and testdata/pg15_functions.tsv (from a real PostgreSQL 15)")

const pgBin = "/usr/lib/postgresql/15/bin"

// testServer is a throwaway PostgreSQL 15 started for this test binary.
type testServer struct {
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
	logs chan string
}

var (
	serverOnce  sync.Once
	server      *testServer
	serverErr   error
	standbyOnce sync.Once
	standby     *testServer
	standbyErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if standby != nil {
		standby.stop()
	}
	if server != nil {
		server.stop()
	}
	os.Exit(code)
}

// postgresCred returns the credentials to run PostgreSQL binaries with:
// PostgreSQL refuses to run as root.
func postgresCred() (*syscall.SysProcAttr, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root and no postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, uid, gid, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startServer() (*testServer, error) {
	attr, uid, gid, err := postgresCred()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "routing-pg-")
	if err != nil {
		return nil, err
	}
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(pgBin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = attr
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	return launch(dir, attr)
}

// startStandby makes a streaming hot standby of primary (pg_basebackup -R).
func startStandby(primary *testServer) (*testServer, error) {
	attr, uid, gid, err := postgresCred()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "routing-standby-")
	if err != nil {
		return nil, err
	}
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	bb := exec.Command(filepath.Join(pgBin, "pg_basebackup"), "-D", filepath.Join(dir, "data"), "-R", "-X", "stream", "--no-sync", "-c", "fast",
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", "postgres")
	bb.SysProcAttr = attr
	if out, err := bb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_basebackup: %v: %s", err, out)
	}
	return launch(dir, attr)
}

// launch starts postgres on dir/data and waits until it accepts connections.
func launch(dir string, attr *syscall.SysProcAttr) (*testServer, error) {
	data := filepath.Join(dir, "data")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(pgBin, "postgres"), "-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	cmd.SysProcAttr = attr
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &testServer{dir: dir, port: port, cmd: cmd, done: make(chan struct{}), logs: make(chan string, 1000)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case s.logs <- sc.Text():
			default: // nobody is reading: drop
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), s.connString())
		if err == nil {
			conn.Close(context.Background())
			return s, nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("postgres did not start: %w", err)
		}
		select {
		case <-s.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("postgres exited at startup")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *testServer) connString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", s.port)
}

func (s *testServer) stop() {
	s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	os.RemoveAll(s.dir)
}

// connect returns a connection to the shared test server, starting it on
// first use; server log lines are streamed through t.Logf.
func connect(t *testing.T) *pgx.Conn {
	t.Helper()
	serverOnce.Do(func() { server, serverErr = startServer() })
	if serverErr != nil {
		t.Fatalf("start PostgreSQL 15: %v", serverErr)
	}
	return connectTo(t, server, "postgres")
}

// connectStandby returns a connection to a hot standby of the shared test
// server, starting it on first use.
func connectStandby(t *testing.T) *pgx.Conn {
	t.Helper()
	connect(t)
	standbyOnce.Do(func() { standby, standbyErr = startStandby(server) })
	if standbyErr != nil {
		t.Fatalf("start standby: %v", standbyErr)
	}
	return connectTo(t, standby, "standby")
}

func connectTo(t *testing.T, s *testServer, logPrefix string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.connString())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		conn.Close(context.Background())
		for {
			select {
			case l := <-s.logs:
				t.Logf("%s: %s", logPrefix, l)
			default:
				return
			}
		}
	})
	return conn
}
