package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Default application role and database created on every cluster.
const (
	AppUser     = "app"
	AppPassword = "secret"
	AppDatabase = "app"
	// Superuser is the bootstrap superuser; it connects from 127.0.0.1
	// with trust authentication.
	Superuser = "postgres"
)

// Options describes the cluster Start builds. The zero value is a single
// primary with the default `app` role and database.
type Options struct {
	// Replica starts a streaming replica (pg_basebackup -R -X stream).
	Replica bool
	// Redis starts a redis-server.
	Redis bool
	// Dir is the base directory for data, sockets and logs. Empty means a
	// fresh os.MkdirTemp directory that Stop removes; a given Dir is left
	// in place (tests pass t.TempDir()).
	Dir string
	// Logf receives every server log line, prefixed "primary| ",
	// "replica| " or "redis| ". Nil discards them. It is called from
	// background goroutines, never after Stop has returned.
	Logf func(format string, args ...any)
	// Users are extra login roles created on the primary (and so present
	// on the replica), each with its own pg_hba.conf line.
	Users []User
	// PGConf holds extra postgresql.conf lines, applied after the
	// harness's own settings (so they win), on primary and replica.
	PGConf []string
	// ServerCertPEM and ServerKeyPEM, when both set, are installed as
	// server.crt/server.key and ssl is turned on. Clients may then use
	// sslmode=require; plain connections keep working.
	ServerCertPEM, ServerKeyPEM []byte
}

// User is a login role to create. Auth is the pg_hba.conf method for it:
// "scram-sha-256" (default), "md5", "password" or "trust". For "md5" the
// password is stored md5-hashed so md5 authentication really happens.
type User struct {
	Name, Password string
	Auth           string
	Superuser      bool
}

// Node is one PostgreSQL server of the cluster. Its exported fields never
// change after Start: restarts keep the same port and data directory.
type Node struct {
	Name    string // "primary" or "replica"
	Host    string // always 127.0.0.1
	Port    int
	DataDir string

	mu   sync.Mutex // guards proc
	proc *proc
}

