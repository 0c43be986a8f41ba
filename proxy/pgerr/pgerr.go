package pgerr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes used by pgsluice. Every one of them is a code PostgreSQL
// itself defines (src/backend/utils/errcodes.txt); the comment names the
// PostgreSQL condition.
const (
	ProtocolViolation                  = "08P01" // protocol_violation
	ConnectionException                = "08000" // connection_exception
	ConnectionFailure                  = "08006" // connection_failure
	InvalidPassword                    = "28P01" // invalid_password
	InvalidAuthorizationSpecification  = "28000" // invalid_authorization_specification
	TooManyConnections                 = "53300" // too_many_connections
	ConfigurationLimitExceeded         = "53400" // configuration_limit_exceeded
	AdminShutdown                      = "57P01" // admin_shutdown
	CannotConnectNow                   = "57P03" // cannot_connect_now
	QueryCanceled                      = "57014" // query_canceled
	ReadOnlySQLTransaction             = "25006" // read_only_sql_transaction
	FeatureNotSupported                = "0A000" // feature_not_supported
	ProgramLimitExceeded               = "54000" // program_limit_exceeded
	InternalError                      = "XX000" // internal_error
	InvalidCatalogName                 = "3D000" // invalid_catalog_name
	InvalidParameterValue              = "22023" // invalid_parameter_value
	SyntaxError                        = "42601" // syntax_error
	InvalidSQLStatementName            = "26000" // invalid_sql_statement_name
	InvalidCursorName                  = "34000" // invalid_cursor_name
	InvalidTransactionState            = "25000" // invalid_transaction_state
	InFailedSQLTransaction             = "25P02" // in_failed_sql_transaction
	IdleInTransactionSessionTimeout    = "25P03" // idle_in_transaction_session_timeout
	IdleSessionTimeout                 = "57P05" // idle_session_timeout
	ObjectNotInPrerequisiteState       = "55000" // object_not_in_prerequisite_state
	SQLClientUnableToEstablishSQLConn  = "08001" // sqlclient_unable_to_establish_sqlconnection
	SQLServerRejectedEstablishmentConn = "08004" // sqlserver_rejected_establishment_of_sqlconnection
	UndefinedObject                    = "42704" // undefined_object
	ConfigFileError                    = "F0000" // config_file_error
)

// Severities used in ErrorResponse messages built by pgsluice.
const (
	SeverityError = "ERROR"
	SeverityFatal = "FATAL"
)

// Sentinel kinds of failure. Lower layers wrap them with %w (or use them as
// the cause of [Wrap]); [ToError] maps each to a fixed SQLSTATE, severity and
// client-safe message (see the package documentation for the table). Test
// for them with errors.Is, never ==.
var (
	ErrAcquireTimeout     = errors.New("pgsluice: timed out acquiring a server connection")
	ErrTooManyClients     = errors.New("pgsluice: too many client connections")
	ErrShuttingDown       = errors.New("pgsluice: shutting down")
	ErrBackendUnavailable = errors.New("pgsluice: backend unavailable")
	ErrAuthFailed         = errors.New("pgsluice: authentication failed")
	ErrMessageTooLarge    = errors.New("pgsluice: message too large")
	ErrProtocol           = errors.New("pgsluice: protocol violation")
	ErrUnsupported        = errors.New("pgsluice: unsupported")
)

// Error is an error with a SQLSTATE and a message that is safe to show to a
// client. Cause, if set, is the internal reason: it is reachable through
// errors.Is/As (Unwrap) and appears in Error() for logs, but never in the
// ErrorResponse sent to a client.
//
// Server is non-nil only for errors that came verbatim from a PostgreSQL
// server (see [FromServer]); [Response] then sends all of its fields. An
// *Error must not be modified after it has been returned or shared.
type Error struct {
	Severity string // "ERROR" or "FATAL"
	Code     string // five-character SQLSTATE
	Message  string // primary message, client-safe
	Detail   string // optional, client-safe
	Hint     string // optional, client-safe
	Cause    error  // internal cause, never sent to a client

	// Server is the complete error as a PostgreSQL server sent it, or nil.
	Server *pgproto3.ErrorResponse
}

// Error returns "SEVERITY: message (SQLSTATE code)" followed by ": cause"
// when there is a cause. It is meant for logs, not for clients.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Severity)
	b.WriteString(": ")
	b.WriteString(e.Message)
	b.WriteString(" (SQLSTATE ")
	b.WriteString(e.Code)
	b.WriteString(")")
	if e.Cause != nil {
		b.WriteString(": ")
		b.WriteString(e.Cause.Error())
	}
	return b.String()
}

