// Command pgsluice-bench runs the side-by-side benchmark of direct
// PostgreSQL, PgBouncer and pgsluice (package bench) and writes the
// Markdown table to stdout, the JSON report and the SVG chart to -out.
//
//	go build -o bin/pgsluice ./cmd/pgsluice
//	go run ./bench/cmd/pgsluice-bench -quick
//
// Progress goes to stderr. SIGINT/SIGTERM stop the run and every server it
// started.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgsluice/pgsluice/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	quick := flag.Bool("quick", false, "short runs (make bench-quick): one run per case, three of scenario 2")
	out := flag.String("out", "bench/results", "directory for latest.json and latest.svg")
	bin := flag.String("pgsluice", "bin/pgsluice", "pgsluice binary")
	pgb := flag.String("pgbouncer", "/usr/sbin/pgbouncer", "pgbouncer binary")
	scenarios := flag.String("scenarios", "1,2,3,4,5,6,7", "comma-separated scenarios to run; 8 (the floor forwarders of bench/floor, make bench-floor) runs only when named")
	floorBin := flag.String("floor", "bin/pgsluice-floor", "pgsluice-floor binary (scenario 8)")
	dur := flag.Duration("duration", 0, "duration of one pgbench run (default: 2s quick, 6s full)")
	runs := flag.Int("runs", 0, "interleaved runs per case (default: 1 quick, 3 full; scenario 2 always >= 3)")
	idle := flag.Int("idle", 0, "idle clients in scenario 5 (default 5000)")
	auth := flag.String("auth", "scram-sha-256", "client authentication of both proxies: scram-sha-256 or md5")
	syscalls := flag.Bool("syscalls", false, "also count the proxies' system calls per transaction with strace -c (scenario 2)")
	perfDir := flag.String("perf", "", "profile both proxies with perf record during an extra scenario-2 extended run and an extra scenario-4 churn run; flat profiles go to this directory")
	timeout := flag.Duration("timeout", 0, "abort the whole run after this long (default: 4m quick, 15m full)")
	flag.Parse()

	cfg := bench.FullConfig()
	limit := 15 * time.Minute
	if *quick {
		cfg = bench.QuickConfig()
		limit = 4 * time.Minute
	}
	if *timeout > 0 {
		limit = *timeout
	}
	if *dur > 0 {
		cfg.Duration = *dur
	}
	if *runs > 0 {
		cfg.Runs = *runs
		cfg.Runs2 = max(*runs, 3)
		cfg.CostPairs = max(*runs, 3)
	}
	if *idle > 0 {
		cfg.IdleClients = *idle
	}
	if *auth != "scram-sha-256" && *auth != "md5" {
		fmt.Fprintln(os.Stderr, "pgsluice-bench: -auth must be scram-sha-256 or md5")
		return 2
	}
	cfg.Auth = *auth
	cfg.Syscalls = cfg.Syscalls || *syscalls
	cfg.PerfDir = *perfDir
	cfg.Scenarios = nil
	for _, s := range strings.Split(*scenarios, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 8 {
			fmt.Fprintf(os.Stderr, "pgsluice-bench: bad scenario %q\n", s)
			return 2
		}
		cfg.Scenarios = append(cfg.Scenarios, n)
	}
	var err error
	if cfg.PgsluiceBin, err = builtBinary(*bin, "./cmd/pgsluice"); err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice-bench:", err)
		return 2
	}
	cfg.PgBouncerBin = *pgb
	if slices.Contains(cfg.Scenarios, 8) {
		if cfg.FloorBin, err = builtBinary(*floorBin, "./bench/cmd/pgsluice-floor"); err != nil {
			fmt.Fprintln(os.Stderr, "pgsluice-bench:", err)
			return 2
		}
	}
	start := time.Now()
	cfg.Logf = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice-bench:", err)
		if rep == nil || len(rep.Cases) == 0 {
			return 1
		}
		fmt.Fprintln(os.Stderr, "pgsluice-bench: writing the partial results")
	}
	fmt.Print(rep.Markdown())
	if err2 := write(*out, rep); err2 != nil {
		fmt.Fprintln(os.Stderr, "pgsluice-bench:", err2)
		return 1
	}
	wrote := filepath.Join(*out, "latest.json")
	if rep.HasScenario(2) {
		wrote += " and " + filepath.Join(*out, "latest.svg")
	}
	fmt.Fprintf(os.Stderr, "pgsluice-bench: wrote %s in %.0fs\n", wrote, time.Since(start).Seconds())
	if err != nil {
		return 1
	}
	return 0
}

// builtBinary returns path made absolute, or an error that says how to
// build it from pkg when it is missing.
func builtBinary(path, pkg string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("%v (build it: go build -o %s %s)", err, path, pkg)
	}
	return abs, nil
}

func write(dir string, rep *bench.Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, err := rep.JSON()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), append(j, '\n'), 0o644); err != nil {
		return err
	}
	if !rep.HasScenario(2) {
		return nil // the chart is scenario 2's (make bench-floor runs only 8)
	}
	return os.WriteFile(filepath.Join(dir, "latest.svg"), []byte(rep.SVG()), 0o644)
}
