package auth

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// SCRAMMechanism is the only SASL mechanism pgsluice offers and uses.
// Channel binding (SCRAM-SHA-256-PLUS) is not supported.
const SCRAMMechanism = "SCRAM-SHA-256"

// SCRAMIterations is the PBKDF2 iteration count pgsluice announces to
// clients; it is PostgreSQL's default (scram_iterations).
const SCRAMIterations = 4096

// maxClientIterations bounds the iteration count pgsluice accepts from a
// server, so that a misbehaving server cannot make the proxy spin.
const maxClientIterations = 1 << 22

const (
	scramSaltLen  = 16 // bytes, as PostgreSQL's SCRAM_DEFAULT_SALT_LEN
	scramNonceLen = 18 // raw bytes, as PostgreSQL's SCRAM_RAW_NONCE_LEN
	scramKeyLen   = sha256.Size
)

// processKey is a random key drawn once per process. It derives the salt
// pgsluice announces for a user, so that a user's salt is stable across
// connections and the salt of an unknown user (a mock exchange) is
// indistinguishable from a real one. It is immutable after first use and
// holds no configuration, so it is not shared state in any meaningful sense.
var processKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // crypto/rand.Read never fails (Go >= 1.24)
	return k
})

// userSalt derives the per-process stable salt for user.
func userSalt(user string) []byte {
	m := hmac.New(sha256.New, processKey())
	m.Write([]byte("pgsluice scram salt\x00"))
	m.Write([]byte(user))
	return m.Sum(nil)[:scramSaltLen]
}

func randomNonce() (string, error) {
	b := make([]byte, scramNonceLen)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func hmacSHA256(key []byte, parts ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write([]byte(p))
	}
	return m.Sum(nil)
}

// scramKeys derives (StoredKey, ServerKey, ClientKey) from a password, as in
// RFC 5802 section 3.
func scramKeys(password string, salt []byte, iterations int) (stored, server, client []byte, err error) {
	salted, err := pbkdf2.Key(sha256.New, saslPrep(password), salt, iterations, scramKeyLen)
	if err != nil {
		return nil, nil, nil, err
	}
	client = hmacSHA256(salted, "Client Key")
	s := sha256.Sum256(client)
	return s[:], hmacSHA256(salted, "Server Key"), client, nil
}

// loginKeys caches scramKeys for the proxy's own logins to PostgreSQL. A
// role's salt and iteration count stay the same until its password
// changes, so the PBKDF2 (4,096 rounds by default, about 1 ms of CPU and
// far more under load) runs once per (password, salt, iterations) instead
// of on every new server connection. Entries are keyed by a hash; the map
// is bounded and emptied by ForgetUser (configuration reloads).
func loginKeys(password string, salt []byte, iterations int) (stored, server, client []byte, err error) {
	h := sha256.New()
	h.Write([]byte(password))
	h.Write([]byte{0})
	h.Write(salt)
	h.Write([]byte{0, byte(iterations >> 24), byte(iterations >> 16), byte(iterations >> 8), byte(iterations)})
	var id [32]byte
	h.Sum(id[:0])
	loginKeyCache.mu.Lock()
	k, ok := loginKeyCache.m[id]
	loginKeyCache.mu.Unlock()
	if ok {
		return k[0], k[1], k[2], nil
	}
	if stored, server, client, err = scramKeys(password, salt, iterations); err != nil {
		return nil, nil, nil, err
	}
	loginKeyCache.mu.Lock()
	if loginKeyCache.m == nil || len(loginKeyCache.m) >= 1024 {
		loginKeyCache.m = map[[32]byte][3][]byte{}
	}
	loginKeyCache.m[id] = [3][]byte{stored, server, client}
	loginKeyCache.mu.Unlock()
	return stored, server, client, nil
}

var loginKeyCache struct {
	mu sync.Mutex
	m  map[[32]byte][3][]byte
}

// malformed returns the FATAL 08P01 error PostgreSQL sends for a bad SCRAM
// message, with a detail saying what was wrong.
func malformed(detail string, args ...any) *pgerr.Error {
	return pgerr.Wrap(pgerr.ErrProtocol, pgerr.ProtocolViolation, "malformed SCRAM message").
		AsFatal().WithDetail(fmt.Sprintf(detail, args...))
}

