package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// Target names used in the report.
const (
	Direct     = "direct"
	PgBouncer  = "pgbouncer"
	Pgsluice   = "pgsluice"
	PgsluiceNR = "pgsluice routing=off"
	// Scenario 6 variants (cache.go).
	PgsluiceCacheMem   = "pgsluice cache=memory"
	PgsluiceCacheRedis = "pgsluice cache=redis"
	PgsluiceCacheOff   = "pgsluice cache=off"
	// Scenario 8: bench/floor's minimal forwarders.
	FloorCopy  = "floor copy"
	FloorPool  = "floor pool"
	FloorLoop  = "floor loop"
	FloorPark  = "floor park"
	FloorPark1 = "floor park1"
)

// floors maps scenario 8's targets to their bench/floor model, in report
// order.
var floors = []struct{ target, model string }{{FloorCopy, "copy"}, {FloorPool, "pool"}, {FloorLoop, "loop"}, {FloorPark, "park"}, {FloorPark1, "park1"}}

// Config says what Run measures and for how long. It is a plain value.
type Config struct {
	PgsluiceBin  string // the pgsluice binary (built from ./cmd/pgsluice)
	PgBouncerBin string // /usr/sbin/pgbouncer
	FloorBin     string // bench/cmd/pgsluice-floor, for scenario 8
	WorkDir      string // "" means a temporary directory removed afterwards
	PoolSize     int
	Scale        int    // pgbench -i -s
	Auth         string // client authentication of both proxies: scram-sha-256 or md5
	Threads      int    // pgbench -j
	Duration     time.Duration
	// LatencyDuration is the steady part of each scenario-1 run.
	LatencyDuration time.Duration
	Runs            int // interleaved runs per case (scenarios 1, 3, 4, 5, 7)
	Runs2           int // interleaved runs per case of scenario 2
	// CostPairs is how many alternating pairs (A B, B A, …) measure a
	// feature's cost: scenario 6's cache with no rule, scenario 7.
	CostPairs    int
	BigClients   []int
	StormClients int
	IdleClients  int
	ChurnClients int
	Scenarios    []int // which scenarios to run (1..8)
	// Syscalls counts the proxies' system calls per transaction with
	// strace -c in scenario 2 (one extra run per protocol and proxy).
	Syscalls bool
	// PerfDir, when set, profiles both proxies with perf record during one
	// extra scenario-2 extended run each and writes the flat profiles
	// there.
	PerfDir string
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// QuickConfig is `make bench-quick`: 2 s runs, one of each case except
// scenario 2 (three interleaved runs) and scenario 1 (three), and
// scenario 3 at 1,000 clients only where `make bench` runs 500 and 2,000
// (pgbench's 2,000 SCRAM logins alone take about 12 s of each run). It
// finishes in under three minutes on the 2-core machine; with 500 and
// 2,000 clients it took 227 s.
func QuickConfig() Config {
	return Config{
		PoolSize: 20, Scale: 10, Auth: "scram-sha-256", Threads: 2,
		Duration: 2 * time.Second, LatencyDuration: time.Second, Runs: 1, Runs2: 3, CostPairs: 1,
		BigClients: []int{1000}, StormClients: 2000, IdleClients: 5000, ChurnClients: 20,
		Scenarios: []int{1, 2, 3, 4, 5, 6, 7},
	}
}

// FullConfig is `make bench`: three interleaved runs of everything, longer
// runs, plus system calls per transaction counted with strace when it is
// installed; under fifteen minutes.
func FullConfig() Config {
	c := QuickConfig()
	c.Duration = 6 * time.Second
	c.LatencyDuration = 4 * time.Second
	c.Runs = 3
	c.Runs2 = 3
	c.CostPairs = 3
	c.BigClients = []int{500, 2000}
	c.Syscalls = true
	return c
}

type runner struct {
	cfg     Config
	rep     *Report
	cluster *local.Cluster
	targets map[string]Target
	procs   map[string]*Proc
	// fresh starts a new instance of a proxy, configured as the main one
	// (scenario 5 measures memory on a process nothing else has used).
	fresh  map[string]func(ctx context.Context, run int) (*Proc, Target, error)
	login  Login
	logDir string
	// script, when set, is the pgbench -f file used instead of -S.
	script string
}

func (r *runner) logf(format string, args ...any) {
	if r.cfg.Logf != nil {
		r.cfg.Logf(format, args...)
	}
}

// Run starts the cluster and the proxies, runs the configured scenarios and
// stops everything again before it returns, on every path. ctx bounds the
// whole run; cancelling it stops the run early (the servers are still
// stopped).
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	rep = &Report{Started: time.Now(), Config: cfg.summary()}
	rep.Machine = machineInfo(cfg)
	rep.Machine.LoadBefore = LoadAvg()
	defer func() {
		rep.Finished = time.Now()
		rep.ElapsedSec = rep.Finished.Sub(rep.Started).Seconds()
		rep.Machine.LoadAfter = LoadAvg()
	}()
	if err := raiseNofile(); err != nil {
		return rep, err
	}
	work := cfg.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "pgsluice-bench-*"); err != nil {
			return rep, err
		}
		defer os.RemoveAll(work)
	}
	r := &runner{cfg: cfg, rep: rep, targets: map[string]Target{}, procs: map[string]*Proc{}, fresh: map[string]func(context.Context, int) (*Proc, Target, error){}, logDir: filepath.Join(work, "pgbench")}

	r.logf("bench: starting PostgreSQL 15 (max_connections=300)")
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	r.cluster, err = local.Start(sctx, local.Options{Dir: filepath.Join(work, "cluster"), Redis: slices.Contains(cfg.Scenarios, 6)})
	if err != nil {
		return rep, err
	}
	defer r.cluster.Stop()
	p := r.cluster.Primary
	r.login = Login{User: local.AppUser, Password: local.AppPassword, DB: local.AppDatabase, Cache: &ScramCache{}}
	r.targets[Direct] = Target{Name: Direct, Host: p.Host, Port: p.Port, MaxClients: 300}

	r.logf("bench: pgbench -i -s %d", cfg.Scale)
	init := exec.CommandContext(sctx, r.cluster.Bin("pgbench"), "-i", "-q", "-s", strconv.Itoa(cfg.Scale),
		"-h", p.Host, "-p", strconv.Itoa(p.Port), "-U", local.AppUser, local.AppDatabase)
	init.Env = []string{"PGPASSWORD=" + local.AppPassword, "PATH=/usr/bin:/bin"}
	if out, err := init.CombinedOutput(); err != nil {
		return rep, fmt.Errorf("pgbench -i: %v: %s", err, out)
	}
	if v, err := r.cluster.Query(sctx, p, "SHOW server_version"); err == nil && len(v) == 1 {
		rep.Machine.Postgres = fmt.Sprint(v[0][0])
	}

	secret := local.AppPassword
	if cfg.Auth == "scram-sha-256" {
		if err := r.cluster.QueryRow(sctx, p, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", []any{local.AppUser}, &secret); err != nil {
			return rep, fmt.Errorf("read app's SCRAM secret: %w", err)
		}
	}
	backlog := 4096
	if b, err := os.ReadFile("/proc/sys/net/core/somaxconn"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			backlog = n // what Go's listener (pgsluice) uses
		}
	}
	maxClients := max(cfg.IdleClients, cfg.StormClients, slices.Max(append([]int{0}, cfg.BigClients...))) + 1000
	r.logf("bench: starting PgBouncer (transaction pooling, pool %d, %s, backlog %d)", cfg.PoolSize, cfg.Auth, backlog)
	pgbCfg := PgBouncerConfig{
		Bin: cfg.PgBouncerBin, Dir: filepath.Join(work, "pgbouncer"), ServerHost: p.Host, ServerPort: p.Port,
		DB: local.AppDatabase, User: local.AppUser, Password: local.AppPassword, AuthFileSecret: secret,
		AuthType: cfg.Auth, PoolSize: cfg.PoolSize, MaxClientConn: maxClients, ListenBacklog: backlog,
	}
	pgb, t, err := StartPgBouncer(sctx, pgbCfg)
	if err != nil {
		return rep, err
	}
	defer pgb.Stop(5 * time.Second)
	r.targets[PgBouncer] = t
	r.procs[PgBouncer] = pgb
	r.fresh[PgBouncer] = func(ctx context.Context, run int) (*Proc, Target, error) {
		c := pgbCfg
		c.Dir = filepath.Join(work, fmt.Sprintf("pgbouncer-fresh-%d", run))
		return StartPgBouncer(ctx, c)
	}
	rep.Machine.NofilePgBouncer = nofileLimit(t.PID)

	variants := []struct {
		name string
		env  []string
		args []string
	}{{Pgsluice, nil, nil}}
	if slices.Contains(cfg.Scenarios, 7) {
		variants = append(variants, struct {
			name string
			env  []string
			args []string
		}{PgsluiceNR, []string{"PGSLUICE_ROUTING_ENABLED=false"}, nil})
	}
	if slices.Contains(cfg.Scenarios, 6) {
		cv, err := r.cacheVariants(work)
		if err != nil {
			return rep, err
		}
		variants = append(variants, cv...)
	}
	for i, v := range variants {
		r.logf("bench: starting %s (%s)", v.name, cfg.PgsluiceBin)
		psCfg := PgsluiceConfig{
			Bin: cfg.PgsluiceBin, Name: v.name, LogPath: filepath.Join(work, fmt.Sprintf("pgsluice-%d.log", i)),
			ServerHost: p.Host, ServerPort: p.Port, User: local.AppUser, Password: local.AppPassword, DB: local.AppDatabase,
			AuthMethod: cfg.Auth, PoolSize: cfg.PoolSize, MaxClientConn: maxClients, Env: v.env, Args: v.args,
		}
		if i == 0 {
			r.fresh[Pgsluice] = func(ctx context.Context, run int) (*Proc, Target, error) {
				c := psCfg
				c.LogPath = filepath.Join(work, fmt.Sprintf("pgsluice-fresh-%d.log", run))
				return StartPgsluice(ctx, c)
			}
		}
		ps, t, err := StartPgsluice(sctx, psCfg)
		if err != nil {
			return rep, err
		}
		defer ps.Stop(10 * time.Second)
		r.targets[v.name] = t
		r.procs[v.name] = ps
		if i == 0 {
			rep.Machine.NofilePgsluice = nofileLimit(t.PID)
		}
	}

	if slices.Contains(cfg.Scenarios, 8) {
		for _, f := range floors {
			r.logf("bench: starting %s (%s)", f.target, cfg.FloorBin)
			fp, t, err := StartFloor(sctx, FloorConfig{
				Bin: cfg.FloorBin, Name: f.target, Model: f.model, LogPath: filepath.Join(work, "floor-"+f.model+".log"),
				ServerHost: p.Host, ServerPort: p.Port, User: local.AppUser, Password: local.AppPassword, DB: local.AppDatabase,
				PoolSize: cfg.PoolSize,
			})
			if err != nil {
				return rep, err
			}
			defer fp.Stop(5 * time.Second)
			r.targets[f.target] = t
			r.procs[f.target] = fp
		}
	}

	// Warm up: fill both pools and PostgreSQL's buffers.
	for _, name := range []string{Direct, PgBouncer, Pgsluice, PgsluiceNR, PgsluiceCacheMem, PgsluiceCacheRedis, PgsluiceCacheOff, FloorCopy, FloorPool, FloorLoop, FloorPark, FloorPark1} {
		if t, ok := r.targets[name]; ok {
			if _, err := r.pgbench(ctx, t, "simple", 50, time.Second, false, false); err != nil {
				return rep, fmt.Errorf("warm-up %s: %w", name, err)
			}
		}
	}

	steps := map[int]func(context.Context) error{
		1: r.scenario1, 2: r.scenario2, 3: r.scenario3, 4: r.scenario4, 5: r.scenario5, 6: r.scenario6, 7: r.scenario7, 8: r.scenario8,
	}
	for _, s := range cfg.Scenarios {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.Machine.LoadPerScenario = append(rep.Machine.LoadPerScenario, fmt.Sprintf("scenario %d: %s", s, LoadAvg()))
		if err := steps[s](ctx); err != nil {
			return rep, fmt.Errorf("scenario %d: %w", s, err)
		}
		for name, pr := range r.procs {
			if pr.Exited() {
				return rep, fmt.Errorf("%s died during scenario %d: %s", name, s, pr.LogTail())
			}
		}
	}
	rep.Checks = Checks(rep)
	return rep, nil
}

