package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes every environment override: pool.size is PGSLUICE_POOL_SIZE.
const EnvPrefix = "PGSLUICE"

// Default returns the built-in defaults: the one place they live. Primary
// has no default host (it must be configured) but the port defaults to 5432.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:6432",
		MaxMessageSize:  1 << 30,
		ShutdownTimeout: 30 * time.Second,
		Admin:           AdminConfig{Listen: "127.0.0.1:9930"},
		Pool: PoolConfig{
			Mode:               ModeTransaction,
			Size:               20,
			MinIdle:            0,
			AcquireTimeout:     5 * time.Second,
			IdleTimeout:        5 * time.Minute,
			MaxLifetime:        time.Hour,
			MaxClientConn:      10000,
			ConnectTimeout:     5 * time.Second,
			CheckAfter:         30 * time.Second,
			PreparedStatements: 1000,
			ClientLoginTimeout: 15 * time.Second,
		},
		Primary: Node{Port: 5432, Weight: 1},
		Auth:    AuthConfig{Method: AuthSCRAM, Query: AuthQueryConfig{Database: "postgres"}},
		TLS:     TLSConfig{Server: "prefer", Client: "allow"},
		Routing: RoutingConfig{
			Enabled:           true,
			ShapeCacheSize:    10000,
			HealthInterval:    500 * time.Millisecond,
			MaxReplicaLag:     64 << 20,
			MaxReplicaLagTime: 30 * time.Second,
			ReadYourWrites:    "connection",
			CatalogRefresh:    60 * time.Second,
			Monitor:           MonitorConfig{Database: "postgres"},
		},
		Log: LogConfig{Level: "info", Format: "text"},
		Cache: CacheConfig{
			Backend:       CacheMemory,
			MaxBytes:      256 << 20,
			MaxEntryBytes: 1 << 20,
			Redis:         CacheRedisConfig{Timeout: 20 * time.Millisecond, KeyPrefix: "pgsluice"},
			OnOpaqueWrite: "flush",
			Invalidation:  CacheInvalidationConfig{Publication: "pgsluice_cache"},
			FlightWait:    time.Second,
		},
		Metrics: MetricsConfig{MaxFingerprints: 200, SlowQueryThreshold: time.Second},
	}
}

// Load reads the YAML file at path ("" means no file: defaults and
// environment only), applies PGSLUICE_* environment overrides, rejects
// unknown keys and returns the validated Config. Every problem is reported
// at once, each naming its key.
func Load(path string) (Config, error) {
	return load(path, os.Environ())
}

func load(path string, environ []string) (Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	setDefaults(v, "", reflect.ValueOf(Default()))
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		defer f.Close()
		if err := v.ReadConfig(f); err != nil {
			return Config{}, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	// Environment overrides: only keys we know, so a typo in an env name
	// is ignored like any unrelated variable rather than half-applied.
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix+"_") {
			continue
		}
		key, known := envKeys()[name]
		if !known {
			return Config{}, &ValidationError{Problems: []string{fmt.Sprintf("%s: unknown environment override (known: %s_POOL_SIZE, %s_PRIMARY_HOST, …; see --print-config for keys)", name, EnvPrefix, EnvPrefix)}}
		}
		v.Set(key, val)
	}
	cfg := Config{}
	hook := mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		byteSizeHook,
		nodesFromStringHook,
		usersFromStringHook,
		mapstructure.StringToSliceHookFunc(","),
	)
	if err := v.UnmarshalExact(&cfg, viper.DecodeHook(hook)); err != nil {
		return Config{}, &ValidationError{Problems: decodeProblems(err)}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// setDefaults registers every leaf key of the default config with viper so
// that file values merge over them and environment overrides are known.
func setDefaults(v *viper.Viper, prefix string, rv reflect.Value) {
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		key := f.Tag.Get("mapstructure")
		if prefix != "" {
			key = prefix + "." + key
		}
		fv := rv.Field(i)
		if f.Type.Kind() == reflect.Struct {
			setDefaults(v, key, fv)
			continue
		}
		v.SetDefault(key, fv.Interface())
	}
}