// authFailed is the one error for a wrong password or an unknown user.
func authFailed(user string) *pgerr.Error {
	return pgerr.Wrap(pgerr.ErrAuthFailed, pgerr.InvalidPassword,
		"password authentication failed for user %q", user).AsFatal()
}

type scramState uint8

const (
	scramStart scramState = iota
	scramFirstDone
	scramFinished
)

// SCRAMServer is the server side of one SCRAM-SHA-256 exchange (RFC 5802,
// RFC 7677) without channel binding. Create one per authentication attempt
// with NewSCRAMServer, call ServerFirst with the client-first-message and
// ServerFinal with the client-final-message. It is not safe for concurrent
// use. Inputs are copied; outputs are owned by the caller.
type SCRAMServer struct {
	user        string
	salt        []byte
	iterations  int
	storedKey   []byte
	serverKey   []byte
	doomed      bool // unknown user: run the exchange, then always fail
	serverNonce string
	// verifier: the configured SCRAM secret this exchange checks against
	// (newSCRAMServerFromSecret); a successful login remembers the
	// client's ClientKey for it.
	verifier string

	state           scramState
	gs2Header       string
	clientFirstBare string
	serverFirst     string
	nonce           string // client nonce + server nonce
}

// NewSCRAMServer prepares an exchange that accepts password for user. The
// salt is derived from the user name with a per-process random key, so it is
// stable for a user while the process lives. Deriving the keys costs one
// PBKDF2 run (SCRAMIterations rounds).
func NewSCRAMServer(user, password string) (*SCRAMServer, error) {
	return newSCRAMServer(user, password, false)
}

// newMockSCRAMServer prepares an exchange for an unknown user that costs the
// same and looks the same to the client as a real one but always fails, like
// PostgreSQL's mock authentication.
func newMockSCRAMServer(user string) (*SCRAMServer, error) {
	random, err := randomNonce()
	if err != nil {
		return nil, err
	}
	return newSCRAMServer(user, random, true)
}

func newSCRAMServer(user, password string, doomed bool) (*SCRAMServer, error) {
	nonce, err := randomNonce()
	if err != nil {
		return nil, err
	}
	s := &SCRAMServer{user: user, salt: userSalt(user), iterations: SCRAMIterations, doomed: doomed, serverNonce: nonce}
	ck := keyCacheKey(user, password, doomed)
	if k, ok := keyCache.Load(ck); ok {
		kk := k.([2][]byte)
		s.storedKey, s.serverKey = kk[0], kk[1]
		return s, nil
	}
	s.storedKey, s.serverKey, _, err = scramKeys(password, s.salt, s.iterations)
	if err != nil {
		return nil, err
	}
	if keyCacheLen.Add(1) <= 10000 {
		keyCache.Store(ck, [2][]byte{s.storedKey, s.serverKey})
	}
	return s, nil
}

// newSCRAMServerFromSecret prepares an exchange against a stored SCRAM
// verifier (sec, parsed from verifier): its salt and iteration count are
// announced and no PBKDF2 runs.
func newSCRAMServerFromSecret(user, verifier string, sec secret) (*SCRAMServer, error) {
	nonce, err := randomNonce()
	if err != nil {
		return nil, err
	}
	return &SCRAMServer{user: user, salt: sec.salt, iterations: sec.iterations, storedKey: sec.storedKey,
		serverKey: sec.serverKey, serverNonce: nonce, verifier: verifier}, nil
}

// keyCache holds derived SCRAM keys so that PBKDF2 (4096 iterations, about
// a millisecond) runs once per (user, password) per process instead of once
// per login: connection storms are otherwise CPU-bound on it. Unknown users
// (doomed exchanges) are cached by user name too, so both cost the same and
// timing does not reveal which users exist. Bounded at 10000 entries.
var (
	keyCache    sync.Map
	keyCacheLen atomic.Int64
)

