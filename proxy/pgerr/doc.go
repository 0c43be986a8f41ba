// Package pgerr is the one place where pgsluice turns internal errors into
// PostgreSQL ErrorResponse messages.
//
// Every error that reaches a client goes through [ToError] (or its
// conveniences [Response] and [AppendResponse]). ToError guarantees three
// things:
//
//   - The SQLSTATE is a real PostgreSQL code (see the constants in this
//     package); pgsluice never invents codes.
//   - The message is safe to show to a client: it never contains the text of
//     an internal cause (addresses, file names, Go error strings). The cause is
//     kept in [Error.Cause] for logs only.
//   - An error that came from a real PostgreSQL server (a *[pgconn.PgError], or
//     an *Error built by [FromServer] from a *pgproto3.ErrorResponse) passes
//     through with all of its fields, so a client sees exactly what the server
//     said.
//
// Code that detects a problem builds an *Error with [New], [Fatal] or [Wrap],
// choosing the code and a PostgreSQL-like message. Lower layers that only know
// "what kind" of failure happened wrap one of the sentinel errors (ErrProtocol,
// ErrAcquireTimeout, ...) with %w; ToError maps them to a fixed code,
// severity and message:
//
//	sentinel               SQLSTATE  severity  message
//	ErrAcquireTimeout      53300     ERROR     timed out waiting for a server connection
//	ErrTooManyClients      53300     FATAL     sorry, too many clients already
//	ErrShuttingDown        57P01     FATAL     terminating connection due to administrator command
//	ErrBackendUnavailable  08000     FATAL     could not connect to the database server
//	ErrAuthFailed          28P01     FATAL     password authentication failed
//	ErrMessageTooLarge     08P01     FATAL     invalid message length (over max_message_size), as PostgreSQL says
//	ErrProtocol            08P01     FATAL     protocol violation
//	ErrUnsupported         0A000     ERROR     feature not supported by pgsluice
//
// Other errors map as follows: context.DeadlineExceeded and context.Canceled
// become 57014 (query_canceled); io.EOF, io.ErrUnexpectedEOF, ECONNRESET,
// EPIPE and any net.Error become 08006 "server connection lost";
// ECONNREFUSED becomes 08000; everything else becomes XX000 "internal error
// in pgsluice" with the cause hidden.
//
// The package holds no state. All functions are safe for concurrent use; an
// *Error is immutable once returned and may be shared between goroutines.
package pgerr
