package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// testSecret is the SCRAM verifier of "secret" with salt "0123456789abcdef"
// and 4096 iterations (computed independently with Python's hashlib).
const testSecret = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ="

func TestParseSecret(t *testing.T) {
	key43 := strings.Repeat("A", 43) + "="
	for _, tc := range []struct {
		in      string
		kind    secretKind
		wantErr string
	}{
		{"secret", secretPlain, ""},
		{"", secretPlain, ""},
		{"md5" + strings.Repeat("0f", 16), secretMD5, ""},
		{"md5" + strings.Repeat("0F", 16), secretPlain, ""}, // upper case: PostgreSQL's isMD5 says no
		{"md5" + strings.Repeat("0f", 15), secretPlain, ""},
		{"scram-sha-256$4096:x", secretPlain, ""}, // the prefix is case-sensitive, as PostgreSQL's
		{testSecret, secretSCRAM, ""},
		{"SCRAM-SHA-256$4096:c2FsdA==$" + key43 + ":" + key43, secretSCRAM, ""},
		{"SCRAM-SHA-256$", 0, "no '$'"},
		{"SCRAM-SHA-256$4096$" + key43 + ":" + key43, 0, "no ':' between iterations"},
		{"SCRAM-SHA-256$x:c2FsdA==$" + key43 + ":" + key43, 0, "iteration count"},
		{"SCRAM-SHA-256$0:c2FsdA==$" + key43 + ":" + key43, 0, "iteration count"},
		{"SCRAM-SHA-256$4096:!!$" + key43 + ":" + key43, 0, "salt"},
		{"SCRAM-SHA-256$4096:$" + key43 + ":" + key43, 0, "salt"},
		{"SCRAM-SHA-256$4096:c2FsdA==$" + key43, 0, "no ':' between StoredKey"},
		{"SCRAM-SHA-256$4096:c2FsdA==$AAAA:" + key43, 0, "StoredKey"},
		{"SCRAM-SHA-256$4096:c2FsdA==$" + key43 + ":AAAA", 0, "ServerKey"},
		{"SCRAM-SHA-256$4096:c2Fs\ndA==$" + key43 + ":" + key43, 0, "salt"},
	} {
		sec, err := parseSecret(tc.in)
		// config.Validate refuses exactly the values parseSecret refuses.
		cfg := config.Default()
		cfg.Primary.Host = "db"
		cfg.Auth.Users = []config.User{{Name: "u", Password: config.Secret(tc.in)}}
		cfg.Routing.Monitor = config.MonitorConfig{User: "m", Password: "pw"}
		if verr := cfg.Validate(); (verr != nil && tc.in != "") != (err != nil) {
			t.Errorf("%q: config.Validate says %v, parseSecret %v", tc.in, verr, err)
		}
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseSecret(%q) = %v, want an error about %q", tc.in, err, tc.wantErr)
			}
			if CheckSecret(tc.in) == nil {
				t.Errorf("CheckSecret(%q) accepted it", tc.in)
			}
			continue
		}
		if err != nil || sec.kind != tc.kind {
			t.Errorf("parseSecret(%q) = kind %d, %v; want kind %d", tc.in, sec.kind, err, tc.kind)
		}
	}
	// The encoder and the parser agree, and the keys are PostgreSQL's.
	enc, err := encodeSCRAMSecret("secret", []byte("0123456789abcdef"), 4096)
	if err != nil || enc != testSecret {
		t.Fatalf("encodeSCRAMSecret = %q, %v; want %q", enc, err, testSecret)
	}
}

// scramLogin runs one in-memory exchange: client against server.
func scramLogin(t *testing.T, srv *SCRAMServer, cl *SCRAMClient) error {
	t.Helper()
	sf, err := srv.ServerFirst(cl.ClientFirst())
	if err != nil {
		return err
	}
	cf, err := cl.ClientFinal(sf)
	if err != nil {
		return err
	}
	final, err := srv.ServerFinal(cf)
	if err != nil {
		return err
	}
	return cl.VerifyServerFinal(final)
}

