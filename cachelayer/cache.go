package cachelayer

import (
	"context"
	"slices"
	"time"
)

// Key identifies one cached result. The caller computes it (SHA-256 over
// database, role, search_path, normalized statement, parameters and result
// formats); the cache treats it as opaque.
type Key [32]byte

// Entry describes one cached result. It is the unit the tiers store; callers
// normally use Get/Set/Do and never build an Entry themselves.
//
// Frames is owned by the cache once handed to Set: the caller must not modify
// it afterwards, and a slice returned by Get must not be modified either.
type Entry struct {
	Frames  []byte
	Tables  []string
	Created time.Time
}

// Cache is a result cache over opaque byte frames, invalidated by table.
//
// All methods are safe for concurrent use. No method returns a cache error to
// the caller: trouble with a backing store turns into a miss (Get), a dropped
// store (Set) or a counted best-effort failure (Invalidate/Flush), and is
// counted in pgsluice_cache_bypasses_total{op,reason}.
//
// The intended flow for a cacheable read is
//
//	gens, ok := c.Generations(ctx, db, tables) // before the query starts
//	frames := run the query
//	if ok { c.Set(ctx, key, frames, gens, ttl) }
//
// and Get(ctx, db, key) only returns an entry whose recorded generations are
// still current. Do wraps this flow with single flight.
type Cache interface {
	// Generations snapshots the invalidation generations of tables in db. It
	// must be taken before the query whose result will be stored starts. ok is
	// false when the snapshot cannot be taken (the result must then not be
	// cached).
	Generations(ctx context.Context, db string, tables []string) (gens Gens, ok bool)
	// Get returns the frames stored under key if the entry exists, has not
	// expired and none of the tables it read has been invalidated since its
	// snapshot. The returned slice is shared: the caller must not modify it.
	//
	// tables, when not nil, are the tables the caller expects the entry to
	// have read (what it passes to Generations when it fills that key). The
	// Redis tier then reads the entry and the current generations of those
	// tables in one round trip; an entry that read other tables is still
	// checked, with a second round trip. nil means unknown (two round
	// trips in Redis). The memory tier ignores tables.
	Get(ctx context.Context, db string, key Key, tables []string) (frames []byte, ok bool)
	// Set stores frames under key. The cache owns frames afterwards. The store
	// is dropped (stored=false) when gens is not valid, when any generation in
	// gens has moved since the snapshot, or when frames is too large.
	Set(ctx context.Context, key Key, frames []byte, gens Gens, ttl time.Duration) (stored bool)
	// Do returns the cached frames for key or runs fill once for all
	// concurrent callers of the same key and caches its result when fill
	// reports it cacheable. hit is true when this caller did not run fill (a
	// cache hit, or another caller's fill shared under single flight). A
	// caller waits for another's fill at most FlightWait, then runs fill
	// itself. The error is fill's error (or ctx's). The returned frames may be
	// shared with the cache and other callers and must not be modified.
	Do(ctx context.Context, db string, key Key, tables []string, ttl time.Duration,
		fill func() (frames []byte, cacheable bool, err error)) (frames []byte, hit bool, err error)
	// Invalidate makes every entry that read any of tables in db unreachable
	// in every tier (and, with Redis, in every instance sharing it) before it
	// returns; for Redis this is best effort within the timeout.
	Invalidate(ctx context.Context, db string, tables []string)
	// FlushDB makes every entry of db unreachable (opaque writes such as CALL
	// or DO with on_opaque_write=flush).
	FlushDB(ctx context.Context, db string)
	// FlushAll makes every entry unreachable.
	FlushAll(ctx context.Context)
	// Stats returns counters since construction.
	Stats() Stats
	// Close releases background goroutines and connections. The cache must
	// not be used afterwards.
	Close() error
}

// Stats is a point-in-time copy of a cache's counters.
type Stats struct {
	Hits          uint64 // Get/Do lookups answered from the cache
	Misses        uint64 // lookups that found nothing usable
	Bypasses      uint64 // operations skipped because a store was unavailable or failed
	Bytes         int64  // bytes held by the in-process tier (0 for Redis alone)
	Entries       int64  // entries held by the in-process tier (0 for Redis alone)
	Evictions     uint64 // entries removed by LRU budget, TTL or a stale generation
	Invalidations uint64 // tables invalidated plus database and global flushes
}

// Gens is a snapshot of the invalidation generations of a set of tables in
// one database, taken by Generations before a query starts. It is an
// immutable value; the zero Gens is invalid and is never stored.
type Gens struct {
	db     string
	tables []string // sorted, unique
	// local and remote hold one value per generation slot: [global, db,
	// tables...]. local comes from the in-process tier; remote from Redis
	// (nil when no Redis tier took part).
	local  []uint64
	remote []uint64
	at     time.Time // when the snapshot was taken
}

// Valid reports whether g came from a successful Generations call.
func (g Gens) Valid() bool { return g.local != nil || g.remote != nil }

// DB returns the database the snapshot belongs to.
func (g Gens) DB() string { return g.db }

// Tables returns the normalized (sorted, unique) table list of the snapshot.
// The returned slice must not be modified.
func (g Gens) Tables() []string { return g.tables }

// normTables returns tables sorted and without duplicates, never aliasing
// the caller's slice.
func normTables(tables []string) []string {
	out := slices.Clone(tables)
	slices.Sort(out)
	return slices.Compact(out)
}
