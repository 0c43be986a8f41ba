package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// SyscallCount is what `strace -c` counted for one process over a run.
type SyscallCount struct {
	Total  int64            // all system calls
	ByName map[string]int64 // calls per system call name
	Errors map[string]int64 // failed calls (EAGAIN mostly) per name
}

// parseStraceSummary reads the table `strace -c` prints:
//
//	% time     seconds  usecs/call     calls    errors syscall
//	------ ----------- ----------- --------- --------- ----------------
//	 60.00    0.012000           2      5000           write
//	...
//	100.00    0.020000           2     10000        12 total
func parseStraceSummary(out string) (SyscallCount, error) {
	c := SyscallCount{ByName: map[string]int64{}, Errors: map[string]int64{}}
	found := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || strings.HasPrefix(f[0], "%") || strings.HasPrefix(f[0], "-") {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue
		}
		name := f[len(f)-1]
		calls, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			continue
		}
		if name == "total" {
			c.Total, found = calls, true
			continue
		}
		c.ByName[name] = calls
		if len(f) == 6 {
			if e, err := strconv.ParseInt(f[4], 10, 64); err == nil {
				c.Errors[name] = e
			}
		}
	}
	if !found {
		return c, fmt.Errorf("no total line in strace output: %q", out)
	}
	return c, nil
}

// Top returns the n most frequent calls per txn, with the failed share:
// "read 3.50 (1.48 failed), write 2.04".
func (c SyscallCount) Top(n int, txns int64) string {
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range c.ByName {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var parts []string
	for i := 0; i < len(all) && i < n; i++ {
		p := fmt.Sprintf("%s %.2f", all[i].k, float64(all[i].v)/float64(max(txns, 1)))
		if e := c.Errors[all[i].k]; e > 0 {
			p += fmt.Sprintf(" (%.2f failed)", float64(e)/float64(max(txns, 1)))
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// straceRun counts pid's system calls (every thread) while fn runs. strace
// slows the traced process down a lot: use the counts, not the timings.
func straceRun(ctx context.Context, pid int, fn func() error) (SyscallCount, error) {
	var errb bytes.Buffer
	cmd := exec.CommandContext(ctx, "strace", "-c", "-f", "-q", "-p", strconv.Itoa(pid))
	cmd.Stderr = &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := local.StartCmd(cmd); err != nil {
		return SyscallCount{}, fmt.Errorf("strace: %w", err)
	}
	time.Sleep(500 * time.Millisecond) // attach to every thread
	ferr := fn()
	_ = cmd.Process.Signal(syscall.SIGINT)
	_ = cmd.Wait()
	if ferr != nil {
		return SyscallCount{}, ferr
	}
	return parseStraceSummary(errb.String())
}
