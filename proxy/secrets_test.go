package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// authQuery looks users up in pg_shadow as the (trust) superuser.
var authQuery = config.AuthQueryConfig{
	SQL:      "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1",
	User:     local.Superuser,
	Database: "postgres",
}

// TestStoredSecrets: auth.users holds what PostgreSQL stores in
// pg_authid.rolpassword (a SCRAM verifier for app, an md5 hash for md5u)
// instead of passwords, as PgBouncer's auth_file does; or auth.query reads
// the same secrets from pg_shadow at each login (PgBouncer's auth_query). Clients log in with
// their passwords under both client methods, the pools log in to the primary
// and the replica with the secrets (app through the ClientKey of its
// client's SCRAM login), and wrong passwords still fail with 28P01.
func TestStoredSecrets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	su := connect(t, ctx, cluster.Primary.SuperuserDSN("postgres"))
	stored := map[string]string{}
	for _, u := range []string{local.AppUser, "md5u"} {
		var s string
		if err := su.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", u).Scan(&s); err != nil {
			t.Fatal(err)
		}
		stored[u] = s
	}
	if !strings.HasPrefix(stored[local.AppUser], config.SCRAMSecretPrefix) || !strings.HasPrefix(stored["md5u"], "md5") {
		t.Fatalf("unexpected stored secrets: %q", stored)
	}
	for _, cs := range []struct{ method, source string }{
		{"scram-sha-256", "auth.users"}, {"md5", "auth.users"},
		{"scram-sha-256", "auth.query"}, {"md5", "auth.query"},
	} {
		method := cs.method
		t.Run(cs.method+"/"+cs.source, func(t *testing.T) {
			dsn := startTarget(t, cluster, func(tc *TargetConfig) {
				withReplica(tc)
				tc.AuthMethod = method
				replica := tc.Tweak
				tc.Tweak = func(cfg *config.Config) {
					replica(cfg)
					cfg.Auth.Users = []config.User{
						{Name: local.AppUser, Password: config.Secret(stored[local.AppUser])},
						{Name: "md5u", Password: config.Secret(stored["md5u"])},
					}
					if cs.source == "auth.query" {
						cfg.Auth.Users = nil
						cfg.Auth.Query = authQuery
					}
					// The monitor logs in with pgx, which needs a
					// plaintext password (config validation says so).
					cfg.Routing.Monitor = config.MonitorConfig{User: local.AppUser, Password: local.AppPassword, Database: "app"}
				}
			})
			// Right passwords: app is SCRAM under both methods (PostgreSQL
			// too runs SCRAM for md5 when it stores a SCRAM secret), md5u
			// only under md5 (PostgreSQL refuses a SCRAM login for a role
			// with an md5 secret).
			app := connect(t, ctx, dsn)
			var who string
			if err := app.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != local.AppUser {
				t.Fatalf("app: current_user %q, %v", who, err)
			}
			// The replica's pool logs in with the ClientKey of that
			// login: reads reach the replica.
			waitReplicaReads(t, ctx, app)
			md5, err := pgconn.Connect(ctx, dsnFor(t, dsn, "md5u", "md5pass", "app"))
			if method == "md5" {
				if err != nil {
					t.Fatalf("md5u under md5: %v", err)
				}
				res, err := md5.Exec(ctx, "SELECT current_user, pg_is_in_recovery()").ReadAll()
				if err != nil || string(res[0].Rows[0][0]) != "md5u" {
					t.Fatalf("md5u: %v %v", res, err)
				}
				md5.Close(ctx)
			} else {
				wantCode(t, err, "28P01")
			}
			// Wrong passwords.
			for _, u := range []string{local.AppUser, "md5u"} {
				_, err := pgconn.Connect(ctx, dsnFor(t, dsn, u, "not-the-password", "app"))
				wantCode(t, err, "28P01")
			}
			// The secret itself is not a password.
			_, err = pgconn.Connect(ctx, dsnFor(t, dsn, local.AppUser, stored[local.AppUser], "app"))
			wantCode(t, err, "28P01")
		})
	}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code {
		t.Fatalf("got %v, want SQLSTATE %s", err, code)
	}
}