// raiseNofile raises the soft RLIMIT_NOFILE to the hard limit. Calling
// Setrlimit explicitly also makes os/exec pass the raised limit on to
// children (Go otherwise restores the original soft limit for them).
func raiseNofile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	l.Cur = l.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

func machineInfo(cfg Config) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if out, err := exec.Command(cfg.PgBouncerBin, "--version").Output(); err == nil {
		m.PgBouncer = strings.SplitN(string(out), "\n", 2)[0]
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		m.NofileHarness = strconv.FormatUint(l.Max, 10)
	}
	return m
}

// pgbench runs one pgbench -S against t and turns it into a Sample, with the
// proxy's CPU per transaction and RSS when t is a proxy.
func (r *runner) pgbench(ctx context.Context, t Target, mode string, clients int, d time.Duration, reconnect, latencies bool) (Sample, error) {
	run := PgbenchRun{
		Bin: r.cluster.Bin("pgbench"), Host: t.Host, Port: t.Port, User: r.login.User, Password: r.login.Password,
		DB: r.login.DB, Mode: mode, Clients: clients, Threads: min(r.cfg.Threads, clients), Duration: d, Reconnect: reconnect,
		Script: r.script,
	}
	if latencies {
		run.LogDir = r.logDir
		// pgbench's -T clock starts before its clients connect; give the
		// connections time so that about d of steady load remains.
		// 2,000 SCRAM logins by pgbench's two threads took more than the
		// 11 s this allowed on a loaded machine (no steady window, 0
		// TPS, in 2 of 3 runs of each proxy): 1 s per 100 clients. Up
		// to 99 clients log in within half a second and get none.
		run.Duration = d + time.Duration(clients/100)*time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, run.Duration+90*time.Second)
	defer cancel()
	var sampler *cpuSampler
	var before ProcSample
	if t.PID != 0 {
		var err error
		if before, err = ReadProc(t.PID); err != nil {
			return Sample{}, err
		}
		if latencies {
			sampler = startCPUSampler(t.PID, 100*time.Millisecond)
		}
	}
	res, err := run.Run(rctx)
	var samples []cpuPoint
	if sampler != nil {
		samples = sampler.stop()
	}
	if err != nil {
		return Sample{}, err
	}
	s := Sample{TPS: res.TPS, P50us: res.P50us, P99us: res.P99us, ConnMs: res.ConnMs, Txns: res.Txns, Failures: res.Failed, Load: LoadAvg()}
	if res.Txns > 0 {
		s.ClientCPUPerTxnUs = float64(res.ClientCPU) / float64(time.Microsecond) / float64(res.Txns)
	}
	if res.Aborted || (res.ExitCode != 0 && res.Txns == 0) {
		s.Err = res.FirstErr
		if s.Err == "" {
			s.Err = fmt.Sprintf("pgbench exit status %d", res.ExitCode)
		}
	}
	if t.PID != 0 {
		after, err := ReadProc(t.PID)
		if err != nil {
			return s, err
		}
		s.RSSKiB = after.RSSKiB
		if res.Txns > 0 {
			s.CPUPerTxnUs = float64(after.CPU-before.CPU) / float64(time.Microsecond) / float64(res.Txns)
		}
	}
	if latencies && len(res.Logged) > 0 {
		r.steadyWindow(&s, res.Logged, samples)
	}
	r.logf("  %-22s %-9s c=%-5d %s%9.0f tps  p50 %6.0fµs  p99 %7.0fµs  cpu/txn %5.1fµs  load %s %s",
		t.Name, mode, clients, map[bool]string{true: "-C ", false: ""}[reconnect], s.TPS, s.P50us, s.P99us, s.CPUPerTxnUs, s.Load, s.Err)
	return s, nil
}

