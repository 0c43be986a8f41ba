package auth

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// Method is a client authentication method, named as in pg_hba.conf.
type Method string

// Supported client authentication methods.
const (
	MethodSCRAM Method = "scram-sha-256"
	MethodMD5   Method = "md5"
	MethodTrust Method = "trust"
)

// Valid reports whether m is a method pgsluice implements.
func (m Method) Valid() bool {
	return m == MethodSCRAM || m == MethodMD5 || m == MethodTrust
}

// MaxMessageLen is the largest authentication message body PostgreSQL
// accepts from a client (PG_MAX_AUTH_TOKEN_LENGTH). Callers should apply it
// with be.SetMaxBodyLen before AuthenticateClient.
const MaxMessageLen = 65535

// MD5Password returns the response to an AuthenticationMD5Password
// challenge: "md5" + hex(md5(hex(md5(password + user)) + salt)).
func MD5Password(user, password string, salt [4]byte) string {
	return md5FromHash(md5Hex(password+user), salt)
}

// md5Hex is the lower-case hex md5 of s.
func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// AuthenticateClient runs the server side of authentication on a client
// connection whose StartupMessage (naming user) has already been read.
//
// For MethodSCRAM it sends AuthenticationSASL offering only SCRAM-SHA-256 and
// runs the exchange; for MethodMD5 it sends AuthenticationMD5Password with a
// random salt; for MethodTrust it asks nothing. On success it queues
// AuthenticationOk (after AuthenticationSASLFinal for SCRAM) in be without
// flushing it, and returns nil: the caller flushes be with, or before, what
// it sends next (ParameterStatus, BackendKeyData and ReadyForQuery, or an
// error), so that a login's last answer reaches the client in one write.
//
// lookup returns the user's configured password and true for a known user.
// The password may be a stored secret (see secret.go): with a SCRAM verifier
// the exchange uses the verifier's salt and iteration count, and MethodMD5
// runs SCRAM instead, as PostgreSQL does for a SCRAM secret; with an md5 hash
// MethodMD5 checks against the hash and MethodSCRAM fails, as PostgreSQL's
// does ("does not have a valid SCRAM secret"). A successful SCRAM login
// against a verifier leaves the client's ClientKey behind, for
// AuthenticateServer to log in to servers with.
//
// An unknown user, an empty password and a wrong password all fail the same
// way, after the same exchange and the same amount of work: a FATAL
// *pgerr.Error 28P01 `password authentication failed for user "x"` wrapping
// pgerr.ErrAuthFailed. Protocol garbage fails with FATAL 08P01 wrapping
// pgerr.ErrProtocol. AuthenticateClient never writes the ErrorResponse: the
// caller sends pgerr.Response(err) and closes the connection.
//
// ctx is checked before every round trip; a read that is blocked is ended
// only by a deadline on the underlying connection, which the caller sets. A
// cancelled ctx or an expired deadline yields FATAL 57014 "canceling
// authentication due to timeout". A connection the client closed yields 08006.
//
// be must not be used concurrently; AuthenticateClient changes its auth type
// (SetAuthType) but not its maximum body length.
func AuthenticateClient(ctx context.Context, be *pgproto3.Backend, method Method, user string, lookup func(user string) (string, bool)) error {
	if err := ctx.Err(); err != nil {
		return timeoutErr(err)
	}
	if method == MethodTrust {
		return sendOK(be)
	}
	password, known := lookup(user)
	if password == "" {
		known = false
	}
	sec, err := parseSecret(password)
	if err != nil { // config validation refuses these: treat as unknown
		known, sec = false, secret{}
	}
	switch method {
	case MethodMD5:
		if known && sec.kind == secretSCRAM {
			return authSCRAM(ctx, be, user, password, sec, true)
		}
		return authMD5(ctx, be, user, sec, known)
	case MethodSCRAM:
		if sec.kind == secretMD5 {
			known = false
		}
		return authSCRAM(ctx, be, user, password, sec, known)
	default:
		return pgerr.Fatal(pgerr.InvalidAuthorizationSpecification,
			"authentication method %q is not supported by pgsluice", string(method))
	}
}

