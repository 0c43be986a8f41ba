package routing

import "testing"

// A decision kept for reuse is tied to the catalog generation it was made
// in. SetCatalog bumps the generation before it clears the cache shards, so
// for a moment a lookup can still find a decision made with the old
// catalog while Generation already says new: the Gen methods must report
// the old generation then, or a caller keeping the decision would reuse a
// stale route for as long as its text repeats.
func TestGenerationOfCachedDecisions(t *testing.T) {
	const sql = "SELECT gen_f()"
	c := New(Options{Catalog: StaticCatalog{"gen_f": 's'}})
	g0 := c.Generation()
	d, g := c.ClassifyGen(sql) // miss: computed and cached
	if d.Target != TargetReplica || g != g0 {
		t.Fatalf("STABLE function: %v in generation %d, want the replica in %d", d.Target, g, g0)
	}
	if _, g := c.ClassifyBytesGen([]byte(sql)); g != g0 {
		t.Fatalf("hit: generation %d, want %d", g, g0)
	}

	// SetCatalog's first two steps, the shards not yet cleared.
	c.catalog.Store(&catalogBox{StaticCatalog{"gen_f": 'v'}})
	c.gen.Add(1)
	for _, gen := range []func() (Decision, uint64){
		func() (Decision, uint64) { return c.ClassifyGen(sql) },
		func() (Decision, uint64) { return c.ClassifyBytesGen([]byte(sql)) },
	} {
		d, g := gen()
		if d.Target == TargetReplica && g == c.Generation() {
			t.Fatalf("the old catalog's decision reported as made in the current generation %d", g)
		}
		if d.Target != TargetReplica || g != g0 {
			t.Fatalf("stale hit: %v in generation %d, want the cached decision with its generation %d", d.Target, g, g0)
		}
	}

	// Once cleared, the new catalog decides, in the new generation.
	c.SetCatalog(StaticCatalog{"gen_f": 'v'})
	d, g = c.ClassifyGen(sql)
	if d.Target != TargetPrimary || g != c.Generation() {
		t.Fatalf("VOLATILE function: %v in generation %d, want the primary in %d", d.Target, g, c.Generation())
	}
	if d, g := c.ClassifyBytesGen([]byte(sql)); d.Target != TargetPrimary || g != c.Generation() {
		t.Fatalf("hit after SetCatalog: %v in generation %d", d.Target, g)
	}
	// With the cache off the generation is read before the catalog.
	off := New(Options{CacheSize: -1, Catalog: StaticCatalog{"gen_f": 's'}})
	if _, g := off.ClassifyGen(sql); g != off.Generation() {
		t.Fatalf("cache off: generation %d, want %d", g, off.Generation())
	}
}
