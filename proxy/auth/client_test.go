package auth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

func lookupAlice(u string) (string, bool) {
	if u == "alice" {
		return "secret", true
	}
	if u == "nopass" {
		return "", true
	}
	return "", false
}

// runScripted runs AuthenticateClient on one end of a pipe while script
// plays the client on the other end with a pgproto3.Frontend.
func runScripted(t *testing.T, ctx context.Context, method Method, user string, deadline time.Duration,
	script func(fe *pgproto3.Frontend, conn net.Conn)) error {
	t.Helper()
	srv, cli := net.Pipe()
	defer srv.Close()
	if deadline > 0 {
		srv.SetDeadline(time.Now().Add(deadline))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cli.Close()
		script(pgproto3.NewFrontend(cli, cli), cli)
	}()
	be := pgproto3.NewBackend(srv, srv)
	be.SetMaxBodyLen(MaxMessageLen)
	err := AuthenticateClient(ctx, be, method, user, lookupAlice)
	if err == nil {
		be.Flush() // AuthenticationOk is left queued
	}
	srv.Close()
	<-done
	return err
}

// expectAuth reads the authentication request and returns it.
func expectAuth(t *testing.T, fe *pgproto3.Frontend) pgproto3.BackendMessage {
	msg, err := fe.Receive()
	if err != nil {
		t.Errorf("client receive: %v", err)
	}
	return msg
}