// steadyWindow recomputes TPS, percentiles and CPU per transaction over the
// steady part of a logged run: from the moment every client has finished
// its first transaction (so every client is connected) to the last
// transaction. Connection setup, which -T includes and which costs a proxy
// SCRAM work per client, is left out.
func (r *runner) steadyWindow(s *Sample, txns []LoggedTxn, samples []cpuPoint) {
	firstOf := map[int]int64{}
	last := txns[0].EndUs
	for _, t := range txns {
		if f, ok := firstOf[t.Client]; !ok || t.EndUs < f {
			firstOf[t.Client] = t.EndUs
		}
		last = max(last, t.EndUs)
	}
	var from int64
	for _, f := range firstOf {
		from = max(from, f)
	}
	to := last
	var a, b *cpuPoint
	if len(samples) >= 2 {
		for i := range samples {
			if a == nil && samples[i].atUs >= from {
				a = &samples[i]
			}
			if samples[i].atUs <= to {
				b = &samples[i]
			}
		}
		if a != nil && b != nil && b.atUs > a.atUs {
			from, to = a.atUs, b.atUs
		} else {
			a, b = nil, nil
		}
	}
	w := Window(txns, from, to)
	if len(w) == 0 || to <= from {
		return
	}
	lats := make([]float64, len(w))
	for i, t := range w {
		lats[i] = t.LatUs
	}
	s.TPS = float64(len(w)) / (float64(to-from) / 1e6)
	s.P50us = Percentile(lats, 50)
	s.P99us = Percentile(lats, 99)
	s.Txns = int64(len(w))
	if a != nil {
		s.CPUPerTxnUs = float64(b.cpu-a.cpu) / float64(time.Microsecond) / float64(len(w))
	}
}

