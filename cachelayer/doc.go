// Package cachelayer is pgsluice's result cache. It stores opaque byte
// frames, the exact PostgreSQL backend messages (RowDescription, DataRows,
// CommandComplete) of a result, under a Key the proxy computes, and makes
// them unreachable when a table they read is written. It never sees a
// connection, a statement or a protocol message: the proxy decides what is
// cacheable, which tables a statement reads or writes, and when a write has
// committed.
//
// # Tiers
//
// Memory (NewMemory) is an in-process, sharded LRU bounded by a byte budget
// (frames plus a fixed per-entry overhead), with per-entry TTL, a
// MaxEntryBytes limit and a background sweeper for expired entries. Used
// alone it is the cache of a single proxy instance.
//
// Redis (NewRedis) is shared by every proxy instance using the same Redis
// (standalone, sentinel or cluster through go-redis's UniversalClient).
//
// Tiered (NewTiered) puts a Memory in front of a Redis. Tiered owns both and
// closes them.
//
// # Generations
//
// Every (database, table) pair, every database and the whole cache have a
// generation value. Invalidate(db, tables) changes the generations of the
// tables, FlushDB the database's, FlushAll the global one. An entry records
// the generations, as they were before its query started, of its database,
// of the global slot and of every table it read, and is served only while all
// of them are unchanged.
//
// The proxy's flow for a cacheable read is:
//
//	gens, ok := c.Generations(ctx, db, tables) // 1. before sending the query
//	frames := <run the query>                    // 2.
//	if ok { c.Set(ctx, key, frames, gens, ttl) } // 3. dropped if a generation moved
//
// and, for every write, after PostgreSQL reported the commit and before the
// client is told: c.Invalidate(ctx, db, writtenTables). Do(ctx, db, key,
// tables, ttl, fill) performs Get and steps 1-3 with single flight.
//
// In the Memory tier generations are in-process counters that only grow. In
// Redis they are keys holding random 64-bit values: Invalidate writes fresh
// random values (one MSET, since all generation keys share the hash tag
// {KeyPrefix}) and publishes a message; Generations reads them with one MGET
// and initializes missing keys to random values with a script. Random values
// make a lost key harmless: a key evicted or lost in a Redis restart comes
// back with a value no entry recorded, so entries that depended on it can
// never match again. A Redis entry stores its table list and generations
// next to its frames. Get(ctx, db, key, tables) sends GET of the entry and
// MGET of the current generations of db/tables in one pipeline (one round
// trip) and compares them with the entry's when the entry read exactly
// those tables; without that hint (nil), or when the entry read other
// tables, a second MGET reads the generations the entry names. Both reads
// start after the Get started, so the guarantee below holds either way.
// (Entries and generation keys are in different hash slots, so a server
// script could not read both in a cluster; the caller's hint avoids it.)
//
// # Guarantee
//
// Let W be a write to table T in database D whose Invalidate(D, [T]) (or a
// FlushDB(D)/FlushAll) returned before a Get (or Do) of an entry that read T
// started. If the invalidation reached every store the Get consults, the Get
// does not return a result computed from data older than W. Reason: the
// result's snapshot was taken before its query ran; if the query could not
// see W, the snapshot preceded W's commit and so preceded the generation
// change, the recorded generation differs from the current one, and the
// entry is refused. A snapshot taken between the commit and the invalidation
// is also refused (conservative). The check in Set only avoids storing
// entries known to be stale; Get's check is what the guarantee rests on.
//
// "Reached every store" holds for Memory always, and for Redis and Tiered
// whenever the Invalidate's write to Redis succeeded: a Tiered memory hit is
// served only after one MGET confirmed the entry's Redis generations, so
// another instance's invalidation is seen without waiting for pub/sub
// (pub/sub only frees memory early). Single flight keeps the guarantee: a
// waiter receives the leader's result only if the leader's Set accepted it,
// and that check runs after every waiter joined. (The proxy, whose fills
// capture a reply while forwarding it, has its own single flight in
// proxy/cacheflight.go: its waiters look the key up again with Get, so the
// guarantee is Get's.)
//
// The guarantee is relative to what the fill read: if the proxy runs a
// cacheable read on a replica that has not replayed W yet, the cache stores
// what the replica returned. The proxy must route cache fills so that a
// fill started after W's acknowledgement sees W (or not cache reads from
// lagging replicas).
//
// Table names are opaque strings: reads and writes must name a table the
// same way (the proxy uses its schema-qualified, normalized name).
//
// # When Redis is in trouble
//
// No method returns Redis errors. Every Redis operation runs under
// RedisOptions.Timeout (default 20ms) and a circuit breaker: after
// BreakerThreshold consecutive failures (connection errors, timeouts,
// LOADING/READONLY/MASTERDOWN/CLUSTERDOWN replies) it opens for
// BreakerBackoff, then lets one probe through; a failed probe doubles the
// backoff up to BreakerMaxBackoff, a successful one closes it. A background
// prober recovers without traffic. OOM replies (maxmemory) fail the write
// but do not open the breaker. Every skipped or failed operation counts in
// pgsluice_cache_bypasses_total{tier="redis",op,reason}.
//
// While Redis cannot be reached: Get is a miss (Redis tier) or, in Tiered,
// serves a memory entry only if its local generations are current (so this
// instance's own invalidations still apply immediately) and it was last
// confirmed against Redis at most StaleBound ago (default 1s; negative:
// never); other memory entries are misses counted as
// bypasses{reason="unverifiable"}. Generations reports ok=false, so nothing
// new is cached. Invalidate still applies to the local memory tier, and the
// generation keys it could not write are queued (bounded by
// MaxPendingInvalidations, beyond which a global flush is queued) and written
// before any other Redis operation of this instance once Redis answers, and
// by a background prober every BreakerBackoff/2. Invalidate, FlushDB and
// FlushAll always try Redis, even while the breaker is open: they carry
// correctness, so a write pays up to Timeout during an outage where Redis
// does not refuse connections quickly.
//
// The resulting bound during an outage: an instance may serve a result that
// misses writes made through other instances for at most StaleBound after
// it lost Redis. In addition, a write whose invalidation could not be
// written while other instances could reach Redis (a partition, a pause, or
// the second after a restart during which go-redis keeps returning its last
// dial error) is missed by those instances until the writer's queue is
// written (its next Redis operation or prober tick). Writes made while Redis
// is down for every instance leave no window if Redis comes back empty: new
// random generations then invalidate everything.
// TestCheckerTieredRedisKilled checks this with Redis killed mid-run: no read
// is older than a write whose invalidation reached Redis, and it reports
// reads that fell in the queued-invalidation window ("late"). Redis
// replication is asynchronous: a sentinel or cluster failover can lose
// invalidations acknowledged by the old master just before it failed;
// results cached before such a write may then be served until their TTL.
// Use short TTLs where that matters.
//
// Redis should run with maxmemory-policy volatile-lru (entries have TTLs,
// generation keys do not) or allkeys-lru (an evicted generation key is
// harmless); with noeviction a full Redis refuses invalidations too.
//
// # Memory ownership and concurrency
//
// All exported methods are safe for concurrent use. Frames passed to Set (or
// returned by a fill) belong to the cache afterwards; frames returned by Get
// or Do are shared with the cache and other callers and must not be
// modified. Close stops background goroutines (sweeper, pub/sub, prober).
//
// # Metrics
//
// Collectors are registered on the Registerer passed to NewMemory/NewRedis
// with a constant label tier="memory" or tier="redis": hits_total,
// misses_total (per tier: a Tiered lookup that misses memory and hits Redis
// counts a memory miss and a Redis hit), bypasses_total{op,reason},
// evictions_total{reason=lru|ttl|stale|invalidated}, invalidations_total
// {scope=table|db|all}, set_drops_total{reason}, singleflight_total
// {outcome=leader|shared|fallthrough|timeout} (the proxy adds its own
// series with tier="proxy", hence the exported SingleFlightHelp), memory_bytes, memory_entries,
// redis_breaker_state and redis_pending_invalidations, all prefixed with
// pgsluice_cache_.
package cachelayer
