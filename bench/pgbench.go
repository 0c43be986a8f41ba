package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PgbenchRun describes one pgbench invocation of the built-in select-only
// script (-S) against one target.
type PgbenchRun struct {
	Bin      string // path of pgbench
	Host     string
	Port     int
	User     string
	Password string
	DB       string
	Mode     string // -M: simple, extended or prepared
	Clients  int
	Threads  int
	Duration time.Duration
	// Transactions, when > 0, runs that many transactions per client (-t)
	// instead of for Duration.
	Transactions int
	Reconnect    bool // -C: a new connection per transaction
	// Script, when set, is a pgbench script file run instead of -S.
	Script string
	// LogDir, when set, makes pgbench write per-transaction latencies there
	// (--log) so percentiles can be computed.
	LogDir string
}

// PgbenchResult is what pgbench reported, plus latency percentiles when the
// run had a LogDir.
type PgbenchResult struct {
	Txns     int64   // transactions actually processed
	Failed   int64   // failed transactions (pgbench's own count)
	TPS      float64 // tps as pgbench prints it
	LatAvgMs float64 // "latency average"
	ConnMs   float64 // initial connection time, or average connection time with -C
	P50us    float64 // from --log; 0 without LogDir
	P99us    float64
	Aborted  bool   // pgbench aborted clients (exit status 2)
	FirstErr string // first error line pgbench printed
	Stderr   string // tail of pgbench's stderr, for the JSON record
	ExitCode int
	// ClientCPU is pgbench's own CPU time (user + system) over the run.
	ClientCPU time.Duration
	// Logged holds every transaction of the --log files, in no order.
	Logged []LoggedTxn
}

// LoggedTxn is one line of pgbench --log.
type LoggedTxn struct {
	Client int
	EndUs  int64   // end of the transaction, µs since the Unix epoch
	LatUs  float64 // latency in µs
}

// Args returns the pgbench command line.
func (r PgbenchRun) Args() []string {
	workload := []string{"-S"}
	if r.Script != "" {
		workload = []string{"-f", r.Script}
	}
	a := []string{"-h", r.Host, "-p", strconv.Itoa(r.Port), "-U", r.User, "-n"}
	a = append(a, workload...)
	a = append(a, "-M", r.Mode, "-c", strconv.Itoa(r.Clients), "-j", strconv.Itoa(max(r.Threads, 1)))
	if r.Transactions > 0 {
		a = append(a, "-t", strconv.Itoa(r.Transactions))
	} else {
		a = append(a, "-T", strconv.Itoa(max(int(r.Duration.Round(time.Second)/time.Second), 1)))
	}
	if r.Reconnect {
		a = append(a, "-C")
	}
	if r.LogDir != "" {
		a = append(a, "--log", "--log-prefix="+filepath.Join(r.LogDir, "tx"))
	}
	return append(a, r.DB)
}

