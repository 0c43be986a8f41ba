package bench

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// RawConn is a minimal PostgreSQL client connection used to open many
// connections cheaply (storms, idle clients). It is not safe for concurrent
// use. After Connect the pgproto3 frontend is kept only if the caller needs
// to query; Idle drops it so an idle RawConn holds just its socket.
type RawConn struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// ScramCache remembers SCRAM keys by (password, salt, iterations), so a
// client opening thousands of connections to a server that announces a
// stable salt (PostgreSQL, PgBouncer with a SCRAM secret, pgsluice) runs
// PBKDF2 once. The zero value is ready; it is safe for concurrent use.
type ScramCache struct {
	mu sync.Mutex
	m  map[string]scramKeys
}

type scramKeys struct{ client, stored, server []byte }

func (c *ScramCache) keys(password string, salt []byte, iter int) scramKeys {
	k := password + "\x00" + string(salt) + "\x00" + strconv.Itoa(iter)
	c.mu.Lock()
	v, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return v
	}
	salted, _ := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	v.client = hmacSHA256(salted, []byte("Client Key"))
	h := sha256.Sum256(v.client)
	v.stored = h[:]
	v.server = hmacSHA256(salted, []byte("Server Key"))
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[string]scramKeys)
	}
	c.m[k] = v
	c.mu.Unlock()
	return v
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// ConnectRaw dials addr, logs in as user to db with password (SCRAM-SHA-256,
// md5, cleartext or trust, whichever the server asks for) and waits for the
// first ReadyForQuery. ctx bounds the whole login.
func ConnectRaw(ctx context.Context, addr, user, password, db string, cache *ScramCache) (*RawConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	rc := &RawConn{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	if err := rc.login(user, password, db, cache); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return rc, nil
}

func (rc *RawConn) send(m pgproto3.FrontendMessage) error {
	rc.fe.Send(m)
	return rc.fe.Flush()
}

func (rc *RawConn) login(user, password, db string, cache *ScramCache) error {
	if err := rc.send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": user, "database": db},
	}); err != nil {
		return err
	}
	var clientFirstBare, nonce string
	var keys scramKeys
	var wantServerSig []byte
	for {
		msg, err := rc.fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk, *pgproto3.ParameterStatus, *pgproto3.BackendKeyData, *pgproto3.NoticeResponse:
		case *pgproto3.AuthenticationCleartextPassword:
			if err := rc.send(&pgproto3.PasswordMessage{Password: password}); err != nil {
				return err
			}
		case *pgproto3.AuthenticationMD5Password:
			if err := rc.send(&pgproto3.PasswordMessage{Password: md5Password(user, password, m.Salt)}); err != nil {
				return err
			}
		case *pgproto3.AuthenticationSASL:
			if !contains(m.AuthMechanisms, "SCRAM-SHA-256") {
				return fmt.Errorf("server offers SASL %v, want SCRAM-SHA-256", m.AuthMechanisms)
			}
			var nb [18]byte
			_, _ = rand.Read(nb[:])
			nonce = base64.StdEncoding.EncodeToString(nb[:])
			clientFirstBare = "n=,r=" + nonce
			if err := rc.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,," + clientFirstBare)}); err != nil {
				return err
			}
		case *pgproto3.AuthenticationSASLContinue:
			serverFirst := string(m.Data)
			attrs := scramAttrs(serverFirst)
			salt, err := base64.StdEncoding.DecodeString(attrs["s"])
			iter, err2 := strconv.Atoi(attrs["i"])
			if err != nil || err2 != nil || !strings.HasPrefix(attrs["r"], nonce) {
				return fmt.Errorf("bad SCRAM server-first message %q", serverFirst)
			}
			keys = cache.keys(password, salt, iter)
			withoutProof := "c=biws,r=" + attrs["r"]
			authMsg := clientFirstBare + "," + serverFirst + "," + withoutProof
			sig := hmacSHA256(keys.stored, []byte(authMsg))
			proof := make([]byte, len(sig))
			for i := range sig {
				proof[i] = keys.client[i] ^ sig[i]
			}
			wantServerSig = hmacSHA256(keys.server, []byte(authMsg))
			final := withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)
			if err := rc.send(&pgproto3.SASLResponse{Data: []byte(final)}); err != nil {
				return err
			}
		case *pgproto3.AuthenticationSASLFinal:
			got, err := base64.StdEncoding.DecodeString(scramAttrs(string(m.Data))["v"])
			if err != nil || !hmac.Equal(got, wantServerSig) {
				return errors.New("SCRAM server signature does not verify")
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("login: %s (SQLSTATE %s)", m.Message, m.Code)
		case *pgproto3.ReadyForQuery:
			return nil
		default:
			return fmt.Errorf("login: unexpected %T", msg)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func scramAttrs(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if len(kv) >= 2 && kv[1] == '=' {
			m[kv[:1]] = kv[2:]
		}
	}
	return m
}

func md5Password(user, password string, salt [4]byte) string {
	inner := md5.Sum([]byte(password + user))
	h := md5.New()
	h.Write([]byte(hex.EncodeToString(inner[:])))
	h.Write(salt[:])
	return "md5" + hex.EncodeToString(h.Sum(nil))
}

// SimpleQuery sends sql with the simple protocol and reads until
// ReadyForQuery, returning the first ErrorResponse as an error.
func (rc *RawConn) SimpleQuery(ctx context.Context, sql string) error {
	if rc.fe == nil {
		rc.fe = pgproto3.NewFrontend(rc.conn, rc.conn)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = rc.conn.SetDeadline(dl)
		defer rc.conn.SetDeadline(time.Time{})
	}
	if err := rc.send(&pgproto3.Query{String: sql}); err != nil {
		return err
	}
	var qerr error
	for {
		msg, err := rc.fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if qerr == nil {
				qerr = fmt.Errorf("%s (SQLSTATE %s)", m.Message, m.Code)
			}
		case *pgproto3.ReadyForQuery:
			return qerr
		}
	}
}

// Idle drops the frontend's buffers; the connection stays open. A later
// SimpleQuery makes a new frontend.
func (rc *RawConn) Idle() { rc.fe = nil }

// Close sends Terminate and closes the socket.
func (rc *RawConn) Close() error {
	_ = rc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = rc.conn.Write([]byte{'X', 0, 0, 0, 4})
	return rc.conn.Close()
}

// Len returns how many derived key sets the cache holds.
func (c *ScramCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
