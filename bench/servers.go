package bench

import (
	"context"
	"errors"
	"fmt"
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

	"github.com/pgsluice/pgsluice/deploy/local"
)

// Target is one endpoint the scenarios drive: direct PostgreSQL or a proxy.
type Target struct {
	Name string // "direct", "pgbouncer", "pgsluice", …
	Host string
	Port int
	// PID is the proxy's process (0 for direct PostgreSQL: its CPU and
	// memory are spread over one process per connection and not measured).
	PID int
	// MaxClients is how many clients the target can hold; 0 means no
	// limit the harness needs to respect.
	MaxClients int
}

// Addr returns host:port.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// Proc is a server process the harness started. Stop is idempotent and safe
// for concurrent use.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	once    sync.Once
	logf    *os.File
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// LogTail returns the last lines of the process's log.
func (p *Proc) LogTail() string {
	b, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits for the process to be reaped.
func (p *Proc) Stop(grace time.Duration) {
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // any straggler in the group
		p.logf.Close()
	})
}

// startProc starts name with args and env in its own process group with a
// parent-death signal, logging stdout and stderr to logPath.
func startProc(name, logPath string, env []string, cred *syscall.Credential, prog string, args ...string) (*Proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(prog, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := local.StartCmd(cmd); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{}), logf: lf}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// freePort returns a currently free 127.0.0.1 TCP port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitLogin waits until a client can log in through addr.
func waitLogin(ctx context.Context, p *Proc, addr, user, password, db string) error {
	var last error
	for ctx.Err() == nil {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited: %s", p.Name, p.LogTail())
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := ConnectRaw(cctx, addr, user, password, db, &ScramCache{})
		cancel()
		if err == nil {
			err = c.SimpleQuery(ctx, "SELECT 1")
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	if p != nil {
		return fmt.Errorf("%s did not accept logins: %v; log:\n%s", p.Name, last, p.LogTail())
	}
	return fmt.Errorf("no login at %s: %v", addr, last)
}

// PgBouncerConfig configures StartPgBouncer.
type PgBouncerConfig struct {
	Bin        string // /usr/sbin/pgbouncer
	Dir        string // config, auth file and log go here
	ServerHost string
	ServerPort int
	DB         string
	User       string
	Password   string // for the readiness check
	// AuthFileSecret is the user's secret in the auth file: a SCRAM secret
	// copied from pg_authid (so PgBouncer authenticates clients without
	// PBKDF2 per login and logs in to PostgreSQL with the client's keys),
	// or the plain password.
	AuthFileSecret string
	AuthType       string // scram-sha-256 or md5
	PoolSize       int
	MaxClientConn  int
	ListenBacklog  int
}

// StartPgBouncer writes a configuration for transaction pooling and starts
// PgBouncer in the foreground through setpriv as the `postgres` OS user
// (PgBouncer refuses root). setpriv, unlike runuser, opens no PAM session,
// so PgBouncer inherits the harness's RLIMIT_NOFILE. It returns once a
// client can log in.
func StartPgBouncer(ctx context.Context, c PgBouncerConfig) (*Proc, Target, error) {
	port, err := freePort()
	if err != nil {
		return nil, Target{}, err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, Target{}, err
	}
	authFile := filepath.Join(c.Dir, "userlist.txt")
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = %s
auth_file = %s
pool_mode = transaction
default_pool_size = %d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = %d
listen_backlog = %d
server_tls_sslmode = disable
client_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
log_stats = 0
stats_period = 60
logfile =
pidfile =
`, c.DB, c.ServerHost, c.ServerPort, c.DB, port, c.AuthType, authFile, c.PoolSize, c.MaxClientConn, c.ListenBacklog)
	iniPath := filepath.Join(c.Dir, "pgbouncer.ini")
	if err := os.WriteFile(iniPath, []byte(ini), 0o644); err != nil {
		return nil, Target{}, err
	}
	if err := os.WriteFile(authFile, []byte(fmt.Sprintf("%q %q\n", c.User, c.AuthFileSecret)), 0o600); err != nil {
		return nil, Target{}, err
	}
	prog, args := c.Bin, []string{iniPath}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, Target{}, fmt.Errorf("pgbouncer refuses root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, f := range []string{c.Dir, iniPath, authFile} {
			if err := os.Chown(f, uid, gid); err != nil {
				return nil, Target{}, err
			}
		}
		if err := searchable(c.Dir); err != nil {
			return nil, Target{}, err
		}
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			return nil, Target{}, fmt.Errorf("setpriv (util-linux) is needed to run pgbouncer as postgres: %w", err)
		}
		// --pdeathsig: the credential change clears a parent-death signal set
		// before it, so setpriv sets it again for pgbouncer.
		prog, args = setpriv, append([]string{"--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig=KILL", c.Bin}, args...)
	}
	p, err := startProc("pgbouncer", filepath.Join(c.Dir, "pgbouncer.log"), []string{"PATH=/usr/sbin:/usr/bin:/bin"}, nil, prog, args...)
	if err != nil {
		return nil, Target{}, err
	}
	t := Target{Name: "pgbouncer", Host: "127.0.0.1", Port: port, PID: p.PID()}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := waitLogin(wctx, p, t.Addr(), c.User, c.Password, c.DB); err != nil {
		p.Stop(2 * time.Second)
		return nil, Target{}, err
	}
	return p, t, nil
}

// searchable gives every ancestor of dir the search bit for others, so the
// postgres user can reach files the root harness created under /tmp.
func searchable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); p != "/" && p != filepath.Dir(p); p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, st.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
	}
	return nil
}

// PgsluiceConfig configures StartPgsluice.
type PgsluiceConfig struct {
	Bin           string // bin/pgsluice
	Name          string // target name, e.g. "pgsluice" or "pgsluice routing=off"
	LogPath       string
	ServerHost    string
	ServerPort    int
	User          string
	Password      string
	DB            string
	AuthMethod    string
	PoolSize      int
	MaxClientConn int
	// Env holds extra PGSLUICE_* settings (e.g. PGSLUICE_ROUTING_ENABLED=false).
	Env []string
	// Args are extra command-line arguments (e.g. --config FILE).
	Args []string
}

// StartPgsluice starts the pgsluice binary with a clean environment (it
// rejects unknown PGSLUICE_* variables, so nothing of the caller's leaks
// in) and returns once a client can log in.
func StartPgsluice(ctx context.Context, c PgsluiceConfig) (*Proc, Target, error) {
	port, err := freePort()
	if err != nil {
		return nil, Target{}, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, Target{}, err
	}
	env := []string{
		"PATH=/usr/bin:/bin",
		"PGSLUICE_LISTEN=127.0.0.1:" + strconv.Itoa(port),
		"PGSLUICE_ADMIN_LISTEN=127.0.0.1:" + strconv.Itoa(admin),
		"PGSLUICE_PRIMARY_HOST=" + c.ServerHost,
		"PGSLUICE_PRIMARY_PORT=" + strconv.Itoa(c.ServerPort),
		"PGSLUICE_POOL_SIZE=" + strconv.Itoa(c.PoolSize),
		"PGSLUICE_POOL_MODE=transaction",
		"PGSLUICE_POOL_MAX_CLIENT_CONN=" + strconv.Itoa(c.MaxClientConn),
		"PGSLUICE_AUTH_USERS=" + c.User + ":" + c.Password,
		"PGSLUICE_ADMIN_USERS=" + c.User, // the harness's RECONNECT (freshBackends)
		"PGSLUICE_AUTH_METHOD=" + c.AuthMethod,
		"PGSLUICE_TLS_SERVER=disable",
		"PGSLUICE_LOG_LEVEL=warn",
	}
	env = append(env, c.Env...)
	return startListening(ctx, c.Name, c.LogPath, env, port, Login{User: c.User, Password: c.Password, DB: c.DB}, c.Bin, c.Args...)
}

// startListening starts a server that will listen on 127.0.0.1:port and
// waits (20 s at most) until l can log in through it.
func startListening(ctx context.Context, name, logPath string, env []string, port int, l Login, prog string, args ...string) (*Proc, Target, error) {
	p, err := startProc(name, logPath, env, nil, prog, args...)
	if err != nil {
		return nil, Target{}, err
	}
	t := Target{Name: name, Host: "127.0.0.1", Port: port, PID: p.PID()}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := waitLogin(wctx, p, t.Addr(), l.User, l.Password, l.DB); err != nil {
		p.Stop(2 * time.Second)
		return nil, Target{}, err
	}
	return p, t, nil
}

// FloorConfig configures StartFloor: one of bench/floor's minimal
// forwarders (bench/cmd/pgsluice-floor) in front of the server.
type FloorConfig struct {
	Bin, Name, Model, LogPath string
	ServerHost                string
	ServerPort                int
	User, Password, DB        string
	PoolSize                  int
}

// StartFloor starts a floor forwarder and waits until a client can log in
// through it.
func StartFloor(ctx context.Context, c FloorConfig) (*Proc, Target, error) {
	port, err := freePort()
	if err != nil {
		return nil, Target{}, err
	}
	dsn := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", c.User, c.Password,
		net.JoinHostPort(c.ServerHost, strconv.Itoa(c.ServerPort)), c.DB)
	return startListening(ctx, c.Name, c.LogPath, []string{"PATH=/usr/bin:/bin"}, port, Login{User: c.User, Password: c.Password, DB: c.DB}, c.Bin,
		"-model", c.Model, "-listen", "127.0.0.1:"+strconv.Itoa(port), "-server", dsn, "-pool", strconv.Itoa(c.PoolSize))
}

// errNA marks a measurement that does not apply to a target.
var errNA = errors.New("n/a")

// nofileLimit returns "Max open files" soft limit of pid from /proc/PID/limits.
func nofileLimit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Max open files") {
			f := strings.Fields(l)
			if len(f) >= 5 {
				return f[3]
			}
		}
	}
	return ""
}
