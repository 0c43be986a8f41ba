package cachelayer

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisOptions configures the Redis tier. Exactly one form is used:
// sentinel when MasterName is set (SentinelAddrs are the sentinels), cluster
// when Addrs is set, standalone (Addr) otherwise.
type RedisOptions struct {
	Addr          string   // standalone host:port
	MasterName    string   // sentinel: name of the monitored master
	SentinelAddrs []string // sentinel: sentinel host:port list
	Addrs         []string // cluster: seed node host:port list
	Username      string
	Password      string
	DB            int // standalone and sentinel only
	TLSConfig     *tls.Config

	// KeyPrefix prefixes every key and the invalidation channel. Generation
	// keys share the hash tag {KeyPrefix} so that one MGET/script can read
	// them in cluster mode. Default "pgsluice".
	KeyPrefix string
	// Timeout bounds every cache operation against Redis (including the
	// dial). Default 20ms.
	Timeout time.Duration
	// PoolSize is the connection pool size per node. Default: go-redis's.
	PoolSize int
	// BreakerThreshold consecutive failures open the circuit breaker.
	// Default 5.
	BreakerThreshold int
	// BreakerBackoff is the first open period; each failed probe doubles it
	// up to BreakerMaxBackoff. Defaults 100ms and 5s.
	BreakerBackoff    time.Duration
	BreakerMaxBackoff time.Duration
	// StaleBound is, in tiered mode, how long after its last successful
	// verification against Redis a memory entry may still be served while
	// Redis cannot be reached. Default 1s; a negative value means never.
	StaleBound time.Duration
	// MaxEntryBytes is the largest result stored in Redis. Default 1 MiB.
	MaxEntryBytes int
	// DefaultTTL applies when Set is called with ttl <= 0. Default 60s.
	DefaultTTL time.Duration
	// FlightWait: see MemoryOptions.FlightWait. Default 1s.
	FlightWait time.Duration
	// MaxPendingInvalidations bounds the generation keys remembered for
	// re-sending after Redis failures; beyond it a global flush is queued
	// instead. Default 4096.
	MaxPendingInvalidations int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives go-redis's own messages (dial failures during an
	// outage and the like) at debug level; without one they are dropped.
	// go-redis's logger is process-wide: the last Redis created with a
	// Logger sets it.
	Logger *slog.Logger
}

