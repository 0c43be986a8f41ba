package proxy_test

// Hostile clients (issue #7): authentication cannot be bypassed, and no
// secret or SQL text leaks into logs or metrics.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/auth"
)

// rawStartup dials addr and sends a StartupMessage with params (user,
// database, ... pairs).
func rawStartup(t *testing.T, addr string, params ...string) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	fe := pgproto3.NewFrontend(bufio.NewReader(conn), conn)
	m := map[string]string{}
	for i := 0; i+1 < len(params); i += 2 {
		m[params[i]] = params[i+1]
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: m})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return conn, fe
}

// expectRefused reads until an ErrorResponse or the end of the connection
// and fails on any sign of a logged-in session. It returns the error (nil
// when the connection just closed).
func expectRefused(t *testing.T, fe *pgproto3.Frontend) *pgproto3.ErrorResponse {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("neither refused nor closed within 15s")
			}
			return nil
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			e := *m
			return &e
		case *pgproto3.AuthenticationOk, *pgproto3.ReadyForQuery, *pgproto3.DataRow, *pgproto3.BackendKeyData:
			t.Fatalf("authentication bypassed: got %T", msg)
		}
	}
}

// scramAs runs a SCRAM exchange for user with password over a raw
// connection; tamper may rewrite the client-final-message. It returns the
// first message after the client-final.
func scramAs(t *testing.T, addr, user, password string, tamper func(final []byte) []byte) (pgproto3.BackendMessage, *pgproto3.Frontend) {
	t.Helper()
	_, fe := rawStartup(t, addr, "user", user, "database", "app")
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("want AuthenticationSASL, got %#v", msg)
	}
	c := auth.NewSCRAMClient(password)
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: c.ClientFirst()})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err = fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("want AuthenticationSASLContinue, got %#v", msg)
	}
	final, err := c.ClientFinal(cont.Data)
	if err != nil {
		t.Fatal(err)
	}
	if tamper != nil {
		final = tamper(final)
	}
	fe.Send(&pgproto3.SASLResponse{Data: final})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err = fe.Receive()
	if err != nil {
		return nil, fe
	}
	return msg, fe
}

var proofRE = regexp.MustCompile(`p=[A-Za-z0-9+/=]*`)

