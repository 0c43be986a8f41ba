package routing

import (
	"reflect"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// rerender returns sql with every constant the scanner replaced by a
// placeholder swapped for a different constant of the same lexical class.
func rerender(sql string, spans []literalSpan) string {
	var b strings.Builder
	last := 0
	for i, sp := range spans {
		b.WriteString(sql[last:sp.start])
		switch sp.class {
		case 's':
			// keep the original's quoting style: it decides what may follow
			// (continuation over a newline, identifier characters, U&)
			switch sql[sp.start] {
			case '$':
				b.WriteString("$z$;x$z$")
			case 'e', 'E':
				b.WriteString("E'q\\''")
			default:
				b.WriteString("'v''w'")
			}
		case 'n':
			b.WriteString("N'z'")
		case 'b':
			b.WriteString("B'0'")
		case 'x':
			b.WriteString("X'0'")
		case '#':
			if sql[sp.start] == '.' {
				b.WriteString(".75")
			} else if i%2 == 0 {
				b.WriteString("7")
			} else {
				b.WriteString("4.5e3")
			}
		}
		last = sp.end
	}
	b.WriteString(sql[last:])
	return b.String()
}

func comparable(d Decision) Decision {
	d.Normalized = ""
	return d
}

// FuzzShape checks the shape cache's invariant: two texts with the same
// shape have the same pg_query fingerprint and the same decision. The
// variant is the input re-rendered with other constants.
func FuzzShape(f *testing.F) {
	for _, s := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1", "SELECT 'a'\n'b'", "SELECT E'\\''", "SELECT $$x$$", "SELECT .5, 1e3",
		"SELECT x.5", "INSERT INTO t VALUES (1, 'a', B'1', X'f', N'n')", "SELECT current_time(3)",
	} {
		f.Add(s)
	}
	c := New(Options{CacheSize: -1})
	f.Fuzz(func(t *testing.T, sql string) {
		var spans []literalSpan
		key, info := appendShapeSpans(nil, sql, &spans, nil)
		if info.fullText || len(spans) == 0 {
			return
		}
		variant := rerender(sql, spans)
		vkey, vinfo := appendShape(nil, variant)
		if string(vkey) != string(key) || vinfo != info {
			t.Fatalf("re-rendered text has another shape:\n%q\n%q\n%q\n%q", sql, variant, key, vkey)
		}
		fa, errA := pg.FingerprintToUInt64(sql)
		fb, errB := pg.FingerprintToUInt64(variant)
		if errA != nil || errB != nil || strings.IndexByte(sql, 0) >= 0 {
			return
		}
		if fa != fb {
			t.Fatalf("same shape, different fingerprints:\n%q\n%q", sql, variant)
		}
		da, db := c.Classify(sql), c.Classify(variant)
		if !reflect.DeepEqual(comparable(da), comparable(db)) {
			t.Fatalf("same shape, different decisions:\n%q: %+v\n%q: %+v", sql, da, variant, db)
		}
	})
}

// FuzzClassify checks that classification never panics, is stable across
// cache hits and never sends an unparseable text to a replica.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"SELECT 1", "BEGIN READ ONLY", "SET x = 1", "/* pgsluice: route=replica */ DELETE FROM t", "SELECT 'x", ";", ""} {
		f.Add(s)
	}
	c := New(Options{CacheSize: 128})
	f.Fuzz(func(t *testing.T, sql string) {
		d1 := c.Classify(sql)
		d2 := c.Classify(sql)
		if !reflect.DeepEqual(comparable(d1), comparable(d2)) {
			t.Fatalf("%q: decisions differ between miss and hit:\n%+v\n%+v", sql, d1, d2)
		}
		if d1.ParseError && d1.Target != TargetPrimary {
			t.Fatalf("%q: unparseable text routed to %v", sql, d1.Target)
		}
		if d1.Reason == "" || d1.Command == "" {
			t.Fatalf("%q: empty reason or command: %+v", sql, d1)
		}
		if len(d1.Normalized) > maxNormalized {
			t.Fatalf("normalized too long: %d", len(d1.Normalized))
		}
	})
}