func (o RedisOptions) withDefaults() RedisOptions {
	if o.KeyPrefix == "" {
		o.KeyPrefix = "pgsluice"
	}
	if o.Timeout <= 0 {
		o.Timeout = 20 * time.Millisecond
	}
	if o.BreakerThreshold <= 0 {
		o.BreakerThreshold = 5
	}
	if o.BreakerBackoff <= 0 {
		o.BreakerBackoff = 100 * time.Millisecond
	}
	if o.BreakerMaxBackoff <= 0 {
		o.BreakerMaxBackoff = 5 * time.Second
	}
	if o.StaleBound == 0 {
		o.StaleBound = time.Second
	}
	if o.MaxEntryBytes <= 0 {
		o.MaxEntryBytes = 1 << 20
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = 60 * time.Second
	}
	if o.FlightWait <= 0 {
		o.FlightWait = time.Second
	}
	if o.MaxPendingInvalidations <= 0 {
		o.MaxPendingInvalidations = 4096
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Redis is the shared tier. Entries carry the Redis generations of the
// tables they read; a Get compares them with the current values (one MGET
// of keys in one hash slot). Invalidation sets fresh random generation
// values and publishes a message for the memory tiers of other instances.
// All methods are safe for concurrent use; no method returns Redis errors to
// the caller.
type Redis struct {
	opts     RedisOptions
	client   redis.UniversalClient
	m        *metrics
	br       *breaker
	flight   flightGroup
	instance string

	// pending holds generation slots whose invalidation could not be
	// written; they are re-sent before any other operation once Redis
	// answers again. pendingAll stands for a global flush.
	pendingMu  sync.Mutex
	pending    map[genSlot]struct{}
	pendingAll bool
	pendingN   atomic.Int64

	handler  atomic.Pointer[func(invalMsg)]
	subOnce  sync.Once
	ps       *redis.PubSub
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

var _ Cache = (*Redis)(nil)

// NewRedis returns a Redis tier. It does not contact Redis: an unreachable
// Redis at start behaves like an outage (bypasses) and is recovered from by
// the circuit breaker. The error reports invalid options only. Metrics carry
// tier="redis" and are registered on reg (nil: not registered).
func NewRedis(opts RedisOptions, reg prometheus.Registerer) (*Redis, error) {
	opts = opts.withDefaults()
	uo := &redis.UniversalOptions{
		Username:                 opts.Username,
		Password:                 opts.Password,
		DB:                       opts.DB,
		TLSConfig:                opts.TLSConfig,
		Protocol:                 2,
		MaxRetries:               -1,
		DialTimeout:              opts.Timeout,
		ReadTimeout:              opts.Timeout,
		WriteTimeout:             opts.Timeout,
		PoolTimeout:              opts.Timeout,
		ContextTimeoutEnabled:    true,
		PoolSize:                 opts.PoolSize,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	switch {
	case opts.MasterName != "":
		if len(opts.SentinelAddrs) == 0 {
			return nil, errors.New("cachelayer: redis sentinel form needs SentinelAddrs with MasterName")
		}
		uo.MasterName, uo.Addrs = opts.MasterName, opts.SentinelAddrs
	case len(opts.Addrs) > 0:
		if opts.DB != 0 {
			return nil, errors.New("cachelayer: redis cluster form does not support DB")
		}
		uo.Addrs, uo.IsClusterMode = opts.Addrs, true
	case opts.Addr != "":
		uo.Addrs = []string{opts.Addr}
	default:
		return nil, errors.New("cachelayer: redis needs Addr, MasterName+SentinelAddrs or Addrs")
	}
	setRedisLogger(opts.Logger)
	m := newMetrics("redis", reg)
	r := &Redis{
		opts:     opts,
		client:   redis.NewUniversalClient(uo),
		m:        m,
		br:       newBreaker(opts.BreakerThreshold, opts.BreakerBackoff, opts.BreakerMaxBackoff, opts.Now, m.breakerState),
		instance: strconv.FormatUint(rand.Uint64(), 36),
		pending:  make(map[genSlot]struct{}),
		stop:     make(chan struct{}),
	}
	r.wg.Add(1)
	go r.recoverer()
	return r, nil
}

// ---- keys ----

func (r *Redis) globalKey() string { return "{" + r.opts.KeyPrefix + "}:g" }

func (r *Redis) slotKey(s genSlot) string {
	if s.kind == slotDB {
		return "{" + r.opts.KeyPrefix + "}:gd:" + s.db
	}
	return "{" + r.opts.KeyPrefix + "}:gt:" + strconv.Itoa(len(s.db)) + ":" + s.db + ":" + s.table
}

// genKeys returns the keys in snapshot layout [global, db, tables...].
func (r *Redis) genKeys(db string, tables []string) []string {
	keys := make([]string, 0, len(tables)+2)
	keys = append(keys, r.globalKey(), r.slotKey(genSlot{db: db, kind: slotDB}))
	for _, t := range tables {
		keys = append(keys, r.slotKey(genSlot{db: db, table: t, kind: slotTable}))
	}
	return keys
}

func (r *Redis) entryKey(k Key) string { return r.opts.KeyPrefix + ":e:" + hex.EncodeToString(k[:]) }

func (r *Redis) channel() string { return r.opts.KeyPrefix + ":inval" }

// ---- calls, errors, breaker ----

// classify maps a Redis error to a bypass reason and whether it counts as a
// failure of Redis for the breaker (nil: neutral).
func classify(parent context.Context, err error) (reason string, failure *bool) {
	yes, no := true, false
	if parent.Err() != nil {
		return "canceled", nil
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		switch {
		case strings.HasPrefix(msg, "OOM"):
			return reasonOOM, &no
		case strings.HasPrefix(msg, "LOADING"), strings.HasPrefix(msg, "READONLY"),
			strings.HasPrefix(msg, "MASTERDOWN"), strings.HasPrefix(msg, "CLUSTERDOWN"),
			strings.HasPrefix(msg, "TRYAGAIN"):
			return reasonUnavailable, &yes
		}
		return reasonError, &no
	}
	var nerr net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout) ||
		(errors.As(err, &nerr) && nerr.Timeout()) {
		return reasonTimeout, &yes
	}
	return reasonUnavailable, &yes
}

// call runs fn against Redis under the breaker and the timeout, first
// re-sending pending invalidations. It reports whether fn succeeded; on
// failure it has counted a bypass for op.
func (r *Redis) call(ctx context.Context, op string, fn func(ctx context.Context) error) bool {
	return r.callMode(ctx, op, false, fn)
}

// callMode is call; force skips the breaker's open state (invalidations
// carry correctness, so they are always tried) while still reporting the
// outcome to it.
func (r *Redis) callMode(ctx context.Context, op string, force bool, fn func(ctx context.Context) error) bool {
	if !force && !r.br.allow() {
		r.m.bypass(op, reasonBreakerOpen)
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	err := r.flushPending(cctx)
	if err == nil {
		err = fn(cctx)
	}
	if err == nil {
		r.br.success()
		return true
	}
	reason, failure := classify(ctx, err)
	switch {
	case failure == nil:
		r.br.neutral()
	case *failure:
		r.br.failure()
	default:
		r.br.success()
	}
	r.m.bypass(op, reason)
	return false
}

// parseGens turns MGET replies into generation values; ok is false when a
// value is missing or malformed.
func parseGens(vals []any) ([]uint64, bool) {
	out := make([]uint64, len(vals))
	for i, v := range vals {
		s, isStr := v.(string)
		if !isStr {
			return nil, false
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// initGens sets every missing key to its fresh random value and returns all
// current values, atomically (all keys share one hash slot).
var initGens = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    redis.call('SET', k, ARGV[i])
    v = ARGV[i]
  end
  out[i] = v
end
return out`)

func randomGen() string { return strconv.FormatUint(rand.Uint64(), 10) }

// snapshot reads the Redis generations for db/tables (normalized),
// initializing missing keys to random values so that a lost or evicted key
// never returns to a value an entry recorded.
func (r *Redis) snapshot(ctx context.Context, op, db string, tables []string) ([]uint64, bool) {
	keys := r.genKeys(db, tables)
	var out []uint64
	ok := r.call(ctx, op, func(ctx context.Context) error {
		vals, err := r.client.MGet(ctx, keys...).Result()
		if err != nil {
			return err
		}
		if g, ok := parseGens(vals); ok {
			out = g
			return nil
		}
		argv := make([]any, len(keys))
		for i := range argv {
			argv[i] = randomGen()
		}
		res, err := initGens.Run(ctx, r.client, keys, argv...).StringSlice()
		if err != nil {
			return err
		}
		anys := make([]any, len(res))
		for i, s := range res {
			anys[i] = s
		}
		g, ok := parseGens(anys)
		if !ok {
			return fmt.Errorf("cachelayer: malformed generation value in %q", keys)
		}
		out = g
		return nil
	})
	return out, ok
}

// current reads the current Redis generations of an entry's slots. equal is
// meaningful only when ok.
func (r *Redis) current(ctx context.Context, op, db string, tables []string, want []uint64) (equal, ok bool) {
	keys := r.genKeys(db, tables)
	ok = r.call(ctx, op, func(ctx context.Context) error {
		vals, err := r.client.MGet(ctx, keys...).Result()
		if err != nil {
			return err
		}
		got, parsed := parseGens(vals)
		equal = parsed && slicesEqual(got, want)
		return nil
	})
	return equal, ok
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ---- Cache ----

// Generations snapshots the Redis generations of tables in db. ok is false
// when Redis cannot be reached (the result must then not be cached).
func (r *Redis) Generations(ctx context.Context, db string, tables []string) (Gens, bool) {
	t := normTables(tables)
	at := r.opts.Now()
	remote, ok := r.snapshot(ctx, "snapshot", db, t)
	if !ok {
		return Gens{}, false
	}
	return Gens{db: db, tables: t, remote: remote, at: at}, true
}

// fetched is what fetch read: the entry and, when the caller named the
// tables it expects the entry to have read, their current generations.
type fetched struct {
	e     redisEntry
	ttl   time.Duration
	found bool
	// hint is the normalized table list whose generations were read with
	// the entry (nil: none were); gens are their values, nil when one is
	// missing or malformed (such an entry can never match).
	hint []string
	gens []uint64
}

// fetch reads and decodes the entry for key and, when hint (normalized) is
// not nil, the current generations of db/hint, in one pipeline: one round
// trip. found is false on a miss; ok is false when Redis cannot be reached.
func (r *Redis) fetch(ctx context.Context, key Key, db string, hint []string) (f fetched, ok bool) {
	ok = r.call(ctx, "get", func(ctx context.Context) error {
		pipe := r.client.Pipeline()
		get := pipe.Get(ctx, r.entryKey(key))
		pttl := pipe.PTTL(ctx, r.entryKey(key))
		var mget *redis.SliceCmd
		if hint != nil {
			mget = pipe.MGet(ctx, r.genKeys(db, hint)...)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		b, err := get.Bytes()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		if err != nil {
			return err
		}
		if f.e, err = decodeEntry(b); err != nil {
			r.m.bypass("get", reasonCorrupt)
			return nil
		}
		f.ttl, f.found = pttl.Val(), true
		if mget != nil {
			f.hint = hint
			f.gens, _ = parseGens(mget.Val())
		}
		return nil
	})
	f.found = f.found && ok
	return f, ok
}

// verify reports whether a fetched entry's Redis generations are current:
// from the generations read with it when they are those of its tables, else
// with a second round trip. equal is meaningful only when ok.
//
// Reading the generations in the same pipeline as the entry keeps the
// guarantee (doc.go): both reads start after the Get started, so after any
// invalidation that returned before it; an entry is served only if the
// generations it recorded equal values read then.
func (r *Redis) verify(ctx context.Context, f fetched) (equal, ok bool) {
	if f.hint != nil && slices.Equal(f.hint, f.e.tables) {
		return f.gens != nil && slicesEqual(f.gens, f.e.remote), true
	}
	return r.current(ctx, "get", f.e.db, f.e.tables, f.e.remote)
}

// hintOf normalizes a Get's tables hint (nil stays nil).
func hintOf(tables []string) []string {
	if tables == nil {
		return nil
	}
	return normTables(tables)
}

// Get returns the frames stored in Redis under key if their generations are
// still current. Redis trouble is a miss counted as a bypass. With tables
// (see Cache.Get), a hit costs one round trip.
func (r *Redis) Get(ctx context.Context, db string, key Key, tables []string) ([]byte, bool) {
	f, ok := r.fetch(ctx, key, db, hintOf(tables))
	if !ok {
		return nil, false
	}
	e := f.e
	if !f.found || e.db != db {
		r.m.miss()
		return nil, false
	}
	equal, ok := r.verify(ctx, f)
	if !ok {
		return nil, false
	}
	if !equal {
		r.m.evict("stale", 1)
		r.m.miss()
		return nil, false
	}
	r.m.hit()
	return e.frames, true
}

// Set stores frames under key if gens carries Redis generations that are
// still current. The cache owns frames afterwards.
func (r *Redis) Set(ctx context.Context, key Key, frames []byte, gens Gens, ttl time.Duration) bool {
	checked, stored := r.set(ctx, key, frames, gens, ttl)
	return checked && stored
}

// set reports whether the generation check passed and whether the entry was
// written.
func (r *Redis) set(ctx context.Context, key Key, frames []byte, gens Gens, ttl time.Duration) (checked, stored bool) {
	if gens.remote == nil {
		r.m.setDrops.WithLabelValues("invalid_gens").Inc()
		return false, false
	}
	if len(frames) > r.opts.MaxEntryBytes {
		r.m.setDrops.WithLabelValues("too_large").Inc()
		return false, false
	}
	if ttl <= 0 {
		ttl = r.opts.DefaultTTL
	}
	equal, ok := r.current(ctx, "set", gens.db, gens.tables, gens.remote)
	if !ok {
		return false, false
	}
	if !equal {
		r.m.setDrops.WithLabelValues("generation_moved").Inc()
		return false, false
	}
	payload := encodeEntry(gens.db, gens.tables, gens.remote, r.opts.Now(), frames)
	stored = r.call(ctx, "set", func(ctx context.Context) error {
		return r.client.Set(ctx, r.entryKey(key), payload, ttl).Err()
	})
	return true, stored
}

// invalMsg is published on the invalidation channel.
type invalMsg struct {
	Instance string    `json:"i"`
	All      bool      `json:"a,omitempty"`
	Slots    []msgSlot `json:"s,omitempty"`
}

type msgSlot struct {
	DB    string `json:"d"`
	Table string `json:"t,omitempty"`
	Whole bool   `json:"w,omitempty"` // the whole database
}

// writeInval sets fresh generations for slots (and the global one when all)
// and publishes the change.
func (r *Redis) writeInval(ctx context.Context, slots []genSlot, all bool) error {
	var kv []any
	msg := invalMsg{Instance: r.instance, All: all}
	if all {
		kv = append(kv, r.globalKey(), randomGen())
	}
	for _, s := range slots {
		kv = append(kv, r.slotKey(s), randomGen())
		msg.Slots = append(msg.Slots, msgSlot{DB: s.db, Table: s.table, Whole: s.kind == slotDB})
	}
	if len(kv) == 0 {
		return nil
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	pipe := r.client.Pipeline()
	mset := pipe.MSet(ctx, kv...)
	pipe.Publish(ctx, r.channel(), body)
	_, err = pipe.Exec(ctx)
	if mset.Err() != nil {
		return mset.Err()
	}
	if err != nil {
		// Only the publish failed: generations are written, which is what
		// correctness rests on.
		r.m.bypass("publish", reasonError)
	}
	return nil
}

// invalidate writes slots (or a global flush), queueing them for re-sending
// when Redis cannot be reached.
func (r *Redis) invalidate(ctx context.Context, op string, slots []genSlot, all bool) {
	ok := r.callMode(ctx, op, true, func(ctx context.Context) error { return r.writeInval(ctx, slots, all) })
	if !ok {
		r.addPending(slots, all)
	}
}

func (r *Redis) addPending(slots []genSlot, all bool) {
	r.pendingMu.Lock()
	defer r.pendingMu.Unlock()
	if all || len(r.pending)+len(slots) > r.opts.MaxPendingInvalidations {
		r.pendingAll = true
		clear(r.pending)
	} else if !r.pendingAll {
		for _, s := range slots {
			r.pending[s] = struct{}{}
		}
	}
	n := int64(len(r.pending))
	if r.pendingAll {
		n = 1
	}
	r.pendingN.Store(n)
	r.m.pending.Set(float64(n))
}

// flushPending re-sends queued invalidations; it is called before every
// operation, so no read on this instance can observe Redis without them.
func (r *Redis) flushPending(ctx context.Context) error {
	if r.pendingN.Load() == 0 {
		return nil
	}
	r.pendingMu.Lock()
	slots := make([]genSlot, 0, len(r.pending))
	for s := range r.pending {
		slots = append(slots, s)
	}
	all := r.pendingAll
	r.pendingMu.Unlock()
	if err := r.writeInval(ctx, slots, all); err != nil {
		return err
	}
	r.pendingMu.Lock()
	for _, s := range slots {
		delete(r.pending, s)
	}
	if all {
		r.pendingAll = false
	}
	n := int64(len(r.pending))
	if r.pendingAll {
		n = 1
	}
	r.pendingN.Store(n)
	r.m.pending.Set(float64(n))
	r.pendingMu.Unlock()
	return nil
}

// Invalidate gives every table fresh Redis generations and publishes the
// change. On failure the invalidation is counted, queued, and re-sent before
// any later operation of this instance reaches Redis.
func (r *Redis) Invalidate(ctx context.Context, db string, tables []string) {
	tables = normTables(tables)
	slots := make([]genSlot, len(tables))
	for i, t := range tables {
		slots[i] = genSlot{db: db, table: t, kind: slotTable}
	}
	r.m.invalidated("table", len(tables))
	r.invalidate(ctx, "invalidate", slots, false)
}

// FlushDB gives db a fresh database generation.
func (r *Redis) FlushDB(ctx context.Context, db string) {
	r.m.invalidated("db", 1)
	r.invalidate(ctx, "flush", []genSlot{{db: db, kind: slotDB}}, false)
}

// FlushAll gives the global generation a fresh value.
func (r *Redis) FlushAll(ctx context.Context) {
	r.m.invalidated("all", 1)
	r.invalidate(ctx, "flush", nil, true)
}

// Do implements Cache.Do with single flight per key within this process.
func (r *Redis) Do(ctx context.Context, db string, key Key, tables []string, ttl time.Duration,
	fill func() ([]byte, bool, error)) ([]byte, bool, error) {
	return r.flight.do(ctx, r, r.m, r.opts.FlightWait, db, key, tables, ttl, fill)
}

// Stats returns the tier's counters.
func (r *Redis) Stats() Stats { return r.m.stats() }

// subscribe delivers invalidation messages from other instances to h.
func (r *Redis) subscribe(h func(invalMsg)) {
	r.handler.Store(&h)
	r.subOnce.Do(func() {
		r.ps = r.client.Subscribe(context.Background(), r.channel())
		ch := r.ps.Channel()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			for msg := range ch {
				var im invalMsg
				if json.Unmarshal([]byte(msg.Payload), &im) != nil || im.Instance == r.instance {
					continue
				}
				if hp := r.handler.Load(); hp != nil {
					(*hp)(im)
				}
			}
		}()
	})
}

// recoverer re-sends pending invalidations and probes Redis while the
// breaker is open, so recovery does not wait for traffic.
func (r *Redis) recoverer() {
	defer r.wg.Done()
	t := time.NewTicker(max(r.opts.BreakerBackoff/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			switch {
			case r.pendingN.Load() > 0:
				// Queued invalidations are re-sent every tick, breaker or
				// not: each tick they wait widens the staleness window of
				// other instances.
				r.callMode(context.Background(), "probe", true, func(ctx context.Context) error { return nil })
			case !r.br.isClosed() && r.br.probeDue():
				r.call(context.Background(), "probe", func(ctx context.Context) error {
					return r.client.Ping(ctx).Err()
				})
			}
		}
	}
}

// Close stops background work and closes connections. It is idempotent.
func (r *Redis) Close() error {
	var err error
	r.stopOnce.Do(func() {
		close(r.stop)
		if r.ps != nil {
			_ = r.ps.Close()
		}
		err = r.client.Close()
	})
	r.wg.Wait()
	return err
}