// TestAuthCannotBeBypassed: wrong, empty and forged credentials, an
// unknown user, out-of-order messages and replication connections are all
// refused before any query can run; an unknown user is told exactly what a
// wrong password is told (no user enumeration).
func TestAuthCannotBeBypassed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, nil)
	addr := hostPort(t, dsn)

	t.Run("scram_control_right_password", func(t *testing.T) {
		msg, fe := scramAs(t, addr, "app", local_AppPassword, nil)
		if _, ok := msg.(*pgproto3.AuthenticationSASLFinal); !ok {
			t.Fatalf("the raw SCRAM client itself is broken: got %#v", msg)
		}
		msg, err := fe.Receive()
		if _, ok := msg.(*pgproto3.AuthenticationOk); !ok || err != nil {
			t.Fatalf("want AuthenticationOk, got %#v %v", msg, err)
		}
	})
	random := func() string {
		b := make([]byte, 32)
		rand.Read(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	for _, tc := range []struct {
		name, user, password string
		tamper               func([]byte) []byte
	}{
		{"scram_wrong_password", "app", "Secret", nil},
		{"scram_empty_password", "app", "", nil},
		{"scram_unknown_user", "nosuchuser", "secret", nil},
		{"scram_forged_random_proof", "app", "whatever", func(f []byte) []byte {
			return proofRE.ReplaceAll(f, []byte("p="+random()))
		}},
		{"scram_empty_proof", "app", "secret", func(f []byte) []byte { return proofRE.ReplaceAll(f, []byte("p=")) }},
		{"scram_right_proof_other_nonce", "app", "secret", func(f []byte) []byte {
			return regexp.MustCompile(`r=[^,]*`).ReplaceAll(f, []byte("r=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
		}},
		{"scram_channel_binding_claimed", "app", "secret", func(f []byte) []byte {
			return bytes.Replace(f, []byte("c=biws"), []byte("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws"), 1)
		}},
		{"scram_proof_not_base64", "app", "secret", func(f []byte) []byte { return proofRE.ReplaceAll(f, []byte("p=!!!!")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, fe := scramAs(t, addr, tc.user, tc.password, tc.tamper)
			var e *pgproto3.ErrorResponse
			switch m := msg.(type) {
			case nil:
			case *pgproto3.ErrorResponse:
				e = m
			default:
				t.Fatalf("after a bad client-final: got %#v, want an error", msg)
			}
			if e == nil {
				e = expectRefused(t, fe)
			}
			if e == nil || (e.Code != "28P01" && e.Code != "08P01") {
				t.Fatalf("want ErrorResponse 28P01 (or 08P01 for a malformed message), got %#v", e)
			}
		})
	}

	t.Run("unknown_user_same_error_as_wrong_password", func(t *testing.T) {
		_, errWrong := pgconn.Connect(ctx, dsnFor(t, dsn, "app", "nope", "app"))
		_, errUnknown := pgconn.Connect(ctx, dsnFor(t, dsn, "nosuchuser", "nope", "app"))
		var a, b *pgconn.PgError
		if !errors.As(errWrong, &a) || !errors.As(errUnknown, &b) {
			t.Fatalf("want server errors, got %v / %v", errWrong, errUnknown)
		}
		norm := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "nosuchuser", "U"), "app", "U") }
		if a.Code != b.Code || norm(a.Message) != norm(b.Message) || a.Detail != b.Detail {
			t.Fatalf("unknown user is distinguishable: %q/%q vs wrong password %q/%q", b.Code, b.Message, a.Code, a.Message)
		}
	})

	t.Run("query_before_authentication", func(t *testing.T) {
		_, fe := rawStartup(t, addr, "user", "app", "database", "app")
		if msg, err := fe.Receive(); err != nil {
			t.Fatal(err)
		} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("want AuthenticationSASL, got %#v", msg)
		}
		fe.Send(&pgproto3.Query{String: "SELECT 'bypassed'"})
		fe.Flush()
		if e := expectRefused(t, fe); e != nil && e.Code != "08P01" && e.Code != "28P01" {
			t.Fatalf("query before authentication: %s %s, want 08P01 or a closed connection", e.Code, e.Message)
		}
	})

	t.Run("cleartext_password_instead_of_scram", func(t *testing.T) {
		_, fe := rawStartup(t, addr, "user", "app", "database", "app")
		if _, err := fe.Receive(); err != nil {
			t.Fatal(err)
		}
		fe.Send(&pgproto3.PasswordMessage{Password: local_AppPassword})
		fe.Flush()
		if e := expectRefused(t, fe); e != nil && e.Code != "08P01" && e.Code != "28P01" {
			t.Fatalf("cleartext password during SCRAM: %s %s", e.Code, e.Message)
		}
	})

	for _, v := range []string{"true", "database", "1", "on", "yes"} {
		t.Run("replication_"+v, func(t *testing.T) {
			_, fe := rawStartup(t, addr, "user", "app", "database", "app", "replication", v)
			e := expectRefused(t, fe)
			if e == nil || e.Code != "0A000" || !strings.Contains(e.Message, "replication") {
				t.Fatalf("replication=%s: got %#v, want 0A000 naming replication", v, e)
			}
		})
	}
	t.Run("replication_false_is_a_normal_login", func(t *testing.T) {
		_, fe := rawStartup(t, addr, "user", "app", "database", "app", "replication", "false")
		msg, err := fe.Receive()
		if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok || err != nil {
			t.Fatalf("replication=false: got %#v %v, want the SCRAM challenge", msg, err)
		}
	})
}

// local_AppPassword is the password of `app` in the test cluster.
const local_AppPassword = "secret"

// TestMD5AuthCannotBeBypassed: with md5 towards clients, a hash made for
// another salt (a replayed login) and a cleartext password are refused.
func TestMD5AuthCannotBeBypassed(t *testing.T) {
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.AuthMethod = "md5" })
	addr := hostPort(t, dsn)
	for _, tc := range []struct {
		name   string
		answer func(salt [4]byte) string
	}{
		{"control_right_hash", func(salt [4]byte) string { return auth.MD5Password("app", "secret", salt) }},
		{"replayed_hash_other_salt", func(salt [4]byte) string {
			return auth.MD5Password("app", "secret", [4]byte{salt[0] ^ 1, salt[1], salt[2], salt[3]})
		}},
		{"cleartext_password", func([4]byte) string { return "secret" }},
		{"empty", func([4]byte) string { return "" }},
		{"hash_of_wrong_user", func(salt [4]byte) string { return auth.MD5Password("md5u", "secret", salt) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, fe := rawStartup(t, addr, "user", "app", "database", "app")
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			req, ok := msg.(*pgproto3.AuthenticationMD5Password)
			if !ok {
				t.Fatalf("want AuthenticationMD5Password, got %#v", msg)
			}
			fe.Send(&pgproto3.PasswordMessage{Password: tc.answer(req.Salt)})
			fe.Flush()
			if tc.name == "control_right_hash" {
				msg, err := fe.Receive()
				if _, ok := msg.(*pgproto3.AuthenticationOk); !ok || err != nil {
					t.Fatalf("the raw md5 client itself is broken: %#v %v", msg, err)
				}
				return
			}
			if e := expectRefused(t, fe); e == nil || e.Code != "28P01" {
				t.Fatalf("want 28P01, got %#v", e)
			}
		})
	}
}

