package cachelayer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// go-redis prints its own messages ("connection pool: failed to dial ...",
// dozens a second while Redis is down) to stderr, outside the proxy's log
// format and level. They go to the Redis tier's slog logger at debug level
// instead: an outage is already reported by the breaker metrics and the
// bypass counters.

type redisLogger struct{ l atomic.Pointer[slog.Logger] }

func (r *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if l := r.l.Load(); l != nil && l.Enabled(ctx, slog.LevelDebug) {
		l.Debug("redis client", "msg", strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	}
}

var (
	goRedisLog     redisLogger
	goRedisLogOnce sync.Once
)

// setRedisLogger routes go-redis's messages to l (dropped while nil).
func setRedisLogger(l *slog.Logger) {
	if l != nil {
		goRedisLog.l.Store(l)
	}
	goRedisLogOnce.Do(func() { redis.SetLogger(&goRedisLog) })
}
