package pgerr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestToError(t *testing.T) {
	secret := "dial tcp 10.1.2.3:5432: secret-internal-detail"
	serverErr := &pgproto3.ErrorResponse{
		Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42P01",
		Message: `relation "nope" does not exist`, Position: 15, File: "parse_relation.c", Line: 1392,
		Routine: "parserOpenTable", UnknownFields: map[byte]string{'Z': "zz"},
	}
	tests := []struct {
		name     string
		err      error
		severity string
		code     string
		message  string
	}{
		{"own error passes", New(ReadOnlySQLTransaction, "cannot execute %s in a read-only transaction", "INSERT"),
			"ERROR", "25006", "cannot execute INSERT in a read-only transaction"},
		{"own error wrapped", fmt.Errorf("session: %w", Fatal(InvalidCatalogName, `database "x" does not exist`)),
			"FATAL", "3D000", `database "x" does not exist`},
		{"wrap keeps own message", Wrap(ErrProtocol, ProtocolViolation, "invalid length of startup packet"),
			"ERROR", "08P01", "invalid length of startup packet"},
		{"acquire timeout", fmt.Errorf("pool %q: %w", "db", ErrAcquireTimeout),
			"ERROR", "53300", "timed out waiting for a server connection"},
		{"too many clients", fmt.Errorf("x: %w", ErrTooManyClients), "FATAL", "53300", "sorry, too many clients already"},
		{"shutting down", fmt.Errorf("x: %w", ErrShuttingDown), "FATAL", "57P01", "terminating connection due to administrator command"},
		{"backend unavailable", fmt.Errorf("%s: %w", secret, ErrBackendUnavailable), "FATAL", "08000", "could not connect to the database server"},
		{"auth failed", fmt.Errorf("x: %w", ErrAuthFailed), "FATAL", "28P01", "password authentication failed"},
		{"message too large", fmt.Errorf("x: %w", ErrMessageTooLarge), "FATAL", "08P01", "invalid message length: message exceeds max_message_size"},
		{"protocol", fmt.Errorf("%s: %w", secret, ErrProtocol), "FATAL", "08P01", "protocol violation"},
		{"unsupported", fmt.Errorf("x: %w", ErrUnsupported), "ERROR", "0A000", "feature not supported by pgsluice"},
		{"joined sentinel", errors.Join(errors.New(secret), ErrShuttingDown), "FATAL", "57P01", "terminating connection due to administrator command"},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), "ERROR", "57014", "canceling statement due to statement timeout"},
		{"canceled", context.Canceled, "ERROR", "57014", "canceling statement due to user request"},
		{"eof", io.EOF, "FATAL", "08006", "server connection lost"},
		{"unexpected eof", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), "FATAL", "08006", "server connection lost"},
		{"econnreset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
			"FATAL", "08006", "server connection lost"},
		{"epipe", fmt.Errorf("write: %w", syscall.EPIPE), "FATAL", "08006", "server connection lost"},
		{"net closed", net.ErrClosed, "FATAL", "08006", "server connection lost"},
		{"net timeout", os.ErrDeadlineExceeded, "FATAL", "08006", "server connection lost"},
		{"econnrefused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)},
			"FATAL", "08000", "could not connect to the database server"},
		{"pgerror passthrough", fmt.Errorf("query: %w", &pgconn.PgError{Severity: "ERROR", Code: "23505",
			Message: "duplicate key value violates unique constraint \"t_pkey\"", Detail: "Key (id)=(1) already exists.",
			ConstraintName: "t_pkey", TableName: "t"}),
			"ERROR", "23505", "duplicate key value violates unique constraint \"t_pkey\""},
		{"server error passthrough", FromServer(serverErr), "ERROR", "42P01", `relation "nope" does not exist`},
		{"unknown", errors.New(secret), "ERROR", "XX000", "internal error in pgsluice"},
		{"unknown wrapped", fmt.Errorf("frame %d: %w", 7, errors.New(secret)), "ERROR", "XX000", "internal error in pgsluice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ToError(tt.err)
			if e.Severity != tt.severity || e.Code != tt.code || e.Message != tt.message {
				t.Fatalf("ToError = {%s %s %q}, want {%s %s %q}", e.Severity, e.Code, e.Message, tt.severity, tt.code, tt.message)
			}
			r := Response(tt.err)
			for _, f := range []string{r.Message, r.Detail, r.Hint} {
				if strings.Contains(f, "secret-internal-detail") || strings.Contains(f, "10.1.2.3") {
					t.Fatalf("response leaks cause: %+v", r)
				}
			}
			if r.Code != tt.code || r.Severity != tt.severity {
				t.Fatalf("Response = %+v", r)
			}
			if !errors.Is(e, tt.err) && e.Server == nil {
				// Synthesised errors keep the original as cause for logs.
				var own *Error
				if !errors.As(tt.err, &own) {
					t.Fatalf("ToError result does not wrap the original error")
				}
			}
		})
	}
	if ToError(nil) != nil {
		t.Fatal("ToError(nil) != nil")
	}
}

