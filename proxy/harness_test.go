package proxy_test

import (
	"testing"
	"time"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// TargetConfig is what an integration test may tweak about the server it
// talks to. Against direct PostgreSQL (today) it is ignored.
type TargetConfig struct {
	PoolSize       int           // backend connections per (user, database); default 10
	PoolMode       string        // "transaction" (default) or "session"
	AuthMethod     string        // client-facing auth: "scram-sha-256" (default), "md5", ...
	AcquireTimeout time.Duration // how long a client waits for a backend; default 10s
	MaxClientConn  int           // client connections accepted; default 5000
	TLS            bool          // accept TLS from clients (use testTLS's certificate)
}

// defaultTargetConfig returns the configuration every test starts from.
func defaultTargetConfig() TargetConfig {
	return TargetConfig{
		PoolSize:       10,
		PoolMode:       "transaction",
		AuthMethod:     "scram-sha-256",
		AcquireTimeout: 10 * time.Second,
		MaxClientConn:  5000,
		TLS:            false,
	}
}

// viaProxy is true when startTarget returns a pgsluice DSN; assertions that
// only hold through a pool (backend counts bounded by PoolSize) check it.
var viaProxy bool

// startTarget returns a DSN (postgres URL) for user `app`, password
// `secret`, database `app` to connect to; tests change user/password/db
// with dsnFor. TODAY it returns the direct primary DSN.
// The lead will replace its body with: start pgsluice (proxy.New with a
// config derived from the cluster and cfg) and return the proxy DSN,
// stopping the proxy in t.Cleanup.
func startTarget(t *testing.T, c *local.Cluster, tweak func(*TargetConfig)) string {
	t.Helper()
	cfg := defaultTargetConfig()
	if tweak != nil {
		tweak(&cfg)
	}
	viaProxy = false
	return c.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase)
}