func TestAuthenticateClientScripted(t *testing.T) {
	bg := context.Background()
	canceled, cancel := context.WithCancel(bg)
	cancel()

	tests := []struct {
		name     string
		ctx      context.Context
		method   Method
		user     string
		deadline time.Duration
		script   func(t *testing.T, fe *pgproto3.Frontend, conn net.Conn)
		code     string
		message  string
	}{
		{name: "scram ok", method: MethodSCRAM, user: "alice", script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
			sasl, ok := expectAuth(t, fe).(*pgproto3.AuthenticationSASL)
			if !ok || len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
				t.Errorf("got %+v", sasl)
				return
			}
			c := NewSCRAMClient("secret")
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: c.ClientFirst()})
			fe.Flush()
			cont := expectAuth(t, fe).(*pgproto3.AuthenticationSASLContinue)
			final, err := c.ClientFinal(cont.Data)
			if err != nil {
				t.Error(err)
				return
			}
			fe.Send(&pgproto3.SASLResponse{Data: final})
			fe.Flush()
			fin := expectAuth(t, fe).(*pgproto3.AuthenticationSASLFinal)
			if err := c.VerifyServerFinal(fin.Data); err != nil {
				t.Error(err)
			}
			if _, ok := expectAuth(t, fe).(*pgproto3.AuthenticationOk); !ok {
				t.Error("no AuthenticationOk")
			}
		}},
		{name: "md5 ok", method: MethodMD5, user: "alice", script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
			m := expectAuth(t, fe).(*pgproto3.AuthenticationMD5Password)
			fe.Send(&pgproto3.PasswordMessage{Password: MD5Password("alice", "secret", m.Salt)})
			fe.Flush()
			if _, ok := expectAuth(t, fe).(*pgproto3.AuthenticationOk); !ok {
				t.Error("no AuthenticationOk")
			}
		}},
		{name: "trust", method: MethodTrust, user: "anyone", script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
			if _, ok := expectAuth(t, fe).(*pgproto3.AuthenticationOk); !ok {
				t.Error("no AuthenticationOk")
			}
		}},
		{name: "md5 wrong", method: MethodMD5, user: "alice", code: "28P01", message: `password authentication failed for user "alice"`,
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				m := expectAuth(t, fe).(*pgproto3.AuthenticationMD5Password)
				fe.Send(&pgproto3.PasswordMessage{Password: MD5Password("alice", "nope", m.Salt)})
				fe.Flush()
			}},
		{name: "md5 unknown user", method: MethodMD5, user: "bob", code: "28P01", message: `password authentication failed for user "bob"`,
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				m := expectAuth(t, fe).(*pgproto3.AuthenticationMD5Password)
				fe.Send(&pgproto3.PasswordMessage{Password: MD5Password("bob", "", m.Salt)})
				fe.Flush()
			}},
		{name: "md5 user without password", method: MethodMD5, user: "nopass", code: "28P01", message: `password authentication failed for user "nopass"`,
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				m := expectAuth(t, fe).(*pgproto3.AuthenticationMD5Password)
				fe.Send(&pgproto3.PasswordMessage{Password: MD5Password("nopass", "", m.Salt)})
				fe.Flush()
			}},
		{name: "query instead of password", method: MethodMD5, user: "alice", code: "08P01", message: `expected password response, got message type "Q"`,
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				expectAuth(t, fe)
				fe.Send(&pgproto3.Query{String: "SELECT 1"})
				fe.Flush()
			}},
		{name: "scram plus mechanism", method: MethodSCRAM, user: "alice", code: "08P01", message: "client selected an invalid SASL authentication mechanism",
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				expectAuth(t, fe)
				fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
				fe.Flush()
			}},
		{name: "scram channel binding data", method: MethodSCRAM, user: "alice", code: "08P01", message: "malformed SCRAM message",
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				expectAuth(t, fe)
				fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
				fe.Flush()
			}},
		{name: "scram unknown user", method: MethodSCRAM, user: "bob", code: "28P01", message: `password authentication failed for user "bob"`,
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				expectAuth(t, fe)
				c := NewSCRAMClient("secret")
				fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: c.ClientFirst()})
				fe.Flush()
				cont, ok := expectAuth(t, fe).(*pgproto3.AuthenticationSASLContinue)
				if !ok {
					t.Error("unknown user not given a SCRAM challenge")
					return
				}
				final, _ := c.ClientFinal(cont.Data)
				fe.Send(&pgproto3.SASLResponse{Data: final})
				fe.Flush()
			}},
		{name: "garbage message type", method: MethodSCRAM, user: "alice", code: "08P01", message: "invalid frontend message during authentication",
			script: func(t *testing.T, fe *pgproto3.Frontend, conn net.Conn) {
				expectAuth(t, fe)
				conn.Write([]byte{'z', 0, 0, 0, 4})
			}},
		{name: "oversized message", method: MethodMD5, user: "alice", code: "08P01", message: "invalid frontend message during authentication",
			script: func(t *testing.T, fe *pgproto3.Frontend, conn net.Conn) {
				expectAuth(t, fe)
				conn.Write([]byte{'p', 0x7f, 0, 0, 0})
			}},
		{name: "client hangs up", method: MethodSCRAM, user: "alice", code: "08006", message: "connection lost during authentication",
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				expectAuth(t, fe)
			}},
		{name: "deadline", method: MethodMD5, user: "alice", deadline: 100 * time.Millisecond, code: "57014", message: "canceling authentication due to timeout",
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {
				expectAuth(t, fe)
				time.Sleep(300 * time.Millisecond)
			}},
		{name: "canceled context", ctx: canceled, method: MethodSCRAM, user: "alice", code: "57014", message: "canceling authentication due to timeout",
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {}},
		{name: "unknown method", method: "ident", user: "alice", code: "28000", message: `authentication method "ident" is not supported by pgsluice`,
			script: func(t *testing.T, fe *pgproto3.Frontend, _ net.Conn) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = bg
			}
			err := runScripted(t, ctx, tt.method, tt.user, tt.deadline, func(fe *pgproto3.Frontend, conn net.Conn) {
				tt.script(t, fe, conn)
			})
			if tt.code == "" {
				if err != nil {
					t.Fatalf("AuthenticateClient: %v", err)
				}
				return
			}
			e := pgerr.ToError(err)
			if err == nil || e.Code != tt.code || e.Message != tt.message || e.Severity != "FATAL" {
				t.Fatalf("got %v, want FATAL %s %q", err, tt.code, tt.message)
			}
			if tt.code == "28P01" && !errors.Is(err, pgerr.ErrAuthFailed) {
				t.Fatal("auth failure does not wrap ErrAuthFailed")
			}
			if tt.code == "08P01" && !errors.Is(err, pgerr.ErrProtocol) {
				t.Fatal("protocol failure does not wrap ErrProtocol")
			}
		})
	}
}

