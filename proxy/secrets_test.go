package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// TestStoredSecrets: auth.users holds what PostgreSQL stores in
// pg_authid.rolpassword (a SCRAM verifier for app, an md5 hash for md5u)
// instead of passwords, as PgBouncer's auth_file does. Clients log in with
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
	for _, method := range []string{"scram-sha-256", "md5"} {
		t.Run(method, func(t *testing.T) {
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
