package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// perfProfile samples pid with `perf record` (software cpu-clock, 999 Hz,
// kernel and user stacks) while fn runs, and writes the flat profiles by
// binary and by symbol (`perf report --no-children --sort dso` and
// `--sort dso,symbol`) to dir/name.perf.txt. It returns the path of that file.
func perfProfile(ctx context.Context, dir, name string, pid int, d time.Duration, fn func() error) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	base := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
	data := base + ".perf.data"
	rec := exec.CommandContext(ctx, "perf", "record", "-q", "-F", "999", "-p", strconv.Itoa(pid), "-o", data,
		"--", "sleep", strconv.Itoa(max(int(d/time.Second), 1)))
	rec.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var recOut strings.Builder
	rec.Stdout, rec.Stderr = &recOut, &recOut
	if err := local.StartCmd(rec); err != nil {
		return "", fmt.Errorf("perf record: %w", err)
	}
	ferr := fn()
	werr := rec.Wait()
	if ferr != nil {
		return "", ferr
	}
	if werr != nil {
		return "", fmt.Errorf("perf record: %v: %s", werr, recOut.String())
	}
	var out []byte
	for _, sortBy := range []string{"dso", "dso,symbol"} {
		o, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
			"--sort", sortBy, "-g", "none", "--percent-limit", "0.5").Output()
		if err != nil {
			return "", fmt.Errorf("perf report: %w", err)
		}
		out = append(out, o...)
	}
	txt := base + ".perf.txt"
	if err := os.WriteFile(txt, out, 0o644); err != nil {
		return "", err
	}
	os.Remove(data)
	return txt, nil
}
