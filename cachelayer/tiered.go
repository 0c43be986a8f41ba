package cachelayer

import (
	"context"
	"slices"
	"time"
)

// Tiered puts a Memory tier in front of a Redis tier shared by several proxy
// instances. A memory entry records both its in-process and its Redis
// generations; it is served only when the in-process ones are current and
// the Redis ones are confirmed current by one MGET, or, while Redis cannot
// be reached, when it was last confirmed within RedisOptions.StaleBound.
// Invalidation messages from other instances (pub/sub) free memory entries
// early; correctness does not depend on them. All methods are safe for
// concurrent use.
type Tiered struct {
	mem        *Memory
	r          *Redis
	flight     flightGroup
	staleBound time.Duration
}

var _ Cache = (*Tiered)(nil)

// NewTiered combines mem and r and subscribes to r's invalidation channel.
// The Tiered owns both tiers: Close closes them. Metrics stay on the tiers
// (tier="memory" and tier="redis").
func NewTiered(mem *Memory, r *Redis) *Tiered {
	t := &Tiered{mem: mem, r: r, staleBound: r.opts.StaleBound}
	r.subscribe(t.applyRemote)
	return t
}

// applyRemote applies another instance's invalidation to the memory tier.
func (t *Tiered) applyRemote(msg invalMsg) {
	if msg.All {
		t.mem.flushAllLocal()
	}
	for _, s := range msg.Slots {
		if s.Whole {
			t.mem.flushDBLocal(s.DB)
		} else {
			t.mem.invalidateLocal(s.DB, []string{s.Table})
		}
	}
}

// Generations snapshots both the in-process and the Redis generations. ok
// is false when Redis cannot be reached: results are then not cached.
func (t *Tiered) Generations(ctx context.Context, db string, tables []string) (Gens, bool) {
	tb := normTables(tables)
	at := t.mem.opts.Now()
	local := t.mem.gens.snapshot(db, tb)
	remote, ok := t.r.snapshot(ctx, "snapshot", db, tb)
	if !ok {
		return Gens{}, false
	}
	return Gens{db: db, tables: tb, local: local, remote: remote, at: at}, true
}

// Get serves from memory when the entry is verified (see Tiered), else from
// Redis, copying a verified Redis entry into memory.
func (t *Tiered) Get(ctx context.Context, db string, key Key, tables []string) ([]byte, bool) {
	if e := t.mem.lookup(db, key); e != nil {
		equal, ok := t.r.current(ctx, "get", e.db, e.tables, e.remote)
		now := t.mem.opts.Now().UnixNano()
		switch {
		case ok && equal:
			e.verified.Store(now)
			t.mem.m.hit()
			return e.frames, true
		case ok: // Redis generations moved: another instance invalidated
			t.mem.removeEntry(e, "stale")
		default: // Redis unreachable
			if t.staleBound >= 0 && now-e.verified.Load() <= int64(t.staleBound) {
				t.mem.m.hit()
				return e.frames, true
			}
			t.mem.m.bypass("get", reasonUnverifiable)
			return nil, false
		}
	}
	t.mem.m.miss()
	// The local snapshot precedes the verification: a local invalidation
	// after it makes the memory copy stale; one before it has reached Redis
	// (or is pending, and pending invalidations are re-sent before the
	// verification) and so fails the verification. With a tables hint the
	// verification travels with the read (one round trip), so the snapshot
	// of the hinted tables is taken first.
	hint := hintOf(tables)
	var local []uint64
	if hint != nil {
		local = t.mem.gens.snapshot(db, hint)
	}
	f, ok := t.r.fetch(ctx, key, db, hint)
	if !ok {
		return nil, false
	}
	re, ttl := f.e, f.ttl
	if !f.found || re.db != db {
		t.r.m.miss()
		return nil, false
	}
	if hint == nil || !slices.Equal(hint, re.tables) {
		local = t.mem.gens.snapshot(re.db, re.tables)
	}
	equal, ok := t.r.verify(ctx, f)
	if !ok {
		return nil, false
	}
	if !equal {
		t.r.m.evict("stale", 1)
		t.r.m.miss()
		return nil, false
	}
	t.r.m.hit()
	if ttl > 0 {
		g := Gens{db: re.db, tables: re.tables, local: local, remote: re.remote}
		t.mem.store(key, re.frames, g, ttl, t.mem.opts.Now().UnixNano())
	}
	return re.frames, true
}

// Set stores frames in Redis and memory when gens is still current in
// Redis. The cache owns frames afterwards.
func (t *Tiered) Set(ctx context.Context, key Key, frames []byte, gens Gens, ttl time.Duration) bool {
	if gens.local == nil || gens.remote == nil {
		t.mem.m.setDrops.WithLabelValues("invalid_gens").Inc()
		return false
	}
	checkedAt := t.mem.opts.Now().UnixNano()
	checked, _ := t.r.set(ctx, key, frames, gens, ttl)
	if !checked {
		return false
	}
	return t.mem.store(key, frames, gens, ttl, checkedAt)
}

// Invalidate frees the tables' memory entries and bumps their in-process
// generations first (this instance stops serving them at once), then writes
// fresh Redis generations and publishes them (best effort; a failure is
// counted and re-sent before any later Redis operation of this instance).
func (t *Tiered) Invalidate(ctx context.Context, db string, tables []string) {
	t.mem.invalidateLocal(db, tables)
	t.r.Invalidate(ctx, db, tables)
}

// FlushDB flushes db in both tiers.
func (t *Tiered) FlushDB(ctx context.Context, db string) {
	t.mem.flushDBLocal(db)
	t.r.FlushDB(ctx, db)
}

// FlushAll flushes both tiers.
func (t *Tiered) FlushAll(ctx context.Context) {
	t.mem.flushAllLocal()
	t.r.FlushAll(ctx)
}

// Do implements Cache.Do with single flight per key within this process.
func (t *Tiered) Do(ctx context.Context, db string, key Key, tables []string, ttl time.Duration,
	fill func() ([]byte, bool, error)) ([]byte, bool, error) {
	return t.flight.do(ctx, t, t.mem.m, t.mem.opts.FlightWait, db, key, tables, ttl, fill)
}

// Stats combines the tiers: hits of both, misses that reached Redis,
// bypasses of both, memory size, memory evictions and invalidations.
func (t *Tiered) Stats() Stats {
	ms, rs := t.mem.Stats(), t.r.Stats()
	return Stats{
		Hits:          ms.Hits + rs.Hits,
		Misses:        rs.Misses,
		Bypasses:      ms.Bypasses + rs.Bypasses,
		Bytes:         ms.Bytes,
		Entries:       ms.Entries,
		Evictions:     ms.Evictions,
		Invalidations: ms.Invalidations,
	}
}

// Close closes both tiers.
func (t *Tiered) Close() error {
	err := t.r.Close()
	if merr := t.mem.Close(); err == nil {
		err = merr
	}
	return err
}
