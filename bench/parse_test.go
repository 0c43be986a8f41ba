package bench

import (
	"encoding/xml"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParsePgbench(t *testing.T) {
	for _, tc := range []struct {
		name, stdout, stderr string
		want                 PgbenchResult
	}{
		{
			name: "plain run",
			stdout: `transaction type: <builtin: select only>
scaling factor: 10
query mode: extended
number of clients: 50
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 2.401 ms
initial connection time = 45.125 ms
tps = 20823.771105 (without initial connection time)
`,
			want: PgbenchResult{Txns: 41234, TPS: 20823.771105, LatAvgMs: 2.401, ConnMs: 45.125},
		},
		{
			name: "reconnect",
			stdout: `number of transactions actually processed: 563
number of failed transactions: 0 (0.000%)
latency average = 71.1 ms
average connection time = 6.992 ms
tps = 281.152074 (including reconnection times)
`,
			want: PgbenchResult{Txns: 563, TPS: 281.152074, LatAvgMs: 71.1, ConnMs: 6.992},
		},
		{
			name: "aborted clients",
			stdout: `number of transactions actually processed: 100
number of failed transactions: 3 (2.913%)
tps = 50.0 (without initial connection time)
`,
			stderr: "pgbench (15.18)\npgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement \"P_0\" already exists\npgbench: fatal: Run was aborted; the above results are incomplete.\n",
			want:   PgbenchResult{Txns: 100, Failed: 3, TPS: 50, FirstErr: `pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" already exists`},
		},
		{
			name:   "nothing ran",
			stderr: "pgbench: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n",
			want:   PgbenchResult{FirstErr: `pgbench: error: connection to server at "127.0.0.1", port 1 failed: Connection refused`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parsePgbench(tc.stdout, tc.stderr)
			got.Stderr = ""
			if got.Txns != tc.want.Txns || got.Failed != tc.want.Failed || got.TPS != tc.want.TPS ||
				got.LatAvgMs != tc.want.LatAvgMs || got.ConnMs != tc.want.ConnMs || got.FirstErr != tc.want.FirstErr {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseLogLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want LoggedTxn
		ok   bool
	}{
		{"0 199 2435 0 1700000000 123456", LoggedTxn{Client: 0, EndUs: 1700000000123456, LatUs: 2435}, true},
		{"12 5 87 0 1700000001 5 0", LoggedTxn{Client: 12, EndUs: 1700000001000005, LatUs: 87}, true},
		{"3 7 failed 0 1700000001 5", LoggedTxn{}, false},
		{"3 7 skipped 0 1700000001 5", LoggedTxn{}, false},
		{"garbage", LoggedTxn{}, false},
		{"", LoggedTxn{}, false},
	} {
		got, ok := parseLogLine(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseLogLine(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestPercentileAndWindow(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tc := range []struct{ p, want float64 }{{50, 5}, {99, 10}, {100, 10}, {10, 1}, {0, 1}} {
		if got := Percentile(xs, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty percentile not 0")
	}
	txns := []LoggedTxn{{EndUs: 10}, {EndUs: 20}, {EndUs: 30}, {EndUs: 40}}
	if got := Window(txns, 20, 30); len(got) != 2 || got[0].EndUs != 20 || got[1].EndUs != 30 {
		t.Errorf("Window = %+v", got)
	}
}

func TestParseProc(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := []byte("1234 (pg (bouncer) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0 100 1000 200\n")
	cpu, err := parseStatCPU(stat)
	if err != nil || cpu != 4*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 4s", cpu, err)
	}
	if _, err := parseStatCPU([]byte("1234 (x) S 1")); err == nil {
		t.Error("short stat line accepted")
	}
	rss, err := parseStatusRSS([]byte("Name:\tpgbouncer\nVmPeak:\t  100 kB\nVmRSS:\t    8812 kB\nThreads:\t1\n"))
	if err != nil || rss != 8812 {
		t.Errorf("parseStatusRSS = %v, %v", rss, err)
	}
	if _, err := parseStatusRSS([]byte("Name:\tx\n")); err == nil {
		t.Error("status without VmRSS accepted")
	}
}

func TestParseStraceSummary(t *testing.T) {
	out := `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 61.20    0.030000           3     10200           write
 30.00    0.015000           1     17600      7400 read
  8.80    0.004000           1      5000           recvfrom
------ ----------- ----------- --------- --------- ----------------
100.00    0.049000           1     32800      7400 total
`
	c, err := parseStraceSummary(out)
	if err != nil {
		t.Fatal(err)
	}
	if c.Total != 32800 || c.ByName["read"] != 17600 || c.Errors["read"] != 7400 || c.ByName["write"] != 10200 {
		t.Errorf("parsed %+v", c)
	}
	if got, want := c.Top(2, 5000), "read 3.52 (1.48 failed), write 2.04"; got != want {
		t.Errorf("Top = %q, want %q", got, want)
	}
	if _, err := parseStraceSummary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted"); err == nil {
		t.Error("output without a total accepted")
	}
}

func TestMedianSample(t *testing.T) {
	m := MedianSample([]Sample{{TPS: 3, Failures: 0}, {TPS: 1, Failures: 2, Err: "boom"}, {TPS: 2}})
	if m.TPS != 2 || m.Failures != 2 || m.Err != "boom" {
		t.Errorf("median %+v", m)
	}
	if m := MedianSample([]Sample{{TPS: 1}, {TPS: 4}}); m.TPS != 1 {
		t.Errorf("even count takes the lower middle, got %v", m.TPS)
	}
}

// sampleReport is a small report with every kind of case the renderers
// handle: values, a failing target, n/a targets.
func sampleReport() *Report {
	r := &Report{Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Config: FullConfig().summary()}
	add := func(sc int, name, target string, s Sample) {
		r.Cases = append(r.Cases, &Case{Scenario: sc, Name: name, Target: target, Runs: []Sample{s}, Median: s})
	}
	add(1, "1 client extended", Direct, Sample{P50us: 90, P99us: 180})
	add(1, "1 client extended", PgBouncer, Sample{P50us: 120, P99us: 250, CPUPerTxnUs: 40})
	add(1, "1 client extended", Pgsluice, Sample{P50us: 115, P99us: 240, CPUPerTxnUs: 30})
	for _, mode := range []string{"simple", "extended", "prepared"} {
		add(2, mode, Direct, Sample{TPS: 30000})
		add(2, mode, Pgsluice, Sample{TPS: 25000, CPUPerTxnUs: 15})
		if mode == "prepared" {
			add(2, mode, PgBouncer, Sample{TPS: 100, Err: `ERROR: prepared statement "P_0" already exists`})
		} else {
			add(2, mode, PgBouncer, Sample{TPS: 20000, CPUPerTxnUs: 20})
		}
	}
	add(3, "50 clients", Pgsluice, Sample{TPS: 25000, P50us: 100, P99us: 150})
	r.Cases = append(r.Cases, &Case{Scenario: 3, Name: "2000 clients", Target: Direct, NA: "max_connections=300"})
	add(3, "2000 clients", Pgsluice, Sample{TPS: 22000, P50us: 1000, P99us: 1400})
	add(4, "churn", PgBouncer, Sample{TPS: 300})
	add(4, "churn", Pgsluice, Sample{TPS: 400})
	add(4, "storm 2000", Pgsluice, Sample{TPS: 1500, Failures: 0})
	add(5, "5000 idle", Pgsluice, Sample{PerClientKiB: 9.5, Txns: 5000})
	r.Checks = Checks(r)
	return r
}

func TestChecks(t *testing.T) {
	got := map[string]bool{}
	for _, c := range sampleReport().Checks {
		got[c.What] = c.Met
	}
	want := map[string]bool{
		"added p50 latency over direct, 1 client extended": true,  // +25 µs
		"TPS vs PgBouncer, 50 clients -M simple":           true,  // 1.25×
		"CPU per transaction vs PgBouncer, -M simple":      true,  // 0.75×
		"TPS vs direct, 50 clients -M prepared":            false, // 0.83×
		"TPS at 2000 clients vs 50 clients (-M extended)":  true,  // 22000/25000 = 0.88×
		"p99/p50 at 2000 clients":                          true,  // 1.4
		"churn (pgbench -C) TPS vs PgBouncer":              true,  // 1.33×
		"storm 2000 connections at once: failures":         true,
		"RSS per idle client, 5000 idle":                   false,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("check %q: met=%v (present %v), want %v", k, g, ok, v)
		}
	}
}

// TestChurnCeiling: with the client's CPU per connection measured, the
// churn target says how far any proxy could get.
func TestChurnCeiling(t *testing.T) {
	mk := func(target string, s Sample) *Case {
		return &Case{Scenario: 4, Name: "churn", Target: target, Runs: []Sample{s}, Median: s}
	}
	cases := []struct {
		name   string
		b, s   Sample
		want   float64
		suffix string
	}{
		{"client-bound", Sample{TPS: 210, CPUPerTxnUs: 400, ClientCPUPerTxnUs: 8000}, Sample{TPS: 200, CPUPerTxnUs: 800, ClientCPUPerTxnUs: 8000},
			1.05, "; CPU-bound estimate of the ceiling 1.05× with pgbench at 8.0 ms of CPU per connection"},
		{"mean of both clients", Sample{TPS: 210, CPUPerTxnUs: 300, ClientCPUPerTxnUs: 1000}, Sample{TPS: 200, CPUPerTxnUs: 800, ClientCPUPerTxnUs: 2000},
			1.2, "; CPU-bound estimate of the ceiling 1.20× with pgbench at 1.5 ms of CPU per connection"},
		{"above the estimate", Sample{TPS: 200, CPUPerTxnUs: 100, ClientCPUPerTxnUs: 8000}, Sample{TPS: 220, CPUPerTxnUs: 800, ClientCPUPerTxnUs: 8000},
			8100.0 / 8000, "; above the CPU-bound estimate of 1.01× (pgbench at 8.0 ms of CPU per connection): not bound by CPU alone"},
		{"no client CPU", Sample{TPS: 210, CPUPerTxnUs: 300}, Sample{TPS: 200, CPUPerTxnUs: 800}, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, s := mk(PgBouncer, c.b), mk(Pgsluice, c.s)
			if got := churnCeiling(b, s); math.Abs(got-c.want) > 1e-9 {
				t.Errorf("churnCeiling = %v, want %v", got, c.want)
			}
			r := &Report{Cases: []*Case{b, s}}
			var m string
			for _, ch := range Checks(r) {
				if ch.What == "churn (pgbench -C) TPS vs PgBouncer" {
					m = ch.Measured
				}
			}
			if want := fmt.Sprintf("%.2f× (%.0f vs %.0f)", c.s.TPS/c.b.TPS, c.s.TPS, c.b.TPS) + c.suffix; m != want {
				t.Errorf("measured %q, want %q", m, want)
			}
		})
	}
}

func TestMarkdownAndSVG(t *testing.T) {
	r := sampleReport()
	md := r.Markdown()
	for _, want := range []string{
		"| simple | 30000 | 20000 | 25000 | 1.25× | 0.83× |",
		"| prepared | 30000 | fails¹ | 25000 | – | 0.83× |",
		"| 2000 | direct | n/a (max_connections=300) |",
		`pgbouncer, scenario 2 prepared: ERROR: prepared statement "P_0" already exists`,
		"| 5 | RSS per idle client, 5000 idle | ≤ 8 KiB | 9.5 KiB | **no** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	svg := r.SVG()
	d := xml.NewDecoder(strings.NewReader(svg))
	rects := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	// background + 8 TPS bars + 5 CPU bars (PgBouncer prepared failed) + 3 legend boxes
	if rects != 1+8+5+3 {
		t.Errorf("SVG has %d rects, want 17", rects)
	}
	if !strings.Contains(svg, "×</text>") {
		t.Error("SVG does not mark the failed PgBouncer prepared bar")
	}
}

// interleave keeps the A B C A B C order; interleaveAlternating
// reverses every other run (A B, B A, A B) and still files each sample
// under its own target.
func TestInterleaveOrder(t *testing.T) {
	for _, tc := range []struct {
		alternate bool
		want      string
	}{
		{false, "ABCABCABC"},
		{true, "ABCCBAABC"},
	} {
		r := &runner{rep: &Report{}, targets: map[string]Target{}}
		for _, n := range []string{"A", "B", "C"} {
			r.targets[n] = Target{Name: n}
		}
		var order strings.Builder
		tps := map[string]float64{"A": 1, "B": 2, "C": 3}
		err := r.interleaveOrder(7, "x", []string{"A", "B", "C"}, 3, tc.alternate, func(tg Target) (Sample, error) {
			order.WriteString(tg.Name)
			return Sample{TPS: tps[tg.Name]}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if order.String() != tc.want {
			t.Errorf("alternate=%v: order %s, want %s", tc.alternate, order.String(), tc.want)
		}
		for _, c := range r.rep.Cases {
			for _, s := range c.Runs {
				if s.TPS != tps[c.Target] {
					t.Errorf("alternate=%v: case %s holds a sample of another target (%v)", tc.alternate, c.Target, s.TPS)
				}
			}
			if len(c.Runs) != 3 {
				t.Errorf("case %s: %d runs, want 3", c.Target, len(c.Runs))
			}
		}
	}
}

// TestRoundSpread: the per-round range pairs run i with run i, skips
// failed or empty rounds, and says nothing with fewer than two.
func TestRoundSpread(t *testing.T) {
	mk := func(runs ...Sample) *Case { return &Case{Runs: runs} }
	cases := []struct {
		name string
		a, b *Case
		f    func(a, b Sample) (float64, bool)
		fmt  string
		unit string
		want string
	}{
		{"ratio", mk(Sample{TPS: 90}, Sample{TPS: 120}, Sample{TPS: 100}), mk(Sample{TPS: 100}, Sample{TPS: 100}, Sample{TPS: 100}),
			quotient(tps), "%.2f", "×", "; per round 0.90–1.20×"},
		{"paired by round, not sorted", mk(Sample{CPUPerTxnUs: 60}, Sample{CPUPerTxnUs: 40}), mk(Sample{CPUPerTxnUs: 30}, Sample{CPUPerTxnUs: 40}),
			quotient(cpu), "%.2f", "×", "; per round 1.00–2.00×"},
		{"difference", mk(Sample{P50us: 300}, Sample{P50us: 260}), mk(Sample{P50us: 250}, Sample{P50us: 240}),
			difference(p50), "%.0f", " µs", "; per round 20–50 µs"},
		{"failed and empty rounds skipped", mk(Sample{TPS: 90}, Sample{TPS: 1, Err: "boom"}, Sample{TPS: 0}, Sample{TPS: 110}),
			mk(Sample{TPS: 100}, Sample{TPS: 100}, Sample{TPS: 100}, Sample{TPS: 100}), quotient(tps), "%.2f", "×", "; per round 0.90–1.10×"},
		{"one usable round", mk(Sample{TPS: 90}, Sample{TPS: 1, Err: "boom"}), mk(Sample{TPS: 100}, Sample{TPS: 100}), quotient(tps), "%.2f", "×", ""},
		{"unequal run counts", mk(Sample{TPS: 90}, Sample{TPS: 80}, Sample{TPS: 70}), mk(Sample{TPS: 100}, Sample{TPS: 100}), quotient(tps), "%.2f", "×", "; per round 0.80–0.90×"},
		{"missing case", nil, mk(Sample{TPS: 100}), quotient(tps), "%.2f", "×", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := roundSpread(c.a, c.b, c.f, c.fmt, c.unit); got != c.want {
				t.Errorf("roundSpread = %q, want %q", got, c.want)
			}
		})
	}
	// In the checks: scenario 2's ratios carry the spread.
	r := &Report{}
	for _, pair := range [][2]float64{{9000, 10000}, {11000, 10000}, {10000, 10000}} {
		for _, tc := range []struct {
			target string
			tps    float64
		}{{PgBouncer, pair[1]}, {Pgsluice, pair[0]}} {
			c := r.Find(2, "simple", tc.target)
			if c == nil {
				c = &Case{Scenario: 2, Name: "simple", Target: tc.target}
				r.Cases = append(r.Cases, c)
			}
			c.Runs = append(c.Runs, Sample{TPS: tc.tps, CPUPerTxnUs: 50})
		}
	}
	for _, c := range r.Cases {
		c.Median = MedianSample(c.Runs)
	}
	var m string
	for _, ch := range Checks(r) {
		if ch.What == "TPS vs PgBouncer, 50 clients -M simple" {
			m = ch.Measured
		}
	}
	if want := "1.00× (10000 vs 10000); per round 0.90–1.10×"; m != want {
		t.Errorf("scenario 2 check measured %q, want %q", m, want)
	}
}

// TestFloorSection: scenario 8's table puts each target's CPU beside
// PgBouncer's, with the per-round range, and leaves a report without
// scenario 8 alone.
func TestFloorSection(t *testing.T) {
	r := &Report{Config: ConfigSummary{PoolSize: 20}}
	add := func(target string, cpus ...float64) {
		c := &Case{Scenario: 8, Name: "simple", Target: target}
		for _, v := range cpus {
			c.Runs = append(c.Runs, Sample{TPS: 9000, Txns: 54000, CPUPerTxnUs: v})
		}
		c.Median = MedianSample(c.Runs)
		r.Cases = append(r.Cases, c)
	}
	add(PgBouncer, 40, 36, 38)
	add(Pgsluice, 52, 54, 57)
	add(FloorLoop, 34, 54, 33)
	add(FloorPool, 50)
	r.Cases = append(r.Cases, &Case{Scenario: 8, Name: "simple", Target: FloorCopy, Runs: []Sample{{Err: "boom"}}, Median: Sample{Err: "boom"}})
	md := r.Markdown()
	for _, want := range []string{
		"### 8. Floor: the least a forwarder costs (50 clients, pool 20)",
		"| simple | pgbouncer | 9000 | 38.0 | – |  |",
		"| simple | pgsluice | 9000 | 54.0 | 1.42× | 1.30–1.50× |",
		"| simple | floor loop | 9000 | 34.0 | 0.89× | 0.85–1.50× |",
		"| simple | floor pool | 9000 | 50.0 | 1.32× |  |",
		"| simple | floor copy | fails¹ | fails¹ | – |  |",
		"floor copy, scenario 8 simple: boom",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	if md := sampleReport().Markdown(); strings.Contains(md, "### 8.") {
		t.Error("a report without scenario 8 shows its section")
	}
}