var envKeyMap map[string]string

// envKeys maps PGSLUICE_POOL_SIZE -> pool.size for every leaf key.
func envKeys() map[string]string {
	if envKeyMap != nil {
		return envKeyMap
	}
	m := map[string]string{}
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := f.Tag.Get("mapstructure")
			if prefix != "" {
				key = prefix + "." + key
			}
			if f.Type.Kind() == reflect.Struct {
				walk(key, f.Type)
				continue
			}
			m[EnvPrefix+"_"+strings.ToUpper(strings.ReplaceAll(key, ".", "_"))] = key
		}
	}
	walk("", reflect.TypeOf(Config{}))
	envKeyMap = m
	return m
}

var byteSizeType = reflect.TypeOf(ByteSize(0))

func byteSizeHook(from, to reflect.Type, data any) (any, error) {
	if to != byteSizeType {
		return data, nil
	}
	switch d := data.(type) {
	case string:
		return ParseByteSize(d)
	case int:
		return ByteSize(d), nil
	case int64:
		return ByteSize(d), nil
	case float64:
		return ByteSize(d), nil
	}
	return data, nil
}

// nodesFromStringHook lets PGSLUICE_REPLICAS="h1:5433,h2:5433" set the
// replica list from the environment.
func nodesFromStringHook(from, to reflect.Type, data any) (any, error) {
	s, ok := data.(string)
	if !ok || to != reflect.TypeOf([]Node{}) {
		return data, nil
	}
	var out []map[string]any
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		host, port, err := net.SplitHostPort(part)
		if err != nil {
			return nil, fmt.Errorf("want host:port[,host:port…], got %q", part)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("bad port in %q", part)
		}
		out = append(out, map[string]any{"host": host, "port": p, "weight": 1})
	}
	return out, nil
}

// usersFromStringHook lets PGSLUICE_AUTH_USERS="app:secret,bob:pw" set users.
func usersFromStringHook(from, to reflect.Type, data any) (any, error) {
	s, ok := data.(string)
	if !ok || to != reflect.TypeOf([]User{}) {
		return data, nil
	}
	var out []map[string]any
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		name, pw, _ := strings.Cut(part, ":")
		out = append(out, map[string]any{"name": name, "password": pw})
	}
	return out, nil
}

