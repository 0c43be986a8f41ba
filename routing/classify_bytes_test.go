package routing

import (
	"reflect"
	"testing"
)

// ClassifyBytes decides as Classify does, on a miss and on a hit, keeps
// nothing of the caller's buffer, and costs no allocation on a hit.
func TestClassifyBytes(t *testing.T) {
	for _, sql := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 42",
		"SET search_path = app, public",
		"/* pgsluice: route=primary */ SELECT 1",
		"UPDATE t SET v = 'x' WHERE id = 7",
		"SELECT 'now'::timestamptz",
		"BEGIN; LOCK TABLE t; COMMIT",
		"not sql at all (",
	} {
		want := New(Options{}).Classify(sql)
		c := New(Options{})
		buf := []byte(sql)
		miss := c.ClassifyBytes(buf)
		for i := range buf {
			buf[i] = '#' // the caller reuses its buffer
		}
		if !reflect.DeepEqual(miss, want) {
			t.Errorf("%q, miss: ClassifyBytes = %+v, Classify = %+v", sql, miss, want)
		}
		copy(buf, sql)
		hit := c.ClassifyBytes(buf)
		if !reflect.DeepEqual(hit, want) {
			t.Errorf("%q, hit: ClassifyBytes = %+v, Classify = %+v", sql, hit, want)
		}
		if h, m := c.Stats(); h != 1 || m != 1 {
			t.Errorf("%q: stats hits=%d misses=%d, want 1 and 1", sql, h, m)
		}
	}
	c := New(Options{})
	buf := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 42")
	c.ClassifyBytes(buf)
	if n := testing.AllocsPerRun(100, func() { c.ClassifyBytes(buf) }); n != 0 {
		t.Errorf("ClassifyBytes on a cached shape: %v allocations, want 0", n)
	}
}
