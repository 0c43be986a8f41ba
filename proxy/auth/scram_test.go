package auth

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// RFC 7677 section 3 example exchange.
const (
	rfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

// rfcServer builds the server of the RFC 7677 example (fixed salt and nonce).
func rfcServer(t testing.TB, password string) *SCRAMServer {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	s := &SCRAMServer{user: "user", salt: salt, iterations: 4096, serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"}
	var err error
	s.storedKey, s.serverKey, _, err = scramKeys(password, salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSCRAMRFC7677Vector(t *testing.T) {
	c := &SCRAMClient{user: "user", password: "pencil", clientNonce: "rOprNGfwEbeRWgbNEkqO"}
	if got := string(c.ClientFirst()); got != rfcClientFirst {
		t.Fatalf("client-first %q", got)
	}
	s := rfcServer(t, "pencil")
	sf, err := s.ServerFirst([]byte(rfcClientFirst))
	if err != nil || string(sf) != rfcServerFirst {
		t.Fatalf("server-first %q %v", sf, err)
	}
	cf, err := c.ClientFinal(sf)
	if err != nil || string(cf) != rfcClientFinal {
		t.Fatalf("client-final %q %v", cf, err)
	}
	fin, err := s.ServerFinal(cf)
	if err != nil || string(fin) != rfcServerFinal {
		t.Fatalf("server-final %q %v", fin, err)
	}
	if err := c.VerifyServerFinal(fin); err != nil {
		t.Fatal(err)
	}
}

func TestSCRAMRoundTrip(t *testing.T) {
	for _, pw := range []string{"secret", "pässwörd", "I\u00adX", "\u2168", "a b"} {
		s, err := NewSCRAMServer("alice", pw)
		if err != nil {
			t.Fatal(err)
		}
		c := NewSCRAMClient(pw)
		sf, err := s.ServerFirst(c.ClientFirst())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(sf), ",i=4096") {
			t.Fatalf("server-first %q", sf)
		}
		cf, err := c.ClientFinal(sf)
		if err != nil {
			t.Fatal(err)
		}
		fin, err := s.ServerFinal(cf)
		if err != nil {
			t.Fatalf("password %q: %v", pw, err)
		}
		if err := c.VerifyServerFinal(fin); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSCRAMSaltStablePerUser(t *testing.T) {
	salt := func(user string, mock bool) string {
		var s *SCRAMServer
		var err error
		if mock {
			s, err = newMockSCRAMServer(user)
		} else {
			s, err = NewSCRAMServer(user, "pw")
		}
		if err != nil {
			t.Fatal(err)
		}
		sf, err := s.ServerFirst([]byte("n,,n=,r=abc"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(string(sf), ",")[1]
	}
	if salt("bob", false) != salt("bob", true) {
		t.Fatal("mock salt differs from real salt for the same user")
	}
	if salt("bob", false) == salt("carol", false) {
		t.Fatal("different users share a salt")
	}
}

// exchange runs a client-first/server-first step and returns the pieces
// needed to build client-final messages by hand.
func exchange(t *testing.T, s *SCRAMServer, clientFirst string) (nonce string) {
	t.Helper()
	sf, err := s.ServerFirst([]byte(clientFirst))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(strings.Split(string(sf), ",")[0], "r=")
}

func TestSCRAMFailures(t *testing.T) {
	t.Run("wrong password", func(t *testing.T) {
		s, _ := NewSCRAMServer("alice", "right")
		c := NewSCRAMClient("wrong")
		sf, _ := s.ServerFirst(c.ClientFirst())
		cf, _ := c.ClientFinal(sf)
		_, err := s.ServerFinal(cf)
		assertAuthFailed(t, err, "alice")
	})
	t.Run("unknown user with any password", func(t *testing.T) {
		s, _ := newMockSCRAMServer("ghost")
		c := NewSCRAMClient("whatever")
		sf, _ := s.ServerFirst(c.ClientFirst())
		cf, _ := c.ClientFinal(sf)
		_, err := s.ServerFinal(cf)
		assertAuthFailed(t, err, "ghost")
	})
	t.Run("forged proof", func(t *testing.T) {
		s := rfcServer(t, "pencil")
		if _, err := s.ServerFirst([]byte(rfcClientFirst)); err != nil {
			t.Fatal(err)
		}
		proof, _ := base64.StdEncoding.DecodeString(strings.SplitN(rfcClientFinal, ",p=", 2)[1])
		proof[0] ^= 1
		forged := strings.SplitN(rfcClientFinal, ",p=", 2)[0] + ",p=" + base64.StdEncoding.EncodeToString(proof)
		_, err := s.ServerFinal([]byte(forged))
		assertAuthFailed(t, err, "user")
	})
	t.Run("replayed final against new nonce", func(t *testing.T) {
		s, _ := NewSCRAMServer("user", "pencil")
		exchange(t, s, rfcClientFirst)
		_, err := s.ServerFinal([]byte(rfcClientFinal))
		assertProtocol(t, err, "Nonce does not match.")
	})
	t.Run("server signature forged", func(t *testing.T) {
		c := &SCRAMClient{user: "user", password: "pencil", clientNonce: "rOprNGfwEbeRWgbNEkqO"}
		c.ClientFirst()
		if _, err := c.ClientFinal([]byte(rfcServerFirst)); err != nil {
			t.Fatal(err)
		}
		if err := c.VerifyServerFinal([]byte("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))); err == nil {
			t.Fatal("forged server signature accepted")
		}
	})
	t.Run("server error attribute", func(t *testing.T) {
		c := &SCRAMClient{user: "user", password: "pencil", clientNonce: "rOprNGfwEbeRWgbNEkqO"}
		c.ClientFirst()
		c.ClientFinal([]byte(rfcServerFirst))
		if err := c.VerifyServerFinal([]byte("e=invalid-proof")); err == nil || !strings.Contains(err.Error(), "invalid-proof") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("client rejects bad server-first", func(t *testing.T) {
		for _, sf := range []string{
			"", "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", // nonce not extended
			"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
			"r=rOprNGfwEbeRWgbNEkqOxx,s=!!,i=4096",
			"r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
			"r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999",
			"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxx,i=4096",
		} {
			c := &SCRAMClient{password: "pencil", clientNonce: "rOprNGfwEbeRWgbNEkqO"}
			c.ClientFirst()
			if _, err := c.ClientFinal([]byte(sf)); err == nil {
				t.Errorf("accepted server-first %q", sf)
			}
		}
	})
}

func TestSCRAMServerFirstMalformed(t *testing.T) {
	tests := []struct {
		in     string
		code   string
		detail string
	}{
		{"n,,n=,r=abc", "", ""},
		{"y,,n=,r=abc", "", ""},
		{"n,,n=user,r=abc,x=ext", "", ""},
		{"", "08P01", "The message is empty."},
		{"p=tls-server-end-point,,n=,r=abc", "08P01", "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data."},
		{"x,,n=,r=abc", "08P01", `Unexpected channel-binding flag 'x'.`},
		{"n", "08P01", `Comma expected, but found character "end of message".`},
		{"n;,n=,r=abc", "08P01", `Comma expected, but found character ";".`},
		{"n,a=admin,n=,r=abc", "0A000", ""},
		{"n,,m=ext,n=,r=abc", "0A000", ""},
		{"n,x,n=,r=abc", "08P01", `Unexpected attribute "x" in client-first-message.`},
		{"n,,r=abc", "08P01", `Expected attribute "n" in client-first-message.`},
		{"n,,n=", "08P01", `Expected attribute "n" in client-first-message.`},
		{"n,,n=,x=abc", "08P01", `Expected attribute "r" in client-first-message.`},
		{"n,,n=,r=", "08P01", "The client nonce is empty or contains invalid characters."},
		{"n,,n=,r=a\x01b", "08P01", "The client nonce is empty or contains invalid characters."},
		{"n,,n=,r=abc,", "08P01", "Malformed extension in client-first-message."},
	}
	for _, tt := range tests {
		s := rfcServer(t, "pencil")
		out, err := s.ServerFirst([]byte(tt.in))
		if tt.code == "" {
			if err != nil || !bytes.HasPrefix(out, []byte("r=")) {
				t.Errorf("ServerFirst(%q) = %q, %v", tt.in, out, err)
			}
			continue
		}
		e := pgerr.ToError(err)
		if err == nil || e.Code != tt.code || e.Severity != "FATAL" || (tt.detail != "" && e.Detail != tt.detail) || !errors.Is(err, pgerr.ErrProtocol) {
			t.Errorf("ServerFirst(%q) error = %v (detail %q), want %s %q", tt.in, err, e.Detail, tt.code, tt.detail)
		}
	}
	// A second client-first is refused.
	s := rfcServer(t, "pencil")
	s.ServerFirst([]byte(rfcClientFirst))
	if _, err := s.ServerFirst([]byte(rfcClientFirst)); err == nil {
		t.Fatal("second ServerFirst accepted")
	}
}

func TestSCRAMServerFinalMalformed(t *testing.T) {
	nonce := "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	proof := "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	tests := []struct {
		first, in string
		message   string
		detail    string
	}{
		{rfcClientFirst, "", "malformed SCRAM message", "Could not find proof in client-final-message."},
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=", "malformed SCRAM message", "Malformed proof in client-final-message."},
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=AAAA", "malformed SCRAM message", "Malformed proof in client-final-message."},
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=!!!!", "malformed SCRAM message", "Malformed proof in client-final-message."},
		// encoding/base64 skips line breaks even in strict mode.
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=\r" + proof[2:], "malformed SCRAM message", "Malformed proof in client-final-message."},
		{rfcClientFirst, "c=bi\nws,r=" + nonce + "," + proof, "malformed SCRAM message", "Malformed channel-binding data in client-final-message."},
		{rfcClientFirst, "r=" + nonce + "," + proof, "malformed SCRAM message", `Expected attribute "c" in client-final-message.`},
		{rfcClientFirst, "c=biws," + proof, "malformed SCRAM message", `Expected attribute "c" in client-final-message.`},
		{rfcClientFirst, "c=b!ws,r=" + nonce + "," + proof, "malformed SCRAM message", "Malformed channel-binding data in client-final-message."},
		{rfcClientFirst, "c=eSws,r=" + nonce + "," + proof, "SCRAM channel binding check failed", ""}, // y,, but client-first said n,,
		{"y,,n=user,r=rOprNGfwEbeRWgbNEkqO", "c=biws,r=" + nonce + "," + proof, "SCRAM channel binding check failed", ""},
		{rfcClientFirst, "c=biws,x=" + nonce + "," + proof, "malformed SCRAM message", `Expected attribute "r" in client-final-message.`},
		{rfcClientFirst, "c=biws,r=" + nonce + "x," + proof, "malformed SCRAM message", "Nonce does not match."},
		{rfcClientFirst, "c=biws,r=" + nonce + ",bad," + proof, "malformed SCRAM message", "Malformed extension in client-final-message."},
	}
	for _, tt := range tests {
		s := rfcServer(t, "pencil")
		if _, err := s.ServerFirst([]byte(tt.first)); err != nil {
			t.Fatal(err)
		}
		_, err := s.ServerFinal([]byte(tt.in))
		e := pgerr.ToError(err)
		if err == nil || e.Code != "08P01" || e.Message != tt.message || e.Detail != tt.detail || !errors.Is(err, pgerr.ErrProtocol) {
			t.Errorf("ServerFinal(%q) = %v (detail %q); want %q / %q", tt.in, err, e.Detail, tt.message, tt.detail)
		}
	}
	// y,, with matching c= and extensions is fine.
	s := rfcServer(t, "pencil")
	sf, err := s.ServerFirst([]byte("y,,n=,r=abc"))
	if err != nil {
		t.Fatal(err)
	}
	n := strings.TrimPrefix(strings.Split(string(sf), ",")[0], "r=")
	_, err = s.ServerFinal([]byte("c=eSws,r=" + n + ",x=1," + proof))
	assertAuthFailed(t, err, "user") // syntax accepted, proof is for another exchange
	// Final before first.
	if _, err := rfcServer(t, "pencil").ServerFinal([]byte(rfcClientFinal)); err == nil {
		t.Fatal("ServerFinal before ServerFirst accepted")
	}
}

func TestMD5Password(t *testing.T) {
	// The stored form of user postgres / password postgres is the well-known
	// md53175bce1d3201d16594cebf9d7eb3f9d; the response hashes it with the salt.
	salt := [4]byte{1, 2, 3, 4}
	outer := md5.Sum(append([]byte("3175bce1d3201d16594cebf9d7eb3f9d"), salt[:]...))
	if got, want := MD5Password("postgres", "postgres", salt), "md5"+hex.EncodeToString(outer[:]); got != want {
		t.Fatalf("MD5Password = %s, want %s", got, want)
	}
}

func TestSASLPrep(t *testing.T) {
	tests := []struct{ in, want string }{
		{"user", "user"},
		{"USER", "USER"},
		{"I\u00adX", "IX"},                 // RFC 4013 example: soft hyphen mapped to nothing
		{"\u00aa", "a"},                    // NFKC
		{"\u2168", "IX"},                   // NFKC
		{"a\u00a0b", "a b"},                // non-ASCII space
		{"\x07", "\x07"},                   // ASCII: unchanged, as PostgreSQL does
		{"\u0627\u0031", "\u0627\u0031"},   // bidi violation: raw password kept
		{"a\u0080é", "a\u0080é"},           // prohibited control: raw
		{"\xff\xfe", "\xff\xfe"},           // invalid UTF-8: raw
		{"\u0627b\u0628", "\u0627b\u0628"}, // RandAL with L: raw
		{"\u0627\u0628", "\u0627\u0628"},   // all RandAL: fine
		{"\u00ad", "\u00ad"},               // empty after mapping: raw
	}
	for _, tt := range tests {
		if got := saslPrep(tt.in); got != tt.want {
			t.Errorf("saslPrep(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func assertAuthFailed(t *testing.T, err error, user string) {
	t.Helper()
	e := pgerr.ToError(err)
	if err == nil || !errors.Is(err, pgerr.ErrAuthFailed) || e.Code != "28P01" || e.Severity != "FATAL" ||
		e.Message != `password authentication failed for user "`+user+`"` {
		t.Fatalf("got %v, want 28P01 auth failure for %q", err, user)
	}
}

func assertProtocol(t *testing.T, err error, detail string) {
	t.Helper()
	e := pgerr.ToError(err)
	if err == nil || !errors.Is(err, pgerr.ErrProtocol) || e.Code != "08P01" || e.Detail != detail {
		t.Fatalf("got %v (detail %q), want 08P01 %q", err, e.Detail, detail)
	}
}

func FuzzSCRAMServerFirst(f *testing.F) {
	for _, s := range []string{rfcClientFirst, "y,,n=,r=abc", "p=x,,n=,r=a", "n,a=b,n=,r=a", "n,,m=x", "n,,n=,r=a,b=c", ""} {
		f.Add([]byte(s))
	}
	base := rfcServer(f, "pencil")
	f.Fuzz(func(t *testing.T, in []byte) {
		s := *base
		out, err := s.ServerFirst(in)
		if err == nil {
			if !bytes.HasPrefix(out, []byte("r=")) {
				t.Fatalf("bad server-first %q", out)
			}
			return
		}
		if e := pgerr.ToError(err); e.Severity != "FATAL" || !errors.Is(err, pgerr.ErrProtocol) {
			t.Fatalf("unexpected error class %v", err)
		}
	})
}

func FuzzSCRAMServerFinal(f *testing.F) {
	for _, s := range []string{rfcClientFinal, "c=biws,r=x,p=AAAA", "c=eSws,r=,p=", ",p=", "c=,r=,x=,p=" + strings.Repeat("A", 44), ""} {
		f.Add([]byte(s))
	}
	base := rfcServer(f, "pencil")
	if _, err := base.ServerFirst([]byte(rfcClientFirst)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s := *base
		out, err := s.ServerFinal(in)
		if err == nil {
			if string(in) != rfcClientFinal || string(out) != rfcServerFinal {
				t.Fatalf("accepted %q -> %q", in, out)
			}
			return
		}
		if !errors.Is(err, pgerr.ErrProtocol) && !errors.Is(err, pgerr.ErrAuthFailed) {
			t.Fatalf("unexpected error class %v", err)
		}
	})
}