// cpuPoint is one reading of a process's CPU time.
type cpuPoint struct {
	atUs int64 // wall clock, µs since the epoch (pgbench's log clock)
	cpu  time.Duration
}

// cpuSampler reads a process's CPU time periodically until stopped.
type cpuSampler struct {
	quit chan struct{}
	done chan []cpuPoint
}

func startCPUSampler(pid int, every time.Duration) *cpuSampler {
	c := &cpuSampler{quit: make(chan struct{}), done: make(chan []cpuPoint, 1)}
	go func() {
		var pts []cpuPoint
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			if p, err := ReadProc(pid); err == nil {
				pts = append(pts, cpuPoint{atUs: time.Now().UnixMicro(), cpu: p.CPU})
			}
			select {
			case <-c.quit:
				c.done <- pts
				return
			case <-tk.C:
			}
		}
	}()
	return c
}

func (c *cpuSampler) stop() []cpuPoint {
	close(c.quit)
	return <-c.done
}

// interleave runs fn for each target in order, runs times (A B C A B C), and
// records one Case per target with every run and the medians.
func (r *runner) interleave(scenario int, name string, targets []string, runs int, fn func(Target) (Sample, error)) error {
	return r.interleaveOrder(scenario, name, targets, runs, false, fn)
}

// interleaveAlternating is interleave with the order reversed on every
// other run (A B, B A, A B): for two variants of one proxy whose
// difference is smaller than the advantage of running first in a pair
// (feature costs; on this machine the second of a pair measured up to
// ~10 % slower with identical code).
func (r *runner) interleaveAlternating(scenario int, name string, targets []string, runs int, fn func(Target) (Sample, error)) error {
	return r.interleaveOrder(scenario, name, targets, runs, true, fn)
}