// DSN returns a postgres:// URL for user/password/db on this node with
// sslmode=disable. An empty password is left out.
func (n *Node) DSN(user, password, db string) string {
	u := url.URL{Scheme: "postgres", Host: n.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// Addr returns host:port.
func (n *Node) Addr() string { return net.JoinHostPort(n.Host, strconv.Itoa(n.Port)) }

// SuperuserDSN returns the DSN of the trust-authenticated superuser on db.
func (n *Node) SuperuserDSN(db string) string { return n.DSN(Superuser, "", db) }

// Running reports whether the node's server process is up.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc != nil && !n.proc.exited()
}

// RedisNode is the cluster's redis-server.
type RedisNode struct {
	Host string
	Port int
	Dir  string

	mu   sync.Mutex
	proc *proc
}

// Addr returns host:port, as go-redis wants it.
func (r *RedisNode) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// Cluster is a running set of local servers. Its methods are safe for
// concurrent use; Stop may be called any number of times.
type Cluster struct {
	Primary *Node
	Replica *Node      // nil unless Options.Replica
	Redis   *RedisNode // nil unless Options.Redis
	// Dir is the base directory holding everything the cluster wrote.
	Dir string
	// BinDir is the PostgreSQL programs directory (psql, pgbench live here).
	BinDir string

	opts      Options
	su        *serverUser
	sink      *logSink
	removeDir bool
	redisBin  string
	stopOnce  sync.Once
	stopErr   error
}

// Bin returns the path of a PostgreSQL program (e.g. "psql", "pgbench").
func (c *Cluster) Bin(name string) string { return filepath.Join(c.BinDir, name) }

// Start builds and starts a cluster. On error everything already started is
// stopped again. ctx bounds startup only; the servers outlive it.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	binDir, err := PGBinDir()
	if err != nil {
		return nil, err
	}
	var redisBin string
	if opts.Redis {
		if redisBin, err = RedisServerPath(); err != nil {
			return nil, err
		}
	}
	su, err := lookupServerUser()
	if err != nil {
		return nil, err
	}
	for _, u := range opts.Users {
		switch u.Auth {
		case "", "scram-sha-256", "md5", "password", "trust":
		default:
			return nil, fmt.Errorf("local: user %q: unknown auth method %q", u.Name, u.Auth)
		}
	}
	c = &Cluster{BinDir: binDir, opts: opts, su: su, sink: &logSink{logf: opts.Logf}, redisBin: redisBin}
	if opts.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "pgsluice-cluster-*"); err != nil {
			return nil, err
		}
		c.removeDir = true
	} else {
		if c.Dir, err = filepath.Abs(opts.Dir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(c.Dir, 0o700); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
			c = nil
		}
	}()

	pgRoot := filepath.Join(c.Dir, "postgres")
	if err := su.prepareDir(pgRoot); err != nil {
		return c, fmt.Errorf("local: prepare %s: %w", pgRoot, err)
	}
	c.Primary = &Node{Name: "primary", Host: "127.0.0.1", DataDir: filepath.Join(pgRoot, "primary")}
	if err := c.initPrimary(ctx); err != nil {
		return c, err
	}
	if err := c.startPG(ctx, c.Primary, true); err != nil {
		return c, err
	}
	if err := c.createRoles(ctx); err != nil {
		return c, err
	}
	if opts.Replica {
		c.Replica = &Node{Name: "replica", Host: "127.0.0.1", DataDir: filepath.Join(pgRoot, "replica")}
		if err := c.initReplica(ctx); err != nil {
			return c, err
		}
		if err := c.startPG(ctx, c.Replica, true); err != nil {
			return c, err
		}
		if err := c.waitStreaming(ctx); err != nil {
			return c, err
		}
	}
	if opts.Redis {
		c.Redis = &RedisNode{Host: "127.0.0.1", Dir: filepath.Join(c.Dir, "redis")}
		if err := os.MkdirAll(c.Redis.Dir, 0o700); err != nil {
			return c, err
		}
		if err := c.startRedis(ctx, true); err != nil {
			return c, err
		}
	}
	return c, nil
}

// StartT starts a cluster for a test: data under t.TempDir(), server logs
// through t.Logf, Stop in t.Cleanup. A missing binary or any startup error
// fails the test with a message saying how to install what is missing.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		if errors.Is(err, ErrMissingBinary) {
			t.Fatalf("local cluster: %v", err)
		}
		t.Fatalf("local cluster: start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("local cluster: stop: %v", err)
		}
	})
	return c
}

// Stop stops the replica, the primary and redis (fast shutdown, then
// immediate, then SIGKILL of the process group), and removes the base
// directory if Start created it. It is idempotent and safe to call
// concurrently; every call returns the first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if c.Replica != nil {
			errs = append(errs, c.stopPG(c.Replica, "fast"))
		}
		if c.Primary != nil {
			errs = append(errs, c.stopPG(c.Primary, "fast"))
		}
		if c.Redis != nil {
			errs = append(errs, c.StopRedis())
		}
		c.sink.close()
		if c.removeDir {
			errs = append(errs, os.RemoveAll(c.Dir))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// StopNode stops one PostgreSQL node. mode is "smart", "fast" or
// "immediate", with pg_ctl's meaning (SIGTERM, SIGINT, SIGQUIT to the
// postmaster). Stopping a stopped node is a no-op.
func (c *Cluster) StopNode(n *Node, mode string) error {
	return c.stopPG(n, mode)
}

// StartNode starts a stopped node again on the same port and waits until it
// accepts connections; for the replica it also waits until it streams from
// the primary (which must then be running). Starting a running node is a
// no-op.
func (c *Cluster) StartNode(n *Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.startPG(ctx, n, false); err != nil {
		return err
	}
	if n == c.Replica {
		return c.waitStreaming(ctx)
	}
	return nil
}

// RestartNode is StopNode(n, "fast") followed by StartNode(n).
func (c *Cluster) RestartNode(n *Node) error {
	if err := c.StopNode(n, "fast"); err != nil {
		return err
	}
	return c.StartNode(n)
}
