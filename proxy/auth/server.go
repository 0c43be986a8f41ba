package auth

import (
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// AuthenticateServer runs the client side of authentication on a connection
// to a real PostgreSQL server, after the proxy has sent its StartupMessage
// for user. It answers AuthenticationCleartextPassword,
// AuthenticationMD5Password and AuthenticationSASL (SCRAM-SHA-256, verifying
// the server's signature) until AuthenticationOk, and returns nil right after
// AuthenticationOk; the caller then reads ParameterStatus, BackendKeyData and
// ReadyForQuery.
//
// Errors:
//   - an ErrorResponse from the server (wrong password, unknown database,
//     too many connections, ...) is returned as a *pgerr.Error built by
//     pgerr.FromServer, which pgerr.ToError passes through verbatim;
//   - an authentication method pgsluice cannot answer (GSS, SSPI, SCRAM with
//     mandatory channel binding) wraps pgerr.ErrUnsupported;
//   - a bad SCRAM server signature, or AuthenticationOk before the SCRAM
//     exchange completed, wraps pgerr.ErrBackendUnavailable (the server did
//     not prove it knows the password);
//   - unexpected messages wrap pgerr.ErrProtocol; I/O errors are returned
//     wrapped with %w.
//
// password may be a stored secret (see secret.go). An md5 hash answers
// AuthenticationMD5Password; a SCRAM verifier answers SCRAM with the
// ClientKey a client's login left behind. What a secret cannot answer (a
// cleartext request, md5 with a verifier, SCRAM with an md5 hash or before
// any client logged in) fails with FATAL 08000 wrapping
// pgerr.ErrBackendUnavailable, saying why.
//
// fe must not be used concurrently. No message from fe is retained.
func AuthenticateServer(fe *pgproto3.Frontend, user, password string) error {
	var scram *SCRAMClient
	scramDone := false
	sec, err := parseSecret(password)
	if err != nil {
		return secretCannot(user, err.Error())
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			return fmt.Errorf("auth: receive from server: %w", err)
		}
		var reply pgproto3.FrontendMessage
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
			if scram != nil && !scramDone {
				return fmt.Errorf("auth: server sent AuthenticationOk before completing SCRAM: %w", pgerr.ErrBackendUnavailable)
			}
			return nil
		case *pgproto3.AuthenticationCleartextPassword:
			if sec.kind != secretPlain {
				return secretCannot(user, "the server asks for the cleartext password, and pgsluice holds only a hash of it")
			}
			reply = &pgproto3.PasswordMessage{Password: password}
		case *pgproto3.AuthenticationMD5Password:
			switch sec.kind {
			case secretSCRAM:
				return secretCannot(user, "the server asks for md5 authentication, and pgsluice holds only a SCRAM secret")
			case secretMD5:
				reply = &pgproto3.PasswordMessage{Password: md5FromHash(sec.plain, m.Salt)}
			default:
				reply = &pgproto3.PasswordMessage{Password: MD5Password(user, password, m.Salt)}
			}
		case *pgproto3.AuthenticationSASL:
			if scram != nil {
				return fmt.Errorf("auth: server restarted SASL: %w", pgerr.ErrProtocol)
			}
			if !slices.Contains(m.AuthMechanisms, SCRAMMechanism) {
				return fmt.Errorf("auth: server offers SASL mechanisms %q, pgsluice supports only %s: %w",
					m.AuthMechanisms, SCRAMMechanism, pgerr.ErrUnsupported)
			}
			switch sec.kind {
			case secretMD5:
				return secretCannot(user, "the server asks for SCRAM authentication, and pgsluice holds only an md5 hash")
			case secretSCRAM:
				key, ok := clientKeyFor(user, password)
				if !ok {
					return secretCannot(user, "pgsluice holds only a SCRAM secret, and no client has logged in as this user with it yet (a client's SCRAM login provides the key a server login needs)")
				}
				scram = newSCRAMClientFromKey(sec, key)
			default:
				scram = NewSCRAMClient(password)
			}
			reply = &pgproto3.SASLInitialResponse{AuthMechanism: SCRAMMechanism, Data: scram.ClientFirst()}
		case *pgproto3.AuthenticationSASLContinue:
			if scram == nil {
				return fmt.Errorf("auth: AuthenticationSASLContinue without SASL: %w", pgerr.ErrProtocol)
			}
			final, err := scram.ClientFinal(m.Data)
			if errors.Is(err, errSecretMismatch) {
				return secretCannot(user, "the server's SCRAM salt or iteration count differs from the configured secret: copy the secret from the server's pg_authid again")
			}
			if err != nil {
				return fmt.Errorf("%w: %w", pgerr.ErrProtocol, err)
			}
			reply = &pgproto3.SASLResponse{Data: final}
		case *pgproto3.AuthenticationSASLFinal:
			if scram == nil {
				return fmt.Errorf("auth: AuthenticationSASLFinal without SASL: %w", pgerr.ErrProtocol)
			}
			if err := scram.VerifyServerFinal(m.Data); err != nil {
				return fmt.Errorf("%w: %w", pgerr.ErrBackendUnavailable, err)
			}
			scramDone = true
			continue
		case *pgproto3.ErrorResponse:
			return pgerr.FromServer(m)
		case *pgproto3.NoticeResponse, *pgproto3.NegotiateProtocolVersion:
			continue
		case *pgproto3.AuthenticationGSS, *pgproto3.AuthenticationGSSContinue:
			return fmt.Errorf("auth: server requested GSSAPI authentication: %w", pgerr.ErrUnsupported)
		default:
			return fmt.Errorf("auth: unexpected %T during authentication: %w", msg, pgerr.ErrProtocol)
		}
		fe.Send(reply)
		if err := fe.Flush(); err != nil {
			return fmt.Errorf("auth: send to server: %w", err)
		}
	}
}

// secretCannot is the error for a server login that the configured secret
// cannot answer.
func secretCannot(user, why string) error {
	return pgerr.Wrap(pgerr.ErrBackendUnavailable, pgerr.ConnectionException,
		"pgsluice cannot log in to the server as %q", user).AsFatal().WithDetail(why + ".").
		WithHint("Configure the plaintext password in auth.users, or a secret the server's authentication method accepts.")
}