func (r *runner) interleaveOrder(scenario int, name string, targets []string, runs int, alternate bool, fn func(Target) (Sample, error)) error {
	cases := make([]*Case, len(targets))
	for i, tn := range targets {
		cases[i] = &Case{Scenario: scenario, Name: name, Target: tn}
		r.rep.Cases = append(r.rep.Cases, cases[i])
	}
	for run := 0; run < runs; run++ {
		for j := range targets {
			i := j
			if alternate && run%2 == 1 {
				i = len(targets) - 1 - j
			}
			tn := targets[i]
			s, err := fn(r.targets[tn])
			if err != nil {
				return fmt.Errorf("%s %s: %w", name, tn, err)
			}
			cases[i].Runs = append(cases[i].Runs, s)
		}
	}
	for _, c := range cases {
		c.Median = MedianSample(c.Runs)
	}
	return nil
}

// freshBackends gives each named pgsluice new server connections
// (RECONNECT, then WAIT_CLOSE on its admin console) and one unmeasured
// run of 50 clients in mode, before a feature's cost is measured. A new
// PostgreSQL backend is slow at first: it takes a page fault on each page
// of shared memory it touches for the first time (34,000 over a new pool
// of 20 in its first 2 s run here, 460 by the seventh), and 50 clients
// ran 4,800 TPS through a new pool against 11,600 once it was warm.
// Without this the instance that had served the earlier scenarios ran on
// warm backends against one that had served only its start-up warm-up,
// and the feature looked cheaper than free. Now both sides start from
// the same state and, alternating, get the same sequence of runs.
func (r *runner) freshBackends(ctx context.Context, scenario int, mode string, names ...string) error {
	r.logf("scenario %d: new server connections for %s (RECONNECT, WAIT_CLOSE), then one unmeasured run each", scenario, strings.Join(names, " and "))
	for _, n := range names {
		t := r.targets[n]
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := ConnectRaw(cctx, t.Addr(), r.login.User, r.login.Password, "pgsluice", &ScramCache{})
		if err == nil {
			if err = c.SimpleQuery(cctx, "RECONNECT"); err == nil {
				err = c.SimpleQuery(cctx, "WAIT_CLOSE")
			}
			c.Close()
		}
		cancel()
		if err != nil {
			return fmt.Errorf("%s: RECONNECT: %w", n, err)
		}
	}
	for _, n := range names {
		if _, err := r.pgbench(ctx, r.targets[n], mode, 50, r.cfg.Duration, false, false); err != nil {
			return fmt.Errorf("%s: warm-up: %w", n, err)
		}
	}
	return nil
}

