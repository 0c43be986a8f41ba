package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// confFile is the file the harness owns inside each data directory;
// postgresql.conf includes it last, so its settings win.
const confFile = "pgsluice.conf"

func (c *Cluster) initPrimary(ctx context.Context) error {
	n := c.Primary
	err := runOnce(ctx, c.su, c.sink, "primary| ", filepath.Dir(n.DataDir), c.Bin("initdb"),
		"-D", n.DataDir, "-U", Superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	if err != nil {
		return fmt.Errorf("local: initdb: %w", err)
	}
	if err := c.appendFile(filepath.Join(n.DataDir, "postgresql.conf"), "\ninclude_if_exists = '"+confFile+"'\n"); err != nil {
		return err
	}
	if len(c.opts.ServerCertPEM) > 0 && len(c.opts.ServerKeyPEM) > 0 {
		if err := c.writeFile(filepath.Join(n.DataDir, "server.crt"), c.opts.ServerCertPEM, 0o600); err != nil {
			return err
		}
		if err := c.writeFile(filepath.Join(n.DataDir, "server.key"), c.opts.ServerKeyPEM, 0o600); err != nil {
			return err
		}
	}
	var hba strings.Builder
	hba.WriteString("# written by pgsluice deploy/local\n")
	hba.WriteString("host all " + Superuser + " 127.0.0.1/32 trust\n")
	hba.WriteString("host replication all 127.0.0.1/32 trust\n")
	for _, u := range c.opts.Users {
		fmt.Fprintf(&hba, "host all %s 127.0.0.1/32 %s\n", hbaQuote(u.Name), authOf(u))
	}
	hba.WriteString("host all all 127.0.0.1/32 scram-sha-256\n")
	return c.writeFile(filepath.Join(n.DataDir, "pg_hba.conf"), []byte(hba.String()), 0o600)
}

func authOf(u User) string {
	if u.Auth == "" {
		return "scram-sha-256"
	}
	return u.Auth
}

func hbaQuote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// writeConf (re)writes the harness's settings for n with the given port.
func (c *Cluster) writeConf(n *Node) error {
	lines := []string{
		"# written by pgsluice deploy/local; regenerated on every start",
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", n.Port),
		"unix_socket_directories = ''",
		"max_connections = 300",
		"wal_level = logical",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		"hot_standby = on",
		"wal_retrieve_retry_interval = '200ms'",
		"fsync = off",
		"full_page_writes = off",
		"synchronous_commit = on",
		"shared_buffers = '64MB'",
		"logging_collector = off",
		"log_destination = 'stderr'",
		"log_line_prefix = '%m [%p] '",
		"cluster_name = '" + n.Name + "'",
	}
	if len(c.opts.ServerCertPEM) > 0 && len(c.opts.ServerKeyPEM) > 0 {
		lines = append(lines, "ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'")
	}
	lines = append(lines, c.opts.PGConf...)
	return c.writeFile(filepath.Join(n.DataDir, confFile), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// writeFile writes a file the server user owns.
func (c *Cluster) writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	if c.su != nil {
		if err := os.Chown(path, int(c.su.uid), int(c.su.gid)); err != nil {
			return fmt.Errorf("local: %w", err)
		}
	}
	return os.Chmod(path, mode)
}

func (c *Cluster) appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// startPG starts n's postmaster and waits until it accepts connections. With
// pickPort it chooses a free port first and retries on bind conflicts;
// otherwise it reuses n.Port.
func (c *Cluster) startPG(ctx context.Context, n *Node, pickPort bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil && !n.proc.exited() {
		return nil
	}
	attempts := 1
	if pickPort {
		attempts = 5
	}
	var lastErr error
	for range attempts {
		if pickPort {
			p, err := freePort()
			if err != nil {
				return err
			}
			n.Port = p
		}
		if err := c.writeConf(n); err != nil {
			return err
		}
		p, err := startProc(c.su, syscall.SIGQUIT, c.sink, n.Name+"| ", n.DataDir, c.Bin("postgres"), "-D", n.DataDir)
		if err != nil {
			return fmt.Errorf("local: %s: %w", n.Name, err)
		}
		n.proc = p
		lastErr = waitAccepting(ctx, n, p)
		if lastErr == nil {
			return nil
		}
		_ = p.stop(syscall.SIGQUIT, 5*time.Second)
		if !pickPort || !isBindConflict(p.tail.String()) {
			break
		}
	}
	return lastErr
}

// waitAccepting polls until the server answers a superuser connection, the
// process exits, or ctx/60s expires.
func waitAccepting(ctx context.Context, n *Node, p *proc) error {
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for {
		if p.exited() {
			return fmt.Errorf("local: %s exited during startup (%v); last log lines:\n%s", n.Name, p.err, p.tail.String())
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, n.SuperuserDSN("postgres")+"&connect_timeout=2")
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		lastErr = err
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("local: %s not accepting connections on %s: %v; last log lines:\n%s", n.Name, n.Addr(), lastErr, p.tail.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (c *Cluster) stopPG(n *Node, mode string) error {
	if n == nil {
		return errors.New("local: StopNode: nil node")
	}
	var sig syscall.Signal
	switch mode {
	case "smart":
		sig = syscall.SIGTERM
	case "", "fast":
		sig = syscall.SIGINT
	case "immediate":
		sig = syscall.SIGQUIT
	default:
		return fmt.Errorf("local: StopNode: unknown mode %q (want smart, fast or immediate)", mode)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return nil
	}
	p := n.proc
	grace := 30 * time.Second
	if sig == syscall.SIGQUIT {
		grace = 10 * time.Second
	}
	err := p.stop(sig, grace)
	if err != nil && sig != syscall.SIGQUIT {
		err = nil // escalated to kill; the node is down, which is what was asked
	}
	return err
}

// createRoles creates the app role and database and every Options.Users role.
func (c *Cluster) createRoles(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.Primary.SuperuserDSN("postgres"))
	if err != nil {
		return fmt.Errorf("local: connect primary: %w", err)
	}
	defer conn.Close(context.Background())
	users := append([]User{{Name: AppUser, Password: AppPassword}}, c.opts.Users...)
	for _, u := range users {
		enc := "scram-sha-256"
		if u.Auth == "md5" {
			enc = "md5"
		}
		q := fmt.Sprintf("SET password_encryption = '%s'; CREATE ROLE %s LOGIN", enc, pgx.Identifier{u.Name}.Sanitize())
		if u.Password != "" {
			q += " PASSWORD " + quoteLiteral(u.Password)
		}
		if u.Superuser {
			q += " SUPERUSER"
		}
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("local: create role %s: %w", u.Name, err)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+AppDatabase+" OWNER "+AppUser); err != nil {
		return fmt.Errorf("local: create database: %w", err)
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (c *Cluster) initReplica(ctx context.Context) error {
	p := c.Primary
	err := runOnce(ctx, c.su, c.sink, "replica| ", filepath.Dir(c.Replica.DataDir), c.Bin("pg_basebackup"),
		"-h", p.Host, "-p", fmt.Sprint(p.Port), "-U", Superuser, "-D", c.Replica.DataDir,
		"-R", "-X", "stream", "-c", "fast", "--no-sync")
	if err != nil {
		return fmt.Errorf("local: pg_basebackup: %w", err)
	}
	return nil
}

// waitStreaming waits until the primary reports the replica as streaming
// and the replica accepts connections.
func (c *Cluster) waitStreaming(ctx context.Context) error {
	if c.Replica == nil {
		return errors.New("local: no replica")
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := c.QueryRow(ctx, c.Primary, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'replica' AND state = 'streaming'", nil, &n)
		if err == nil && n > 0 {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("local: replica not streaming (last error %v); replica log:\n%s", err, c.nodeTail(c.Replica))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (c *Cluster) nodeTail(n *Node) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return ""
	}
	return n.proc.tail.String()
}

// PauseReplay pauses WAL replay on the replica (pg_wal_replay_pause) and
// waits until replay reports paused, so rows committed on the primary from
// now on are invisible on the replica until ResumeReplay.
func (c *Cluster) PauseReplay() error {
	if c.Replica == nil {
		return errors.New("local: PauseReplay: no replica")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, c.Replica, "SELECT pg_wal_replay_pause()"); err != nil {
		return err
	}
	for {
		var state string
		if err := c.QueryRow(ctx, c.Replica, "SELECT pg_get_wal_replay_pause_state()", nil, &state); err != nil {
			return err
		}
		if state == "paused" {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ResumeReplay resumes WAL replay on the replica (pg_wal_replay_resume).
func (c *Cluster) ResumeReplay() error {
	if c.Replica == nil {
		return errors.New("local: ResumeReplay: no replica")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Exec(ctx, c.Replica, "SELECT pg_wal_replay_resume()")
}

// WaitReplicaCaughtUp waits until the replica has replayed everything the
// primary had written when the call started.
func (c *Cluster) WaitReplicaCaughtUp(ctx context.Context) error {
	if c.Replica == nil {
		return errors.New("local: WaitReplicaCaughtUp: no replica")
	}
	var target string
	if err := c.QueryRow(ctx, c.Primary, "SELECT pg_current_wal_lsn()::text", nil, &target); err != nil {
		return err
	}
	for {
		var ok bool
		err := c.QueryRow(ctx, c.Replica, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", []any{target}, &ok)
		if err == nil && ok {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("local: replica did not reach %s: %w (last error %v)", target, ctx.Err(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Conn opens a new superuser connection to database `app` on n. The
// caller owns it and must Close it.
func (c *Cluster) Conn(ctx context.Context, n *Node) (*pgx.Conn, error) {
	if n == nil {
		return nil, errors.New("local: nil node")
	}
	return pgx.Connect(ctx, n.SuperuserDSN(AppDatabase))
}

// Exec runs sql (which may hold several statements when args is empty) as
// the superuser in database `app` on n, on a connection of its own.
func (c *Cluster) Exec(ctx context.Context, n *Node, sql string, args ...any) error {
	conn, err := c.Conn(ctx, n)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if len(args) == 0 {
		// Simple protocol: allows multi-statement strings.
		_, err = conn.PgConn().Exec(ctx, sql).ReadAll()
		return err
	}
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// QueryRow runs sql with args as the superuser in database `app` on n and
// scans the single result row into dest.
func (c *Cluster) QueryRow(ctx context.Context, n *Node, sql string, args []any, dest ...any) error {
	conn, err := c.Conn(ctx, n)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// Query runs sql with args as the superuser in database `app` on n and
// returns every row's values (as pgx decodes them). The result is owned by
// the caller.
func (c *Cluster) Query(ctx context.Context, n *Node, sql string, args ...any) ([][]any, error) {
	conn, err := c.Conn(ctx, n)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
}
