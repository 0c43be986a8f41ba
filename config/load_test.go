package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pgsluice.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testSCRAMSecret is the SCRAM verifier of "secret" with salt
// "0123456789abcdef" and 4096 iterations.
const testSCRAMSecret = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ="

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    string
		env     []string
		check   func(t *testing.T, c Config)
		wantErr []string // substrings that must all appear
	}{
		{
			name: "five-line file is a working config",
			file: "primary:\n  host: db1\nauth:\n  users:\n    - {name: app, password: secret}\n",
			check: func(t *testing.T, c Config) {
				if c.Primary.Addr() != "db1:5432" || c.Pool.Size != 20 || c.Pool.Mode != "transaction" || c.Pool.AcquireTimeout != 5*time.Second {
					t.Errorf("defaults not applied: %+v", c)
				}
				if c.MaxMessageSize != 1<<30 {
					t.Errorf("max_message_size = %d", c.MaxMessageSize)
				}
			},
		},
		{
			name: "a password may be a SCRAM secret or an md5 hash (PGSLUICE_AUTH_USERS too)",
			file: "primary: {host: db1}\nauth:\n  users:\n    - {name: bob, password: md5" + strings.Repeat("0a", 16) + "}\n",
			env:  []string{"PGSLUICE_AUTH_USERS=app:" + testSCRAMSecret, "PGSLUICE_ROUTING_MONITOR_USER=mon", "PGSLUICE_ROUTING_MONITOR_PASSWORD=pw"},
			check: func(t *testing.T, c Config) {
				if pw, ok := c.UserPassword("app"); !ok || pw != testSCRAMSecret {
					t.Errorf("app's password = %q, want the secret", pw)
				}
			},
		},
		{
			name:    "a malformed SCRAM secret is refused, not taken for a password",
			file:    "primary: {host: db1}\nauth:\n  users:\n    - {name: app, password: \"SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB\"}\n    - {name: bob, password: \"SCRAM-SHA-256$4096\"}\n    - {name: eve, password: \"SCRAM-SHA-256$0:c2FsdA==$" + strings.Repeat("A", 43) + "=:" + strings.Repeat("A", 43) + "=\"}\n",
			wantErr: []string{"auth.users[0].password", "32 bytes of base64", "auth.users[1].password", "want SCRAM-SHA-256$<iterations>", "auth.users[2].password", "iteration count \"0\""},
		},
		{
			name:    "pool.max_db_connections and max_user_connections cannot be negative",
			env:     []string{"PGSLUICE_PRIMARY_HOST=db1", "PGSLUICE_AUTH_METHOD=trust", "PGSLUICE_POOL_MAX_DB_CONNECTIONS=-1", "PGSLUICE_POOL_MAX_USER_CONNECTIONS=-2"},
			wantErr: []string{"pool.max_db_connections: want 0 (no cap) or more, got -1", "pool.max_user_connections: want 0 (no cap) or more, got -2"},
		},
		{
			name:    "the monitor needs a plaintext password",
			file:    "primary: {host: db1}\nauth:\n  users:\n    - {name: app, password: \"" + testSCRAMSecret + "\"}\n",
			wantErr: []string{"routing.monitor: set user and password", `"app" has a stored secret`},
		},
		{
			name:    "the monitor's password cannot be a secret",
			file:    "primary: {host: db1}\nauth:\n  users:\n    - {name: app, password: secret}\nrouting:\n  monitor: {user: mon, password: md5" + strings.Repeat("ab", 16) + "}\n",
			wantErr: []string{"routing.monitor.password: must be the plaintext password"},
		},
		{
			name: "auth.query stands in for auth.users",
			env:  []string{"PGSLUICE_PRIMARY_HOST=db1", "PGSLUICE_AUTH_QUERY_SQL=SELECT usename, passwd FROM pg_shadow WHERE usename = $1", "PGSLUICE_AUTH_QUERY_USER=pgsluice_auth", "PGSLUICE_AUTH_QUERY_PASSWORD=pw"},
			check: func(t *testing.T, c Config) {
				if q := c.Auth.Query; q.User != "pgsluice_auth" || q.Database != "postgres" || !strings.Contains(q.SQL, "$1") {
					t.Errorf("auth.query = %+v", q)
				}
			},
		},
		{
			name:    "auth.query needs $1, a login with a plaintext password, and a password method",
			file:    "primary: {host: db1}\nauth:\n  method: trust\n  query: {sql: \"SELECT 1, 2\", password: md5" + strings.Repeat("ab", 16) + ", database: \"\"}\n",
			wantErr: []string{"auth.query.sql: has no use with auth.method trust", "auth.query.sql: must take the user name as $1", "auth.query.user: required", "auth.query.password: must be the plaintext password", "auth.query.database: required"},
		},
		{
			name: "env overrides file",
			file: "primary: {host: db1}\npool: {size: 5}\nauth: {method: trust}\n",
			env:  []string{"PGSLUICE_POOL_SIZE=7", "PGSLUICE_POOL_ACQUIRE_TIMEOUT=250ms", "PGSLUICE_REPLICAS=r1:5433,r2:5434", "PGSLUICE_MAX_MESSAGE_SIZE=64KiB"},
			check: func(t *testing.T, c Config) {
				if c.Pool.Size != 7 || c.Pool.AcquireTimeout != 250*time.Millisecond {
					t.Errorf("env not applied: size=%d timeout=%s", c.Pool.Size, c.Pool.AcquireTimeout)
				}
				if len(c.Replicas) != 2 || c.Replicas[1].Addr() != "r2:5434" {
					t.Errorf("replicas = %+v", c.Replicas)
				}
				if c.MaxMessageSize != 64<<10 {
					t.Errorf("max_message_size = %d", c.MaxMessageSize)
				}
			},
		},
		{
			name: "no file, env only",
			env:  []string{"PGSLUICE_PRIMARY_HOST=127.0.0.1", "PGSLUICE_AUTH_METHOD=trust"},
			check: func(t *testing.T, c Config) {
				if c.Primary.Host != "127.0.0.1" || c.Auth.Method != "trust" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name:    "unknown key names its path",
			file:    "primary: {host: db1}\nauth: {method: trust}\npool:\n  sise: 3\n",
			wantErr: []string{"pool", "sise"},
		},
		{
			name:    "unknown env override",
			env:     []string{"PGSLUICE_POOL_SIZ=3", "PGSLUICE_PRIMARY_HOST=x"},
			wantErr: []string{"PGSLUICE_POOL_SIZ"},
		},
		{
			name: "every problem at once",
			file: "primary: {port: 70000}\npool: {mode: statement, size: 0, acquire_timeout: 0s}\nauth: {method: md5}\ntls: {server: always}\nreplicas: [{host: r, port: 0}]\n",
			wantErr: []string{"primary.host: required", "primary.port: want 1-65535", "pool.mode: want transaction or session",
				"pool.size: want >= 1", "pool.acquire_timeout", "auth.users: required", "tls.server", "replicas[0].port"},
		},
		{
			name:    "bad duration and size",
			file:    "primary: {host: x}\nauth: {method: trust}\npool: {idle_timeout: soon}\nmax_message_size: lots\n",
			wantErr: []string{"idle_timeout", "max_message_size"},
		},
		{
			name: "idle timeouts: off by default, set by file or env",
			file: "primary: {host: x}\nauth: {method: trust}\npool: {idle_transaction_timeout: 45s}\n",
			env:  []string{"PGSLUICE_POOL_CLIENT_IDLE_TIMEOUT=30m"},
			check: func(t *testing.T, c Config) {
				if c.Pool.IdleTransactionTimeout != 45*time.Second || c.Pool.ClientIdleTimeout != 30*time.Minute {
					t.Errorf("idle_transaction_timeout=%s client_idle_timeout=%s", c.Pool.IdleTransactionTimeout, c.Pool.ClientIdleTimeout)
				}
				if d := Default(); d.Pool.IdleTransactionTimeout != 0 || d.Pool.ClientIdleTimeout != 0 {
					t.Errorf("defaults: %s %s, want both off", d.Pool.IdleTransactionTimeout, d.Pool.ClientIdleTimeout)
				}
			},
		},
		{
			name:    "negative idle timeouts",
			file:    "primary: {host: x}\nauth: {method: trust}\npool: {idle_transaction_timeout: -1s, client_idle_timeout: -2s}\n",
			wantErr: []string{"pool.idle_transaction_timeout: want a duration >= 0", "pool.client_idle_timeout: want a duration >= 0"},
		},
		{
			name:    "tls.client unknown value",
			file:    "primary: {host: x}\nauth: {method: trust}\ntls: {client: always}\n",
			wantErr: []string{"tls.client: want disable, allow or require"},
		},
		{
			name:    "tls.client require without a certificate",
			file:    "primary: {host: x}\nauth: {method: trust}\ntls: {client: require}\n",
			wantErr: []string{"tls.client: require needs tls.cert_file"},
		},
		{
			name: "routing ryw_wait and catalog_refresh",
			file: "primary: {host: x}\nauth: {method: trust}\nrouting: {ryw_wait: 250ms}\n",
			env:  []string{"PGSLUICE_ROUTING_CATALOG_REFRESH=0s"},
			check: func(t *testing.T, c Config) {
				if c.Routing.RYWWait != 250*time.Millisecond || c.Routing.CatalogRefresh != 0 {
					t.Errorf("ryw_wait=%s catalog_refresh=%s", c.Routing.RYWWait, c.Routing.CatalogRefresh)
				}
				if d := Default(); d.Routing.RYWWait != 0 || d.Routing.CatalogRefresh != time.Minute {
					t.Errorf("defaults: ryw_wait=%s catalog_refresh=%s, want 0s and 1m", d.Routing.RYWWait, d.Routing.CatalogRefresh)
				}
			},
		},
		{
			name: "cache section as the issue shows it",
			file: `primary: {host: x}
auth: {method: trust}
cache:
  backend: tiered
  max_bytes: 256MiB
  max_entry_bytes: 1MiB
  redis:
    addr: 127.0.0.1:6379
    password: s3cret
  rules:
    - tables: [products, rate_tables]
      ttl: 60s
    - fingerprint: 2fcd54e4a1b8c0f3
      ttl: 10s
  on_opaque_write: ignore
  flight_wait: 250ms
  invalidation: {logical_replication: true, slot: s1, publication: p1}
`,
			check: func(t *testing.T, c Config) {
				cc := c.Cache
				if cc.Backend != CacheTiered || cc.MaxBytes != 256<<20 || cc.MaxEntryBytes != 1<<20 || cc.Redis.Addr != "127.0.0.1:6379" ||
					cc.Redis.Password != "s3cret" || cc.Redis.Timeout != 20*time.Millisecond || cc.OnOpaqueWrite != "ignore" ||
					cc.FlightWait != 250*time.Millisecond {
					t.Errorf("cache = %+v", cc)
				}
				if len(cc.Rules) != 2 || cc.Rules[0].TTL != time.Minute || len(cc.Rules[0].Tables) != 2 || cc.Rules[1].Fingerprint != "2fcd54e4a1b8c0f3" {
					t.Errorf("rules = %+v", cc.Rules)
				}
				if !cc.Invalidation.LogicalReplication || cc.Invalidation.Slot != "s1" || cc.Invalidation.Publication != "p1" {
					t.Errorf("invalidation = %+v", cc.Invalidation)
				}
			},
		},
		{
			name:    "negative routing durations",
			file:    "primary: {host: x}\nauth: {method: trust}\nrouting: {ryw_wait: -1s, catalog_refresh: -5s}\n",
			wantErr: []string{"routing.ryw_wait: want >= 0", "routing.catalog_refresh: want >= 0"},
		},
		{
			name: "cache defaults: memory, nothing ruled, flush on opaque writes",
			file: "primary: {host: x}\nauth: {method: trust}\n",
			check: func(t *testing.T, c Config) {
				cc := c.Cache
				if cc.Backend != CacheMemory || cc.MaxBytes != 256<<20 || cc.MaxEntryBytes != 1<<20 || len(cc.Rules) != 0 ||
					cc.OnOpaqueWrite != "flush" || cc.Redis.Timeout != 20*time.Millisecond || cc.Invalidation.LogicalReplication ||
					cc.FlightWait != time.Second {
					t.Errorf("cache defaults = %+v", cc)
				}
			},
		},
		{
			name: "cache problems name their keys",
			file: `primary: {host: x}
auth: {method: trust}
cache:
  backend: redis
  max_entry_bytes: 1GiB
  redis: {timeout: 0s}
  rules:
    - {ttl: 10s}
    - {fingerprint: xyz, ttl: 0s}
    - {tables: [a], fingerprint: 2fcd54e4a1b8c0f3, ttl: 1s}
  on_opaque_write: panic
  flight_wait: -1s
  invalidation: {logical_replication: true, slot: "Bad-Slot", publication: ""}
`,
			wantErr: []string{"cache.max_entry_bytes", "cache.redis.addr: required", "cache.redis.timeout", "cache.rules[0]: needs tables or fingerprint",
				"cache.rules[1].fingerprint: want 16 hex digits", "cache.rules[1].ttl", "cache.rules[2]: set tables or fingerprint, not both",
				"cache.on_opaque_write", "cache.flight_wait: want a positive duration", "cache.invalidation.slot: use 1-63", "cache.invalidation.publication"},
		},
		{
			name:    "cache backend and rule keys are checked",
			file:    "primary: {host: x}\nauth: {method: trust}\ncache: {backend: memcached}\n",
			wantErr: []string{"cache.backend: want memory, redis, tiered or off"},
		},
		{
			name:    "unknown key in a cache rule names its path",
			file:    "primary: {host: x}\nauth: {method: trust}\ncache: {rules: [{tables: [a], ttl: 1s, tll: 2s}]}\n",
			wantErr: []string{"cache.rules[0]", "tll"},
		},
		{
			name:    "max_message_size bounds",
			file:    "primary: {host: x}\nauth: {method: trust}\nmax_message_size: 2GiB\n",
			wantErr: []string{"max_message_size: want between 1KiB and 1GiB"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = writeFile(t, tc.file)
			}
			c, err := load(path, tc.env)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("want error containing %q, got config %+v", tc.wantErr, c)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				var ve *ValidationError
				if !errors.As(err, &ve) {
					t.Errorf("error is %T, want *ValidationError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestPrintConfigMasksSecrets(t *testing.T) {
	c, err := load(writeFile(t, "primary: {host: db1}\nauth:\n  users: [{name: app, password: hunter2}]\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	y := c.YAML()
	if strings.Contains(y, "hunter2") {
		t.Fatalf("password leaked:\n%s", y)
	}
	for _, want := range []string{"name: app", "password: '********'", "backend: memory", "max_bytes: 256MiB", "timeout: 20ms", "acquire_timeout: 5s", "max_message_size: 1GiB", "mode: transaction"} {
		if !strings.Contains(y, want) {
			t.Errorf("print-config lacks %q:\n%s", want, y)
		}
	}
	if pw, ok := c.UserPassword("app"); !ok || pw != "hunter2" {
		t.Errorf("UserPassword = %q %v", pw, ok)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1024": 1024, "64KiB": 64 << 10, "1MB": 1 << 20, "1GiB": 1 << 30, " 2 MiB ": 2 << 20} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1XB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", bad)
		}
	}
}
