// Package auth authenticates clients to pgsluice and pgsluice to PostgreSQL
// servers.
//
// pgsluice sits in the middle of two authentications:
//
//   - As a server, [AuthenticateClient] checks a client that has sent its
//     StartupMessage, using one of the pg_hba-style methods scram-sha-256,
//     md5 or trust against the passwords from configuration. From the
//     client's point of view the exchange is the one PostgreSQL runs: same
//     messages, same SQLSTATEs and messages on failure.
//   - As a client, [AuthenticateServer] logs in to a real PostgreSQL server
//     with the credentials pgsluice holds for the pool, answering whatever
//     the server asks among cleartext, md5 and SCRAM-SHA-256.
//
// A configured password may instead be a stored secret, as PostgreSQL keeps
// it in pg_authid (secret.go): a SCRAM verifier or an md5 hash. Clients are
// then checked against the secret, with PostgreSQL's rules for which method
// runs (a SCRAM verifier is checked by SCRAM even under md5; an md5 hash
// fails a scram-sha-256 login). Towards servers an md5 hash answers md5, and
// a SCRAM verifier answers SCRAM with the ClientKey recovered from a client's
// successful SCRAM login as that user, kept in memory per (user, verifier)
// (PgBouncer's SCRAM pass-through); what a secret cannot answer fails with
// FATAL 08000 and a detail saying why.
//
// SCRAM-SHA-256 (RFC 5802, RFC 7677) is implemented here on the standard
// library ([SCRAMServer], [SCRAMClient]); channel binding is not supported:
// only "SCRAM-SHA-256" is advertised, a client announcing "p=..." binding is
// refused with 08P01, and "n,," and "y,," are accepted. Passwords are
// prepared with SASLprep as PostgreSQL does, falling back to the raw password
// when SASLprep rejects it.
//
// Invariants:
//
//   - No user enumeration: an unknown user goes through the same exchange as
//     a known one (a mock SCRAM exchange with a salt derived from the user
//     name, like PostgreSQL's mock authentication; an md5 challenge), costs
//     the same PBKDF2 work and fails with the same FATAL 28P01
//     `password authentication failed for user "x"`.
//   - Errors are *pgerr.Error values (or wrap pgerr sentinels) so the caller
//     sends pgerr.Response(err) to the client; this package never writes an
//     ErrorResponse itself. Errors from a real server pass through verbatim.
//   - Salts for SCRAM are derived from the user name with a random key drawn
//     once per process, so a user sees a stable salt for the life of the
//     process. That key is the package's only state; it is immutable.
//
// Every function is safe to call concurrently for different connections.
// A *pgproto3.Backend or *pgproto3.Frontend passed in must not be used by
// anything else during the call; SCRAMServer and SCRAMClient are
// single-exchange, single-goroutine objects.
package auth