func authMD5(ctx context.Context, be *pgproto3.Backend, user string, sec secret, known bool) error {
	var salt [4]byte
	_, _ = rand.Read(salt[:])
	if err := send(be, &pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeMD5Password); err != nil {
		return err
	}
	msg, err := receive(ctx, be)
	if err != nil {
		return err
	}
	pm, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return unexpected("password", msg)
	}
	var want string
	switch {
	case !known:
		// Same work as the real comparison, result ignored.
		want = MD5Password(user, rand.Text(), salt)
	case sec.kind == secretMD5:
		want = md5FromHash(sec.plain, salt)
	default:
		want = MD5Password(user, sec.plain, salt)
	}
	if subtle.ConstantTimeCompare([]byte(pm.Password), []byte(want)) != 1 || !known {
		return authFailed(user)
	}
	return sendOK(be)
}

// authSCRAM runs the exchange for password, whose parsed form is sec.
func authSCRAM(ctx context.Context, be *pgproto3.Backend, user, password string, sec secret, known bool) error {
	var srv *SCRAMServer
	var err error
	switch {
	case known && sec.kind == secretSCRAM:
		srv, err = newSCRAMServerFromSecret(user, password, sec)
	case known:
		srv, err = NewSCRAMServer(user, password)
	default:
		srv, err = newMockSCRAMServer(user)
	}
	if err != nil {
		return pgerr.Wrap(err, pgerr.InternalError, "internal error in pgsluice").AsFatal()
	}
	if err := send(be, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{SCRAMMechanism}}); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return err
	}
	msg, err := receive(ctx, be)
	if err != nil {
		return err
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return unexpected("SASL", msg)
	}
	if init.AuthMechanism != SCRAMMechanism {
		return pgerr.Wrap(pgerr.ErrProtocol, pgerr.ProtocolViolation,
			"client selected an invalid SASL authentication mechanism").AsFatal()
	}
	serverFirst, err := srv.ServerFirst(init.Data)
	if err != nil {
		return err
	}
	if err := send(be, &pgproto3.AuthenticationSASLContinue{Data: serverFirst}); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return err
	}
	msg, err = receive(ctx, be)
	if err != nil {
		return err
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return unexpected("SASL", msg)
	}
	serverFinal, err := srv.ServerFinal(resp.Data)
	if err != nil {
		return err
	}
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: serverFinal})
	return sendOK(be)
}

// sendOK queues AuthenticationOk without flushing (see AuthenticateClient).
func sendOK(be *pgproto3.Backend) error {
	be.Send(&pgproto3.AuthenticationOk{})
	return nil
}

func send(be *pgproto3.Backend, msg pgproto3.BackendMessage) error {
	be.Send(msg)
	if err := be.Flush(); err != nil {
		return ioErr(err)
	}
	return nil
}

// receive reads the client's next message, honouring ctx before the read.
func receive(ctx context.Context, be *pgproto3.Backend) (pgproto3.FrontendMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, timeoutErr(err)
	}
	msg, err := be.Receive()
	if err != nil {
		if ctx.Err() != nil {
			return nil, timeoutErr(fmt.Errorf("%w: %w", ctx.Err(), err))
		}
		return nil, ioErr(err)
	}
	return msg, nil
}

// ioErr classifies a failed read or write on the client connection.
func ioErr(err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return timeoutErr(err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.As(err, &ne):
		return pgerr.Wrap(err, pgerr.ConnectionFailure, "connection lost during authentication").AsFatal()
	default:
		// Decoding failures: unknown message type, bad length, oversized body.
		return pgerr.Wrap(fmt.Errorf("%w: %w", pgerr.ErrProtocol, err), pgerr.ProtocolViolation,
			"invalid frontend message during authentication").AsFatal()
	}
}

func timeoutErr(cause error) error {
	return pgerr.Wrap(cause, pgerr.QueryCanceled, "canceling authentication due to timeout").AsFatal()
}

func unexpected(want string, msg pgproto3.FrontendMessage) error {
	return pgerr.Wrap(pgerr.ErrProtocol, pgerr.ProtocolViolation,
		"expected %s response, got message type %q", want, msgType(msg)).AsFatal()
}

// msgType returns the protocol type byte of msg, for error messages.
func msgType(msg pgproto3.FrontendMessage) string {
	b, err := msg.Encode(nil)
	if err != nil || len(b) == 0 {
		return "?"
	}
	return string(b[:1])
}