// TestSCRAMSecretPassThrough: a verifier checks clients, and the ClientKey
// of a successful login lets the proxy log in where the verifier is the
// server's.
func TestSCRAMSecretPassThrough(t *testing.T) {
	ForgetUser("u")
	defer ForgetUser("u")
	sec, err := parseSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	server := func() *SCRAMServer {
		s, err := newSCRAMServerFromSecret("u", testSecret, sec)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// A wrong password fails and leaves no key behind.
	if err := scramLogin(t, server(), NewSCRAMClient("wrong")); !errors.Is(err, pgerr.ErrAuthFailed) {
		t.Fatalf("wrong password: %v, want ErrAuthFailed", err)
	}
	if _, ok := clientKeyFor("u", testSecret); ok {
		t.Fatal("a failed login left a ClientKey")
	}
	// The right one works (the client derives keys from the password with
	// the verifier's salt) and leaves the ClientKey.
	if err := scramLogin(t, server(), NewSCRAMClient("secret")); err != nil {
		t.Fatalf("right password: %v", err)
	}
	key, ok := clientKeyFor("u", testSecret)
	if !ok {
		t.Fatal("no ClientKey after a successful login")
	}
	// With it, a client that never saw the password logs in to a server
	// holding the same verifier, and checks that server's signature.
	if err := scramLogin(t, server(), newSCRAMClientFromKey(sec, key)); err != nil {
		t.Fatalf("login with the recovered ClientKey: %v", err)
	}
	// A server with another salt for the same password is refused before
	// any proof is sent.
	other, _ := encodeSCRAMSecret("secret", []byte("another salt...."), 4096)
	osec, _ := parseSecret(other)
	os, _ := newSCRAMServerFromSecret("u", other, osec)
	if err := scramLogin(t, os, newSCRAMClientFromKey(sec, key)); !errors.Is(err, errSecretMismatch) {
		t.Fatalf("other salt: %v, want errSecretMismatch", err)
	}
	// A server that does not know the password rejects the recovered key's
	// proof, and the client rejects that server's signature.
	wrong, _ := encodeSCRAMSecret("other", []byte("0123456789abcdef"), 4096)
	wsec, _ := parseSecret(wrong)
	ws, _ := newSCRAMServerFromSecret("u", wrong, wsec)
	if err := scramLogin(t, ws, newSCRAMClientFromKey(sec, key)); err == nil {
		t.Fatal("a proof from the key was accepted by a verifier of another password")
	}
	// ForgetUser (a reload that changes the user) drops the key.
	ForgetUser("u")
	if _, ok := clientKeyFor("u", testSecret); ok {
		t.Fatal("ForgetUser left the ClientKey")
	}
}

// testStoredSecrets: AuthenticateServer logs in to real PostgreSQL with the
// secrets PostgreSQL itself stores for scram_u and md5_u, as far as the
// protocol allows, and says why when it cannot.
func testStoredSecrets(t *testing.T, pg *testPG) {
	ctx := context.Background()
	su, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", pg.port))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	stored := map[string]string{}
	res, err := su.Exec(ctx, "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('scram_u', 'md5_u', 'clear_u')").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res[0].Rows {
		stored[string(r[0])] = string(r[1])
	}
	if !strings.HasPrefix(stored["scram_u"], scramSecretPrefix) || !config.IsMD5Hash(stored["md5_u"]) {
		t.Fatalf("unexpected stored secrets: %q", stored)
	}
	ForgetUser("scram_u")
	defer ForgetUser("scram_u")
	cannot := func(t *testing.T, err error, why string) {
		t.Helper()
		e := pgerr.ToError(err)
		if !errors.Is(err, pgerr.ErrBackendUnavailable) || e.Code != pgerr.ConnectionException || e.Severity != "FATAL" ||
			!strings.Contains(e.Detail, why) {
			t.Fatalf("got %v (%+v), want FATAL 08000 with a detail about %q", err, e, why)
		}
	}
	login := func(t *testing.T, user, password string) (error, func()) {
		fe, conn, _ := dialServer(t, pg, user)
		err := AuthenticateServer(fe, user, password)
		return err, func() { finishStartup(t, fe, user); conn.Close() }
	}

	t.Run("md5 hash answers md5", func(t *testing.T) {
		err, finish := login(t, "md5_u", stored["md5_u"])
		if err != nil {
			t.Fatal(err)
		}
		finish()
	})
	t.Run("md5 hash cannot answer SCRAM", func(t *testing.T) {
		h := "md5" + md5Hex(pgPasswords["scram_u"]+"scram_u")
		err, _ := login(t, "scram_u", h)
		cannot(t, err, "only an md5 hash")
	})
	t.Run("hash cannot answer cleartext", func(t *testing.T) {
		err, _ := login(t, "clear_u", "md5"+md5Hex(pgPasswords["clear_u"]+"clear_u"))
		cannot(t, err, "cleartext password")
	})
	t.Run("SCRAM secret cannot answer md5", func(t *testing.T) {
		v, _ := encodeSCRAMSecret(pgPasswords["md5_u"], []byte("0123456789abcdef"), 4096)
		err, _ := login(t, "md5_u", v)
		cannot(t, err, "only a SCRAM secret")
	})
	t.Run("SCRAM secret before any client login", func(t *testing.T) {
		err, _ := login(t, "scram_u", stored["scram_u"])
		cannot(t, err, "no client has logged in")
	})
	// A client logs in against the verifier (in memory; the proxy's
	// AuthenticateClient runs this exchange), which leaves its ClientKey.
	sec, err := parseSecret(stored["scram_u"])
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := newSCRAMServerFromSecret("scram_u", stored["scram_u"], sec)
	if err := scramLogin(t, srv, NewSCRAMClient(pgPasswords["scram_u"])); err != nil {
		t.Fatalf("client login against the stored verifier: %v", err)
	}
	t.Run("SCRAM secret after a client login", func(t *testing.T) {
		err, finish := login(t, "scram_u", stored["scram_u"])
		if err != nil {
			t.Fatal(err)
		}
		finish()
	})
	t.Run("SCRAM secret with another salt than the server's", func(t *testing.T) {
		v, _ := encodeSCRAMSecret(pgPasswords["scram_u"], []byte("not the server's"), 4096)
		vs, _ := parseSecret(v)
		s, _ := newSCRAMServerFromSecret("scram_u", v, vs)
		if err := scramLogin(t, s, NewSCRAMClient(pgPasswords["scram_u"])); err != nil {
			t.Fatal(err)
		}
		err, _ := login(t, "scram_u", v)
		cannot(t, err, "differs from the configured secret")
	})
}

// FuzzParseSecret: any configured password parses without panicking; a
// SCRAM verifier's parts are the canonical base64 of what was decoded, so a
// verifier re-encodes to itself (up to the iteration count's spelling).
func FuzzParseSecret(f *testing.F) {
	for _, s := range []string{testSecret, "secret", "md5" + strings.Repeat("0f", 16), "SCRAM-SHA-256$1:AA==$" + strings.Repeat("A", 43) + "=:" + strings.Repeat("A", 43) + "=", "SCRAM-SHA-256$$:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sec, err := parseSecret(s)
		if err != nil {
			if !strings.HasPrefix(s, scramSecretPrefix) {
				t.Fatalf("only SCRAM-looking values may fail: %q: %v", s, err)
			}
			return
		}
		switch sec.kind {
		case secretSCRAM:
			enc := base64.StdEncoding.EncodeToString
			want := fmt.Sprintf("%s%d:%s$%s:%s", scramSecretPrefix, sec.iterations, enc(sec.salt), enc(sec.storedKey), enc(sec.serverKey))
			_, rest, _ := strings.Cut(s[len(scramSecretPrefix):], ":")
			_, wrest, _ := strings.Cut(want[len(scramSecretPrefix):], ":")
			if rest != wrest || len(sec.storedKey) != scramKeyLen || len(sec.serverKey) != scramKeyLen || sec.iterations < 1 {
				t.Fatalf("%q parsed to %q", s, want)
			}
		case secretMD5:
			if "md5"+sec.plain != s {
				t.Fatalf("md5 hash %q parsed to %q", s, sec.plain)
			}
		default:
			if sec.plain != s {
				t.Fatalf("plaintext %q parsed to %q", s, sec.plain)
			}
		}
	})
}