// TestTLSRequiredNoDowngrade: with tls.client require, a client that does
// not negotiate TLS (sslmode=disable, a stripped SSLRequest, GSSENC
// refused then plaintext) is refused with 28000 before authentication; a
// client that answers 'S' with plaintext gets no further. With tls.client
// disable, TLS is refused even though a certificate is configured.
func TestTLSRequiredNoDowngrade(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) {
		c.TLS = true
		c.Tweak = func(cfg *config.Config) { cfg.TLS.Client = "require" }
	})
	addr := hostPort(t, dsn)

	t.Run("tls_accepted", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, withParams(t, dsn, "sslmode", "require"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
			t.Fatal("session is not encrypted")
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("sslmode_disable_refused", func(t *testing.T) {
		_, err := pgconn.Connect(ctx, withParams(t, dsn, "sslmode", "disable"))
		if sqlState(err) != "28000" || !strings.Contains(err.Error(), "SSL") {
			t.Fatalf("plaintext client: %v, want 28000 saying SSL is required", err)
		}
	})
	t.Run("sslmode_prefer_gets_tls", func(t *testing.T) {
		conn, err := pgconn.Connect(ctx, withParams(t, dsn, "sslmode", "prefer"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, ok := conn.Conn().(*tls.Conn); !ok {
			t.Fatal("sslmode=prefer ended in plaintext")
		}
	})
	t.Run("stripped_sslrequest", func(t *testing.T) {
		// A man in the middle drops the SSLRequest: the proxy sees a
		// plaintext StartupMessage.
		_, fe := rawStartup(t, addr, "user", "app", "database", "app")
		e := expectRefused(t, fe)
		if e == nil || e.Code != "28000" {
			t.Fatalf("got %#v, want 28000", e)
		}
	})
	t.Run("gssenc_refused_then_plaintext", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877104)
		conn.Write(req)
		var one [1]byte
		if _, err := io.ReadFull(conn, one[:]); err != nil || one[0] != 'N' {
			t.Fatalf("GSSENCRequest: %q %v, want N", one, err)
		}
		fe := pgproto3.NewFrontend(bufio.NewReader(conn), conn)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
		fe.Flush()
		if e := expectRefused(t, fe); e == nil || e.Code != "28000" {
			t.Fatalf("got %#v, want 28000", e)
		}
	})
	t.Run("plaintext_after_S", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103))
		var one [1]byte
		if _, err := io.ReadFull(conn, one[:]); err != nil || one[0] != 'S' {
			t.Fatalf("SSLRequest: %q %v, want S", one, err)
		}
		fe := pgproto3.NewFrontend(bufio.NewReader(conn), conn)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
		fe.Flush()
		// Whatever comes back (a TLS alert, EOF) is not PostgreSQL
		// authentication.
		rest, _ := io.ReadAll(conn)
		if len(rest) > 0 && rest[0] == 'R' {
			t.Fatalf("plaintext startup after 'S' reached authentication: %q", rest)
		}
	})

	dsnOff := startTarget(t, cluster, func(c *TargetConfig) {
		c.TLS = true
		c.Tweak = func(cfg *config.Config) { cfg.TLS.Client = "disable" }
	})
	t.Run("client_disable_refuses_tls", func(t *testing.T) {
		if c, err := pgconn.Connect(ctx, withParams(t, dsnOff, "sslmode", "require")); err == nil {
			c.Close(ctx)
			t.Fatal("sslmode=require connected although tls.client is disable")
		}
		c, err := pgconn.Connect(ctx, withParams(t, dsnOff, "sslmode", "disable"))
		if err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	})
}

