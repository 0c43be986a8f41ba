package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Config is the whole, validated configuration of one pgsluice process.
// It is a plain value: Load returns it, callers pass it down by value or
// pointer and never mutate a Config another goroutine can see. Reloads build a
// new Config and swap it in (see the proxy package).
type Config struct {
	// Listen is the client-facing address (host:port).
	Listen string `mapstructure:"listen" yaml:"listen"`
	// MaxMessageSize bounds one protocol message from a client (PostgreSQL's
	// own limit is 1 GiB).
	MaxMessageSize ByteSize `mapstructure:"max_message_size" yaml:"max_message_size"`
	// ShutdownTimeout is how long SIGTERM waits for running transactions.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout" yaml:"shutdown_timeout"`

	Admin    AdminConfig   `mapstructure:"admin" yaml:"admin"`
	Pool     PoolConfig    `mapstructure:"pool" yaml:"pool"`
	Primary  Node          `mapstructure:"primary" yaml:"primary"`
	Replicas []Node        `mapstructure:"replicas" yaml:"replicas"`
	Auth     AuthConfig    `mapstructure:"auth" yaml:"auth"`
	TLS      TLSConfig     `mapstructure:"tls" yaml:"tls"`
	Routing  RoutingConfig `mapstructure:"routing" yaml:"routing"`
	Log      LogConfig     `mapstructure:"log" yaml:"log"`
	Metrics  MetricsConfig `mapstructure:"metrics" yaml:"metrics"`
	Cache    CacheConfig   `mapstructure:"cache" yaml:"cache"`
}

// AdminConfig configures the HTTP admin endpoint and the admin console.
type AdminConfig struct {
	// Listen is the HTTP address serving /healthz, /readyz and /metrics.
	// Empty disables the HTTP endpoint.
	Listen string `mapstructure:"listen" yaml:"listen"`
	// Users may open the admin console (database "pgsluice").
	Users []string `mapstructure:"users" yaml:"users"`
}

// PoolConfig configures backend pools. Sizes are per (database, user, node).
type PoolConfig struct {
	Mode           string        `mapstructure:"mode" yaml:"mode"`
	Size           int           `mapstructure:"size" yaml:"size"`
	MinIdle        int           `mapstructure:"min_idle" yaml:"min_idle"`
	AcquireTimeout time.Duration `mapstructure:"acquire_timeout" yaml:"acquire_timeout"`
	IdleTimeout    time.Duration `mapstructure:"idle_timeout" yaml:"idle_timeout"`
	MaxLifetime    time.Duration `mapstructure:"max_lifetime" yaml:"max_lifetime"`
	MaxClientConn  int           `mapstructure:"max_client_conn" yaml:"max_client_conn"`
	// MaxDBConnections caps the server connections to one database on
	// one node across all its users' pools (0: no cap beyond pool.size
	// per pool).
	MaxDBConnections int `mapstructure:"max_db_connections" yaml:"max_db_connections"`
	// MaxUserConnections caps the server connections to one node as one
	// user across all its databases' pools (0: no cap).
	MaxUserConnections int `mapstructure:"max_user_connections" yaml:"max_user_connections"`
	// ConnectTimeout bounds dialling and authenticating a backend.
	ConnectTimeout time.Duration `mapstructure:"connect_timeout" yaml:"connect_timeout"`
	// CheckAfter: a backend idle longer than this is checked for liveness
	// before it is lent out again.
	CheckAfter time.Duration `mapstructure:"check_after" yaml:"check_after"`
	// PreparedStatements bounds the prepared statements the proxy keeps on
	// one backend connection (LRU; evicted ones are closed).
	PreparedStatements int `mapstructure:"prepared_statements" yaml:"prepared_statements"`
	// ClientLoginTimeout bounds the startup and authentication of a client.
	ClientLoginTimeout time.Duration `mapstructure:"client_login_timeout" yaml:"client_login_timeout"`
	// ClientIdleTimeout closes a client outside a transaction that has sent
	// nothing for this long (0: never), as PgBouncer's client_idle_timeout.
	ClientIdleTimeout time.Duration `mapstructure:"client_idle_timeout" yaml:"client_idle_timeout"`
	// IdleTransactionTimeout closes a client that has sat idle inside a
	// transaction for this long (0: never), rolling it back and freeing
	// its server connection, as PgBouncer's idle_transaction_timeout.
	IdleTransactionTimeout time.Duration `mapstructure:"idle_transaction_timeout" yaml:"idle_transaction_timeout"`
}

// Pool modes.
const (
	ModeTransaction = "transaction"
	ModeSession     = "session"
)

// Node is one PostgreSQL server.
type Node struct {
	Host   string `mapstructure:"host" yaml:"host"`
	Port   int    `mapstructure:"port" yaml:"port"`
	Weight int    `mapstructure:"weight" yaml:"weight"`
}

// Addr returns host:port.
func (n Node) Addr() string { return n.Host + ":" + strconv.Itoa(n.Port) }

