package auth

import (
	"encoding/base64"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// TestAuthenticateServerMisbehaving plays a server that deviates from the
// protocol; the behaviour against a real PostgreSQL is in TestRealPostgres.
func TestAuthenticateServerMisbehaving(t *testing.T) {
	tests := []struct {
		name   string
		script func(be *pgproto3.Backend)
		want   error
	}{
		{"ok before SCRAM completes", func(be *pgproto3.Backend) {
			be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
			be.Flush()
			be.SetAuthType(pgproto3.AuthTypeSASL)
			be.Receive()
			be.Send(&pgproto3.AuthenticationOk{})
			be.Flush()
		}, pgerr.ErrBackendUnavailable},
		{"forged server signature", func(be *pgproto3.Backend) {
			be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
			be.Flush()
			be.SetAuthType(pgproto3.AuthTypeSASL)
			msg, _ := be.Receive()
			s, _ := NewSCRAMServer("u", "other password")
			sf, _ := s.ServerFirst(msg.(*pgproto3.SASLInitialResponse).Data)
			be.Send(&pgproto3.AuthenticationSASLContinue{Data: sf})
			be.Flush()
			be.SetAuthType(pgproto3.AuthTypeSASLContinue)
			be.Receive()
			be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))})
			be.Flush()
		}, pgerr.ErrBackendUnavailable},
		{"only SCRAM-SHA-256-PLUS", func(be *pgproto3.Backend) {
			be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS"}})
			be.Flush()
		}, pgerr.ErrUnsupported},
		{"GSSAPI", func(be *pgproto3.Backend) {
			be.Send(&pgproto3.AuthenticationGSS{})
			be.Flush()
		}, pgerr.ErrUnsupported},
		{"query result during auth", func(be *pgproto3.Backend) {
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			be.Flush()
		}, pgerr.ErrProtocol},
		{"SASL continue without SASL", func(be *pgproto3.Backend) {
			be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte("r=x,s=AA==,i=1")})
			be.Flush()
		}, pgerr.ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := net.Pipe()
			cli.SetDeadline(time.Now().Add(10 * time.Second))
			done := make(chan struct{})
			go func() {
				defer close(done)
				tt.script(pgproto3.NewBackend(srv, srv))
				srv.Close()
			}()
			err := AuthenticateServer(pgproto3.NewFrontend(cli, cli), "u", "pw")
			cli.Close()
			<-done
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}