// keyCacheID keys keyCache. The user name is kept in clear so that
// ForgetUser can find a user's entries.
type keyCacheID struct {
	user string
	sum  [32]byte
}

func keyCacheKey(user, password string, doomed bool) keyCacheID {
	if doomed {
		password = ""
	}
	d := byte(0)
	if doomed {
		d = 1
	}
	return keyCacheID{user: user, sum: sha256.Sum256(append(append(append([]byte(user), 0, d), password...), 0))}
}

// decodeBase64 decodes a SCRAM base64 attribute value. RFC 5802's base64
// has no whitespace, but encoding/base64 skips CR and LF even in strict
// mode, so "v=\r<signature>" would decode to the signature: refuse them.
func decodeBase64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("auth: line break in SCRAM base64 value")
	}
	return base64.StdEncoding.Strict().DecodeString(s)
}

// ServerFirst parses the client-first-message (the data of the client's
// SASLInitialResponse) and returns the server-first-message. A gs2 header of
// "n,," or "y,," is accepted; "p=..." (channel binding requested), an
// authorization identity, a mandatory extension ("m=") or bad syntax fail
// with a FATAL *pgerr.Error (08P01 or 0A000) that wraps pgerr.ErrProtocol.
func (s *SCRAMServer) ServerFirst(clientFirst []byte) ([]byte, error) {
	if s.state != scramStart {
		return nil, malformed("SCRAM client-first-message received twice.")
	}
	s.state = scramFinished // until proven otherwise
	msg := string(clientFirst)
	if len(msg) == 0 {
		return nil, malformed("The message is empty.")
	}
	switch msg[0] {
	case 'n', 'y':
		if len(msg) < 2 || msg[1] != ',' {
			return nil, malformed("Comma expected, but found character %q.", at(msg, 1))
		}
		msg = msg[2:]
	case 'p':
		return nil, malformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
	default:
		return nil, malformed("Unexpected channel-binding flag %q.", msg[0])
	}
	if strings.HasPrefix(msg, "a=") {
		return nil, pgerr.Wrap(pgerr.ErrProtocol, pgerr.FeatureNotSupported,
			"client uses authorization identity, but it is not supported").AsFatal()
	}
	if len(msg) == 0 || msg[0] != ',' {
		return nil, malformed("Unexpected attribute %q in client-first-message.", at(msg, 0))
	}
	bare := msg[1:]
	gs2 := string(clientFirst[:len(clientFirst)-len(bare)])

	if strings.HasPrefix(bare, "m=") {
		return nil, pgerr.Wrap(pgerr.ErrProtocol, pgerr.FeatureNotSupported,
			"client requires an unsupported SCRAM extension").AsFatal()
	}
	attrs := strings.Split(bare, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "n=") {
		return nil, malformed("Expected attribute \"n\" in client-first-message.")
	}
	// The user name in the message is ignored, as PostgreSQL does: the
	// startup packet's user is authoritative.
	if !strings.HasPrefix(attrs[1], "r=") {
		return nil, malformed("Expected attribute \"r\" in client-first-message.")
	}
	clientNonce := attrs[1][2:]
	if !validNonce(clientNonce) {
		return nil, malformed("The client nonce is empty or contains invalid characters.")
	}
	for _, ext := range attrs[2:] {
		if len(ext) < 2 || ext[1] != '=' {
			return nil, malformed("Malformed extension in client-first-message.")
		}
	}

	s.gs2Header = gs2
	s.clientFirstBare = bare
	s.nonce = clientNonce + s.serverNonce
	s.serverFirst = "r=" + s.nonce + ",s=" + base64.StdEncoding.EncodeToString(s.salt) +
		",i=" + strconv.Itoa(s.iterations)
	s.state = scramFirstDone
	return []byte(s.serverFirst), nil
}

