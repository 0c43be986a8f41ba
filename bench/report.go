package bench

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Report is everything one Run measured. It marshals to the JSON written to
// bench/results/latest.json.
type Report struct {
	Started    time.Time     `json:"started"`
	Finished   time.Time     `json:"finished"`
	ElapsedSec float64       `json:"elapsed_seconds"`
	Machine    Machine       `json:"machine"`
	Config     ConfigSummary `json:"config"`
	Cases      []*Case       `json:"cases"`
	Checks     []Check       `json:"checks"`
}

// Machine describes where the run happened, including the load other
// engineers' work put on the shared machine.
type Machine struct {
	Cores           int      `json:"cores"`
	Kernel          string   `json:"kernel"`
	GoVersion       string   `json:"go_version"`
	Postgres        string   `json:"postgres"`
	PgBouncer       string   `json:"pgbouncer"`
	LoadBefore      string   `json:"loadavg_before"`
	LoadAfter       string   `json:"loadavg_after"`
	LoadPerScenario []string `json:"loadavg_per_scenario"`
	NofileHarness   string   `json:"rlimit_nofile_harness"`
	NofilePgBouncer string   `json:"rlimit_nofile_pgbouncer"`
	NofilePgsluice  string   `json:"rlimit_nofile_pgsluice"`
}

// ConfigSummary is the part of Config worth recording.
type ConfigSummary struct {
	PoolSize     int    `json:"pool_size"`
	Scale        int    `json:"pgbench_scale"`
	Auth         string `json:"auth"`
	Threads      int    `json:"pgbench_threads"`
	Duration     string `json:"run_duration"`
	Runs         int    `json:"runs"`
	Runs2        int    `json:"runs_scenario2"`
	CostPairs    int    `json:"feature_cost_pairs"`
	BigClients   []int  `json:"scenario3_clients"`
	StormClients int    `json:"storm_clients"`
	IdleClients  int    `json:"idle_clients"`
	ChurnClients int    `json:"churn_clients"`
}

func (c Config) summary() ConfigSummary {
	return ConfigSummary{PoolSize: c.PoolSize, Scale: c.Scale, Auth: c.Auth, Threads: c.Threads, Duration: c.Duration.String(),
		Runs: c.Runs, Runs2: c.Runs2, CostPairs: c.CostPairs, BigClients: c.BigClients, StormClients: c.StormClients, IdleClients: c.IdleClients, ChurnClients: c.ChurnClients}
}

// Case is one scenario case against one target: every run and the medians.
type Case struct {
	Scenario int      `json:"scenario"`
	Name     string   `json:"case"`
	Target   string   `json:"target"`
	NA       string   `json:"na,omitempty"`
	Runs     []Sample `json:"runs,omitempty"`
	Median   Sample   `json:"median"`
}

// Sample is one run's figures. Fields that do not apply stay zero.
type Sample struct {
	TPS         float64 `json:"tps,omitempty"`
	P50us       float64 `json:"p50_us,omitempty"`
	P99us       float64 `json:"p99_us,omitempty"`
	CPUPerTxnUs float64 `json:"proxy_cpu_per_txn_us,omitempty"`
	// ClientCPUPerTxnUs is pgbench's own CPU per transaction (whole run).
	ClientCPUPerTxnUs float64 `json:"client_cpu_per_txn_us,omitempty"`
	RSSKiB            int64   `json:"proxy_rss_kib,omitempty"`
	RSSBeforeKiB      int64   `json:"proxy_rss_before_kib,omitempty"`
	PerClientKiB      float64 `json:"rss_per_client_kib,omitempty"`
	ConnMs            float64 `json:"connect_ms,omitempty"`
	ConnP99Ms         float64 `json:"connect_p99_ms,omitempty"`
	WallMs            float64 `json:"wall_ms,omitempty"`
	Txns              int64   `json:"txns,omitempty"`
	// SyscallsPerTxn and SyscallTop come from strace -c (one run).
	SyscallsPerTxn float64 `json:"syscalls_per_txn,omitempty"`
	SyscallTop     string  `json:"syscalls_top,omitempty"`
	Failures       int64   `json:"failures"`
	Err            string  `json:"error,omitempty"`
	Load           string  `json:"loadavg,omitempty"`
}

