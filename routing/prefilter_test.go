package routing

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// checkNeutral fails when MayAffectSession says sql cannot affect the
// session but the classifier finds something the session would track.
func checkNeutral(t *testing.T, c *Classifier, sql string) {
	t.Helper()
	if MayAffectSession(sql) {
		return
	}
	d := c.Classify(sql)
	if d.Pin != PinNone || len(d.Sets) > 0 || d.Command == "discard" || d.Command == "deallocate" ||
		d.Hints != (Hints{}) || d.Reason == ReasonHintRejected {
		t.Errorf("MayAffectSession(%q) = false, but it pins %v, sets %v, command %q, hints %+v, reason %q",
			sql, d.Pin, d.Sets, d.Command, d.Hints, d.Reason)
	}
}

func TestMayAffectSession(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 1", false},
		{"select 1", false},
		{"INSERT INTO t VALUES (1)", false},
		{"BEGIN", false},
		{"COMMIT", false},
		{"SET search_path = x", true},
		{"set datestyle to iso", true},
		{"RESET ALL", true},
		{"SELECT set_config('a.b', 'c', false)", true},
		{"SELECT pg_catalog.SET_CONFIG('a.b', $1, false)", true},
		{"SET ROLE r", true},
		{"LISTEN ch", true},
		{"SELECT pg_advisory_lock(1)", true},
		{`SELECT "pg_try_advisory_lock"(1)`, true},
		{"CREATE TEMP TABLE x(a int)", true},
		{"create temporary table x(a int)", true},
		{"SELECT 1 INTO TEMP x", true},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", true},
		{"PREPARE p AS SELECT 1", true},
		{"DEALLOCATE ALL", true},
		{"DISCARD ALL", true},
		{"LOAD 'auto_explain'", true},
		{"/* pgsluice: route=replica */ SELECT 1", true},
		{`SELECT U&"\0070g_\0061dvisory_lock"(1)`, true},
		{"UPDATE t SET v = 1", true}, // a false positive, by design
	} {
		if got := MayAffectSession(tc.sql); got != tc.want {
			t.Errorf("MayAffectSession(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}

// Every golden case (and a few mutations of each) either passes the filter
// or classifies as session-neutral.
func TestMayAffectSessionGolden(t *testing.T) {
	c := New(Options{CacheSize: -1})
	n := 0
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			for _, sql := range []string{gc.SQL, gc.SQL + "; SELECT 1", "SELECT 1; " + gc.SQL, "/* x */ " + gc.SQL} {
				checkNeutral(t, c, sql)
				n++
			}
		}
	}
	if n < 1200 {
		t.Errorf("checked only %d texts; the golden files shrank?", n)
	}
}

func FuzzMayAffectSession(f *testing.F) {
	for _, s := range []string{"SELECT 1", "SET x = 1", "SELECT pg_advisory_lock(1)", "CREATE TEMP TABLE t()", "LISTEN x"} {
		f.Add(s)
	}
	// The classifier fuzz corpus is a good source of ugly SQL.
	if files, err := filepath.Glob("testdata/fuzz/FuzzClassify/*"); err == nil {
		for _, file := range files {
			if raw, err := os.ReadFile(file); err == nil {
				var s string
				if _, err := fmt.Sscanf(string(raw), "go test fuzz v1\nstring(%q)", &s); err == nil {
					f.Add(s)
				}
			}
		}
	}
	c := New(Options{CacheSize: -1})
	f.Fuzz(func(t *testing.T, sql string) {
		checkNeutral(t, c, sql)
	})
}

func BenchmarkMayAffectSession(b *testing.B) {
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
	for i := 0; i < b.N; i++ {
		if MayAffectSession(sql) {
			b.Fatal("pgbench -S query flagged")
		}
	}
}

func TestMayHaveHint(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want bool
	}{
		{"SELECT 1", false},
		{"SELECT 1 /* pgsluice: cache */", true},
		{"/* PGSLUICE: nocache */ SELECT 1", true},
		{"SELECT 1 -- PgSluice: route=primary", true},
		{"SELECT pgsluic", false},
		{"pgsluice", true},
		{"", false},
		{"SELECT 'p' || 'gsluice'", false},
	} {
		if got := MayHaveHint([]byte(tc.sql)); got != tc.want {
			t.Errorf("MayHaveHint(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}