// ServerFinal parses the client-final-message and verifies the client's
// proof. On success it returns the server-final-message ("v=...") to send in
// AuthenticationSASLFinal. A wrong proof (wrong password) or an unknown user
// fails with 28P01 `password authentication failed for user "x"` wrapping
// pgerr.ErrAuthFailed; malformed input fails with 08P01 wrapping
// pgerr.ErrProtocol. Both are FATAL.
func (s *SCRAMServer) ServerFinal(clientFinal []byte) ([]byte, error) {
	if s.state != scramFirstDone {
		return nil, malformed("SCRAM client-final-message received out of order.")
	}
	s.state = scramFinished
	msg := string(clientFinal)
	pi := strings.LastIndex(msg, ",p=")
	if pi < 0 {
		return nil, malformed("Could not find proof in client-final-message.")
	}
	withoutProof := msg[:pi]
	proof, err := decodeBase64(msg[pi+3:])
	if err != nil || len(proof) != scramKeyLen {
		return nil, malformed("Malformed proof in client-final-message.")
	}
	attrs := strings.Split(withoutProof, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "c=") {
		return nil, malformed("Expected attribute \"c\" in client-final-message.")
	}
	cbind, err := decodeBase64(attrs[0][2:])
	if err != nil {
		return nil, malformed("Malformed channel-binding data in client-final-message.")
	}
	if string(cbind) != s.gs2Header {
		return nil, pgerr.Wrap(pgerr.ErrProtocol, pgerr.ProtocolViolation,
			"SCRAM channel binding check failed").AsFatal()
	}
	if !strings.HasPrefix(attrs[1], "r=") {
		return nil, malformed("Expected attribute \"r\" in client-final-message.")
	}
	if attrs[1][2:] != s.nonce {
		return nil, malformed("Nonce does not match.")
	}
	for _, ext := range attrs[2:] {
		if len(ext) < 2 || ext[1] != '=' {
			return nil, malformed("Malformed extension in client-final-message.")
		}
	}

	authMessage := s.clientFirstBare + "," + s.serverFirst + "," + withoutProof
	clientSig := hmacSHA256(s.storedKey, authMessage)
	clientKey := make([]byte, scramKeyLen)
	subtle.XORBytes(clientKey, proof, clientSig)
	got := sha256.Sum256(clientKey)
	ok := subtle.ConstantTimeCompare(got[:], s.storedKey) == 1
	if !ok || s.doomed {
		return nil, authFailed(s.user)
	}
	if s.verifier != "" {
		rememberClientKey(s.user, s.verifier, clientKey)
	}
	return []byte("v=" + base64.StdEncoding.EncodeToString(hmacSHA256(s.serverKey, authMessage))), nil
}

