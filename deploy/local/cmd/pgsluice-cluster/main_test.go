package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRunPrintsExportsAndStops starts a full cluster through run, checks
// the env file's DSNs and addresses work, then "signals" it and checks the
// servers are gone and the env file removed.
func TestRunPrintsExportsAndStops(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "cluster.env")
	stop := make(chan os.Signal, 1)
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"-replica", "-redis", "-env-file", envFile, "-dir", t.TempDir()}, &stdout, &stderr, stop)
	}()
	var env []byte
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		if env, err = os.ReadFile(envFile); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no env file after 60s\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(env))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "export ")
		if !ok {
			t.Fatalf("line without export: %q", sc.Text())
		}
		k, v, _ := strings.Cut(line, "=")
		vars[k] = strings.Trim(v, "'")
	}
	for _, k := range []string{"PGSLUICE_PRIMARY_PORT", "PGSLUICE_REPLICA_PORT", "REDIS_ADDR", "PGSLUICE_PRIMARY_DSN", "PGSLUICE_REPLICA_DSN"} {
		if vars[k] == "" {
			t.Errorf("env file lacks %s:\n%s", k, env)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for dsnVar, wantRecovery := range map[string]bool{"PGSLUICE_PRIMARY_DSN": false, "PGSLUICE_REPLICA_DSN": true} {
		conn, err := pgx.Connect(ctx, vars[dsnVar])
		if err != nil {
			t.Fatalf("%s: %v", dsnVar, err)
		}
		var rec bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec != wantRecovery {
			t.Errorf("%s: pg_is_in_recovery=%v err=%v", dsnVar, rec, err)
		}
		conn.Close(ctx)
	}
	rc, err := net.DialTimeout("tcp", vars["REDIS_ADDR"], time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rc.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(rc, "PING\r\n")
	if line, _ := bufio.NewReader(rc).ReadString('\n'); !strings.HasPrefix(line, "+PONG") {
		t.Errorf("redis PING answered %q", line)
	}
	rc.Close()
	if !strings.Contains(stdout.String(), "PGSLUICE_PRIMARY_PORT="+vars["PGSLUICE_PRIMARY_PORT"]) {
		t.Errorf("stdout lacks the export lines:\n%s", stdout.String())
	}

	stop <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("run did not return after the signal")
	}
	if _, err := os.Stat(envFile); !os.IsNotExist(err) {
		t.Errorf("env file still there after stop (%v)", err)
	}
	for _, addr := range []string{"127.0.0.1:" + vars["PGSLUICE_PRIMARY_PORT"], "127.0.0.1:" + vars["PGSLUICE_REPLICA_PORT"], vars["REDIS_ADDR"]} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepting after stop", addr)
		}
	}
}
