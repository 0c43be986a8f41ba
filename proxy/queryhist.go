package proxy

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// latencyHist is a latency histogram with both classic buckets
// (queryBuckets) and native buckets (schema 3: 8 per power of two, the
// layout client_golang picks for a bucket factor of 1.1), observed with
// three atomic adds and no map lookup: the query histograms are observed
// for every statement, where client_golang's native histogram costs a
// sync.Map lookup and a CAS loop per observation. It is exposed through
// Write as one prometheus.Metric carrying both representations.
//
// Observations below nativeZero go to the zero bucket; those above the
// last native bucket (about 68 minutes) are counted in it. Counters are
// read without a snapshot, so a scrape racing an observation may see it in
// one representation and not yet in the other; the sample count is taken
// from the native buckets and the classic ones are capped at it.
type latencyHist struct {
	desc    *prometheus.Desc
	labels  []*dto.LabelPair
	created time.Time

	sumNs   atomic.Int64
	classic [numQueryBuckets + 1]atomic.Uint64 // per bucket, the last is +Inf
	zero    atomic.Uint64
	native  [nativeMaxKey - nativeMinKey]atomic.Uint64 // key nativeMinKey+1+i
}

const (
	nativeSchema = 3
	nativeMinKey = -20 << nativeSchema // 2^-20 s, about 1µs: the zero threshold
	nativeMaxKey = 12 << nativeSchema  // 2^12 s
)

var (
	nativeZero = math.Ldexp(1, nativeMinKey>>nativeSchema)
	// nativeBounds are the upper bounds within one power of two, as
	// fractions in [0.5, 1): 2^(-8/8), 2^(-7/8) … 2^(-1/8).
	nativeBounds = func() []float64 {
		b := make([]float64, 1<<nativeSchema)
		for i := range b {
			b[i] = math.Exp2(float64(i-len(b)) / float64(len(b)))
		}
		return b
	}()
	queryBucketsNs = func() []int64 {
		b := make([]int64, len(queryBuckets))
		for i, s := range queryBuckets {
			b[i] = int64(s * 1e9)
		}
		return b
	}()
)

func newLatencyHist(desc *prometheus.Desc, labelValues ...string) *latencyHist {
	return &latencyHist{desc: desc, labels: prometheus.MakeLabelPairs(desc, labelValues), created: time.Now()}
}

// nativeKey returns the schema-3 bucket key of v seconds (> nativeZero):
// the bucket (2^((k-1)/8), 2^(k/8)] holds v.
func nativeKey(v float64) int {
	frac, exp := math.Frexp(v)
	return sort.SearchFloat64s(nativeBounds, frac) + (exp-1)<<nativeSchema
}

// observe records a latency of ns nanoseconds. Safe for concurrent use.
func (h *latencyHist) observe(ns int64) {
	i := 0
	for i < len(queryBucketsNs) && ns > queryBucketsNs[i] {
		i++
	}
	h.classic[i].Add(1)
	h.sumNs.Add(ns)
	v := float64(ns) / 1e9
	if v <= nativeZero {
		h.zero.Add(1)
		return
	}
	k := nativeKey(v)
	if k > nativeMaxKey {
		k = nativeMaxKey
	}
	h.native[k-nativeMinKey-1].Add(1)
}

// Desc implements prometheus.Metric.
func (h *latencyHist) Desc() *prometheus.Desc { return h.desc }

// Write implements prometheus.Metric.
func (h *latencyHist) Write(m *dto.Metric) error {
	count := h.zero.Load()
	var spans []*dto.BucketSpan
	var deltas []int64
	prevKey, prevCount := 0, int64(0)
	for i := range h.native {
		c := h.native[i].Load()
		if c == 0 {
			continue
		}
		count += c
		k := nativeMinKey + 1 + i
		switch {
		case len(spans) == 0:
			spans = append(spans, &dto.BucketSpan{Offset: proto.Int32(int32(k)), Length: proto.Uint32(1)})
		case k == prevKey+1:
			*spans[len(spans)-1].Length++
		default:
			spans = append(spans, &dto.BucketSpan{Offset: proto.Int32(int32(k - prevKey - 1)), Length: proto.Uint32(1)})
		}
		deltas = append(deltas, int64(c)-prevCount)
		prevKey, prevCount = k, int64(c)
	}
	buckets := make([]*dto.Bucket, len(queryBuckets))
	var cum uint64
	for i, ub := range queryBuckets {
		cum += h.classic[i].Load()
		buckets[i] = &dto.Bucket{CumulativeCount: proto.Uint64(min(cum, count)), UpperBound: proto.Float64(ub)}
	}
	hist := &dto.Histogram{
		SampleCount:      proto.Uint64(count),
		SampleSum:        proto.Float64(float64(h.sumNs.Load()) / 1e9),
		Bucket:           buckets,
		CreatedTimestamp: timestamppb.New(h.created),
		Schema:           proto.Int32(nativeSchema),
		ZeroThreshold:    proto.Float64(nativeZero),
		ZeroCount:        proto.Uint64(h.zero.Load()),
		PositiveSpan:     spans,
		PositiveDelta:    deltas,
	}
	if len(spans) == 0 {
		// An empty native histogram still says it is one.
		hist.PositiveSpan = []*dto.BucketSpan{{Offset: proto.Int32(0), Length: proto.Uint32(0)}}
	}
	m.Histogram = hist
	m.Label = h.labels
	return nil
}

// latencyVec is a set of latencyHists by label values. Creating and
// deleting series takes a lock; observing does not (callers keep the
// *latencyHist). Safe for concurrent use.
type latencyVec struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	m    map[string]*latencyHist
}

func newLatencyVec(name, help string, labels ...string) *latencyVec {
	return &latencyVec{desc: prometheus.NewDesc(name, help, labels, nil), m: map[string]*latencyHist{}}
}

func vecKey(values []string) string {
	n := 0
	for _, v := range values {
		n += len(v) + 1
	}
	b := make([]byte, 0, n)
	for _, v := range values {
		b = append(b, v...)
		b = append(b, 0)
	}
	return string(b)
}

// with returns the series of the label values, creating it.
func (v *latencyVec) with(values ...string) *latencyHist {
	k := vecKey(values)
	v.mu.Lock()
	defer v.mu.Unlock()
	h := v.m[k]
	if h == nil {
		h = newLatencyHist(v.desc, values...)
		v.m[k] = h
	}
	return h
}

// delete removes the series of the label values.
func (v *latencyVec) delete(values ...string) {
	v.mu.Lock()
	delete(v.m, vecKey(values))
	v.mu.Unlock()
}

func (v *latencyVec) Describe(ch chan<- *prometheus.Desc) { ch <- v.desc }

func (v *latencyVec) Collect(ch chan<- prometheus.Metric) {
	v.mu.Lock()
	hs := make([]*latencyHist, 0, len(v.m))
	for _, h := range v.m {
		hs = append(hs, h)
	}
	v.mu.Unlock()
	for _, h := range hs {
		ch <- h
	}
}
