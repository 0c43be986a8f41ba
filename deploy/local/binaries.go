package local

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// InstallHint tells a person how to install the servers the harness needs on
// Debian or Ubuntu. It is part of every "missing binary" error.
const InstallHint = "install them with: apt-get install -y postgresql-15 redis-server"

// ErrMissingBinary is wrapped by the error Start returns when a server
// program cannot be found. Test with errors.Is.
var ErrMissingBinary = errors.New("required server program not found")

var (
	pgBinOnce sync.Once
	pgBinDir  string
	pgBinErr  error
)

// PGBinDir returns the directory holding the PostgreSQL server programs
// (initdb, postgres, pg_ctl, pg_basebackup, psql, pgbench).
//
// It looks, in order, at $PGSLUICE_PG_BINDIR, at `pg_config --bindir` when
// that directory holds initdb, and at the newest /usr/lib/postgresql/*/bin.
// The answer is computed once per process; safe for concurrent use.
func PGBinDir() (string, error) {
	pgBinOnce.Do(func() { pgBinDir, pgBinErr = findPGBinDir() })
	return pgBinDir, pgBinErr
}

func findPGBinDir() (string, error) {
	hasInitdb := func(dir string) bool {
		st, err := os.Stat(filepath.Join(dir, "initdb"))
		return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
	}
	if dir := os.Getenv("PGSLUICE_PG_BINDIR"); dir != "" {
		if hasInitdb(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%w: PGSLUICE_PG_BINDIR=%s has no initdb; %s", ErrMissingBinary, dir, InstallHint)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); dir != "" && hasInitdb(dir) {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	type cand struct {
		dir string
		ver float64
	}
	var cands []cand
	for _, m := range matches {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(m)), 64)
		if err != nil || !hasInitdb(m) {
			continue
		}
		cands = append(cands, cand{m, v})
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("%w: PostgreSQL server programs (initdb, postgres, pg_basebackup) not found via pg_config --bindir or /usr/lib/postgresql/*/bin; %s", ErrMissingBinary, InstallHint)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].ver > cands[j].ver })
	return cands[0].dir, nil
}

// RedisServerPath returns the path of redis-server found on $PATH.
func RedisServerPath() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("%w: redis-server not on PATH; %s", ErrMissingBinary, InstallHint)
	}
	return p, nil
}
