package proxy

import (
	"errors"
	"reflect"
	"slices"
	"strings"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/auth"
)

// NotReloadedError is returned by Reload when the new configuration changes
// settings that cannot change while the process runs. Everything else was
// applied; these keys keep their running values until a restart (see the
// handover procedure in the README).
type NotReloadedError struct {
	Keys []string // e.g. "listen", "tls.cert_file"
}

func (e *NotReloadedError) Error() string {
	return "configuration reloaded, but these settings cannot change while pgsluice runs and keep their running values until a restart: " +
		strings.Join(e.Keys, ", ")
}

// fixedSettings cannot change while the process runs: the listeners are
// open, the TLS certificate and the classifier's cache are built once, the
// logger's format is chosen at start, and the configured primary anchors the
// topology. Reload keeps their running values and reports them.
var fixedSettings = []struct {
	key  string
	keep func(running, next *config.Config) (changed bool)
}{
	{"listen", keepField(func(c *config.Config) *string { return &c.Listen })},
	{"admin.listen", keepField(func(c *config.Config) *string { return &c.Admin.Listen })},
	{"tls.cert_file", keepField(func(c *config.Config) *string { return &c.TLS.CertFile })},
	{"tls.key_file", keepField(func(c *config.Config) *string { return &c.TLS.KeyFile })},
	{"primary.host", keepField(func(c *config.Config) *string { return &c.Primary.Host })},
	{"primary.port", keepField(func(c *config.Config) *int { return &c.Primary.Port })},
	{"primary.weight", keepField(func(c *config.Config) *int { return &c.Primary.Weight })},
	{"routing.shape_cache_size", keepField(func(c *config.Config) *int { return &c.Routing.ShapeCacheSize })},
	{"log.format", keepField(func(c *config.Config) *string { return &c.Log.Format })},
	{"cache.backend", keepField(func(c *config.Config) *string { return &c.Cache.Backend })},
	{"cache.max_bytes", keepField(func(c *config.Config) *config.ByteSize { return &c.Cache.MaxBytes })},
	{"cache.invalidation", keepField(func(c *config.Config) *config.CacheInvalidationConfig { return &c.Cache.Invalidation })},
	{"cache.redis", func(running, next *config.Config) bool {
		if reflect.DeepEqual(running.Cache.Redis, next.Cache.Redis) {
			return false
		}
		next.Cache.Redis = running.Cache.Redis
		return true
	}},
}

// keepField copies a field's running value into the next config and
// reports whether it differed.
func keepField[T comparable](f func(*config.Config) *T) func(running, next *config.Config) bool {
	return func(running, next *config.Config) bool {
		r, n := f(running), f(next)
		if *r == *n {
			return false
		}
		*n = *r
		return true
	}
}

// reloaders apply one part of a new configuration each, in order, after the
// new snapshot is stored (Server.cfgNow already returns next). Each gets the
// configuration it replaces. A new section (the cache rules, for instance)
// adds one entry here and, if some of its keys cannot change live, entries
// to fixedSettings.
var reloaders = []struct {
	name  string
	apply func(s *Server, running, next *config.Config)
}{
	{"pool", reloadPools},
	{"auth", reloadAuth},
	{"topology", reloadTopology},
	{"cache", reloadCache},
}

// reloadCache swaps the cache rules, max_entry_bytes and on_opaque_write.
// Entries already stored keep their TTL; a rule removed stops new fills.
func reloadCache(s *Server, _, next *config.Config) {
	if s.cache == nil {
		return
	}
	rules, err := newCacheRules(next.Cache)
	if err != nil { // Validate checked the fingerprints; keep the old rules
		s.log.Error("cache rules not reloaded", "err", err)
		return
	}
	s.cache.rules.Store(rules)
}

// Reload applies a new configuration without dropping a client: it
// validates it, keeps the settings that cannot change live (returning a
// *NotReloadedError naming them once everything else is applied) and swaps
// immutable snapshots everywhere the old ones were held:
//
//   - pool.*: existing pools take the new size, min_idle and timeouts at
//     once. A bigger pool lets waiting clients open connections now; a
//     smaller one closes its idle extras now and the busy ones as they come
//     back. pool.mode and max_message_size apply to clients that connect
//     after the reload; pool.max_client_conn applies at once.
//   - auth.*: new logins see the new users and passwords; pools log in to
//     the servers with the new password; SCRAM keys cached for changed or
//     removed users are dropped. Connected clients stay connected.
//   - replicas, routing.*: the node list is swapped (new replicas take
//     reads once their monitor proves them streaming and in lag bounds;
//     removed ones take no new transactions); routing settings apply to the
//     next transaction of every client.
//   - cache.rules, max_entry_bytes, on_opaque_write: the next statement
//     (the backend, its budget, Redis and invalidation stream are fixed).
//   - admin.users, log.level, shutdown_timeout: whoever reads them reads
//     the current snapshot (cmd/pgsluice applies log.level).
//
// Reloads are serialised. An invalid configuration changes nothing.
func (s *Server) Reload(cfg config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	running := s.cfgNow()
	next := &cfg
	var fixed []string
	for _, f := range fixedSettings {
		if f.keep(running, next) {
			fixed = append(fixed, f.key)
		}
	}
	changed := ChangedKeys(*running, *next)
	s.cfg.Store(next)
	for _, r := range reloaders {
		r.apply(s, running, next)
	}
	s.log.Info("configuration reloaded", "changed", strings.Join(changed, ","))
	if len(fixed) > 0 {
		err := &NotReloadedError{Keys: fixed}
		s.log.Warn("some settings cannot change while pgsluice runs; they keep their running values until a restart", "keys", strings.Join(fixed, ","))
		return err
	}
	return nil
}