func TestResponsePassthroughAllFields(t *testing.T) {
	pe := &pgconn.PgError{
		Severity: "FEHLER", SeverityUnlocalized: "ERROR", Code: "23505", Message: "m", Detail: "d", Hint: "h",
		Position: 3, InternalPosition: 4, InternalQuery: "iq", Where: "w", SchemaName: "s", TableName: "t",
		ColumnName: "c", DataTypeName: "dt", ConstraintName: "cn", File: "f.c", Line: 12, Routine: "r",
	}
	got := Response(fmt.Errorf("wrapped: %w", pe))
	want := pgproto3.ErrorResponse{
		Severity: "FEHLER", SeverityUnlocalized: "ERROR", Code: "23505", Message: "m", Detail: "d", Hint: "h",
		Position: 3, InternalPosition: 4, InternalQuery: "iq", Where: "w", SchemaName: "s", TableName: "t",
		ColumnName: "c", DataTypeName: "dt", ConstraintName: "cn", File: "f.c", Line: 12, Routine: "r",
	}
	if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("got  %+v\nwant %+v", *got, want)
	}

	// FromServer deep-copies, so later mutation of the received message does not leak in.
	msg := &pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed for user \"u\"",
		UnknownFields: map[byte]string{'X': "x"}}
	e := FromServer(msg)
	msg.Message = "mutated"
	msg.UnknownFields['X'] = "mutated"
	r := Response(e)
	if r.Message != "password authentication failed for user \"u\"" || r.UnknownFields['X'] != "x" || r.Severity != "FATAL" {
		t.Fatalf("FromServer did not copy: %+v", r)
	}
	if e.Severity != "FATAL" || e.Code != InvalidPassword {
		t.Fatalf("FromServer error = %v", e)
	}
}

func TestAppendResponseEncoding(t *testing.T) {
	prefix := []byte("keep")
	out := AppendResponse(prefix, Fatal(InvalidPassword, "password authentication failed for user %q", "bob"))
	if string(out[:4]) != "keep" {
		t.Fatalf("prefix lost")
	}
	msg := out[4:]
	want := "E\x00\x00\x00\x49SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed for user \"bob\"\x00\x00"
	if string(msg) != want {
		t.Fatalf("encoded\n%q\nwant\n%q", msg, want)
	}
	var dec pgproto3.ErrorResponse
	if err := dec.Decode(msg[5:]); err != nil {
		t.Fatal(err)
	}
	if dec.Code != "28P01" || dec.Severity != "FATAL" {
		t.Fatalf("decoded %+v", dec)
	}
}

func TestResponseSanitises(t *testing.T) {
	r := Response(&Error{Code: "bad", Message: "a\x00b", Detail: "d\x00"})
	if r.Code != InternalError || r.Message != "ab" || r.Detail != "d" || r.Severity != "ERROR" {
		t.Fatalf("got %+v", r)
	}
}

func TestErrorString(t *testing.T) {
	e := Wrap(io.EOF, ConnectionFailure, "server connection lost").AsFatal()
	if got := e.Error(); got != "FATAL: server connection lost (SQLSTATE 08006): EOF" {
		t.Fatalf("Error() = %q", got)
	}
	if !errors.Is(e, io.EOF) {
		t.Fatal("Unwrap broken")
	}
	if e.WithDetail("d").WithHint("h").Detail != "d" {
		t.Fatal("WithDetail")
	}
}

func TestClass(t *testing.T) {
	for code, want := range map[string]string{"08P01": "08", "28P01": "28", "XX000": "XX", "": "XX", "08p01": "XX", "123456": "XX"} {
		if got := Class(code); got != want {
			t.Errorf("Class(%q) = %q, want %q", code, got, want)
		}
	}
}
