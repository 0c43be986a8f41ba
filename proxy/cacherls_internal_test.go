package proxy

import "testing"

// A statement's table name matches a protected relation: qualified names
// exactly (the schema is the one before the name, a database prefix is
// ignored), unqualified names in any schema (search_path decides).
func TestRLSSetProtects(t *testing.T) {
	set := &rlsSet{
		qualified: map[string]bool{"public.t": true, "app.Orders": true},
		names:     map[string]bool{"t": true, "Orders": true},
	}
	for _, c := range []struct {
		table string
		want  bool
	}{
		{"t", true},
		{"public.t", true},
		{"mydb.public.t", true},
		{"other.t", false},
		{"Orders", true},
		{"app.Orders", true},
		{"app.orders", false},
		{"orders", false},
		{"u", false},
		{"public.u", false},
		{"", false},
	} {
		if got := set.protects(c.table); got != c.want {
			t.Errorf("protects(%q) = %v, want %v", c.table, got, c.want)
		}
	}
	if (&rlsSet{}).protects("t") {
		t.Error("an empty set protects t")
	}
}