// AuthConfig configures client authentication. The same credentials are
// used towards the servers.
type AuthConfig struct {
	Method string `mapstructure:"method" yaml:"method"`
	Users  []User `mapstructure:"users" yaml:"users"`
	// Query looks up clients that are not in Users in PostgreSQL.
	Query AuthQueryConfig `mapstructure:"query" yaml:"query"`
}

// AuthQueryConfig is PgBouncer's auth_query: a client user missing from
// auth.users is looked up on the primary at each login, and the secret the
// query returns (a SCRAM verifier or md5 hash, as pg_authid stores it)
// checks the client and logs the pools in, as a stored secret in auth.users
// does.
type AuthQueryConfig struct {
	// SQL returns one row (name, secret) for the user named $1; no row or
	// a NULL secret means no such login. Empty disables the lookup.
	SQL string `mapstructure:"sql" yaml:"sql"`
	// User and Password log in to run SQL (plaintext password); an empty
	// user means routing.monitor's login.
	User     string `mapstructure:"user" yaml:"user"`
	Password Secret `mapstructure:"password" yaml:"password"`
	// Database is where SQL runs.
	Database string `mapstructure:"database" yaml:"database"`
}

// User is one client credential. Password is the plaintext password or a
// stored secret as PostgreSQL keeps it in pg_authid.rolpassword: a SCRAM
// verifier ("SCRAM-SHA-256$…") or an md5 hash ("md5" and 32 hex digits).
// With a secret pgsluice checks clients without knowing the password and
// logs in to servers as far as the protocol allows (proxy/auth).
type User struct {
	Name     string `mapstructure:"name" yaml:"name"`
	Password Secret `mapstructure:"password" yaml:"password"`
}

// Auth methods.
const (
	AuthSCRAM = "scram-sha-256"
	AuthMD5   = "md5"
	AuthTrust = "trust"
)

// TLSConfig configures TLS towards clients (when CertFile is set) and
// towards servers.
type TLSConfig struct {
	CertFile string `mapstructure:"cert_file" yaml:"cert_file"`
	KeyFile  string `mapstructure:"key_file" yaml:"key_file"`
	// Server is disable | prefer | require, towards backends.
	Server string `mapstructure:"server" yaml:"server"`
	// Client is disable | allow | require, towards clients: disable
	// answers every SSLRequest with 'N'; allow accepts TLS when cert_file
	// is set and plaintext too; require refuses plaintext clients with
	// 28000 (like a hostssl-only pg_hba.conf) and needs cert_file.
	Client string `mapstructure:"client" yaml:"client"`
}

// RoutingConfig configures read/write splitting.
type RoutingConfig struct {
	// Enabled turns on query classification and replica routing. With it
	// off every query goes to the primary (pure pooling).
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// ShapeCacheSize bounds the classifier's cache of query shapes.
	ShapeCacheSize int `mapstructure:"shape_cache_size" yaml:"shape_cache_size"`
	// HealthInterval is how often each node is checked (recovery state,
	// WAL positions).
	HealthInterval time.Duration `mapstructure:"health_interval" yaml:"health_interval"`
	// MaxReplicaLag takes a replica out of rotation when it is more than
	// this many bytes of WAL behind the primary (0: no byte bound).
	MaxReplicaLag ByteSize `mapstructure:"max_replica_lag" yaml:"max_replica_lag"`
	// MaxReplicaLagTime does the same by replay delay (0: no time bound).
	MaxReplicaLagTime time.Duration `mapstructure:"max_replica_lag_time" yaml:"max_replica_lag_time"`
	// PrimaryReads lets the primary take reads alongside the replicas.
	PrimaryReads bool `mapstructure:"primary_reads" yaml:"primary_reads"`
	// ReadYourWrites is the scope in which a client's committed writes are
	// visible to its later reads: connection | user | off.
	ReadYourWrites string `mapstructure:"read_your_writes" yaml:"read_your_writes"`
	// RYWWait: when read-your-writes excludes every replica, wait up to
	// this long for one to replay the client's write before reading from
	// the primary (0: do not wait).
	RYWWait time.Duration `mapstructure:"ryw_wait" yaml:"ryw_wait"`
	// CatalogRefresh is how often function volatility (pg_proc) is
	// reloaded from the primary, besides after DDL through the proxy
	// (0: only at startup and after DDL).
	CatalogRefresh time.Duration `mapstructure:"catalog_refresh" yaml:"catalog_refresh"`
	// Monitor is the role the health checks log in as; empty user means
	// the first of auth.users.
	Monitor MonitorConfig `mapstructure:"monitor" yaml:"monitor"`
}

// MonitorConfig is the login of the node health monitor.
type MonitorConfig struct {
	User     string `mapstructure:"user" yaml:"user"`
	Password Secret `mapstructure:"password" yaml:"password"`
	Database string `mapstructure:"database" yaml:"database"`
}

// MetricsConfig configures per-query metrics, query statistics and the
// slow-query log.
type MetricsConfig struct {
	// MaxFingerprints bounds the query shapes (pg_query fingerprints) that
	// keep their own pgsluice_query_duration_seconds series: the most called
	// ones; the rest are reported under fingerprint="other".
	MaxFingerprints int `mapstructure:"max_fingerprints" yaml:"max_fingerprints"`
	// SlowQueryThreshold logs every statement slower than this (normalized
	// text only, no literals); 0 disables the slow-query log.
	SlowQueryThreshold time.Duration `mapstructure:"slow_query_threshold" yaml:"slow_query_threshold"`
}