// Unwrap returns the internal cause, so errors.Is(err, ErrProtocol) works on
// an *Error built with Wrap(ErrProtocol, ...).
func (e *Error) Unwrap() error { return e.Cause }

// SQLState returns the SQLSTATE code. It matches the method of the same name
// on *pgconn.PgError so callers can use one small interface for both.
func (e *Error) SQLState() string { return e.Code }

// New returns an ERROR-severity *Error with the given code and message
// (formatted with fmt.Sprintf when args are given).
func New(code, format string, args ...any) *Error {
	return &Error{Severity: SeverityError, Code: code, Message: sprintf(format, args)}
}

// Fatal returns a FATAL-severity *Error: the client connection is closed
// after the ErrorResponse is sent.
func Fatal(code, format string, args ...any) *Error {
	return &Error{Severity: SeverityFatal, Code: code, Message: sprintf(format, args)}
}

// Wrap returns an ERROR-severity *Error whose Cause is cause. Use
// (*Error).AsFatal for FATAL.
func Wrap(cause error, code, format string, args ...any) *Error {
	return &Error{Severity: SeverityError, Code: code, Message: sprintf(format, args), Cause: cause}
}

// AsFatal returns a copy of e with FATAL severity.
func (e *Error) AsFatal() *Error {
	c := *e
	c.Severity = SeverityFatal
	return &c
}

// WithDetail returns a copy of e with Detail set.
func (e *Error) WithDetail(detail string) *Error {
	c := *e
	c.Detail = detail
	return &c
}

// WithHint returns a copy of e with Hint set.
func (e *Error) WithHint(hint string) *Error {
	c := *e
	c.Hint = hint
	return &c
}

func sprintf(format string, args []any) string {
	if len(args) == 0 {
		return format
	}
	return fmt.Sprintf(format, args...)
}

// FromServer returns an *Error carrying a deep copy of msg, an ErrorResponse
// received from a PostgreSQL server. The copy is needed because pgproto3
// messages are valid only until the next Receive; the caller keeps no
// reference to msg afterwards. [Response] sends the copy verbatim.
func FromServer(msg *pgproto3.ErrorResponse) *Error {
	c := *msg
	if msg.UnknownFields != nil {
		c.UnknownFields = make(map[byte]string, len(msg.UnknownFields))
		for k, v := range msg.UnknownFields {
			c.UnknownFields[k] = v
		}
	}
	sev := c.SeverityUnlocalized
	if sev == "" {
		sev = c.Severity
	}
	return &Error{Severity: sev, Code: c.Code, Message: c.Message, Detail: c.Detail, Hint: c.Hint, Server: &c}
}

// fromPgError converts a pgx *pgconn.PgError (all fields) to an *Error.
func fromPgError(pe *pgconn.PgError) *Error {
	return FromServer(&pgproto3.ErrorResponse{
		Severity:            pe.Severity,
		SeverityUnlocalized: pe.SeverityUnlocalized,
		Code:                pe.Code,
		Message:             pe.Message,
		Detail:              pe.Detail,
		Hint:                pe.Hint,
		Position:            pe.Position,
		InternalPosition:    pe.InternalPosition,
		InternalQuery:       pe.InternalQuery,
		Where:               pe.Where,
		SchemaName:          pe.SchemaName,
		TableName:           pe.TableName,
		ColumnName:          pe.ColumnName,
		DataTypeName:        pe.DataTypeName,
		ConstraintName:      pe.ConstraintName,
		File:                pe.File,
		Line:                pe.Line,
		Routine:             pe.Routine,
	})
}

type sentinelMapping struct {
	err      error
	severity string
	code     string
	message  string
}

// sentinels is checked in order; the first match wins.
var sentinels = [...]sentinelMapping{
	{ErrAcquireTimeout, SeverityError, TooManyConnections, "timed out waiting for a server connection"},
	{ErrTooManyClients, SeverityFatal, TooManyConnections, "sorry, too many clients already"},
	{ErrShuttingDown, SeverityFatal, AdminShutdown, "terminating connection due to administrator command"},
	{ErrBackendUnavailable, SeverityFatal, ConnectionException, "could not connect to the database server"},
	{ErrAuthFailed, SeverityFatal, InvalidPassword, "password authentication failed"},
	{ErrMessageTooLarge, SeverityFatal, ProtocolViolation, "invalid message length: message exceeds max_message_size"},
	{ErrProtocol, SeverityFatal, ProtocolViolation, "protocol violation"},
	{ErrUnsupported, SeverityError, FeatureNotSupported, "feature not supported by pgsluice"},
}