// decodeProblems turns mapstructure's joined errors into one line per key.
func decodeProblems(err error) []string {
	var out []string
	msg := err.Error()
	for _, line := range strings.Split(msg, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
		if line == "" || strings.HasPrefix(line, "decoding failed due to") || strings.HasSuffix(line, "error(s) decoding:") {
			continue
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		out = []string{msg}
	}
	sort.Strings(out)
	return out
}

// ValidationError lists every problem found in a configuration.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Validate checks every key and returns a *ValidationError naming each bad
// one, or nil.
func (c Config) Validate() error {
	var p []string
	add := func(key, format string, args ...any) {
		p = append(p, key+": "+fmt.Sprintf(format, args...))
	}
	checkAddr := func(key, addr string, allowEmpty bool) {
		if addr == "" && allowEmpty {
			return
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			add(key, "want host:port, got %q", addr)
		}
	}
	checkAddr("listen", c.Listen, false)
	checkAddr("admin.listen", c.Admin.Listen, true)
	if c.MaxMessageSize < 1024 || c.MaxMessageSize > 1<<30 {
		add("max_message_size", "want between 1KiB and 1GiB, got %s", c.MaxMessageSize)
	}
	if c.ShutdownTimeout < 0 {
		add("shutdown_timeout", "want a duration >= 0, got %s", c.ShutdownTimeout)
	}
	switch c.Pool.Mode {
	case ModeTransaction, ModeSession:
	default:
		add("pool.mode", "want transaction or session, got %q", c.Pool.Mode)
	}
	if c.Pool.Size < 1 {
		add("pool.size", "want >= 1, got %d", c.Pool.Size)
	}
	if c.Pool.MaxDBConnections < 0 {
		add("pool.max_db_connections", "want 0 (no cap) or more, got %d", c.Pool.MaxDBConnections)
	}
	if c.Pool.MaxUserConnections < 0 {
		add("pool.max_user_connections", "want 0 (no cap) or more, got %d", c.Pool.MaxUserConnections)
	}
	if c.Pool.MinIdle < 0 || c.Pool.MinIdle > c.Pool.Size {
		add("pool.min_idle", "want between 0 and pool.size (%d), got %d", c.Pool.Size, c.Pool.MinIdle)
	}
	positive := func(key string, d time.Duration) {
		if d <= 0 {
			add(key, "want a positive duration such as 5s, got %s", d)
		}
	}
	positive("pool.acquire_timeout", c.Pool.AcquireTimeout)
	positive("pool.connect_timeout", c.Pool.ConnectTimeout)
	positive("pool.client_login_timeout", c.Pool.ClientLoginTimeout)
	for key, d := range map[string]time.Duration{"pool.idle_timeout": c.Pool.IdleTimeout, "pool.max_lifetime": c.Pool.MaxLifetime, "pool.check_after": c.Pool.CheckAfter,
		"pool.client_idle_timeout": c.Pool.ClientIdleTimeout, "pool.idle_transaction_timeout": c.Pool.IdleTransactionTimeout} {
		if d < 0 {
			add(key, "want a duration >= 0 (0 disables), got %s", d)
		}
	}
	if c.Pool.MaxClientConn < 1 {
		add("pool.max_client_conn", "want >= 1, got %d", c.Pool.MaxClientConn)
	}
	if c.Pool.PreparedStatements < 1 {
		add("pool.prepared_statements", "want >= 1, got %d", c.Pool.PreparedStatements)
	}
	checkNode := func(key string, n Node) {
		if n.Host == "" {
			add(key+".host", "required (the server's host name or address)")
		}
		if n.Port < 1 || n.Port > 65535 {
			add(key+".port", "want 1-65535, got %d", n.Port)
		}
		if n.Weight < 0 {
			add(key+".weight", "want >= 0, got %d", n.Weight)
		}
	}
	checkNode("primary", c.Primary)
	for i, r := range c.Replicas {
		checkNode(fmt.Sprintf("replicas[%d]", i), r)
	}
	switch c.Auth.Method {
	case AuthSCRAM, AuthMD5, AuthTrust:
	default:
		add("auth.method", "want scram-sha-256, md5 or trust, got %q", c.Auth.Method)
	}
	if c.Auth.Method != AuthTrust && len(c.Auth.Users) == 0 && c.Auth.Query.SQL == "" {
		add("auth.users", "required when auth.method is %s and auth.query.sql is empty (list name and password of each client user)", c.Auth.Method)
	}
	if q := c.Auth.Query; q.SQL != "" {
		if c.Auth.Method == AuthTrust {
			add("auth.query.sql", "has no use with auth.method trust")
		}
		if !strings.Contains(q.SQL, "$1") {
			add("auth.query.sql", "must take the user name as $1, e.g. SELECT usename, passwd FROM pg_shadow WHERE usename = $1")
		}
		if q.User == "" && c.Routing.Monitor.User == "" && len(c.Auth.Users) == 0 {
			add("auth.query.user", "required (or routing.monitor.user) when auth.users is empty: the query needs a login")
		}
		if IsStoredSecret(string(q.Password)) {
			add("auth.query.password", "must be the plaintext password, not a stored secret")
		}
		if q.Database == "" {
			add("auth.query.database", "required")
		}
	}
	seen := map[string]bool{}
	for i, u := range c.Auth.Users {
		if u.Name == "" {
			add(fmt.Sprintf("auth.users[%d].name", i), "required")
		}
		if seen[u.Name] {
			add(fmt.Sprintf("auth.users[%d].name", i), "duplicate user %q", u.Name)
		}
		seen[u.Name] = true
		if u.Password == "" && c.Auth.Method != AuthTrust {
			add(fmt.Sprintf("auth.users[%d].password", i), "required when auth.method is %s", c.Auth.Method)
		}
		if err := checkSCRAMSecret(string(u.Password)); err != nil {
			add(fmt.Sprintf("auth.users[%d].password", i), "%v", err)
		}
	}
	// The health monitor, catalog loaders and cache invalidation log in
	// with pgx, which needs the plaintext password.
	if c.Routing.Monitor.User == "" && len(c.Auth.Users) > 0 && IsStoredSecret(string(c.Auth.Users[0].Password)) {
		add("routing.monitor", "set user and password (plaintext): the monitor logs in as the first of auth.users by default, and %q has a stored secret, which only answers a client's own login", c.Auth.Users[0].Name)
	}
	if IsStoredSecret(string(c.Routing.Monitor.Password)) {
		add("routing.monitor.password", "must be the plaintext password, not a stored secret")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("tls", "cert_file and key_file must be set together")
	}
	for key, f := range map[string]string{"tls.cert_file": c.TLS.CertFile, "tls.key_file": c.TLS.KeyFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				add(key, "cannot read %q: %v", f, errors.Unwrap(err))
			}
		}
	}
	switch c.TLS.Server {
	case "disable", "prefer", "require":
	default:
		add("tls.server", "want disable, prefer or require, got %q", c.TLS.Server)
	}
	switch c.TLS.Client {
	case "disable", "allow":
	case "require":
		if c.TLS.CertFile == "" {
			add("tls.client", "require needs tls.cert_file and tls.key_file")
		}
	default:
		add("tls.client", "want disable, allow or require, got %q", c.TLS.Client)
	}
	switch c.Routing.ReadYourWrites {
	case "connection", "user", "off":
	default:
		add("routing.read_your_writes", "want connection, user or off, got %q", c.Routing.ReadYourWrites)
	}
	if c.Routing.HealthInterval < 10*time.Millisecond {
		add("routing.health_interval", "want at least 10ms, got %s", c.Routing.HealthInterval)
	}
	if c.Routing.MaxReplicaLag < 0 || c.Routing.MaxReplicaLagTime < 0 {
		add("routing.max_replica_lag", "want >= 0")
	}
	if c.Routing.RYWWait < 0 {
		add("routing.ryw_wait", "want >= 0, got %s", c.Routing.RYWWait)
	}
	if c.Routing.CatalogRefresh < 0 {
		add("routing.catalog_refresh", "want >= 0 (0 disables the periodic reload), got %s", c.Routing.CatalogRefresh)
	}
	if c.Routing.ShapeCacheSize < 1 {
		add("routing.shape_cache_size", "want >= 1, got %d", c.Routing.ShapeCacheSize)
	}
	if c.Metrics.MaxFingerprints < 0 {
		add("metrics.max_fingerprints", "want >= 0 (0 reports every query under fingerprint \"other\"), got %d", c.Metrics.MaxFingerprints)
	}
	if c.Metrics.SlowQueryThreshold < 0 {
		add("metrics.slow_query_threshold", "want a duration >= 0 (0 disables), got %s", c.Metrics.SlowQueryThreshold)
	}
	p = append(p, c.Cache.problems()...)
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "want debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format", "want text or json, got %q", c.Log.Format)
	}
	if len(p) == 0 {
		return nil
	}
	sort.Strings(p)
	return &ValidationError{Problems: p}
}

