// Command pgsluice-cluster starts a local PostgreSQL primary (and optionally
// a streaming replica and redis-server) on loopback ports, prints the
// addresses as shell `export` lines, and runs until SIGINT or SIGTERM, when
// it stops every server. `make demo` and bench use it:
//
//	pgsluice-cluster -replica -redis -env-file /tmp/cluster.env &
//	. /tmp/cluster.env   # once the file exists
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgsluice/pgsluice/deploy/local"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if err := run(os.Args[1:], os.Stdout, os.Stderr, sig); err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice-cluster:", err)
		os.Exit(1)
	}
}

// run parses args, starts the cluster, prints the export lines to stdout
// (and the env file), and stops the cluster when stop delivers a signal.
func run(args []string, stdout, stderr io.Writer, stop <-chan os.Signal) error {
	fs := flag.NewFlagSet("pgsluice-cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	replica := fs.Bool("replica", false, "also start a streaming replica")
	redis := fs.Bool("redis", false, "also start redis-server")
	dir := fs.String("dir", "", "base directory for data (default: a new temporary directory, removed on exit)")
	envFile := fs.String("env-file", "", "also write the export lines to this file (written atomically once everything is up, removed on exit)")
	verbose := fs.Bool("v", false, "print server logs to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}

	logger := log.New(stderr, "", log.LstdFlags)
	opts := local.Options{Replica: *replica, Redis: *redis, Dir: *dir}
	if *verbose {
		opts.Logf = logger.Printf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := local.Start(ctx, opts)
	cancel()
	if err != nil {
		return err
	}

	env := exports(c)
	fmt.Fprint(stdout, env)
	if *envFile != "" {
		if err := writeAtomic(*envFile, env); err != nil {
			_ = c.Stop()
			return fmt.Errorf("write env file: %w", err)
		}
	}
	logger.Printf("pgsluice-cluster: running (data in %s); SIGINT or SIGTERM stops it", c.Dir)

	s := <-stop
	logger.Printf("pgsluice-cluster: %v: stopping", s)
	err = c.Stop()
	if *envFile != "" {
		_ = os.Remove(*envFile)
	}
	if err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

func exports(c *local.Cluster) string {
	var b strings.Builder
	p := c.Primary
	fmt.Fprintf(&b, "export PGSLUICE_PRIMARY_HOST=%s\n", p.Host)
	fmt.Fprintf(&b, "export PGSLUICE_PRIMARY_PORT=%d\n", p.Port)
	fmt.Fprintf(&b, "export PGSLUICE_PRIMARY_DSN='%s'\n", p.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	fmt.Fprintf(&b, "export PGSLUICE_PRIMARY_SUPERUSER_DSN='%s'\n", p.SuperuserDSN(local.AppDatabase))
	if r := c.Replica; r != nil {
		fmt.Fprintf(&b, "export PGSLUICE_REPLICA_HOST=%s\n", r.Host)
		fmt.Fprintf(&b, "export PGSLUICE_REPLICA_PORT=%d\n", r.Port)
		fmt.Fprintf(&b, "export PGSLUICE_REPLICA_DSN='%s'\n", r.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	}
	if c.Redis != nil {
		fmt.Fprintf(&b, "export REDIS_ADDR=%s\n", c.Redis.Addr())
	}
	fmt.Fprintf(&b, "export PGSLUICE_PG_BINDIR=%s\n", c.BinDir)
	fmt.Fprintf(&b, "export PGSLUICE_CLUSTER_DIR=%s\n", c.Dir)
	return b.String()
}

func writeAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pgsluice-cluster-env-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