// ToError maps any error to an *Error that is safe to send to a client.
//
//   - nil maps to nil.
//   - An *Error anywhere in the chain (errors.As) is returned as is.
//   - A *pgconn.PgError anywhere in the chain passes through with all fields.
//   - Sentinels (see the package documentation) map to their fixed code.
//   - context.DeadlineExceeded / context.Canceled map to 57014.
//   - ECONNREFUSED maps to 08000; io.EOF, io.ErrUnexpectedEOF, ECONNRESET,
//     EPIPE and net.Error map to 08006 "server connection lost".
//   - Anything else maps to XX000 "internal error in pgsluice".
//
// The returned *Error always has err as its Cause when it was synthesised, so
// logs keep the detail. ToError never puts err's text in the message.
func ToError(err error) *Error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) && pe != nil {
		return pe
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr != nil {
		e := fromPgError(pgErr)
		e.Cause = err
		return e
	}
	for i := range sentinels {
		s := &sentinels[i]
		if errors.Is(err, s.err) {
			return &Error{Severity: s.severity, Code: s.code, Message: s.message, Cause: err}
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Severity: SeverityError, Code: QueryCanceled, Message: "canceling statement due to statement timeout", Cause: err}
	case errors.Is(err, context.Canceled):
		return &Error{Severity: SeverityError, Code: QueryCanceled, Message: "canceling statement due to user request", Cause: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Severity: SeverityFatal, Code: ConnectionException, Message: "could not connect to the database server", Cause: err}
	}
	var netErr net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed) || errors.As(err, &netErr) {
		return &Error{Severity: SeverityFatal, Code: ConnectionFailure, Message: "server connection lost", Cause: err}
	}
	return &Error{Severity: SeverityError, Code: InternalError, Message: "internal error in pgsluice", Cause: err}
}

// Response returns the ErrorResponse to send to a client for err (which must
// not be nil). The result is freshly allocated and owned by the caller.
// Errors from a real server are returned with all their fields; others fill
// Severity, SeverityUnlocalized, Code, Message, Detail and Hint. NUL bytes,
// which would corrupt the message framing, are removed from every field.
func Response(err error) *pgproto3.ErrorResponse {
	e := ToError(err)
	if e == nil {
		e = &Error{Severity: SeverityError, Code: InternalError, Message: "internal error in pgsluice"}
	}
	var r pgproto3.ErrorResponse
	if e.Server != nil {
		r = *e.Server
		if e.Server.UnknownFields != nil {
			r.UnknownFields = make(map[byte]string, len(e.Server.UnknownFields))
			for k, v := range e.Server.UnknownFields {
				if k != 0 {
					r.UnknownFields[k] = noNUL(v)
				}
			}
		}
	} else {
		sev := e.Severity
		if sev == "" {
			sev = SeverityError
		}
		code := e.Code
		if !validCode(code) {
			code = InternalError
		}
		r = pgproto3.ErrorResponse{
			Severity:            sev,
			SeverityUnlocalized: sev,
			Code:                code,
			Message:             e.Message,
			Detail:              e.Detail,
			Hint:                e.Hint,
		}
	}
	for _, f := range []*string{&r.Severity, &r.SeverityUnlocalized, &r.Code, &r.Message, &r.Detail, &r.Hint,
		&r.InternalQuery, &r.Where, &r.SchemaName, &r.TableName, &r.ColumnName, &r.DataTypeName,
		&r.ConstraintName, &r.File, &r.Routine} {
		*f = noNUL(*f)
	}
	return &r
}

// AppendResponse appends the encoded ErrorResponse for err (type byte 'E',
// Int32 length, fields, terminator) to dst and returns the extended slice.
func AppendResponse(dst []byte, err error) []byte {
	out, encErr := Response(err).Encode(dst)
	if encErr != nil {
		// Only possible for a message over 1 GiB; fall back to a minimal one.
		out, _ = (&pgproto3.ErrorResponse{Severity: SeverityError, SeverityUnlocalized: SeverityError,
			Code: InternalError, Message: "internal error in pgsluice"}).Encode(dst)
	}
	return out
}

// Class returns the two-character SQLSTATE class of code ("08", "28", ...),
// suitable as a bounded metrics label. A malformed code yields "XX".
func Class(code string) string {
	if !validCode(code) {
		return "XX"
	}
	return code[:2]
}

// validCode reports whether code looks like a SQLSTATE: five characters from
// [0-9A-Z].
func validCode(code string) bool {
	if len(code) != 5 {
		return false
	}
	for i := 0; i < 5; i++ {
		c := code[i]
		if (c < '0' || c > '9') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

func noNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "")
}