// MedianSample returns the per-field median of runs (for an even count, the
// lower middle), the first error and the largest failure count.
func MedianSample(runs []Sample) Sample {
	if len(runs) == 0 {
		return Sample{}
	}
	f := func(get func(Sample) float64) float64 {
		xs := make([]float64, len(runs))
		for i, s := range runs {
			xs[i] = get(s)
		}
		slices.Sort(xs)
		return xs[(len(xs)-1)/2]
	}
	m := Sample{
		TPS:               f(func(s Sample) float64 { return s.TPS }),
		P50us:             f(func(s Sample) float64 { return s.P50us }),
		P99us:             f(func(s Sample) float64 { return s.P99us }),
		CPUPerTxnUs:       f(func(s Sample) float64 { return s.CPUPerTxnUs }),
		ClientCPUPerTxnUs: f(func(s Sample) float64 { return s.ClientCPUPerTxnUs }),
		RSSKiB:            int64(f(func(s Sample) float64 { return float64(s.RSSKiB) })),
		RSSBeforeKiB:      int64(f(func(s Sample) float64 { return float64(s.RSSBeforeKiB) })),
		PerClientKiB:      f(func(s Sample) float64 { return s.PerClientKiB }),
		ConnMs:            f(func(s Sample) float64 { return s.ConnMs }),
		ConnP99Ms:         f(func(s Sample) float64 { return s.ConnP99Ms }),
		WallMs:            f(func(s Sample) float64 { return s.WallMs }),
		Txns:              int64(f(func(s Sample) float64 { return float64(s.Txns) })),
		SyscallsPerTxn:    f(func(s Sample) float64 { return s.SyscallsPerTxn }),
	}
	for _, s := range runs {
		if m.SyscallTop == "" {
			m.SyscallTop = s.SyscallTop
		}
		m.Failures = max(m.Failures, s.Failures)
		if m.Err == "" {
			m.Err = s.Err
		}
	}
	return m
}

// Find returns the case of scenario with name and target, or nil.
func (r *Report) Find(scenario int, name, target string) *Case {
	for _, c := range r.Cases {
		if c.Scenario == scenario && c.Name == name && c.Target == target {
			return c
		}
	}
	return nil
}

// ok reports whether c has a usable median.
func (c *Case) ok() bool { return c != nil && c.NA == "" && len(c.Runs) > 0 && c.Median.Err == "" }

