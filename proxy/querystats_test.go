package proxy

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsluice/pgsluice/routing"
)

func TestTagRows(t *testing.T) {
	for _, c := range []struct {
		tag  string
		want int64
	}{
		{"SELECT 5\x00", 5},
		{"SELECT 5", 5},
		{"INSERT 0 1\x00", 1},
		{"UPDATE 1234567\x00", 1234567},
		{"DELETE 0\x00", 0},
		{"COPY 42\x00", 42},
		{"BEGIN\x00", 0},
		{"CREATE TABLE\x00", 0},
		{"\x00", 0},
		{"", 0},
		{"42", 0},                          // no command word
		{"SELECT x5", 0},                   // not a separate number
		{"SELECT 99999999999999999999", 0}, // overflow guard
	} {
		if got := tagRows([]byte(c.tag)); got != c.want {
			t.Errorf("tagRows(%q) = %d, want %d", c.tag, got, c.want)
		}
	}
}

func FuzzTagRows(f *testing.F) {
	for _, s := range []string{"SELECT 5\x00", "INSERT 0 1", "BEGIN", "", " 1", "X 18446744073709551615"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, tag []byte) {
		if n := tagRows(tag); n < 0 || n > 1<<53 {
			t.Fatalf("tagRows(%q) = %d", tag, n)
		}
	})
}

// Every latency falls in a bucket whose middle is within 12.5 % of it,
// and buckets are ordered.
func TestLatencyBuckets(t *testing.T) {
	prev := -1
	for ns := int64(1); ns < int64(200*time.Second); ns = ns*9/8 + 1 {
		i := latBucket(ns)
		if i < prev {
			t.Fatalf("latBucket(%d) = %d after %d: not monotonic", ns, i, prev)
		}
		prev = i
		if ns >= 1<<latMinOct {
			if mid := latMid(i); math.Abs(mid-float64(ns))/float64(ns) > 0.125 {
				t.Errorf("latBucket(%d) = %d with middle %.0f: more than 12.5%% off", ns, i, mid)
			}
		}
	}
	if latBucket(math.MaxInt64) != latBuckets-1 {
		t.Error("huge latencies must land in the last bucket")
	}
}

func TestQuantiles(t *testing.T) {
	q := &fpStats{}
	for i := 1; i <= 1000; i++ { // 1ms .. 1000ms uniformly
		q.lat[latBucket(int64(i)*int64(time.Millisecond))].Add(1)
	}
	for _, c := range []struct{ p, want float64 }{{.5, .5}, {.95, .95}, {.99, .99}} {
		if got := q.quantile(c.p); math.Abs(got-c.want)/c.want > 0.15 {
			t.Errorf("p%.0f = %.3fs, want about %.3fs", c.p*100, got, c.want)
		}
	}
	if (&fpStats{}).quantile(.5) != 0 {
		t.Error("empty sketch: want 0")
	}
}

// Fingerprints beyond the cap are folded into "other" at admission; a
// full table sends new shapes to "other" as well.
func TestQueryStatsAdmission(t *testing.T) {
	max := 2
	qs := newQueryStats(func() int { return max })
	d := func(fp uint64) *routing.Decision {
		return &routing.Decision{Fingerprint: fp, Command: "select", Normalized: "SELECT $1"}
	}
	for fp := uint64(1); fp <= 4; fp++ {
		e := qs.entry(d(fp))
		own := e.series.Load().label != otherLabel
		if own != (fp <= 2) {
			t.Errorf("fingerprint %d: own series %v", fp, own)
		}
		if e.label != strings.Repeat("0", 15)+string("0123456789abcdef"[fp]) {
			t.Errorf("label %q", e.label)
		}
	}
	if qs.entry(d(0)) != qs.other || qs.entry(nil) != qs.other {
		t.Error("no fingerprint: want the other entry")
	}
	if qs.entry(d(3)) != qs.entry(d(3)) {
		t.Error("entry not stable")
	}
	for fp := uint64(5); qs.n < maxQueryStats; fp++ {
		qs.entry(d(fp))
	}
	if qs.entry(d(1<<40)) != qs.other {
		t.Error("full table: want the other entry")
	}
	// The rebalance forgets the least called tenth of a nearly full table.
	qs.entry(d(4)).byTarget[targetReplica].Add(10)
	qs.rebalance(time.Now())
	if qs.n != maxQueryStats-maxQueryStats/10 {
		t.Errorf("after rebalance %d entries, want %d", qs.n, maxQueryStats-maxQueryStats/10)
	}
	if qs.entry(d(4)).series.Load().label == otherLabel {
		t.Error("the most called fingerprint has no own series after rebalance")
	}
}

func TestStripSQLComments(t *testing.T) {
	for in, want := range map[string]string{
		"SHOW POOLS":                 "SHOW POOLS",
		"/* hi */ SHOW -- x\n POOLS": "  SHOW   POOLS",
		"SHOW /* unterminated":       "SHOW ",
		"-- only":                    "",
	} {
		if got := stripSQLComments(in); got != want {
			t.Errorf("stripSQLComments(%q) = %q, want %q", in, got, want)
		}
	}
}

// latencyHist exposes the same classic and native buckets as
// client_golang's histogram (bucket factor 1.1: schema 3) for the same
// observations.
func TestLatencyHistMatchesClientGolang(t *testing.T) {
	ref := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "ref", Help: "ref", Buckets: queryBuckets[:],
		NativeHistogramBucketFactor: 1.1, NativeHistogramZeroThreshold: nativeZero, NativeHistogramMaxBucketNumber: 10000,
	})
	h := newLatencyHist(prometheus.NewDesc("x", "x", nil, nil))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		ns := int64(math.Exp(rng.Float64()*math.Log(2e11))) + 1 // 1ns .. 200s, log-uniform
		ref.Observe(float64(ns) / 1e9)
		h.observe(ns)
	}
	var want, got dto.Metric
	if err := ref.Write(&want); err != nil {
		t.Fatal(err)
	}
	if err := h.Write(&got); err != nil {
		t.Fatal(err)
	}
	w, g := want.GetHistogram(), got.GetHistogram()
	if g.GetSampleCount() != w.GetSampleCount() || math.Abs(g.GetSampleSum()-w.GetSampleSum()) > 1e-6*w.GetSampleSum() {
		t.Errorf("count/sum %d/%f, want %d/%f", g.GetSampleCount(), g.GetSampleSum(), w.GetSampleCount(), w.GetSampleSum())
	}
	for i, b := range w.GetBucket() {
		if gb := g.GetBucket()[i]; gb.GetUpperBound() != b.GetUpperBound() || gb.GetCumulativeCount() != b.GetCumulativeCount() {
			t.Errorf("classic bucket %d: %v, want %v", i, gb, b)
		}
	}
	if g.GetSchema() != w.GetSchema() || g.GetZeroCount() != w.GetZeroCount() || g.GetZeroThreshold() != w.GetZeroThreshold() {
		t.Errorf("schema/zero %d/%d/%g, want %d/%d/%g", g.GetSchema(), g.GetZeroCount(), g.GetZeroThreshold(), w.GetSchema(), w.GetZeroCount(), w.GetZeroThreshold())
	}
	if fmt.Sprint(g.GetPositiveSpan()) != fmt.Sprint(w.GetPositiveSpan()) || fmt.Sprint(g.GetPositiveDelta()) != fmt.Sprint(w.GetPositiveDelta()) {
		t.Errorf("native buckets differ:\n got %v %v\nwant %v %v", g.GetPositiveSpan(), g.GetPositiveDelta(), w.GetPositiveSpan(), w.GetPositiveDelta())
	}
}