// AuthenticateClient leaves its last messages queued in be, for the caller
// to send with its next ones in one write: nothing of AuthenticationOk (nor
// SCRAM's final message) reaches the connection before be.Flush.
func TestAuthenticateClientLeavesOKQueued(t *testing.T) {
	for _, method := range []Method{MethodTrust, MethodMD5, MethodSCRAM} {
		t.Run(string(method), func(t *testing.T) {
			var out bytes.Buffer
			in := new(bytes.Buffer)
			step := func() pgproto3.BackendMessage { // the message AuthenticateClient just flushed
				fe := pgproto3.NewFrontend(bytes.NewReader(out.Bytes()), io.Discard)
				out.Reset()
				m, err := fe.Receive()
				if err != nil {
					t.Fatalf("reading what was flushed: %v", err)
				}
				return m
			}
			// The client's answers are scripted in advance from what the
			// server sends, so they are written to in as the exchange goes.
			var c *SCRAMClient
			feIn := pgproto3.NewFrontend(nil, in)
			reader := &stepReader{in: in, before: func() {
				if out.Len() == 0 {
					return
				}
				switch m := step().(type) {
				case *pgproto3.AuthenticationMD5Password:
					feIn.Send(&pgproto3.PasswordMessage{Password: MD5Password("alice", "secret", m.Salt)})
				case *pgproto3.AuthenticationSASL:
					c = NewSCRAMClient("secret")
					feIn.Send(&pgproto3.SASLInitialResponse{AuthMechanism: SCRAMMechanism, Data: c.ClientFirst()})
				case *pgproto3.AuthenticationSASLContinue:
					final, err := c.ClientFinal(m.Data)
					if err != nil {
						t.Fatal(err)
					}
					feIn.Send(&pgproto3.SASLResponse{Data: final})
				default:
					t.Fatalf("unexpected %T before the end of the exchange", m)
				}
				feIn.Flush()
			}}
			be := pgproto3.NewBackend(reader, &out)
			if err := AuthenticateClient(context.Background(), be, method, "alice", lookupAlice); err != nil {
				t.Fatal(err)
			}
			if out.Len() != 0 {
				t.Fatalf("%d bytes reached the connection after the exchange, before be.Flush: %q", out.Len(), out.Bytes())
			}
			if err := be.Flush(); err != nil {
				t.Fatal(err)
			}
			fe := pgproto3.NewFrontend(bytes.NewReader(out.Bytes()), io.Discard)
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if method == MethodSCRAM {
				fin, ok := m.(*pgproto3.AuthenticationSASLFinal)
				if !ok {
					t.Fatalf("first queued message %T, want AuthenticationSASLFinal", m)
				}
				if err := c.VerifyServerFinal(fin.Data); err != nil {
					t.Fatal(err)
				}
				if m, err = fe.Receive(); err != nil {
					t.Fatal(err)
				}
			}
			if _, ok := m.(*pgproto3.AuthenticationOk); !ok {
				t.Fatalf("queued %T, want AuthenticationOk", m)
			}
		})
	}
}

// stepReader calls before ahead of every read, so a test can answer what
// the code under test has just flushed.
type stepReader struct {
	in     io.Reader
	before func()
}

func (r *stepReader) Read(p []byte) (int, error) {
	r.before()
	return r.in.Read(p)
}
