package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
)

// TestRealPostgres runs both directions of authentication against real
// software: AuthenticateServer against a PostgreSQL 15 server with each
// pg_hba method, and AuthenticateClient against pgx and psql through a tiny
// relay that then logs in to that server and passes the session through.
func TestRealPostgres(t *testing.T) {
	pg := startPG(t)
	t.Run("AuthenticateServer", func(t *testing.T) { testAuthenticateServer(t, pg) })
	t.Run("AuthenticateClient", func(t *testing.T) { testAuthenticateClient(t, pg) })
	t.Run("StoredSecrets", func(t *testing.T) { testStoredSecrets(t, pg) })
}

// dialServer connects to pg, sends a StartupMessage for user and returns the
// frontend, the connection and a trace of the messages exchanged.
func dialServer(t *testing.T, pg *testPG, user string) (*pgproto3.Frontend, net.Conn, *bytes.Buffer) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", pg.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	var trace bytes.Buffer
	fe.Trace(&trace, pgproto3.TracerOptions{SuppressTimestamps: true})
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": user, "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return fe, conn, &trace
}

// finishStartup reads until ReadyForQuery and checks current_user.
func finishStartup(t *testing.T, fe *pgproto3.Frontend, user string) {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	fe.Send(&pgproto3.Query{String: "SELECT current_user"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("query failed: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			if got != user {
				t.Fatalf("current_user = %q, want %q", got, user)
			}
			return
		}
	}
}

func testAuthenticateServer(t *testing.T, pg *testPG) {
	tests := []struct {
		user, password string
		traceHas       string // the authentication request the server must have sent
		wantErr        bool
	}{
		{"scram_u", pgPasswords["scram_u"], "AuthenticationSASL", false},
		{"scram_u", "wrong", "AuthenticationSASL", true},
		{"md5_u", pgPasswords["md5_u"], "AuthenticationMD5Password", false},
		{"md5_u", "wrong", "AuthenticationMD5Password", true},
		{"uni_u", pgPasswords["uni_u"], "AuthenticationSASL", false},
		{"uni_u", "IX-p\u00e4ss IX", "AuthenticationSASL", false}, // the SASLprep form is equivalent
		{"uni_u", "I\u00adX-p\u00e4ss", "AuthenticationSASL", true},
		{"clear_u", pgPasswords["clear_u"], "AuthenticationCleartextPassword", false},
		{"clear_u", "wrong", "AuthenticationCleartextPassword", true},
		{"postgres", "", "AuthenticationOk", false},
		{"nobody", "x", "AuthenticationSASL", true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.user, tt.password), func(t *testing.T) {
			fe, conn, trace := dialServer(t, pg, tt.user)
			defer conn.Close()
			err := AuthenticateServer(fe, tt.user, tt.password)
			if !strings.Contains(trace.String(), tt.traceHas) {
				t.Fatalf("server did not send %s:\n%s", tt.traceHas, trace)
			}
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("AuthenticateServer: %v\n%s", err, trace)
				}
				if strings.Contains(tt.traceHas, "SASL") && !strings.Contains(trace.String(), "AuthenticationSASLFinal") {
					t.Fatalf("no SASL final in trace:\n%s", trace)
				}
				finishStartup(t, fe, tt.user)
				return
			}
			if err == nil {
				t.Fatal("wrong password accepted")
			}
			// The server's own ErrorResponse passes through verbatim.
			e := pgerr.ToError(err)
			want := fmt.Sprintf("password authentication failed for user %q", tt.user)
			if e.Code != pgerr.InvalidPassword || e.Message != want || e.Severity != "FATAL" || e.Server == nil {
				t.Fatalf("got %+v, want server's FATAL 28P01 %q", e, want)
			}
			r := pgerr.Response(err)
			if r.Routine == "" || r.File == "" {
				t.Fatalf("server fields lost: %+v", r)
			}
		})
	}
}

// relay is a tiny stand-in for the proxy: it authenticates clients with
// AuthenticateClient, logs in to PostgreSQL as the same user with
// AuthenticateServer, forwards the server's startup messages and then copies
// bytes both ways.
type relay struct {
	t      *testing.T
	ln     net.Listener
	pg     *testPG
	method Method
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []error // errors AuthenticateClient returned, for assertions
}

func startRelay(t *testing.T, pg *testPG, method Method) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, pg: pg, method: method}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func (r *relay) port() int { return r.ln.Addr().(*net.TCPAddr).Port }

