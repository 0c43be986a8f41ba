package config

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// SCRAMSecretPrefix starts a password that is a stored SCRAM verifier
// ("SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", as in
// PostgreSQL's pg_authid) rather than a plaintext password.
const SCRAMSecretPrefix = "SCRAM-SHA-256$"

// IsStoredSecret reports whether a configured password is a stored secret
// (a SCRAM verifier or PostgreSQL's md5 hash, "md5" and 32 lower-case hex
// digits) rather than a plaintext password.
func IsStoredSecret(s string) bool {
	return strings.HasPrefix(s, SCRAMSecretPrefix) || IsMD5Hash(s)
}

// IsMD5Hash reports whether s is PostgreSQL's md5 password hash: "md5" and
// 32 lower-case hex digits (PostgreSQL's isMD5).
func IsMD5Hash(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for i := 3; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkSCRAMSecret validates the syntax of a password that starts with
// SCRAMSecretPrefix, so that a mistyped verifier is refused at load instead
// of being taken for a plaintext password. proxy/auth decodes the value
// (and its tests check that both agree).
func checkSCRAMSecret(s string) error {
	if !strings.HasPrefix(s, SCRAMSecretPrefix) {
		return nil
	}
	params, keys, ok := strings.Cut(s[len(SCRAMSecretPrefix):], "$")
	iter, salt, ok2 := strings.Cut(params, ":")
	stored, server, ok3 := strings.Cut(keys, ":")
	if !ok || !ok2 || !ok3 {
		return fmt.Errorf("malformed SCRAM secret: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in pg_authid.rolpassword")
	}
	if n, err := strconv.Atoi(iter); err != nil || n < 1 || n > 1<<22 {
		return fmt.Errorf("malformed SCRAM secret: iteration count %q is not a number in 1..%d", iter, 1<<22)
	}
	dec := func(v string) int {
		if strings.ContainsAny(v, "\r\n") {
			return -1
		}
		b, err := base64.StdEncoding.Strict().DecodeString(v)
		if err != nil {
			return -1
		}
		return len(b)
	}
	if dec(salt) < 1 {
		return fmt.Errorf("malformed SCRAM secret: the salt is not base64")
	}
	if dec(stored) != 32 || dec(server) != 32 {
		return fmt.Errorf("malformed SCRAM secret: StoredKey and ServerKey must be 32 bytes of base64 each")
	}
	return nil
}