// validNonce reports whether n is a non-empty run of printable ASCII
// characters other than ',' (RFC 5802 "printable").
func validNonce(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

func at(s string, i int) string {
	if i < len(s) {
		return s[i : i+1]
	}
	return "end of message"
}

// SCRAMClient is the client side of one SCRAM-SHA-256 exchange without
// channel binding, as pgsluice runs it against a PostgreSQL server. Call
// ClientFirst, then ClientFinal with the server-first-message, then
// VerifyServerFinal with the server-final-message. It is not safe for
// concurrent use. Inputs are copied; outputs are owned by the caller.
type SCRAMClient struct {
	user     string // sent in client-first; empty in production, as libpq does
	password string
	// With a stored verifier instead of a password (newSCRAMClientFromKey):
	// the verifier and the ClientKey recovered from a client's login.
	sec         *secret
	clientKey   []byte
	clientNonce string
	clientFirst string // bare
	expectedSig []byte
	state       scramState
}

// NewSCRAMClient prepares an exchange proving knowledge of password. The
// user name is not part of the exchange: PostgreSQL takes it from the
// startup packet.
func NewSCRAMClient(password string) *SCRAMClient {
	nonce, err := randomNonce()
	if err != nil {
		panic("auth: crypto/rand failed: " + err.Error()) // unreachable since Go 1.24
	}
	return &SCRAMClient{password: password, clientNonce: nonce}
}

// newSCRAMClientFromKey prepares an exchange that proves knowledge of the
// password of verifier sec with its ClientKey. The server must announce the
// verifier's salt and iteration count (ClientFinal fails with
// errSecretMismatch otherwise).
func newSCRAMClientFromKey(sec secret, clientKey []byte) *SCRAMClient {
	c := NewSCRAMClient("")
	c.sec, c.clientKey = &sec, clientKey
	return c
}

// errSecretMismatch: the server's salt or iteration count is not the
// configured verifier's.
var errSecretMismatch = errors.New("auth: the server's SCRAM parameters differ from the configured secret")

// ClientFirst returns the client-first-message ("n,,n=,r=<nonce>").
func (c *SCRAMClient) ClientFirst() []byte {
	c.clientFirst = "n=" + c.user + ",r=" + c.clientNonce
	c.state = scramStart
	return []byte("n,," + c.clientFirst)
}

// ClientFinal parses the server-first-message and returns the
// client-final-message carrying the proof. It rejects a server nonce that
// does not extend the client's, a bad salt, or an iteration count outside
// 1..4194304.
func (c *SCRAMClient) ClientFinal(serverFirst []byte) ([]byte, error) {
	if c.clientFirst == "" || c.state != scramStart {
		return nil, errors.New("auth: SCRAM ClientFinal called out of order")
	}
	c.state = scramFinished
	sf := string(serverFirst)
	attrs := strings.Split(sf, ",")
	if len(attrs) < 3 || !strings.HasPrefix(attrs[0], "r=") || !strings.HasPrefix(attrs[1], "s=") ||
		!strings.HasPrefix(attrs[2], "i=") {
		return nil, fmt.Errorf("auth: malformed SCRAM server-first-message")
	}
	nonce := attrs[0][2:]
	if !strings.HasPrefix(nonce, c.clientNonce) || len(nonce) == len(c.clientNonce) || !validNonce(nonce) {
		return nil, fmt.Errorf("auth: invalid SCRAM server nonce")
	}
	salt, err := decodeBase64(attrs[1][2:])
	if err != nil || len(salt) == 0 {
		return nil, fmt.Errorf("auth: invalid SCRAM salt")
	}
	iter, err := strconv.Atoi(attrs[2][2:])
	if err != nil || iter < 1 || iter > maxClientIterations {
		return nil, fmt.Errorf("auth: invalid SCRAM iteration count %q", attrs[2][2:])
	}
	var stored, serverKey, clientKey []byte
	if c.sec != nil {
		if iter != c.sec.iterations || !hmac.Equal(salt, c.sec.salt) {
			return nil, errSecretMismatch
		}
		stored, serverKey, clientKey = c.sec.storedKey, c.sec.serverKey, c.clientKey
	} else if stored, serverKey, clientKey, err = loginKeys(c.password, salt, iter); err != nil {
		return nil, fmt.Errorf("auth: derive SCRAM keys: %w", err)
	}
	withoutProof := "c=biws,r=" + nonce // biws = base64("n,,")
	authMessage := c.clientFirst + "," + sf + "," + withoutProof
	proof := make([]byte, scramKeyLen)
	subtle.XORBytes(proof, clientKey, hmacSHA256(stored, authMessage))
	c.expectedSig = hmacSHA256(serverKey, authMessage)
	c.state = scramFirstDone
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// VerifyServerFinal checks the server-final-message: the server must prove
// it knows the password's ServerKey. An "e=" error from the server, a
// malformed message or a wrong signature is an error.
func (c *SCRAMClient) VerifyServerFinal(serverFinal []byte) error {
	if c.state != scramFirstDone {
		return errors.New("auth: SCRAM VerifyServerFinal called out of order")
	}
	c.state = scramFinished
	sf := string(serverFinal)
	if strings.HasPrefix(sf, "e=") {
		return fmt.Errorf("auth: SCRAM server error: %q", sf[2:])
	}
	if !strings.HasPrefix(sf, "v=") {
		return errors.New("auth: malformed SCRAM server-final-message")
	}
	v := sf[2:]
	if i := strings.IndexByte(v, ','); i >= 0 {
		v = v[:i] // extensions
	}
	sig, err := decodeBase64(v)
	if err != nil || !hmac.Equal(sig, c.expectedSig) {
		return errors.New("auth: SCRAM server signature is invalid")
	}
	return nil
}
