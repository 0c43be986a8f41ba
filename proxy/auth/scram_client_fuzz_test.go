package auth

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
)

// FuzzSCRAMClient feeds the proxy's SCRAM client (the side that logs in to
// PostgreSQL) arbitrary server-first and server-final messages: it must
// never panic, must build its proof only from a well-formed server-first,
// and must accept a server-final only when it carries the signature that
// proves the server knows the password. The client nonce and user are
// fixed to RFC 7677's so the seeds form a valid exchange.
func FuzzSCRAMClient(f *testing.F) {
	for _, s := range [][2]string{
		{rfcServerFirst, rfcServerFinal},
		{rfcServerFirst, "v=" + strings.Repeat("A", 44)},
		{rfcServerFirst, "e=invalid-proof"},
		{rfcServerFirst, rfcServerFinal + ",x=ext"},
		{"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", rfcServerFinal},
		{"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", rfcServerFinal},
		{"r=rOprNGfwEbeRWgbNEkqOx,s=,i=1", "v="},
		{"r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=0", ""},
		{"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=AA==,i=1", "v=="},
		{"", ""},
	} {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, serverFirst, serverFinal []byte) {
		// Large iteration counts are legal but only make the fuzzer slow.
		if i := strings.Index(string(serverFirst), ",i="); i >= 0 {
			if n, err := strconv.Atoi(strings.SplitN(string(serverFirst[i+3:]), ",", 2)[0]); err == nil && n > 8192 {
				return
			}
		}
		c := &SCRAMClient{user: "user", password: "pencil", clientNonce: "rOprNGfwEbeRWgbNEkqO"}
		if string(c.ClientFirst()) != rfcClientFirst {
			t.Fatalf("client-first %q", c.ClientFirst())
		}
		final, err := c.ClientFinal(serverFirst)
		if err != nil {
			if c.VerifyServerFinal(serverFinal) == nil {
				t.Fatal("server-final accepted after a rejected server-first")
			}
			return
		}
		attrs := strings.Split(string(serverFirst), ",")
		if !strings.HasPrefix(string(final), "c=biws,"+attrs[0]+",p=") {
			t.Fatalf("client-final %q for server-first %q", final, serverFirst)
		}
		if string(serverFirst) == rfcServerFirst && string(final) != rfcClientFinal {
			t.Fatalf("RFC 7677 exchange: client-final %q, want %q", final, rfcClientFinal)
		}
		if c.VerifyServerFinal(serverFinal) == nil {
			want := "v=" + base64.StdEncoding.EncodeToString(c.expectedSig)
			if s := string(serverFinal); s != want && !strings.HasPrefix(s, want+",") {
				t.Fatalf("accepted server-final %q, the signature is %q", s, want)
			}
		}
		if c.VerifyServerFinal(serverFinal) == nil {
			t.Fatal("VerifyServerFinal accepted twice")
		}
	})
}