// TestAuthQuery: what auth.query adds over stored secrets. A password
// change in PostgreSQL applies to the next login, and to the server logins
// of the pools; an auth.users entry wins over the query; a user the query
// does not find fails like a wrong password; a query that cannot run fails
// the login with 08000 rather than pretending the user is unknown.
func TestAuthQuery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	su := connect(t, ctx, cluster.Primary.SuperuserDSN("postgres"))
	exec := func(sql string) {
		t.Helper()
		if _, err := su.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("DROP ROLE IF EXISTS aq_rot")
	exec("CREATE ROLE aq_rot LOGIN PASSWORD 'one'")
	t.Cleanup(func() { su.Exec(context.Background(), "DROP ROLE IF EXISTS aq_rot") })
	dsn, reg := queryProxy(t, authQuery)
	queries := func(result string) float64 {
		return counterValue(t, reg, "pgsluice_auth_queries_total", "result", result)
	}
	// auth.users first: no lookup for app.
	connect(t, ctx, dsn).Close(ctx)
	if n := queries("found") + queries("not_found") + queries("error"); n != 0 {
		t.Fatalf("app is in auth.users, but %v lookups ran", n)
	}
	// Two transactions at once need two server connections of aq_rot's
	// pool, both logged in with the secret the query returned.
	twoAtOnce := func(password string) {
		t.Helper()
		var conns []*pgx.Conn
		for range 2 {
			c := connect(t, ctx, dsnFor(t, dsn, "aq_rot", password, "app"))
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		pids := map[uint32]bool{}
		for _, c := range conns {
			var pid uint32
			if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatalf("as aq_rot: %v", err)
			}
			pids[pid] = true
			c.Exec(ctx, "COMMIT")
		}
		if len(pids) != 2 {
			t.Fatalf("two open transactions shared server %v", pids)
		}
	}
	twoAtOnce("one")
	if queries("found") != 2 {
		t.Fatalf("found lookups = %v, want 2", queries("found"))
	}
	// The password changes in PostgreSQL: the old one is refused at once,
	// the new one works, and a third transaction at once needs a new
	// server login, which the pool makes with the new secret.
	exec("ALTER ROLE aq_rot PASSWORD 'two'")
	_, err := pgconn.Connect(ctx, dsnFor(t, dsn, "aq_rot", "one", "app"))
	wantCode(t, err, "28P01")
	var conns []*pgx.Conn
	for range 3 {
		c := connect(t, ctx, dsnFor(t, dsn, "aq_rot", "two", "app"))
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
			t.Fatalf("after ALTER ROLE: %v", err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Exec(ctx, "COMMIT")
	}
	// Unknown user: the same 28P01 as a wrong password.
	nf := queries("not_found")
	_, err = pgconn.Connect(ctx, dsnFor(t, dsn, "aq_nobody", "x", "app"))
	wantCode(t, err, "28P01")
	if queries("not_found") != nf+1 {
		t.Errorf("not_found lookups = %v, want %v", queries("not_found"), nf+1)
	}

	t.Run("README's lookup function, as a plain role", func(t *testing.T) {
		// The SQL of the README, verbatim but for the password.
		exec("DROP SCHEMA IF EXISTS pgsluice CASCADE; DROP ROLE IF EXISTS pgsluice_auth")
		t.Cleanup(func() {
			su.Exec(context.Background(), "DROP SCHEMA IF EXISTS pgsluice CASCADE; DROP ROLE IF EXISTS pgsluice_auth")
		})
		exec(`CREATE ROLE pgsluice_auth LOGIN PASSWORD 'lookup-pw';
CREATE SCHEMA pgsluice AUTHORIZATION postgres;
CREATE FUNCTION pgsluice.user_lookup(in i_username text, out uname text, out phash text)
  RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
  $$ SELECT usename::text, passwd FROM pg_shadow WHERE usename = i_username $$;
REVOKE ALL ON FUNCTION pgsluice.user_lookup(text) FROM public;
GRANT USAGE ON SCHEMA pgsluice TO pgsluice_auth;
GRANT EXECUTE ON FUNCTION pgsluice.user_lookup(text) TO pgsluice_auth;`)
		dsn, _ := queryProxy(t, config.AuthQueryConfig{SQL: "SELECT uname, phash FROM pgsluice.user_lookup($1)",
			User: "pgsluice_auth", Password: "lookup-pw", Database: "postgres"})
		c := connect(t, ctx, dsnFor(t, dsn, "aq_rot", "two", "app"))
		var who string
		if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "aq_rot" {
			t.Fatalf("current_user %q, %v", who, err)
		}
		c.Close(ctx)
		_, err := pgconn.Connect(ctx, dsnFor(t, dsn, "aq_nobody", "x", "app"))
		wantCode(t, err, "28P01")
	})

	t.Run("query fails", func(t *testing.T) {
		q := authQuery
		q.SQL = "SELECT usename, passwd FROM no_such_table WHERE usename = $1"
		dsn, reg := queryProxy(t, q)
		_, err := pgconn.Connect(ctx, dsnFor(t, dsn, "aq_rot", "two", "app"))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "08000" || pe.Severity != "FATAL" ||
			!strings.Contains(pe.Message, `could not look up user "aq_rot" with auth.query`) || !strings.Contains(pe.Detail, "no_such_table") {
			t.Fatalf("got %v, want FATAL 08000 naming auth.query and the cause", err)
		}
		if counterValue(t, reg, "pgsluice_auth_queries_total", "result", "error") != 1 {
			t.Error("the failed lookup was not counted")
		}
		// Listed users are not affected.
		connect(t, ctx, dsn).Close(ctx)
	})
}

// queryProxy starts a proxy that looks users up with q; app stays in
// auth.users with its plaintext password (the query would find it too).
// A storm of logins of one looked-up user (seed 000's Lambda burst) shares
// the lookups in flight: with a lookup that takes 300 ms, 30 logins at
// once cost a few queries on the primary, not 30, and every login works.
// A login after the storm asks again.
func TestAuthQueryStorm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	su := connect(t, ctx, cluster.Primary.SuperuserDSN("postgres"))
	if _, err := su.Exec(ctx, "DROP ROLE IF EXISTS aq_storm; CREATE ROLE aq_storm LOGIN PASSWORD 'storm'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { su.Exec(context.Background(), "DROP ROLE IF EXISTS aq_storm") })
	slow := authQuery
	slow.SQL = "WITH s AS MATERIALIZED (SELECT pg_sleep(0.3)) SELECT usename, passwd FROM pg_catalog.pg_shadow, s WHERE usename = $1"
	dsn, reg := queryProxy(t, slow)
	queries := func(result string) float64 {
		return counterValue(t, reg, "pgsluice_auth_queries_total", "result", result)
	}
	const clients = 30
	errs := make(chan error, clients)
	for range clients {
		go func() {
			c, err := pgconn.Connect(ctx, dsnFor(t, dsn, "aq_storm", "storm", "app"))
			if err == nil {
				c.Close(ctx)
			}
			errs <- err
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatalf("a login of the storm: %v", err)
		}
	}
	found, shared := queries("found"), queries("shared")
	if found+shared != clients {
		t.Fatalf("found %v + shared %v lookups, want %d logins counted", found, shared, clients)
	}
	if found > clients/3 {
		t.Fatalf("%v queries ran for %d simultaneous logins of one user: lookups in flight are not shared", found, clients)
	}
	connect(t, ctx, dsnFor(t, dsn, "aq_storm", "storm", "app")).Close(ctx)
	if queries("found") != found+1 {
		t.Fatalf("a login after the storm: found %v, want %v (nothing is cached)", queries("found"), found+1)
	}
}

func queryProxy(t *testing.T, q config.AuthQueryConfig) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	dsn := startTarget(t, cluster, func(tc *TargetConfig) {
		tc.Registry = reg
		tc.Tweak = func(cfg *config.Config) {
			cfg.Auth.Users = cfg.Auth.Users[:1]
			cfg.Auth.Query = q
		}
	})
	return dsn, reg
}