// CacheConfig configures the result cache. Nothing is cached unless a rule
// matches a statement or the statement carries a /* pgsluice: cache ttl=… */
// hint; a nocache hint always wins.
type CacheConfig struct {
	// Backend is memory (in-process), redis (shared), tiered (memory in
	// front of redis) or off.
	Backend string `mapstructure:"backend" yaml:"backend"`
	// MaxBytes is the in-process tier's budget.
	MaxBytes ByteSize `mapstructure:"max_bytes" yaml:"max_bytes"`
	// MaxEntryBytes is the largest result stored (RowDescription, DataRows
	// and CommandComplete bytes).
	MaxEntryBytes ByteSize         `mapstructure:"max_entry_bytes" yaml:"max_entry_bytes"`
	Redis         CacheRedisConfig `mapstructure:"redis" yaml:"redis"`
	Rules         []CacheRule      `mapstructure:"rules" yaml:"rules"`
	// OnOpaqueWrite says what a statement whose writes cannot be seen
	// (CALL, DO, volatile functions, DDL without a table) does to the
	// cache: flush (the database's entries) or ignore.
	OnOpaqueWrite string                  `mapstructure:"on_opaque_write" yaml:"on_opaque_write"`
	Invalidation  CacheInvalidationConfig `mapstructure:"invalidation" yaml:"invalidation"`
	// FlightWait bounds how long a cache miss waits for another client's
	// fill of the same key (single flight) before running the statement
	// itself.
	FlightWait time.Duration `mapstructure:"flight_wait" yaml:"flight_wait"`
}

// CacheRedisConfig locates the shared Redis: Addr (standalone), Addrs
// (cluster seeds) or MasterName with Addrs as the sentinels.
type CacheRedisConfig struct {
	Addr       string   `mapstructure:"addr" yaml:"addr"`
	Addrs      []string `mapstructure:"addrs" yaml:"addrs"`
	MasterName string   `mapstructure:"master_name" yaml:"master_name"`
	Password   Secret   `mapstructure:"password" yaml:"password"`
	// Timeout bounds every Redis operation; a slower Redis is bypassed.
	Timeout time.Duration `mapstructure:"timeout" yaml:"timeout"`
	// KeyPrefix namespaces the keys of pgsluice instances sharing a Redis.
	KeyPrefix string `mapstructure:"key_prefix" yaml:"key_prefix"`
}

// CacheRule asks for caching: statements reading only Tables, or of the
// query shape Fingerprint (16 hex digits, pg_query fingerprint), are cached
// for TTL.
type CacheRule struct {
	Tables      []string      `mapstructure:"tables" yaml:"tables"`
	Fingerprint string        `mapstructure:"fingerprint" yaml:"fingerprint"`
	TTL         time.Duration `mapstructure:"ttl" yaml:"ttl"`
}

// CacheInvalidationConfig configures invalidation of writes that bypass the
// proxy through logical replication (a slot and a publication on the
// primary, read with pgoutput).
type CacheInvalidationConfig struct {
	LogicalReplication bool `mapstructure:"logical_replication" yaml:"logical_replication"`
	// Slot names the temporary slot; empty (the default) means a fresh
	// name per connection, which several instances need.
	Slot string `mapstructure:"slot" yaml:"slot"`
	// Publication is created FOR ALL TABLES when missing.
	Publication string `mapstructure:"publication" yaml:"publication"`
}

// Cache backends.
const (
	CacheOff    = "off"
	CacheMemory = "memory"
	CacheRedis  = "redis"
	CacheTiered = "tiered"
)

// LogConfig configures the structured logger.
type LogConfig struct {
	Level  string `mapstructure:"level" yaml:"level"`
	Format string `mapstructure:"format" yaml:"format"`
}

// Secret is a string that never prints itself.
type Secret string

// String masks the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "********"
}

// MarshalYAML masks the secret in --print-config output.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// ByteSize is a size in bytes, written in config as 1048576, "1MiB", "64KB"…
type ByteSize int64

// ParseByteSize parses "123", "64KiB", "1MB", "1GiB" (KB, MB, GB are taken as
// powers of 1024 too, as PostgreSQL does for memory settings).
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	upper := strings.ToUpper(t)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(upper, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (want e.g. 1048576, 64KiB, 1GiB)", s)
	}
	return ByteSize(n * mult), nil
}

// String renders the size with the largest exact binary unit.
func (b ByteSize) String() string {
	switch {
	case b != 0 && b%(1<<30) == 0:
		return strconv.FormatInt(int64(b>>30), 10) + "GiB"
	case b != 0 && b%(1<<20) == 0:
		return strconv.FormatInt(int64(b>>20), 10) + "MiB"
	case b != 0 && b%(1<<10) == 0:
		return strconv.FormatInt(int64(b>>10), 10) + "KiB"
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalYAML prints the size in its readable form.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }
