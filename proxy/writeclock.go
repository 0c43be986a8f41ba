package proxy

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/pgsluice/pgsluice/config"
)

// writeClock shares, between pgsluice instances using the same Redis, when
// each (database, user) last committed a write, so that read-your-writes in
// scope "user" holds across instances: a user who wrote through instance A
// and reads through instance B is routed by B to a node that has replayed
// the write (or the primary).
//
// The value is a wall-clock time in Unix nanoseconds, compared by the
// reader with the time of its own samples of the primary's WAL position:
// instances must have synchronised clocks (NTP); skew larger than the
// health interval weakens the guarantee. Redis trouble degrades to the
// instance-local record for a second after each failure (during an outage
// a user's writes through another instance are not waited for; the cache's
// own Redis metrics show the outage). Safe for concurrent use.
type writeClock struct {
	client  redis.UniversalClient
	prefix  string
	timeout time.Duration
	// downUntil (Unix nanoseconds): after a Redis failure the clock is
	// not consulted for writeClockBackoff, so that an unreachable Redis
	// does not add its timeout to every read.
	downUntil atomic.Int64
}

const writeClockBackoff = time.Second

func (w *writeClock) usable() bool { return time.Now().UnixNano() >= w.downUntil.Load() }

func (w *writeClock) failed(err error) {
	if err != nil && !errors.Is(err, redis.Nil) {
		w.downUntil.Store(time.Now().Add(writeClockBackoff).UnixNano())
	}
}

// newWriteClock returns nil unless routing.read_your_writes is "user" and
// a Redis is configured for the cache.
func newWriteClock(cfg *config.Config) *writeClock {
	r := cfg.Cache.Redis
	if cfg.Routing.ReadYourWrites != "user" || cfg.Cache.Backend == config.CacheOff || (r.Addr == "" && len(r.Addrs) == 0) {
		return nil
	}
	uo := &redis.UniversalOptions{
		Password:                 string(r.Password),
		Protocol:                 2,
		MaxRetries:               -1,
		DialTimeout:              r.Timeout,
		ReadTimeout:              r.Timeout,
		WriteTimeout:             r.Timeout,
		PoolTimeout:              r.Timeout,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	switch {
	case r.MasterName != "":
		uo.MasterName, uo.Addrs = r.MasterName, r.Addrs
	case len(r.Addrs) > 0:
		uo.Addrs, uo.IsClusterMode = r.Addrs, true
	default:
		uo.Addrs = []string{r.Addr}
	}
	return &writeClock{client: redis.NewUniversalClient(uo), prefix: r.KeyPrefix + ":ryw:", timeout: r.Timeout}
}

func (w *writeClock) key(database, user string) string {
	return w.prefix + strconv.Itoa(len(database)) + ":" + database + ":" + user
}

// note publishes a committed write; the stored time only moves forward.
func (w *writeClock) note(database, user string, at time.Time) {
	if !w.usable() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	// Keep the later of the stored and the new time; expire long after
	// any replica could still lag.
	err := w.client.Eval(ctx, `local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1], 'EX', 3600) end
return 0`, []string{w.key(database, user)}, at.UnixNano()).Err()
	w.failed(err)
}

// last returns the latest write time another instance published, or zero.
func (w *writeClock) last(database, user string) time.Time {
	if !w.usable() {
		return time.Time{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	v, err := w.client.Get(ctx, w.key(database, user)).Int64()
	if err != nil {
		w.failed(err)
		return time.Time{}
	}
	return time.Unix(0, v)
}

func (w *writeClock) close() {
	if w != nil {
		w.client.Close()
	}
}