func (r *relay) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var st wire.Startup
	for {
		var err error
		st, err = wire.ReadStartup(c, 0)
		if err != nil {
			return
		}
		if st.Kind == wire.SSLRequest || st.Kind == wire.GSSENCRequest {
			c.Write([]byte{'N'})
			continue
		}
		break
	}
	if st.Kind != wire.StartupMessage {
		return
	}
	be := pgproto3.NewBackend(c, c)
	be.SetMaxBodyLen(MaxMessageLen)
	err := AuthenticateClient(context.Background(), be, r.method, st.User(), func(u string) (string, bool) {
		pw, ok := pgPasswords[u]
		return pw, ok
	})
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
	if err != nil {
		c.Write(pgerr.AppendResponse(nil, err))
		return
	}
	if err := be.Flush(); err != nil { // AuthenticationOk is left queued
		return
	}
	sc, err := net.Dial("tcp", r.pg.addr())
	if err != nil {
		c.Write(pgerr.AppendResponse(nil, err))
		return
	}
	defer sc.Close()
	fe := pgproto3.NewFrontend(sc, sc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": st.User(), "database": st.Database()}})
	if err := fe.Flush(); err != nil {
		return
	}
	if err := AuthenticateServer(fe, st.User(), pgPasswords[st.User()]); err != nil {
		c.Write(pgerr.AppendResponse(nil, err))
		return
	}
	for { // ParameterStatus, BackendKeyData, ReadyForQuery
		msg, err := fe.Receive()
		if err != nil {
			return
		}
		be.Send(msg)
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if be.Flush() != nil {
		return
	}
	c.SetDeadline(time.Time{})
	go func() { io.Copy(sc, c); sc.Close() }()
	io.Copy(c, sc)
}

func (r *relay) lastErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 {
		return errors.New("no authentication attempt seen")
	}
	return r.errs[len(r.errs)-1]
}

func testAuthenticateClient(t *testing.T, pg *testPG) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql is required: %v", err)
	}
	for _, method := range []Method{MethodSCRAM, MethodMD5, MethodTrust} {
		t.Run(string(method), func(t *testing.T) {
			r := startRelay(t, pg, method)
			cases := []struct {
				user, password string
				ok             bool
			}{
				{"scram_u", pgPasswords["scram_u"], true},
				{"md5_u", pgPasswords["md5_u"], true},
				{"uni_u", pgPasswords["uni_u"], true},
				{"scram_u", "wrong", method == MethodTrust},
				{"ghost", "whatever", false}, // unknown: same failure as a wrong password
			}
			for _, tc := range cases {
				if method == MethodTrust && tc.user == "ghost" {
					continue // trust lets anyone in; the server then refuses the role
				}
				t.Run("pgx/"+tc.user+"/"+tc.password, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					ok := tc.ok
					if tc.user == "uni_u" && method == MethodSCRAM {
						// pgx prepares SCRAM passwords with PRECIS OpaqueString, not
						// SASLprep, so for this password it may disagree with
						// PostgreSQL itself. The relay must behave exactly like the
						// real server: expect what a direct connection gets.
						direct, derr := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
							pg.port, tc.user, tc.password))
						if derr == nil {
							direct.Close(ctx)
						}
						ok = derr == nil
						t.Logf("pgx directly to PostgreSQL: %v", derr)
					}
					conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
						r.port(), tc.user, tc.password))
					if ok {
						if err != nil {
							t.Fatalf("connect: %v", err)
						}
						defer conn.Close(ctx)
						res, err := conn.Exec(ctx, "SELECT current_user").ReadAll()
						if err != nil || string(res[0].Rows[0][0]) != tc.user {
							t.Fatalf("query: %v %v", res, err)
						}
						return
					}
					var pe *pgconn.PgError
					if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Severity != "FATAL" ||
						pe.Message != fmt.Sprintf("password authentication failed for user %q", tc.user) {
						t.Fatalf("got %v, want FATAL 28P01", err)
					}
					if !errors.Is(r.lastErr(), pgerr.ErrAuthFailed) {
						t.Fatalf("relay saw %v", r.lastErr())
					}
				})
				t.Run("psql/"+tc.user+"/"+tc.password, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					cmd := exec.CommandContext(ctx, psql, "-X", "-At", "-c", "SELECT current_user",
						fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres", r.port(), tc.user))
					cmd.Env = append(os.Environ(), "PGPASSWORD="+tc.password, "PGCONNECT_TIMEOUT=10", "PGSSLMODE=prefer")
					out, err := cmd.CombinedOutput()
					if tc.ok {
						if err != nil || strings.TrimSpace(string(out)) != tc.user {
							t.Fatalf("psql: %v\n%s", err, out)
						}
						return
					}
					want := fmt.Sprintf("FATAL:  password authentication failed for user %q", tc.user)
					if err == nil || !strings.Contains(string(out), want) {
						t.Fatalf("psql: %v\n%s\nwant %q", err, out, want)
					}
					if e := pgerr.ToError(r.lastErr()); e.Code != pgerr.InvalidPassword {
						t.Fatalf("relay saw %v", r.lastErr())
					}
				})
			}
		})
	}
}