// TestClientLoginTimeout: clients that never finish the startup or the
// authentication exchange are closed after pool.client_login_timeout, and
// their max_client_conn slots come back.
func TestClientLoginTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const timeout = time.Second
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) {
		c.MaxClientConn = 3
		c.Tweak = func(cfg *config.Config) { cfg.Pool.ClientLoginTimeout = timeout }
	})
	admin := serveAdmin(t, srv)
	addr := hostPort(t, dsn)
	cases := []struct {
		name string
		send func(conn net.Conn)
	}{
		{"silent", func(net.Conn) {}},
		{"half_startup", func(c net.Conn) { c.Write([]byte{0, 0, 0, 40, 0, 3, 0, 0, 'u'}) }},
		{"startup_then_no_scram_answer", func(c net.Conn) {
			fe := pgproto3.NewFrontend(c, c)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
			fe.Flush()
		}},
		{"scram_first_then_silence", func(c net.Conn) {
			fe := pgproto3.NewFrontend(c, c)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: auth.NewSCRAMClient("secret").ClientFirst()})
			fe.Flush()
		}},
	}
	// More stalled clients than max_client_conn, all at once.
	var wg sync.WaitGroup
	for round := 0; round < 2; round++ {
		for _, tc := range cases {
			wg.Add(1)
			go func(name string, send func(net.Conn)) {
				defer wg.Done()
				conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				defer conn.Close()
				start := time.Now()
				send(conn)
				conn.SetReadDeadline(time.Now().Add(15 * time.Second))
				got, err := io.ReadAll(conn)
				took := time.Since(start)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("%s: still open after 15s (pool.client_login_timeout is %s)", name, timeout)
				} else if took < timeout/2 && !bytes.Contains(got, []byte("53300")) {
					// Beyond max_client_conn a client is refused at once.
					t.Errorf("%s: closed after %s, before pool.client_login_timeout, without 53300: %q", name, took, got)
				}
			}(tc.name, tc.send)
		}
	}
	wg.Wait()
	// Every slot is free again: max_client_conn clients log in.
	deadline := time.Now().Add(5 * time.Second)
	for metricSum(scrape(t, admin), "pgsluice_client_connections") > 0 {
		if time.Now().After(deadline) {
			t.Fatal("client slots of timed-out logins not returned")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		c := connect(t, ctx, dsn)
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes (the proxy's
// log handler writes from many goroutines).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNoSecretsInLogsOrMetrics: with debug logging, logins with right and
// wrong passwords (SCRAM and md5 users, a routed workload, errors, an ALTER
// ROLE ... PASSWORD through the proxy) leave no
// password in the log; /metrics after a workload carrying a unique literal
// (in queries, an error, a prepared statement, application_name) contains
// no SQL text.
func TestNoSecretsInLogsOrMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const pw, wrongPW = "Pw-leakcheck-7f3a9c", "Wrong-leakcheck-51be2d"
	const literal = "sqltext_leakcheck_b41d"
	if err := cluster.Exec(ctx, cluster.Primary, "DROP ROLE IF EXISTS leakcheck"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, cluster.Primary, "CREATE ROLE leakcheck LOGIN PASSWORD '"+pw+"'; GRANT CONNECT ON DATABASE app TO leakcheck"); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) {
		withReplica(c)
		replica := c.Tweak
		c.Log = &logs
		c.Tweak = func(cfg *config.Config) {
			replica(cfg)
			cfg.Auth.Users = append(cfg.Auth.Users, config.User{Name: "leakcheck", Password: config.Secret(pw)})
			cfg.Routing.Monitor.User = "leakcheck"
			cfg.Routing.Monitor.Password = config.Secret(pw)
		}
	})
	admin := serveAdmin(t, srv)
	for _, tc := range []struct{ user, password string }{
		{"leakcheck", pw}, {"leakcheck", wrongPW}, {"md5u", wrongPW}, {"nosuchuser", wrongPW}, {"app", wrongPW},
	} {
		c, err := pgconn.Connect(ctx, dsnFor(t, dsn, tc.user, tc.password, "app"))
		if err == nil {
			c.Close(ctx)
		}
	}
	c := connect(t, ctx, withParams(t, dsnFor(t, dsn, "leakcheck", pw, "app"), "application_name", literal))
	var s string
	if err := c.QueryRow(ctx, "SELECT '"+literal+"'").Scan(&s); err != nil || s != literal {
		t.Fatalf("workload: %q %v", s, err)
	}
	if _, err := c.Exec(ctx, "SELECT "+literal+"_no_such_column"); err == nil {
		t.Fatal("expected an error")
	}
	if _, err := c.Exec(ctx, "BEGIN; SELECT '"+literal+"' FOR UPDATE; COMMIT"); err == nil {
		// multi-statement through the extended protocol fails; fine either way
	}
	// A password in SQL (the role sets its own, unchanged) must not
	// reach the log either, not even in debug message tracing.
	if _, err := c.Exec(ctx, "ALTER ROLE leakcheck PASSWORD '"+pw+"'"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx, literal+"_stmt", "SELECT $1::text || '"+literal+"'"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, literal+"_stmt", "x"); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, admin)
	if metricSum(m, "pgsluice_routing_decisions_total") <= 0 {
		t.Fatalf("the workload produced no routing metrics; the check below would prove nothing:\n%s", m)
	}
	if strings.Contains(m, literal) || strings.Contains(m, "SELECT") {
		t.Errorf("SQL text in /metrics:\n%s", m)
	}
	// The logs did record the logins (otherwise this proves nothing).
	time.Sleep(200 * time.Millisecond)
	out := logs.String()
	if !strings.Contains(out, "level=DEBUG") {
		t.Fatalf("no debug logs captured; the check below would prove nothing")
	}
	for _, secret := range []string{pw, wrongPW} {
		if strings.Contains(out, secret) {
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, secret) {
					t.Errorf("password in the log: %s", line)
				}
			}
		}
	}
}
