package cachelayer

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const redisServerBin = "/usr/bin/redis-server"

// testRedis is a real redis-server on a free 127.0.0.1 port with its data
// under t.TempDir(). Stop kills it; Start restarts it on the same port.
type testRedis struct {
	t    testing.TB
	dir  string
	port int
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (r *testRedis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRedis starts redis-server and stops it in t.Cleanup.
func startRedis(t testing.TB, extra ...string) *testRedis {
	t.Helper()
	if _, err := os.Stat(redisServerBin); err != nil {
		t.Fatalf("%s not found: apt-get install -y redis-server", redisServerBin)
	}
	r := &testRedis{t: t, dir: t.TempDir(), port: freePort(t)}
	r.start(extra...)
	t.Cleanup(r.Stop)
	return r
}

func (r *testRedis) Start() { r.start() }

func (r *testRedis) start(extra ...string) {
	r.t.Helper()
	var args []string
	if len(extra) > 0 && !strings.HasPrefix(extra[0], "--") {
		args = append(args, extra[0]) // a config file must come first
		extra = extra[1:]
	}
	args = append(args, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	args = append(args, extra...)
	cmd := exec.Command(redisServerBin, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{}) // closed once the process exited and its log is drained
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			r.t.Logf("redis:%d| %s", r.port, sc.Text())
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		<-logged
		close(done)
	}()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := pingRedis(r.Addr()); err == nil {
			return
		} else if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s not ready: %v", r.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills redis-server (SIGKILL, as a crash) and waits for it to exit.
func (r *testRedis) Stop() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}
