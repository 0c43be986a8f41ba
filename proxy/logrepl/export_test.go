package logrepl

import (
	"testing"
	"time"
)

// SetSetupTimeout shortens the per-step setup deadline for one test. Call
// it before starting Run; the old value comes back after the test's later
// cleanups (Run's stop) have run.
func SetSetupTimeout(t *testing.T, d time.Duration) {
	old := setupTimeout
	setupTimeout = d
	t.Cleanup(func() { setupTimeout = old })
}