func (r *runner) na(scenario int, name, target, why string) {
	r.rep.Cases = append(r.rep.Cases, &Case{Scenario: scenario, Name: name, Target: target, NA: why})
}

var three = []string{Direct, PgBouncer, Pgsluice}
var proxies = []string{PgBouncer, Pgsluice}

// scenario1: one client, extended protocol; per-transaction latency.
func (r *runner) scenario1(ctx context.Context) error {
	r.logf("scenario 1: one client, extended protocol, latency")
	return r.interleave(1, "1 client extended", three, max(r.cfg.Runs, 3), func(t Target) (Sample, error) {
		return r.pgbench(ctx, t, "extended", 1, r.cfg.LatencyDuration, false, true)
	})
}

// scenario2: 50 clients on a pool of PoolSize, three protocols.
func (r *runner) scenario2(ctx context.Context) error {
	for _, mode := range []string{"simple", "extended", "prepared"} {
		r.logf("scenario 2: 50 clients, pool %d, -M %s", r.cfg.PoolSize, mode)
		if err := r.interleave(2, mode, three, r.cfg.Runs2, func(t Target) (Sample, error) {
			return r.pgbench(ctx, t, mode, 50, r.cfg.Duration, false, false)
		}); err != nil {
			return err
		}
	}
	if err := r.profileProxies(ctx, "extended", func(t Target) error {
		_, err := r.pgbench(ctx, t, "extended", 50, r.cfg.Duration, false, false)
		return err
	}); err != nil {
		return err
	}
	if !r.cfg.Syscalls {
		return nil
	}
	if _, err := exec.LookPath("strace"); err != nil {
		r.logf("scenario 2: no strace, system calls not counted")
		return nil
	}
	for _, mode := range []string{"simple", "extended"} {
		r.logf("scenario 2: system calls per transaction (strace -c), -M %s", mode)
		if err := r.interleave(2, "syscalls "+mode, proxies, 1, func(t Target) (Sample, error) {
			run := PgbenchRun{Bin: r.cluster.Bin("pgbench"), Host: t.Host, Port: t.Port, User: r.login.User, Password: r.login.Password,
				DB: r.login.DB, Mode: mode, Clients: 50, Threads: r.cfg.Threads, Transactions: 100}
			var res PgbenchResult
			sc, err := straceRun(ctx, t.PID, func() error {
				var err error
				res, err = run.Run(ctx)
				return err
			})
			if err != nil {
				return Sample{}, err
			}
			s := Sample{Txns: res.Txns, Failures: res.Failed, Err: res.FirstErr}
			if res.Txns > 0 {
				s.SyscallsPerTxn = float64(sc.Total) / float64(res.Txns)
				s.SyscallTop = sc.Top(5, res.Txns)
			}
			r.logf("  %-22s %-9s %.2f syscalls/txn: %s", t.Name, mode, s.SyscallsPerTxn, s.SyscallTop)
			return s, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// profileProxies runs fn against each proxy once more under perf record
// when -perf is set; the flat profiles go to PerfDir as
// "<proxy>_<name>.perf.txt".
func (r *runner) profileProxies(ctx context.Context, name string, fn func(Target) error) error {
	if r.cfg.PerfDir == "" {
		return nil
	}
	if _, err := exec.LookPath("perf"); err != nil {
		r.logf("  no perf, not profiling %s", name)
		return nil
	}
	for _, tn := range proxies {
		t := r.targets[tn]
		path, err := perfProfile(ctx, r.cfg.PerfDir, tn+" "+name, t.PID, r.cfg.Duration, func() error { return fn(t) })
		if err != nil {
			return err
		}
		r.logf("  %-22s perf profile (%s): %s", tn, name, path)
	}
	return nil
}

// scenario3: many clients on a small pool. A 50-client case measured the
// same way (pgbench --log, steady window) is the reference for the
// "TPS at N ÷ TPS at 50" ratio.
func (r *runner) scenario3(ctx context.Context) error {
	for _, n := range append([]int{50}, r.cfg.BigClients...) {
		name := fmt.Sprintf("%d clients", n)
		r.logf("scenario 3: %s, pool %d, -M extended", name, r.cfg.PoolSize)
		if n >= 300 {
			r.na(3, name, Direct, "max_connections=300")
		}
		if err := r.interleave(3, name, proxies, r.cfg.Runs, func(t Target) (Sample, error) {
			return r.pgbench(ctx, t, "extended", n, r.cfg.Duration, false, true)
		}); err != nil {
			return err
		}
	}
	return nil
}

// scenario4: connection churn (pgbench -C) and a storm of connections.
func (r *runner) scenario4(ctx context.Context) error {
	r.logf("scenario 4: churn, pgbench -C -c %d", r.cfg.ChurnClients)
	if err := r.interleave(4, "churn", three, r.cfg.Runs, func(t Target) (Sample, error) {
		return r.pgbench(ctx, t, "simple", r.cfg.ChurnClients, r.cfg.Duration, true, false)
	}); err != nil {
		return err
	}
	if err := r.profileProxies(ctx, "churn", func(t Target) error {
		_, err := r.pgbench(ctx, t, "simple", r.cfg.ChurnClients, r.cfg.Duration, true, false)
		return err
	}); err != nil {
		return err
	}
	name := fmt.Sprintf("storm %d", r.cfg.StormClients)
	r.logf("scenario 4: %s connections at once", name)
	r.na(4, name, Direct, "max_connections=300")
	return r.interleave(4, name, proxies, r.cfg.Runs, func(t Target) (Sample, error) {
		before, err := ReadProc(t.PID)
		if err != nil {
			return Sample{}, err
		}
		st := Storm(ctx, t.Addr(), r.login, r.cfg.StormClients, 60*time.Second)
		after, err := ReadProc(t.PID)
		if err != nil {
			return Sample{}, err
		}
		s := Sample{TPS: st.PerSecond, ConnMs: ms(st.ConnP50), ConnP99Ms: ms(st.ConnP99), P50us: us(st.QueryP50), P99us: us(st.QueryP99),
			Failures: int64(st.Failures), Txns: int64(st.OK), Err: st.FirstErr, RSSKiB: after.RSSKiB, WallMs: ms(st.Wall), Load: LoadAvg()}
		if st.OK > 0 {
			s.CPUPerTxnUs = us(after.CPU-before.CPU) / float64(st.OK)
		}
		r.logf("  %-22s storm: %d ok, %d failed in %v, connect p50 %.1fms p99 %.1fms max %.1fms %s",
			t.Name, st.OK, st.Failures, st.Wall.Round(time.Millisecond), ms(st.ConnP50), ms(st.ConnP99), ms(st.ConnMax), st.FirstErr)
		time.Sleep(500 * time.Millisecond) // let the proxy close the sessions
		return s, nil
	})
}

// scenario5: idle clients, RSS per client. Each run starts a fresh
// instance of the proxy (same configuration) so that memory freed by earlier
// scenarios, which a process keeps and reuses, does not hide the cost; one
// client logs in and runs a query first, so the pool and the runtime are
// warm and only the idle clients' own memory is measured.
func (r *runner) scenario5(ctx context.Context) error {
	name := fmt.Sprintf("%d idle", r.cfg.IdleClients)
	r.logf("scenario 5: %s clients, a fresh proxy process per run", name)
	r.na(5, name, Direct, "max_connections=300")
	run := 0
	return r.interleave(5, name, proxies, r.cfg.Runs, func(main Target) (Sample, error) {
		run++
		p, t, err := r.fresh[main.Name](ctx, run)
		if err != nil {
			return Sample{}, err
		}
		defer p.Stop(10 * time.Second)
		if err := warmOne(ctx, t.Addr(), r.login); err != nil {
			return Sample{}, err
		}
		res, err := Idle(ctx, t.PID, t.Addr(), r.login, r.cfg.IdleClients, 64, 2*time.Second)
		if err != nil {
			return Sample{}, err
		}
		r.logf("  %-22s idle: %d connected in %v, RSS %d -> %d KiB, %.2f KiB/client %s",
			t.Name, res.Connected, res.ConnectDuration.Round(time.Millisecond), res.RSSBeforeKiB, res.RSSAfterKiB, res.PerClientKiB, res.FirstErr)
		return Sample{RSSKiB: res.RSSAfterKiB, RSSBeforeKiB: res.RSSBeforeKiB, PerClientKiB: res.PerClientKiB,
			Txns: int64(res.Connected), Failures: int64(res.Clients - res.Connected), Err: res.FirstErr, Load: LoadAvg()}, nil
	})
}

// warmOne logs in once and runs a query, so a fresh proxy has a server
// connection and a warm runtime before its memory is measured.
func warmOne(ctx context.Context, addr string, l Login) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := ConnectRaw(cctx, addr, l.User, l.Password, l.DB, l.Cache)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SimpleQuery(cctx, "SELECT 1")
}

// scenario7: feature cost, pgsluice with routing off vs on (metrics are
// always on).
func (r *runner) scenario7(ctx context.Context) error {
	for _, proto := range []string{"simple", "extended"} {
		r.logf("scenario 7: feature cost, 50 clients -M %s, routing off vs on", proto)
		if err := r.freshBackends(ctx, 7, proto, PgsluiceNR, Pgsluice); err != nil {
			return err
		}
		err := r.interleaveAlternating(7, "50 clients "+proto, []string{PgsluiceNR, Pgsluice}, max(r.cfg.CostPairs, 1), func(t Target) (Sample, error) {
			return r.pgbench(ctx, t, proto, 50, r.cfg.Duration, false, false)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// scenario8: scenario 2's load (50 clients, pool PoolSize) on both
// proxies and on bench/floor's three minimal forwarders, interleaved: how
// much of the CPU per transaction is the design (goroutines, a channel
// pool, an epoll loop) and how much is the proxy's own work.
func (r *runner) scenario8(ctx context.Context) error {
	targets := []string{PgBouncer, Pgsluice}
	for _, f := range floors {
		targets = append(targets, f.target)
	}
	for _, mode := range []string{"simple", "extended"} {
		r.logf("scenario 8: floors, 50 clients, pool %d, -M %s", r.cfg.PoolSize, mode)
		if err := r.interleave(8, mode, targets, r.cfg.Runs2, func(t Target) (Sample, error) {
			return r.pgbench(ctx, t, mode, 50, r.cfg.Duration, false, false)
		}); err != nil {
			return err
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