// Run runs pgbench; ctx bounds it (it is killed on expiry). A pgbench that
// exits with an error still yields a result: what it printed is parsed and
// the error is recorded in FirstErr, because a failing target (PgBouncer in
// prepared mode) is a result, not a harness failure.
func (r PgbenchRun) Run(ctx context.Context) (PgbenchResult, error) {
	if r.LogDir != "" {
		if err := os.MkdirAll(r.LogDir, 0o755); err != nil {
			return PgbenchResult{}, err
		}
		old, _ := filepath.Glob(filepath.Join(r.LogDir, "tx.*"))
		for _, f := range old {
			os.Remove(f)
		}
	}
	cmd := exec.CommandContext(ctx, r.Bin, r.Args()...)
	cmd.Env = []string{"PGPASSWORD=" + r.Password, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PATH=/usr/bin:/bin"}
	cmd.Dir = os.TempDir()
	if r.LogDir != "" {
		cmd.Dir = r.LogDir
	}
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := parsePgbench(out.String(), errb.String())
	if ps := cmd.ProcessState; ps != nil {
		res.ClientCPU = ps.UserTime() + ps.SystemTime()
	}
	if ee, ok := err.(*exec.ExitError); ok {
		res.ExitCode = ee.ExitCode()
		if res.ExitCode == 2 {
			res.Aborted = true
		}
		err = nil
	}
	if err != nil {
		return res, fmt.Errorf("pgbench: %w", err)
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("pgbench: %w", ctx.Err())
	}
	if res.ExitCode != 0 && res.Txns == 0 && res.FirstErr == "" {
		res.FirstErr = fmt.Sprintf("pgbench exit status %d", res.ExitCode)
	}
	if r.LogDir != "" {
		txns, err := readPgbenchLogs(r.LogDir)
		if err != nil {
			return res, err
		}
		res.Logged = txns
		lats := make([]float64, len(txns))
		for i, t := range txns {
			lats[i] = t.LatUs
		}
		res.P50us = Percentile(lats, 50)
		res.P99us = Percentile(lats, 99)
	}
	return res, nil
}

var (
	reTxns   = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS    = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reLat    = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reConn   = regexp.MustCompile(`(?m)^(?:initial|average) connection time = ([0-9.]+) ms`)
)

// parsePgbench extracts the figures from pgbench's stdout and its first
// error from stderr.
func parsePgbench(stdout, stderr string) PgbenchResult {
	var r PgbenchResult
	num := func(re *regexp.Regexp) float64 {
		m := re.FindStringSubmatch(stdout)
		if m == nil {
			return 0
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	r.Txns = int64(num(reTxns))
	r.Failed = int64(num(reFailed))
	r.TPS = num(reTPS)
	r.LatAvgMs = num(reLat)
	r.ConnMs = num(reConn)
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "error") || strings.Contains(line, "fatal") || strings.Contains(line, "FATAL") {
			r.FirstErr = strings.TrimSpace(line)
			break
		}
	}
	if len(stderr) > 2000 {
		stderr = "…" + stderr[len(stderr)-2000:]
	}
	r.Stderr = stderr
	return r
}

// readPgbenchLogs reads (and removes) every tx.* file pgbench --log wrote
// in dir.
func readPgbenchLogs(dir string) ([]LoggedTxn, error) {
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil {
		return nil, err
	}
	var lats []LoggedTxn
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		lats, err = appendLogLatencies(lats, fh)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		os.Remove(f)
	}
	return lats, nil
}

func appendLogLatencies(lats []LoggedTxn, f *os.File) ([]LoggedTxn, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := parseLogLine(sc.Text()); ok {
			lats = append(lats, v)
		}
	}
	return lats, sc.Err()
}

// parseLogLine parses one pgbench --log line:
// "client_id transaction_no time script_no time_epoch time_us [lag]", where
// time is the latency in µs and time_epoch/time_us the end of the
// transaction. Failed transactions log "failed" or "skipped" in the time
// field and are left out.
func parseLogLine(line string) (LoggedTxn, bool) {
	f := strings.Fields(line)
	if len(f) < 6 {
		return LoggedTxn{}, false
	}
	client, err0 := strconv.Atoi(f[0])
	lat, err1 := strconv.ParseFloat(f[2], 64)
	sec, err2 := strconv.ParseInt(f[4], 10, 64)
	usec, err3 := strconv.ParseInt(f[5], 10, 64)
	if err0 != nil || err1 != nil || err2 != nil || err3 != nil {
		return LoggedTxn{}, false
	}
	return LoggedTxn{Client: client, EndUs: sec*1e6 + usec, LatUs: lat}, true
}

// Window keeps the transactions that ended within [from, to] (µs since the
// epoch).
func Window(txns []LoggedTxn, from, to int64) []LoggedTxn {
	var out []LoggedTxn
	for _, t := range txns {
		if t.EndUs >= from && t.EndUs <= to {
			out = append(out, t)
		}
	}
	return out
}

// Percentile returns the p-th percentile (nearest rank) of xs, which it
// sorts in place. It returns 0 for an empty slice.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	if !slices.IsSorted(xs) {
		slices.Sort(xs)
	}
	rank := int(p/100*float64(len(xs))+0.999999) - 1
	return xs[min(max(rank, 0), len(xs)-1)]
}