// Check is one issue-6 target and whether this run met it.
type Check struct {
	Scenario int     `json:"scenario"`
	What     string  `json:"what"`
	Goal     string  `json:"goal"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Met      bool    `json:"met"`
}

// churnCeiling estimates the best churn ratio over PgBouncer that any
// proxy could reach on this machine if the run were bound by CPU alone:
// pgbench's own SCRAM (PBKDF2 per connection) takes most of the CPU, so a
// proxy that spent no CPU at all would win only PgBouncer's share back:
// (client + PgBouncer) ÷ client, with client the mean of both runs' pgbench
// CPU per connection. Runs have gone above it (the waits between a login's
// round trips count too), so the report calls it an estimate and says so
// when the ratio passes it. 0 when the CPU figures are missing.
func churnCeiling(b, s *Case) float64 {
	if !b.ok() || !s.ok() || b.Median.ClientCPUPerTxnUs <= 0 || s.Median.ClientCPUPerTxnUs <= 0 || b.Median.CPUPerTxnUs <= 0 {
		return 0
	}
	client := (b.Median.ClientCPUPerTxnUs + s.Median.ClientCPUPerTxnUs) / 2
	return (client + b.Median.CPUPerTxnUs) / client
}

// roundSpread is the range, over the interleaved rounds, of f applied to
// the two targets' runs of the same round (run i of a with run i of b),
// each end formatted with format and the unit after both, e.g. "; per
// round 0.91–1.04×". A median alone hides how far apart the rounds were:
// on this shared machine a ratio near its goal is met in some rounds and
// not in others, and the reader should see that. "" with fewer than two
// usable rounds.
func roundSpread(a, b *Case, f func(a, b Sample) (float64, bool), format, unit string) string {
	if a == nil || b == nil {
		return ""
	}
	lo, hi, n := 0.0, 0.0, 0
	for i := 0; i < len(a.Runs) && i < len(b.Runs); i++ {
		ra, rb := a.Runs[i], b.Runs[i]
		if ra.Err != "" || rb.Err != "" {
			continue
		}
		v, ok := f(ra, rb)
		if !ok {
			continue
		}
		if n == 0 || v < lo {
			lo = v
		}
		if n == 0 || v > hi {
			hi = v
		}
		n++
	}
	if n < 2 {
		return ""
	}
	return "; per round " + fmt.Sprintf(format, lo) + "–" + fmt.Sprintf(format, hi) + unit
}

// quotient and difference are roundSpread's usual f.
func quotient(get func(Sample) float64) func(a, b Sample) (float64, bool) {
	return func(a, b Sample) (float64, bool) { return get(a) / get(b), get(a) > 0 && get(b) > 0 }
}

func difference(get func(Sample) float64) func(a, b Sample) (float64, bool) {
	return func(a, b Sample) (float64, bool) { return get(a) - get(b), get(a) > 0 && get(b) > 0 }
}

func p50(s Sample) float64 { return s.P50us }

// Checks evaluates the issue-6 targets on a report. A target whose inputs
// were not measured is reported as not met, saying so.
func Checks(r *Report) []Check {
	var out []Check
	ran := map[int]bool{}
	for _, c := range r.Cases {
		ran[c.Scenario] = true
	}
	add := func(sc int, what, goal string, val float64, measured string, met, have bool) {
		if !ran[sc] {
			return
		}
		if !have {
			out = append(out, Check{Scenario: sc, What: what, Goal: goal, Measured: "not measured", Met: false})
			return
		}
		out = append(out, Check{Scenario: sc, What: what, Goal: goal, Measured: measured, Value: val, Met: met})
	}
	// Scenario 1.
	d, s := r.Find(1, "1 client extended", Direct), r.Find(1, "1 client extended", Pgsluice)
	if have := d.ok() && s.ok(); have {
		v := s.Median.P50us - d.Median.P50us
		add(1, "added p50 latency over direct, 1 client extended", "≤ 30 µs", v, fmt.Sprintf("%.0f µs (p50 %.0f vs %.0f µs)", v, s.Median.P50us, d.Median.P50us)+
			roundSpread(s, d, difference(p50), "%.0f", " µs"), v <= 30, true)
	} else {
		add(1, "added p50 latency over direct, 1 client extended", "≤ 30 µs", 0, "", false, false)
	}
	// Scenario 2.
	for _, mode := range []string{"simple", "extended"} {
		b, s := r.Find(2, mode, PgBouncer), r.Find(2, mode, Pgsluice)
		have := b.ok() && s.ok() && b.Median.TPS > 0
		var v float64
		if have {
			v = s.Median.TPS / b.Median.TPS
		}
		add(2, "TPS vs PgBouncer, 50 clients -M "+mode, "≥ 1.0×", v, fmt.Sprintf("%.2f× (%.0f vs %.0f)", v, val(s, tps), val(b, tps))+
			roundSpread(s, b, quotient(tps), "%.2f", "×"), v >= 1.0, have)
		have = have && b.Median.CPUPerTxnUs > 0
		if have {
			v = s.Median.CPUPerTxnUs / b.Median.CPUPerTxnUs
		}
		add(2, "CPU per transaction vs PgBouncer, -M "+mode, "≤ 1.0×", v, fmt.Sprintf("%.2f× (%.1f vs %.1f µs)", v, val(s, cpu), val(b, cpu))+
			roundSpread(s, b, quotient(cpu), "%.2f", "×"), v <= 1.0, have)
	}
	{
		dp, sp := r.Find(2, "prepared", Direct), r.Find(2, "prepared", Pgsluice)
		have := dp.ok() && sp.ok() && dp.Median.TPS > 0
		var v float64
		if have {
			v = sp.Median.TPS / dp.Median.TPS
		}
		add(2, "TPS vs direct, 50 clients -M prepared", "≥ 0.9×", v, fmt.Sprintf("%.2f× (%.0f vs %.0f)", v, val(sp, tps), val(dp, tps))+
			roundSpread(sp, dp, quotient(tps), "%.2f", "×"), v >= 0.9, have)
	}
	// Scenario 3.
	base := r.Find(3, "50 clients", Pgsluice)
	for _, c := range r.Cases {
		if c.Scenario != 3 || c.Target != Pgsluice || c.Name == "50 clients" {
			continue
		}
		have := c.ok() && base.ok() && base.Median.TPS > 0
		var v float64
		if have {
			v = c.Median.TPS / base.Median.TPS
		}
		add(3, "TPS at "+c.Name+" vs 50 clients (-M extended)", "≥ 0.85×", v, fmt.Sprintf("%.2f× (%.0f vs %.0f)", v, val(c, tps), val(base, tps)), v >= 0.85, have)
		have = c.ok() && c.Median.P50us > 0
		if have {
			v = c.Median.P99us / c.Median.P50us
		}
		add(3, "p99/p50 at "+c.Name, "≤ 1.5", v, fmt.Sprintf("%.2f (p99 %.0f µs, p50 %.0f µs)", v, c.Median.P99us, c.Median.P50us), v <= 1.5, have)
	}
	// Scenario 4.
	{
		b, s := r.Find(4, "churn", PgBouncer), r.Find(4, "churn", Pgsluice)
		have := b.ok() && s.ok() && b.Median.TPS > 0
		var v float64
		if have {
			v = s.Median.TPS / b.Median.TPS
		}
		measured := fmt.Sprintf("%.2f× (%.0f vs %.0f)", v, val(s, tps), val(b, tps))
		if c := churnCeiling(b, s); c > 0 {
			ms := (b.Median.ClientCPUPerTxnUs + s.Median.ClientCPUPerTxnUs) / 2000
			if v > c {
				measured += fmt.Sprintf("; above the CPU-bound estimate of %.2f× (pgbench at %.1f ms of CPU per connection): not bound by CPU alone", c, ms)
			} else {
				measured += fmt.Sprintf("; CPU-bound estimate of the ceiling %.2f× with pgbench at %.1f ms of CPU per connection", c, ms)
			}
		}
		add(4, "churn (pgbench -C) TPS vs PgBouncer", "≥ 1.2×", v, measured, v >= 1.2, have)
	}
	for _, c := range r.Cases {
		if c.Scenario == 4 && strings.HasPrefix(c.Name, "storm") && c.Target == Pgsluice && len(c.Runs) > 0 {
			var f int64
			for _, s := range c.Runs {
				f += s.Failures
			}
			add(4, c.Name+" connections at once: failures", "0", float64(f), fmt.Sprintf("%d failed over %d runs", f, len(c.Runs)), f == 0, true)
		}
	}
	// Scenario 5.
	for _, c := range r.Cases {
		if c.Scenario == 5 && c.Target == Pgsluice && len(c.Runs) > 0 {
			add(5, "RSS per idle client, "+c.Name, "≤ 8 KiB", c.Median.PerClientKiB, fmt.Sprintf("%.1f KiB", c.Median.PerClientKiB), c.Median.PerClientKiB <= 8 && c.Median.Failures == 0, true)
		}
	}
	cacheChecks(r, add)
	// Scenario 7: what routing (classification + node choice) costs.
	for _, proto := range []string{"simple", "extended"} {
		off, on := r.Find(7, "50 clients "+proto, PgsluiceNR), r.Find(7, "50 clients "+proto, Pgsluice)
		have := off.ok() && on.ok() && off.Median.TPS > 0
		var v float64
		if have {
			v = (1 - on.Median.TPS/off.Median.TPS) * 100
		}
		add(7, "TPS cost of routing on vs off, -M "+proto, "≤ 5 %", v,
			fmt.Sprintf("%.1f %% (%.0f vs %.0f)", v, val(on, tps), val(off, tps)), v <= 5, have)
	}
	return out
}

func tps(s Sample) float64       { return s.TPS }
func cpu(s Sample) float64       { return s.CPUPerTxnUs }
func clientCPU(s Sample) float64 { return s.ClientCPUPerTxnUs }

func val(c *Case, get func(Sample) float64) float64 {
	if c == nil {
		return 0
	}
	return get(c.Median)
}

// JSON renders the report as indented JSON.
func (r *Report) JSON() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

// cell formats one figure of a case for a table: "n/a (why)", "fails: …",
// or the value.
func cell(c *Case, format string, get func(Sample) float64) string {
	switch {
	case c == nil:
		return "–"
	case c.NA != "":
		return "n/a"
	case len(c.Runs) == 0:
		return "–"
	case c.Median.Err != "":
		return "fails¹"
	}
	return fmt.Sprintf(format, get(c.Median))
}

func ratio(a, b *Case, get func(Sample) float64) string {
	if !a.ok() || !b.ok() || get(b.Median) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", get(a.Median)/get(b.Median))
}

// HasScenario reports whether any case of scenario sc was measured or
// marked n/a.
func (r *Report) HasScenario(sc int) bool {
	for _, c := range r.Cases {
		if c.Scenario == sc {
			return true
		}
	}
	return false
}

// Markdown renders the tables of every scenario that ran and the target
// checks.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	w("## pgsluice vs PgBouncer vs direct PostgreSQL\n\n")
	w("Run %s, %.0f s. %d cores, Linux %s, %s, PostgreSQL %s, %s.  \n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.ElapsedSec, m.Cores, m.Kernel, m.GoVersion, m.Postgres, m.PgBouncer)
	w("Pool %d per target, transaction pooling, client auth %s, pgbench -S (select-only) at scale %d, -j %d, %s per run; scenario 2: median of %d interleaved runs, others: median of %d (scenario 1: at least 3); feature costs (scenarios 6 and 7): new server connections and a warm-up run each, then median of %d alternating runs.  \n",
		r.Config.PoolSize, r.Config.Auth, r.Config.Scale, r.Config.Threads, r.Config.Duration, r.Config.Runs2, r.Config.Runs, r.Config.CostPairs)
	w("RLIMIT_NOFILE: harness %s, PgBouncer %s, pgsluice %s. Load average (1/5/15 min) before %s, after %s; the machine is shared, so absolute figures move by tens of percent between runs.\n\n",
		m.NofileHarness, m.NofilePgBouncer, m.NofilePgsluice, m.LoadBefore, m.LoadAfter)
	var notes []string
	note := func(c *Case) {
		if c != nil && c.Median.Err != "" {
			notes = append(notes, fmt.Sprintf("%s, scenario %d %s: %s", c.Target, c.Scenario, c.Name, c.Median.Err))
		}
	}
	has := r.HasScenario
	f0 := "%.0f"
	f1 := "%.1f"
	mib := func(s Sample) float64 { return float64(s.RSSKiB) / 1024 }

	if has(1) {
		w("### 1. One client, extended protocol (latency per transaction)\n\n")
		w("| target | p50 µs | p99 µs | added p50 µs | added p99 µs | proxy CPU/txn µs |\n|---|---:|---:|---:|---:|---:|\n")
		d := r.Find(1, "1 client extended", Direct)
		for _, tn := range three {
			c := r.Find(1, "1 client extended", tn)
			add50, add99 := "–", "–"
			if tn != Direct && c.ok() && d.ok() {
				add50 = fmt.Sprintf("%+.0f", c.Median.P50us-d.Median.P50us)
				add99 = fmt.Sprintf("%+.0f", c.Median.P99us-d.Median.P99us)
			}
			cpuCell := "–"
			if tn != Direct {
				cpuCell = cell(c, f1, cpu)
			}
			w("| %s | %s | %s | %s | %s | %s |\n", tn, cell(c, f0, func(s Sample) float64 { return s.P50us }), cell(c, f0, func(s Sample) float64 { return s.P99us }), add50, add99, cpuCell)
			note(c)
		}
		w("\n")
	}
	if has(2) {
		w("### 2. 50 clients, pool %d: TPS by protocol\n\n", r.Config.PoolSize)
		w("| -M | direct TPS | PgBouncer TPS | pgsluice TPS | pgsluice ÷ PgBouncer | pgsluice ÷ direct | PgBouncer CPU/txn µs | pgsluice CPU/txn µs | PgBouncer RSS MiB | pgsluice RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, mode := range []string{"simple", "extended", "prepared"} {
			d, pb, s := r.Find(2, mode, Direct), r.Find(2, mode, PgBouncer), r.Find(2, mode, Pgsluice)
			if d == nil && pb == nil && s == nil {
				continue
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", mode, cell(d, f0, tps), cell(pb, f0, tps), cell(s, f0, tps),
				ratio(s, pb, tps), ratio(s, d, tps), cell(pb, f1, cpu), cell(s, f1, cpu), cell(pb, f1, mib), cell(s, f1, mib))
			note(d)
			note(pb)
			note(s)
		}
		w("\n")
		if r.Find(2, "syscalls simple", Pgsluice) != nil {
			w("System calls per transaction (strace -c -f on the proxy, 50 clients, 100 transactions each; counts only, strace slows the process):\n\n")
			w("| -M | target | syscalls/txn | most frequent (per txn) |\n|---|---|---:|---|\n")
			for _, mode := range []string{"simple", "extended"} {
				for _, tn := range proxies {
					if c := r.Find(2, "syscalls "+mode, tn); c != nil && len(c.Runs) > 0 {
						w("| %s | %s | %.2f | %s |\n", mode, tn, c.Median.SyscallsPerTxn, c.Median.SyscallTop)
					}
				}
			}
			w("\n")
		}
	}
	if has(3) {
		w("### 3. Many clients on a pool of %d (-M extended)\n\n", r.Config.PoolSize)
		w("TPS, percentiles and CPU here come from pgbench --log over the steady part of each run (after every client's first transaction), so connection setup is left out; 50 clients is measured the same way as the reference.\n\n")
		w("| clients | target | TPS | ÷ TPS at 50 | p50 µs | p99 µs | p99/p50 | proxy CPU/txn µs | proxy RSS MiB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, n := range append([]int{50}, r.Config.BigClients...) {
			name := fmt.Sprintf("%d clients", n)
			for _, tn := range three {
				c := r.Find(3, name, tn)
				if c == nil {
					continue
				}
				if c.NA != "" {
					w("| %d | %s | n/a (%s) | | | | | | |\n", n, tn, c.NA)
					continue
				}
				pr := "–"
				if c.ok() && c.Median.P50us > 0 {
					pr = fmt.Sprintf("%.2f", c.Median.P99us/c.Median.P50us)
				}
				w("| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", n, tn, cell(c, f0, tps), ratio(c, r.Find(3, "50 clients", tn), tps),
					cell(c, f0, func(s Sample) float64 { return s.P50us }), cell(c, f0, func(s Sample) float64 { return s.P99us }), pr, cell(c, f1, cpu), cell(c, f1, mib))
				note(c)
			}
		}
		w("\n")
	}
	if has(4) {
		w("### 4. Connection churn and storm\n\n")
		w("| case | target | TPS | connect ms (avg for -C, p50 for storm) | connect p99 ms | failures | wall ms | proxy CPU/txn µs |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range r.Cases {
			if c.Scenario != 4 {
				continue
			}
			if c.NA != "" {
				w("| %s | %s | n/a (%s) | | | | | |\n", c.Name, c.Target, c.NA)
				continue
			}
			p99, wall, cpuCell := "–", "–", "–"
			if strings.HasPrefix(c.Name, "storm") {
				p99 = cell(c, f1, func(s Sample) float64 { return s.ConnP99Ms })
				wall = cell(c, f0, func(s Sample) float64 { return s.WallMs })
			}
			if c.Target != Direct {
				cpuCell = cell(c, f1, cpu)
			}
			w("| %s | %s | %s | %s | %s | %d | %s | %s |\n", c.Name, c.Target, cell(c, f0, tps), cell(c, "%.2f", func(s Sample) float64 { return s.ConnMs }), p99, c.Median.Failures, wall, cpuCell)
			note(c)
		}
		w("\n")
	}
	if has(5) {
		w("### 5. Idle clients: RSS per client\n\n")
		w("| case | target | connected | RSS before MiB | RSS after MiB | KiB per client |\n|---|---|---:|---:|---:|---:|\n")
		for _, c := range r.Cases {
			if c.Scenario != 5 {
				continue
			}
			if c.NA != "" {
				w("| %s | %s | n/a (%s) | | | |\n", c.Name, c.Target, c.NA)
				continue
			}
			w("| %s | %s | %d | %.1f | %.1f | %.2f |\n", c.Name, c.Target, c.Median.Txns, float64(c.Median.RSSBeforeKiB)/1024, float64(c.Median.RSSKiB)/1024, c.Median.PerClientKiB)
			note(c)
		}
		w("\n")
	}
	if has(6) {
		cacheSection(r, w, note)
	}
	if has(7) {
		w("### 7. Feature cost (50 clients `pgbench -S`; metrics are always on)\n\n")
		w("| protocol | variant | TPS | CPU/txn µs |\n|---|---|---:|---:|\n")
		for _, proto := range []string{"simple", "extended"} {
			for _, tn := range []string{PgsluiceNR, Pgsluice} {
				c := r.Find(7, "50 clients "+proto, tn)
				label := map[string]string{PgsluiceNR: "pgsluice, routing.enabled=false", Pgsluice: "pgsluice, routing.enabled=true (default)"}[tn]
				w("| %s | %s | %s | %s |\n", proto, label, cell(c, f0, tps), cell(c, f1, cpu))
				note(c)
			}
		}
		w("\n")
	}
	if has(8) {
		floorSection(r, w, note)
	}
	if len(r.Checks) > 0 {
		w("### Issue 6 targets\n\n| scenario | target | goal | measured | met |\n|---|---|---|---|---|\n")
		for _, c := range r.Checks {
			met := "**no**"
			if c.Met {
				met = "yes"
			}
			w("| %d | %s | %s | %s | %s |\n", c.Scenario, c.What, c.Goal, c.Measured, met)
		}
		w("\n")
	}
	for i, n := range notes {
		if i == 0 {
			w("¹ Failures:\n\n")
		}
		w("- %s\n", n)
	}
	return b.String()
}

// floorSection renders scenario 8: each target's TPS and CPU per
// transaction next to PgBouncer's, with the range of the CPU ratio over
// the interleaved rounds.
func floorSection(r *Report, w func(string, ...any), note func(*Case)) {
	w("### 8. Floor: the least a forwarder costs (50 clients, pool %d)\n\n", r.Config.PoolSize)
	w("bench/floor's minimal forwarders beside both proxies: `copy` is two goroutines per client and a server connection each (no pool), `pool` one goroutine per client and a channel of %d server connections, `loop` one epoll loop on a locked thread with raw system calls (PgBouncer's design), `park` the pool's goroutines woken by a poller of the forwarder's own instead of the runtime's netpoller, `park1` the same on one thread (GOMAXPROCS 1). They parse nothing but frame headers, and pool and loop let clients in without a password (the 50 logins of a run are part of every target's CPU figure, a small share of it).\n\n", r.Config.PoolSize)
	w("| -M | target | TPS | CPU/txn µs | CPU ÷ PgBouncer | per round |\n|---|---|---:|---:|---:|---|\n")
	for _, mode := range []string{"simple", "extended"} {
		pb := r.Find(8, mode, PgBouncer)
		for _, tn := range []string{PgBouncer, Pgsluice, FloorCopy, FloorPool, FloorLoop, FloorPark, FloorPark1} {
			c := r.Find(8, mode, tn)
			if c == nil {
				continue
			}
			rel, spread := "–", ""
			if tn != PgBouncer {
				rel = ratio(c, pb, cpu)
				spread = strings.TrimPrefix(roundSpread(c, pb, quotient(cpu), "%.2f", "×"), "; per round ")
			}
			w("| %s | %s | %s | %s | %s | %s |\n", mode, tn, cell(c, "%.0f", tps), cell(c, "%.1f", cpu), rel, spread)
			note(c)
		}
	}
	w("\n")
}