// replIdentRE is what replication slot and publication names may look like
// (so that they never need quoting).
var replIdentRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// problems validates the cache section, naming each bad key.
func (c CacheConfig) problems() []string {
	var p []string
	add := func(key, format string, args ...any) {
		p = append(p, "cache."+key+": "+fmt.Sprintf(format, args...))
	}
	switch c.Backend {
	case CacheOff, CacheMemory, CacheRedis, CacheTiered:
	default:
		add("backend", "want memory, redis, tiered or off, got %q", c.Backend)
	}
	if c.MaxBytes < 1<<20 {
		add("max_bytes", "want at least 1MiB, got %s", c.MaxBytes)
	}
	if c.MaxEntryBytes < 1 || c.MaxEntryBytes > c.MaxBytes {
		add("max_entry_bytes", "want between 1 and cache.max_bytes (%s), got %s", c.MaxBytes, c.MaxEntryBytes)
	}
	if c.Backend == CacheRedis || c.Backend == CacheTiered {
		r := c.Redis
		switch {
		case r.MasterName != "" && len(r.Addrs) == 0:
			add("redis.addrs", "required with cache.redis.master_name (the sentinels' host:port list)")
		case r.Addr == "" && len(r.Addrs) == 0:
			add("redis.addr", "required when cache.backend is %s (host:port; or cache.redis.addrs for cluster/sentinel)", c.Backend)
		case r.Addr != "" && len(r.Addrs) > 0:
			add("redis.addr", "set either cache.redis.addr (standalone) or cache.redis.addrs (cluster/sentinel), not both")
		}
		for i, a := range append([]string{r.Addr}, r.Addrs...) {
			if a == "" && i == 0 {
				continue
			}
			if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
				key := "redis.addr"
				if i > 0 {
					key = fmt.Sprintf("redis.addrs[%d]", i-1)
				}
				add(key, "want host:port, got %q", a)
			}
		}
	}
	if c.Redis.Timeout <= 0 {
		add("redis.timeout", "want a positive duration such as 20ms, got %s", c.Redis.Timeout)
	}
	if c.Redis.KeyPrefix == "" {
		add("redis.key_prefix", "required")
	}
	for i, r := range c.Rules {
		key := fmt.Sprintf("rules[%d]", i)
		if len(r.Tables) == 0 && r.Fingerprint == "" {
			add(key, "needs tables or fingerprint")
		}
		if len(r.Tables) > 0 && r.Fingerprint != "" {
			add(key, "set tables or fingerprint, not both (use two rules)")
		}
		for j, t := range r.Tables {
			if strings.TrimSpace(t) == "" {
				add(fmt.Sprintf("%s.tables[%d]", key, j), "empty table name")
			}
		}
		if r.Fingerprint != "" {
			if _, err := strconv.ParseUint(r.Fingerprint, 16, 64); err != nil || len(r.Fingerprint) != 16 {
				add(key+".fingerprint", "want 16 hex digits (the pg_query fingerprint, e.g. 2fcd54e4a1b8c0f3), got %q", r.Fingerprint)
			}
		}
		if r.TTL <= 0 {
			add(key+".ttl", "want a positive duration such as 60s, got %s", r.TTL)
		}
	}
	if c.FlightWait <= 0 {
		add("flight_wait", "want a positive duration such as 1s, got %s", c.FlightWait)
	}
	switch c.OnOpaqueWrite {
	case "flush", "ignore":
	default:
		add("on_opaque_write", "want flush or ignore, got %q", c.OnOpaqueWrite)
	}
	if c.Invalidation.Slot != "" && !replIdentRE.MatchString(c.Invalidation.Slot) {
		add("invalidation.slot", "use 1-63 characters among a-z, 0-9 and _ (empty: a fresh temporary slot per connection), got %q", c.Invalidation.Slot)
	}
	if !replIdentRE.MatchString(c.Invalidation.Publication) {
		add("invalidation.publication", "use 1-63 characters among a-z, 0-9 and _, got %q", c.Invalidation.Publication)
	}
	if c.Invalidation.LogicalReplication {
		if c.Backend == CacheOff {
			add("invalidation.logical_replication", "needs a cache (cache.backend is off)")
		}
	}
	return p
}

// YAML renders the effective configuration with secrets masked, for
// `pgsluice --print-config`.
func (c Config) YAML() string {
	out, err := yaml.Marshal(c)
	if err != nil {
		return "# cannot render config: " + err.Error() + "\n"
	}
	return string(out)
}

// UserPassword returns the configured password of a client user.
func (c Config) UserPassword(name string) (string, bool) {
	for _, u := range c.Auth.Users {
		if u.Name == name {
			return string(u.Password), true
		}
	}
	return "", false
}
