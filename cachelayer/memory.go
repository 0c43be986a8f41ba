package cachelayer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MemoryOptions configures the in-process tier. Zero fields take the
// defaults documented on each field.
type MemoryOptions struct {
	// MaxBytes is the byte budget of the tier (frames plus bookkeeping);
	// least recently used entries are evicted beyond it. Default 64 MiB.
	MaxBytes int64
	// MaxEntryBytes is the largest result (frames) the tier stores.
	// Default 1 MiB.
	MaxEntryBytes int64
	// DefaultTTL applies when Set is called with ttl <= 0. Default 60s.
	DefaultTTL time.Duration
	// Shards splits the tier into independently locked LRUs, each with
	// MaxBytes/Shards of the budget. Default 16.
	Shards int
	// FlightWait bounds how long a Do caller waits for another caller's fill
	// of the same key before running fill itself. Default 1s.
	FlightWait time.Duration
	// SweepInterval is how often expired entries are removed in the
	// background; a negative value disables the sweeper (expired entries are
	// still never served). Default 1s.
	SweepInterval time.Duration
	// Now is the clock; nil means time.Now. Tests inject a fake clock.
	Now func() time.Time
}

func (o MemoryOptions) withDefaults() MemoryOptions {
	if o.MaxBytes <= 0 {
		o.MaxBytes = 64 << 20
	}
	if o.MaxEntryBytes <= 0 {
		o.MaxEntryBytes = 1 << 20
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = 60 * time.Second
	}
	if o.Shards <= 0 {
		o.Shards = 16
	}
	if o.FlightWait <= 0 {
		o.FlightWait = time.Second
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// entryOverhead approximates the bookkeeping bytes of one entry (struct,
// map and index slots); it is charged against MaxBytes with the frames.
const entryOverhead = 160

// mentry is one in-process entry. All fields except verified are immutable
// after insertion; prev/next belong to the shard's LRU list and are guarded
// by the shard lock.
type mentry struct {
	key     Key
	db      string
	tables  []string
	local   []uint64
	remote  []uint64
	frames  []byte
	size    int64
	created time.Time
	expires int64 // unix nanoseconds
	// verified is the unix-nanosecond time at which remote was last found
	// equal to Redis' current generations (tiered mode only).
	verified atomic.Int64

	prev, next *mentry
}

func entrySize(frames []byte, tables []string) int64 {
	n := int64(len(frames)) + entryOverhead + int64(len(tables))*40
	for _, t := range tables {
		n += int64(len(t))
	}
	return n
}

// shard is one independently locked LRU.
type shard struct {
	mu     sync.Mutex
	items  map[Key]*mentry
	lru    mentry // sentinel: lru.next is the most recently used entry
	bytes  int64
	budget int64
	// index maps a generation slot to the keys of the entries that depend on
	// it, so invalidation frees memory eagerly.
	index map[genSlot]map[Key]struct{}
}

func newShard(budget int64) *shard {
	s := &shard{items: make(map[Key]*mentry), budget: budget, index: make(map[genSlot]map[Key]struct{})}
	s.lru.next, s.lru.prev = &s.lru, &s.lru
	return s
}

func (s *shard) unlink(e *mentry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (s *shard) pushFront(e *mentry) {
	e.prev, e.next = &s.lru, s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}

func entrySlots(e *mentry) []genSlot {
	out := make([]genSlot, 0, len(e.tables)+1)
	out = append(out, genSlot{db: e.db, kind: slotDB})
	for _, t := range e.tables {
		out = append(out, genSlot{db: e.db, table: t, kind: slotTable})
	}
	return out
}

// remove deletes e; the caller holds s.mu and accounts metrics.
func (s *shard) remove(e *mentry) {
	s.unlink(e)
	delete(s.items, e.key)
	s.bytes -= e.size
	for _, sl := range entrySlots(e) {
		if keys := s.index[sl]; keys != nil {
			delete(keys, e.key)
			if len(keys) == 0 {
				delete(s.index, sl)
			}
		}
	}
}

// insert adds e (replacing an entry with the same key) and evicts least
// recently used entries beyond the budget. It returns the number of bytes and
// entries removed and the number of LRU evictions. The caller holds s.mu.
func (s *shard) insert(e *mentry) (freedBytes int64, freedEntries int64, evicted int) {
	if old := s.items[e.key]; old != nil {
		s.remove(old)
		freedBytes += old.size
		freedEntries++
	}
	for s.bytes+e.size > s.budget && s.lru.prev != &s.lru {
		victim := s.lru.prev
		s.remove(victim)
		freedBytes += victim.size
		freedEntries++
		evicted++
	}
	s.items[e.key] = e
	s.pushFront(e)
	s.bytes += e.size
	for _, sl := range entrySlots(e) {
		keys := s.index[sl]
		if keys == nil {
			keys = make(map[Key]struct{})
			s.index[sl] = keys
		}
		keys[e.key] = struct{}{}
	}
	return freedBytes, freedEntries, evicted
}

// Memory is the in-process tier: a sharded LRU bounded by a byte budget with
// per-entry TTL, invalidated through in-process generation counters. Used
// alone it is a complete Cache for a single proxy instance; NewTiered puts it
// in front of Redis. All methods are safe for concurrent use.
type Memory struct {
	opts   MemoryOptions
	shards []*shard
	gens   *localGens
	m      *metrics
	flight flightGroup

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

var _ Cache = (*Memory)(nil)

// NewMemory returns an in-process tier. Its metrics carry tier="memory" and
// are registered on reg (nil: not registered). Close stops its sweeper.
func NewMemory(opts MemoryOptions, reg prometheus.Registerer) *Memory {
	opts = opts.withDefaults()
	m := &Memory{opts: opts, gens: newLocalGens(), m: newMetrics("memory", reg), stop: make(chan struct{})}
	per := opts.MaxBytes / int64(opts.Shards)
	for range opts.Shards {
		m.shards = append(m.shards, newShard(per))
	}
	if opts.SweepInterval > 0 {
		m.wg.Add(1)
		go m.sweeper()
	}
	return m
}

func (m *Memory) shardFor(key Key) *shard {
	return m.shards[(uint(key[0])|uint(key[1])<<8)%uint(len(m.shards))]
}

// Generations snapshots the in-process generations of tables in db. It
// always succeeds.
func (m *Memory) Generations(_ context.Context, db string, tables []string) (Gens, bool) {
	t := normTables(tables)
	return Gens{db: db, tables: t, local: m.gens.snapshot(db, t), at: m.opts.Now()}, true
}

// lookup returns the live entry for key, or nil. It removes expired and
// locally stale entries it meets. It does not count hits or misses.
func (m *Memory) lookup(db string, key Key) *mentry {
	s := m.shardFor(key)
	now := m.opts.Now().UnixNano()
	s.mu.Lock()
	e := s.items[key]
	if e == nil || e.db != db {
		s.mu.Unlock()
		return nil
	}
	reason := ""
	switch {
	case now >= e.expires:
		reason = "ttl"
	case !m.gens.current(e.db, e.tables, e.local):
		reason = "stale"
	}
	if reason != "" {
		s.remove(e)
		s.mu.Unlock()
		m.m.evict(reason, 1)
		m.m.sizeDelta(-e.size, -1)
		return nil
	}
	s.unlink(e)
	s.pushFront(e)
	s.mu.Unlock()
	return e
}

// Get returns the frames stored under key when the entry is live and none
// of its tables was invalidated since its snapshot. The returned slice is
// shared and must not be modified.
func (m *Memory) Get(_ context.Context, db string, key Key, _ []string) ([]byte, bool) {
	if e := m.lookup(db, key); e != nil {
		m.m.hit()
		return e.frames, true
	}
	m.m.miss()
	return nil, false
}

// Set stores frames under key if gens is valid, still current and frames
// fits MaxEntryBytes. The cache owns frames afterwards.
func (m *Memory) Set(_ context.Context, key Key, frames []byte, gens Gens, ttl time.Duration) bool {
	return m.store(key, frames, gens, ttl, 0)
}

// store inserts an entry; verified is the remote verification time (tiered)
// or 0. The local generations are checked under the shard lock, so an
// Invalidate that bumped them first makes the store a no-op and one that
// bumps them later finds the entry in the index and removes it.
func (m *Memory) store(key Key, frames []byte, gens Gens, ttl time.Duration, verified int64) bool {
	if gens.local == nil {
		m.m.setDrops.WithLabelValues("invalid_gens").Inc()
		return false
	}
	if int64(len(frames)) > m.opts.MaxEntryBytes {
		m.m.setDrops.WithLabelValues("too_large").Inc()
		return false
	}
	if ttl <= 0 {
		ttl = m.opts.DefaultTTL
	}
	now := m.opts.Now()
	e := &mentry{
		key: key, db: gens.db, tables: gens.tables, local: gens.local, remote: gens.remote,
		frames: frames, size: entrySize(frames, gens.tables), created: now,
		expires: now.Add(ttl).UnixNano(),
	}
	e.verified.Store(verified)
	s := m.shardFor(key)
	if e.size > s.budget {
		m.m.setDrops.WithLabelValues("too_large").Inc()
		return false
	}
	s.mu.Lock()
	if !m.gens.current(gens.db, gens.tables, gens.local) {
		s.mu.Unlock()
		m.m.setDrops.WithLabelValues("generation_moved").Inc()
		return false
	}
	fb, fe, ev := s.insert(e)
	s.mu.Unlock()
	m.m.evict("lru", ev)
	m.m.sizeDelta(e.size-fb, 1-fe)
	return true
}

// dropSlot removes every entry depending on slot from every shard.
func (m *Memory) dropSlot(sl genSlot) int {
	n := 0
	for _, s := range m.shards {
		var freed int64
		var cnt int64
		s.mu.Lock()
		for k := range s.index[sl] {
			if e := s.items[k]; e != nil {
				s.remove(e)
				freed += e.size
				cnt++
			}
		}
		s.mu.Unlock()
		m.m.sizeDelta(-freed, -cnt)
		n += int(cnt)
	}
	return n
}

// invalidateLocal bumps the local generations of tables and frees their
// entries; it is shared with the tiered cache.
func (m *Memory) invalidateLocal(db string, tables []string) {
	tables = normTables(tables)
	m.gens.bumpTables(db, tables)
	n := 0
	for _, t := range tables {
		n += m.dropSlot(genSlot{db: db, table: t, kind: slotTable})
	}
	m.m.evict("invalidated", n)
	m.m.invalidated("table", len(tables))
}

func (m *Memory) flushDBLocal(db string) {
	m.gens.bumpDB(db)
	m.m.evict("invalidated", m.dropSlot(genSlot{db: db, kind: slotDB}))
	m.m.invalidated("db", 1)
}

func (m *Memory) flushAllLocal() {
	m.gens.bumpAll()
	n := 0
	for _, s := range m.shards {
		s.mu.Lock()
		freed, cnt := s.bytes, int64(len(s.items))
		s.items = make(map[Key]*mentry)
		s.index = make(map[genSlot]map[Key]struct{})
		s.lru.next, s.lru.prev = &s.lru, &s.lru
		s.bytes = 0
		s.mu.Unlock()
		m.m.sizeDelta(-freed, -cnt)
		n += int(cnt)
	}
	m.m.evict("invalidated", n)
	m.m.invalidated("all", 1)
}

// Invalidate makes every entry that read any of tables in db unreachable
// before it returns and frees their memory.
func (m *Memory) Invalidate(_ context.Context, db string, tables []string) {
	m.invalidateLocal(db, tables)
}

// FlushDB makes every entry of db unreachable.
func (m *Memory) FlushDB(_ context.Context, db string) { m.flushDBLocal(db) }

// FlushAll makes every entry unreachable.
func (m *Memory) FlushAll(_ context.Context) { m.flushAllLocal() }

// Do implements Cache.Do with single flight per key.
func (m *Memory) Do(ctx context.Context, db string, key Key, tables []string, ttl time.Duration,
	fill func() ([]byte, bool, error)) ([]byte, bool, error) {
	return m.flight.do(ctx, m, m.m, m.opts.FlightWait, db, key, tables, ttl, fill)
}

// Stats returns the tier's counters.
func (m *Memory) Stats() Stats { return m.m.stats() }

// Close stops the sweeper. It is idempotent.
func (m *Memory) Close() error {
	m.stopOnce.Do(func() { close(m.stop) })
	m.wg.Wait()
	return nil
}

func (m *Memory) sweeper() {
	defer m.wg.Done()
	t := time.NewTicker(m.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep removes expired entries from every shard.
func (m *Memory) sweep() {
	now := m.opts.Now().UnixNano()
	for _, s := range m.shards {
		var freed, cnt int64
		s.mu.Lock()
		for _, e := range s.items {
			if now >= e.expires {
				s.remove(e)
				freed += e.size
				cnt++
			}
		}
		s.mu.Unlock()
		m.m.sizeDelta(-freed, -cnt)
		m.m.evict("ttl", int(cnt))
	}
}

// removeEntry removes e if it is still the entry stored under its key.
func (m *Memory) removeEntry(e *mentry, reason string) {
	s := m.shardFor(e.key)
	s.mu.Lock()
	if s.items[e.key] != e {
		s.mu.Unlock()
		return
	}
	s.remove(e)
	s.mu.Unlock()
	m.m.evict(reason, 1)
	m.m.sizeDelta(-e.size, -1)
}
