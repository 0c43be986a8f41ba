package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serverUser is the OS identity the PostgreSQL programs run as. When the
// harness runs as root it is the `postgres` account (PostgreSQL refuses to
// run as root); otherwise it is nil and programs run as the caller.
type serverUser struct {
	uid, gid uint32
	groups   []uint32
}

func lookupServerUser() (*serverUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs an OS user \"postgres\" to run PostgreSQL (%v); %s", err, InstallHint)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	su := &serverUser{uid: uint32(uid), gid: uint32(gid)}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				su.groups = append(su.groups, uint32(n))
			}
		}
	}
	return su, nil
}

// sysProcAttr returns the attributes for a child: its own process group (so
// Stop can reap every descendant), a parent-death signal (so a crashed test
// process leaves no server behind: start it with StartCmd) and, as root, the
// server user's identity.
func (su *serverUser) sysProcAttr(deathSig syscall.Signal) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if su != nil {
		a.Credential = &syscall.Credential{Uid: su.uid, Gid: su.gid, Groups: su.groups}
	}
	return a
}

// prepareDir creates dir (mode 0700) owned by the server user, and when
// running as root makes every ancestor searchable by others so the server
// user can reach it (t.TempDir directories are 0700 root-owned).
func (su *serverUser) prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if su == nil {
		return nil
	}
	if err := os.Chown(dir, int(su.uid), int(su.gid)); err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("make %s searchable for the postgres user: %w", p, err)
			}
		}
		if p == "/" || p == filepath.Dir(p) {
			return nil
		}
	}
}

// chownTree gives every file under dir to the server user.
func (su *serverUser) chownTree(dir string) error {
	if su == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(su.uid), int(su.gid))
	})
}

// logSink delivers server log lines to the user's Logf. After close it drops
// lines, so a late line can never reach a finished test's t.Logf.
type logSink struct {
	mu     sync.Mutex
	logf   func(format string, args ...any)
	closed bool
}

func (s *logSink) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.logf == nil {
		return
	}
	s.logf(format, args...)
}

func (s *logSink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// tail keeps the last lines a process printed, for error messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) >= 40 {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, line)
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// proc is one long-running server process (postmaster or redis-server).
// Its stdout and stderr share one pipe whose lines go to the log sink with
// a prefix. done is closed when the process has exited; err holds Wait's
// result then.
type proc struct {
	cmd     *exec.Cmd
	pgid    int
	done    chan struct{}
	err     error
	logDone chan struct{}
	tail    *tail
}

func startProc(su *serverUser, deathSig syscall.Signal, sink *logSink, prefix, dir, name string, args ...string) (*proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cmd.SysProcAttr = su.sysProcAttr(deathSig)
	if err := StartCmd(cmd); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	w.Close()
	p := &proc{cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{}), logDone: make(chan struct{}), tail: &tail{}}
	go func() {
		defer close(p.logDone)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			p.tail.add(line)
			sink.printf("%s%s", prefix, line)
		}
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace for the process to exit, then kills its
// whole process group. It always returns with the process reaped and (within
// a bounded time) its log drained.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	var err error
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(grace):
			err = fmt.Errorf("process %d did not exit within %v after %v; killed", p.cmd.Process.Pid, grace, sig)
			_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Children of the postmaster may outlive it for a moment; make sure
	// nothing of the group is left, then let the log drain.
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	select {
	case <-p.logDone:
	case <-time.After(5 * time.Second):
	}
	return err
}

// runOnce runs a short program (initdb, pg_basebackup) to completion,
// streaming its output to the sink and returning it in the error on failure.
func runOnce(ctx context.Context, su *serverUser, sink *logSink, prefix, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cmd.SysProcAttr = su.sysProcAttr(syscall.SIGKILL)
	cmd.WaitDelay = 5 * time.Second
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := StartCmd(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	out := buf.Bytes()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if line != "" {
			sink.printf("%s%s", prefix, line)
		}
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return nil
}

var (
	portMu    sync.Mutex
	portsUsed = map[int]bool{}
)

// freePort returns a loopback TCP port that was free a moment ago and has
// not been handed out before by this process. Servers can still lose a race
// for it; callers retry with a new port on "Address already in use".
func freePort() (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsUsed[port] {
			portsUsed[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port found")
}

func isBindConflict(log string) bool {
	return strings.Contains(log, "Address already in use") || strings.Contains(log, "could not create any TCP/IP sockets")
}
