package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrintConfigHidesPasswords runs `pgsluice --print-config` with
// passwords set in the file (a user and the monitor login) and in the
// environment: none of them is printed, the users are.
func TestPrintConfigHidesPasswords(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgsluice.yaml")
	if err := os.WriteFile(path, []byte(`primary: {host: db1}
auth:
  users: [{name: fileuser, password: FilePw-91c2}]
routing:
  monitor: {user: mon, password: MonPw-1e7d}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGSLUICE_AUTH_USERS", "envuser:EnvPw-44af")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	code := run([]string{"--print-config", "-c", path})
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for _, pw := range []string{"FilePw-91c2", "MonPw-1e7d", "EnvPw-44af"} {
		if strings.Contains(string(out), pw) {
			t.Errorf("--print-config printed password %q:\n%s", pw, out)
		}
	}
	for _, want := range []string{"envuser", "mon", "********"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--print-config lacks %q (the check above would prove nothing):\n%s", want, out)
		}
	}
}