// RunningConfig returns the configuration in force.
func (s *Server) RunningConfig() config.Config { return *s.cfgNow() }

// IsNotReloaded reports whether err only says that some settings kept their
// running values (the rest of the reload was applied).
func IsNotReloaded(err error) bool {
	var nr *NotReloadedError
	return errors.As(err, &nr)
}

// reloadPools gives every pool the new snapshot and its user's new password
// (a removed user's pools keep the old one so its connected clients carry
// on).
func reloadPools(s *Server, _, next *config.Config) {
	s.mu.Lock()
	pools := make([]*pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	for _, p := range pools {
		password, ok := next.UserPassword(p.key.user)
		if !ok {
			password = p.password()
		}
		p.reconfigure(next, password)
	}
}

// reloadAuth drops the cached SCRAM keys of users whose password changed or
// who were removed.
func reloadAuth(_ *Server, running, next *config.Config) {
	for _, u := range running.Auth.Users {
		if pw, ok := next.UserPassword(u.Name); !ok || pw != string(u.Password) {
			auth.ForgetUser(u.Name)
		}
	}
}

func reloadTopology(s *Server, _, next *config.Config) {
	s.topo.reload(next)
}

// reconfigure swaps the pool's settings and password, then resizes: new
// slots go to waiting clients at once, idle connections beyond the new size
// are closed now, lent ones beyond it are closed when released.
func (p *pool) reconfigure(next *config.Config, password string) {
	p.passwordp.Store(&password)
	p.cfgp.Store(next)
	size := next.Pool.Size
	var doomed []*backend
	p.mu.Lock()
	for len(p.waiters) > 0 && p.total < size && !p.closed {
		p.handOffSlotLocked()
	}
	for p.total > size && len(p.idle) > 0 {
		doomed = append(doomed, p.idle[0]) // the least recently used
		p.idle = p.idle[1:]
		p.total--
	}
	p.mu.Unlock()
	for _, b := range doomed {
		b.close()
	}
}

// reload swaps the node list and settings of the topology. Nodes whose
// address, weight and position are unchanged keep their health state and
// monitor; a node moved or re-weighted is a new node that starts from its
// last known state; a removed node's monitor stops. When the monitor's
// login or schedule changed, every monitor restarts.
func (t *topology) reload(next *config.Config) {
	t.mu.Lock()
	defer t.mu.Unlock()
	running := t.conf()
	restart := !monitorSame(running, next)
	t.cfgp.Store(next)

	old := t.list()
	byAddr := map[string]*node{}
	for _, n := range old {
		byAddr[n.addr] = n
	}
	nodes := []*node{t.primary}
	for i, r := range next.Replicas {
		fresh := newReplicaNode(i, r)
		if prev := byAddr[fresh.addr]; prev != nil && prev != t.primary {
			if prev.name == fresh.name && prev.weight == fresh.weight {
				nodes = append(nodes, prev)
				continue
			}
			fresh.state.Store(prev.state.Load())
		}
		nodes = append(nodes, fresh)
	}
	names := map[string]bool{}
	for _, n := range nodes {
		names[n.name] = true
	}
	t.set.Store(&nodes)
	for _, n := range old {
		if restart || !slices.Contains(nodes, n) {
			t.stopWatcherLocked(n)
		}
		if !names[n.name] {
			t.healthy.DeleteLabelValues(n.name)
			t.lagB.DeleteLabelValues(n.name)
			t.lagS.DeleteLabelValues(n.name)
		}
	}
	if len(nodes) < 2 || !next.Routing.Enabled {
		for _, n := range nodes {
			t.stopWatcherLocked(n)
		}
	}
	if t.started {
		t.startWatchersLocked()
	}
}

// monitorSame reports whether two configurations monitor the nodes the same
// way (login, database, schedule, TLS).
func monitorSame(a, b *config.Config) bool {
	au, ap := monitorLogin(a)
	bu, bp := monitorLogin(b)
	return au == bu && ap == bp && a.Routing.Monitor.Database == b.Routing.Monitor.Database &&
		a.Routing.HealthInterval == b.Routing.HealthInterval && a.TLS.Server == b.TLS.Server &&
		a.Routing.Enabled == b.Routing.Enabled
}

// stopWatcherLocked stops n's monitor and waits for it to exit.
func (t *topology) stopWatcherLocked(n *node) {
	if n.watchStop == nil {
		return
	}
	close(n.watchStop)
	<-n.watchDone
	n.watchStop, n.watchDone = nil, nil
}

// ChangedKeys lists the configuration keys whose values differ between a
// and b ("pool.size", "replicas", "auth.users"…): lists count as one key.
// Values are not returned, so secrets never reach a log line.
func ChangedKeys(a, b config.Config) []string {
	var out []string
	var walk func(prefix string, x, y reflect.Value)
	walk = func(prefix string, x, y reflect.Value) {
		t := x.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := f.Tag.Get("mapstructure")
			if key == "" {
				continue
			}
			if prefix != "" {
				key = prefix + "." + key
			}
			if f.Type.Kind() == reflect.Struct {
				walk(key, x.Field(i), y.Field(i))
				continue
			}
			if !reflect.DeepEqual(x.Field(i).Interface(), y.Field(i).Interface()) {
				out = append(out, key)
			}
		}
	}
	walk("", reflect.ValueOf(a), reflect.ValueOf(b))
	return out
}
