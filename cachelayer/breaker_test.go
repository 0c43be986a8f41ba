package cachelayer

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBreaker(t *testing.T) {
	clk := newFakeClock()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "state"})
	b := newBreaker(3, 100*time.Millisecond, 350*time.Millisecond, clk.Now, g)
	step := func(what string, allow bool, state int) {
		t.Helper()
		if got := b.allow(); got != allow {
			t.Fatalf("%s: allow = %v, want %v", what, got, allow)
		}
		if b.state != state || testutil.ToFloat64(g) != float64(state) {
			t.Fatalf("%s: state = %d (gauge %v), want %d", what, b.state, testutil.ToFloat64(g), state)
		}
	}
	// Two failures, then a success: the count resets.
	for range 2 {
		step("closed", true, breakerClosed)
		b.failure()
	}
	step("closed", true, breakerClosed)
	b.success()
	for range 3 {
		step("closed", true, breakerClosed)
		b.failure()
	}
	step("just opened", false, breakerOpen)
	clk.Advance(99 * time.Millisecond)
	step("before backoff", false, breakerOpen)
	clk.Advance(time.Millisecond)
	step("probe", true, breakerHalfOpen)
	step("second caller during probe", false, breakerHalfOpen)
	b.failure() // backoff doubles: 200ms
	clk.Advance(199 * time.Millisecond)
	step("doubled backoff", false, breakerOpen)
	clk.Advance(time.Millisecond)
	step("probe 2", true, breakerHalfOpen)
	b.failure() // 400ms capped to 350ms
	clk.Advance(349 * time.Millisecond)
	step("capped backoff", false, breakerOpen)
	clk.Advance(time.Millisecond)
	step("probe 3", true, breakerHalfOpen)
	b.neutral() // caller cancelled: the next call probes again at once
	step("probe after neutral", true, breakerHalfOpen)
	b.success()
	step("closed again", true, breakerClosed)
	// Backoff restarts from the base after recovery.
	for range 3 {
		b.allow()
		b.failure()
	}
	clk.Advance(100 * time.Millisecond)
	step("base backoff after recovery", true, breakerHalfOpen)
}
