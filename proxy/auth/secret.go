package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/pgsluice/pgsluice/config"
)

// A configured password is one of three kinds of secret, told apart the way
// PostgreSQL tells apart the values of pg_authid.rolpassword:
//
//   - "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64
//     parts) is a SCRAM verifier, as PostgreSQL stores it;
//   - "md5" followed by 32 lower-case hex digits is an md5 hash,
//     md5(password + user);
//   - anything else is the plaintext password.
//
// A stored secret lets pgsluice check clients without knowing their
// password (PgBouncer's auth_file). Logging in to PostgreSQL with it works as
// far as the protocol allows:
//   - an md5 hash answers the server's md5 challenge;
//   - a SCRAM verifier answers the server's SCRAM exchange only with the
//     ClientKey recovered from a client's successful SCRAM login as that user
//     (since the process started, or since the secret last changed), and only
//     if the server announces the verifier's salt and iteration count, that
//     is, if the verifier was copied from the server's pg_authid.
//
// Neither answers a cleartext password request.

const scramSecretPrefix = config.SCRAMSecretPrefix

type secretKind uint8

const (
	secretPlain secretKind = iota
	secretMD5
	secretSCRAM
)

// secret is a parsed configured password.
type secret struct {
	kind  secretKind
	plain string // secretPlain: the password; secretMD5: the 32 hex digits
	// secretSCRAM:
	iterations int
	salt       []byte
	storedKey  []byte
	serverKey  []byte
}

// CheckSecret reports whether s, a configured password, is usable: it fails
// only for a value that starts like a SCRAM verifier but is not one, so
// that a mistyped verifier is not taken for a plaintext password. Config
// validation calls it.
func CheckSecret(s string) error {
	_, err := parseSecret(s)
	return err
}

// parseSecret classifies and decodes a configured password.
func parseSecret(s string) (secret, error) {
	if config.IsMD5Hash(s) {
		return secret{kind: secretMD5, plain: s[3:]}, nil
	}
	if !strings.HasPrefix(s, scramSecretPrefix) {
		return secret{kind: secretPlain, plain: s}, nil
	}
	bad := func(what string) (secret, error) {
		return secret{}, fmt.Errorf("malformed SCRAM secret (want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in pg_authid): %s", what)
	}
	rest := s[len(scramSecretPrefix):]
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("no '$' before the keys")
	}
	iterStr, saltStr, ok := strings.Cut(params, ":")
	if !ok {
		return bad("no ':' between iterations and salt")
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil || iter < 1 || iter > maxClientIterations {
		return bad(fmt.Sprintf("iteration count %q is not a number in 1..%d", iterStr, maxClientIterations))
	}
	salt, err := decodeBase64(saltStr)
	if err != nil || len(salt) == 0 {
		return bad("the salt is not base64")
	}
	storedStr, serverStr, ok := strings.Cut(keys, ":")
	if !ok {
		return bad("no ':' between StoredKey and ServerKey")
	}
	stored, err := decodeBase64(storedStr)
	if err != nil || len(stored) != scramKeyLen {
		return bad("StoredKey is not 32 bytes of base64")
	}
	server, err := decodeBase64(serverStr)
	if err != nil || len(server) != scramKeyLen {
		return bad("ServerKey is not 32 bytes of base64")
	}
	return secret{kind: secretSCRAM, iterations: iter, salt: salt, storedKey: stored, serverKey: server}, nil
}

// md5FromHash answers an md5 challenge from the stored hash: the hash is
// what MD5Password computes in its first step.
func md5FromHash(hashHex string, salt [4]byte) string {
	return "md5" + md5Hex(hashHex+string(salt[:]))
}

// clientKeys remembers, per user and SCRAM verifier, the ClientKey
// recovered from the last successful client login, which is what logging in
// to a server with that verifier takes. It lives only in memory. The
// verifier is part of the key, so a changed secret needs a new client login;
// ForgetUser drops a user's entries.
var clientKeys struct {
	mu sync.Mutex
	m  map[clientKeyID][]byte
}

// maxClientKeys bounds clientKeys. A user whose key was dropped gets it
// back at its next client login; until then its pools cannot open new
// server connections.
const maxClientKeys = 100000

type clientKeyID struct {
	user string
	sum  [32]byte // sha256 of the verifier
}

func clientKeyIDFor(user, verifier string) clientKeyID {
	return clientKeyID{user: user, sum: sha256.Sum256([]byte(verifier))}
}

// rememberClientKey stores clientKey for (user, verifier) once it has been
// checked against the verifier's StoredKey.
func rememberClientKey(user, verifier string, clientKey []byte) {
	id := clientKeyIDFor(user, verifier)
	clientKeys.mu.Lock()
	defer clientKeys.mu.Unlock()
	if old, ok := clientKeys.m[id]; ok && subtle.ConstantTimeCompare(old, clientKey) == 1 {
		return
	}
	if clientKeys.m == nil {
		clientKeys.m = map[clientKeyID][]byte{}
	}
	for id := range clientKeys.m { // bounded: drop an arbitrary other entry
		if len(clientKeys.m) < maxClientKeys {
			break
		}
		delete(clientKeys.m, id)
	}
	clientKeys.m[id] = append([]byte(nil), clientKey...)
}

// clientKeyFor returns the remembered ClientKey for (user, verifier).
func clientKeyFor(user, verifier string) ([]byte, bool) {
	clientKeys.mu.Lock()
	defer clientKeys.mu.Unlock()
	k, ok := clientKeys.m[clientKeyIDFor(user, verifier)]
	return k, ok
}

func forgetClientKeys(user string) {
	clientKeys.mu.Lock()
	defer clientKeys.mu.Unlock()
	for id := range clientKeys.m {
		if id.user == user {
			delete(clientKeys.m, id)
		}
	}
}

// encodeSCRAMSecret returns the SCRAM verifier of password in PostgreSQL's
// format, with the given salt and iteration count (for tests).
func encodeSCRAMSecret(password string, salt []byte, iterations int) (string, error) {
	stored, server, _, err := scramKeys(password, salt, iterations)
	if err != nil {
		return "", err
	}
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s%d:%s$%s:%s", scramSecretPrefix, iterations, enc(salt), enc(stored), enc(server)), nil
}
