package routing

import (
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// Options configure a Classifier. The zero value is valid.
type Options struct {
	// CacheSize is the number of shapes kept in the decision cache
	// (default 10000). A negative value disables the cache: every call
	// parses (for tests and comparisons).
	CacheSize int
	// Catalog gives function volatility; nil means BuiltinCatalog().
	Catalog Catalog
}

const (
	defaultCacheSize = 10000
	numShards        = 32
	// maxKeyBytes bounds the size of a cached key; longer texts are
	// classified on every call (they are rare and costly to send anyway).
	maxKeyBytes = 32 << 10
	// stackKeyBytes is the key buffer that lives on the stack: shapes up to
	// this size cost no allocation on a cache hit.
	stackKeyBytes = 512
)

// Classifier classifies SQL text into Decisions, caching them by shape (see
// doc.go). It is safe for concurrent use by many goroutines; create it with
// New.
type Classifier struct {
	catalog atomic.Pointer[catalogBox]
	seed    maphash.Seed
	shards  [numShards]shard
	hits    [hitStripes]paddedCounter // striped: one hot shape must not bounce a cache line
	perCap  int
	enabled bool
	gen     atomic.Uint64 // bumped by SetCatalog: stale misses are not cached
}

const hitStripes = 16

type paddedCounter struct {
	n atomic.Uint64
	_ [56]byte
}

type entryMap = map[string]*entry

type catalogBox struct{ cat Catalog }

type entry struct {
	key string
	d   Decision
	gen uint64        // the generation d was computed in
	ref atomic.Uint32 // CLOCK reference bit
}

// shard is one part of the cache. Lookups read an immutable map snapshot
// through an atomic pointer and write nothing shared (no lock, no counter on
// the entry's line unless its CLOCK bit must be set), so hits scale across
// cores. Writers (misses) hold mu, copy the map, and publish the copy; the
// CLOCK ring chooses what to evict.
type shard struct {
	snap   atomic.Pointer[entryMap]
	mu     sync.Mutex
	ring   []*entry
	hand   int
	misses atomic.Uint64
	_      [64]byte // keep shards' hot words on separate cache lines
}

// New returns a Classifier configured by opts.
func New(opts Options) *Classifier {
	c := &Classifier{seed: maphash.MakeSeed()}
	cat := opts.Catalog
	if cat == nil {
		cat = BuiltinCatalog()
	}
	c.catalog.Store(&catalogBox{cat})
	size := opts.CacheSize
	if size == 0 {
		size = defaultCacheSize
	}
	if size > 0 {
		c.enabled = true
		c.perCap = (size + numShards - 1) / numShards
		for i := range c.shards {
			m := make(entryMap)
			c.shards[i].snap.Store(&m)
		}
	}
	return c
}

// SetCatalog atomically replaces the function catalog and clears the shape
// cache, since cached decisions depend on function volatility. Safe for
// concurrent use with Classify.
func (c *Classifier) SetCatalog(cat Catalog) {
	if cat == nil {
		cat = BuiltinCatalog()
	}
	c.catalog.Store(&catalogBox{cat})
	c.gen.Add(1)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		if c.enabled {
			m := make(entryMap)
			s.snap.Store(&m)
		}
		s.ring = nil
		s.hand = 0
		s.mu.Unlock()
	}
}

// Generation identifies the catalog decisions are made with: it changes
// whenever SetCatalog replaces it. A caller that keeps a decision for a
// text (a session's last statement, say) may reuse it for the same text
// while Generation returns the generation ClassifyGen or ClassifyBytesGen
// gave with it, and should count that reuse with NoteHit.
//
// The generation read before classifying is not enough: between
// SetCatalog's bump and its clearing of a shard, a lookup can still find
// a decision made with the old catalog. The Gen methods return the
// generation a cached decision was computed in.
func (c *Classifier) Generation() uint64 { return c.gen.Load() }

// NoteHit counts a decision a caller reused (see Generation) as a cache
// hit in Stats.
func (c *Classifier) NoteHit() { c.hits[rand.Uint32()%hitStripes].n.Add(1) }

// Stats returns the number of cache hits and misses since New.
func (c *Classifier) Stats() (hits, misses uint64) {
	for i := range c.hits {
		hits += c.hits[i].n.Load()
	}
	for i := range c.shards {
		misses += c.shards[i].misses.Load()
	}
	return hits, misses
}

// Classify returns the routing decision for one query string (a simple
// Query message, or the text of an extended-protocol Parse). It never fails:
// text pg_query cannot parse yields ParseError and TargetPrimary. The
// returned Decision shares its slices with the cache: callers must not
// mutate them. Safe for concurrent use.
func (c *Classifier) Classify(sql string) Decision {
	d, _ := c.ClassifyGen(sql)
	return d
}

// ClassifyGen is Classify that also returns the catalog generation the
// decision was made in (see Generation).
func (c *Classifier) ClassifyGen(sql string) (Decision, uint64) {
	var buf [stackKeyBytes]byte
	key, info := appendShape(buf[:0], sql)
	if !c.enabled || len(key) > maxKeyBytes {
		gen := c.gen.Load() // before the catalog: SetCatalog stores, then bumps
		return c.compute(sql, info), gen
	}
	if d, gen, ok := c.cached(key); ok {
		return d, gen
	}
	s := &c.shards[maphash.Bytes(c.seed, key)%numShards]
	s.misses.Add(1)
	gen := c.gen.Load()
	d := c.compute(sql, info)
	c.insert(s, string(key), d, gen)
	return d, gen
}

// cached returns the cached decision for a shape key and the generation
// it was computed in, counting the hit.
func (c *Classifier) cached(key []byte) (Decision, uint64, bool) {
	if !c.enabled || len(key) > maxKeyBytes {
		return Decision{}, 0, false
	}
	s := &c.shards[maphash.Bytes(c.seed, key)%numShards]
	e := (*s.snap.Load())[string(key)]
	if e == nil {
		return Decision{}, 0, false
	}
	if e.ref.Load() == 0 {
		e.ref.Store(1)
	}
	c.NoteHit()
	return e.d, e.gen, true
}

func (c *Classifier) compute(sql string, info shapeInfo) Decision {
	d := analyze(c.catalog.Load().cat, sql)
	h := info.hints
	if info.fullText && containsHintWord(sql) {
		h = scanHints(sql, h)
	}
	applyHints(&d, h)
	return d
}

// insert adds a decision to a shard, evicting with the CLOCK algorithm
// (second chance: a recently hit entry survives one sweep).
func (c *Classifier) insert(s *shard, key string, d Decision, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.gen.Load() != gen {
		return // the catalog changed while we parsed
	}
	cur := *s.snap.Load()
	if _, ok := cur[key]; ok {
		return
	}
	e := &entry{key: key, d: d, gen: gen}
	next := make(entryMap, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[key] = e
	if len(s.ring) < c.perCap {
		s.ring = append(s.ring, e)
	} else {
		for {
			old := s.ring[s.hand]
			if old.ref.Load() != 0 {
				old.ref.Store(0)
				s.hand = (s.hand + 1) % len(s.ring)
				continue
			}
			delete(next, old.key)
			s.ring[s.hand] = e
			s.hand = (s.hand + 1) % len(s.ring)
			break
		}
	}
	s.snap.Store(&next)
}
