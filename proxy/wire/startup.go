package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// Request codes of the startup phase. Each is sent where a StartupMessage
// carries its protocol version.
const (
	SSLRequestCode    = 80877103 // 1234.5679
	GSSENCRequestCode = 80877104 // 1234.5680
	CancelRequestCode = 80877102 // 1234.5678
	ProtocolVersion30 = 196608   // 3.0
)

// MaxStartupPacketLen is PostgreSQL's limit on the length of a startup
// packet (MAX_STARTUP_PACKET_LENGTH). ReadStartup uses it when maxLen <= 0.
const MaxStartupPacketLen = 10000

// ServerMinorVersion is the newest minor version of protocol 3 that pgsluice
// speaks to clients. A client asking for more gets Startup.MinorVersion above
// this and must be answered with NegotiateProtocolVersion.
const ServerMinorVersion = 0

// StartupKind tells which startup-phase packet a client sent.
type StartupKind uint8

// Kinds of startup-phase packets.
const (
	StartupMessage StartupKind = iota + 1
	SSLRequest
	GSSENCRequest
	CancelRequest
)

// String returns the PostgreSQL name of the packet kind.
func (k StartupKind) String() string {
	switch k {
	case StartupMessage:
		return "StartupMessage"
	case SSLRequest:
		return "SSLRequest"
	case GSSENCRequest:
		return "GSSENCRequest"
	case CancelRequest:
		return "CancelRequest"
	}
	return fmt.Sprintf("StartupKind(%d)", uint8(k))
}

// Startup is one decoded startup-phase packet. It is a plain value owned by
// the caller; its strings share one backing allocation (the packet body),
// which stays alive as long as any of them does (at most maxLen bytes).
type Startup struct {
	Kind StartupKind

	// MinorVersion is the protocol 3 minor version the client requested
	// (StartupMessage only). If it is above ServerMinorVersion the caller
	// must send NegotiateProtocolVersion before authentication.
	MinorVersion uint16

	// Params holds the StartupMessage parameters: user, database, options,
	// application_name, replication, client_encoding, and any other GUC the
	// client sets. A later duplicate overrides an earlier one. Parameters
	// whose name starts with "_pq_." are not included (see
	// UnsupportedOptions). Nil for other kinds.
	Params map[string]string

	// UnsupportedOptions lists, in order, the names of the "_pq_." protocol
	// options the client sent. pgsluice supports none, so a non-empty list
	// must be reported with NegotiateProtocolVersion.
	UnsupportedOptions []string

	// ProcessID and SecretKey are the key of a CancelRequest.
	ProcessID, SecretKey uint32
}

// User returns the "user" parameter.
func (s Startup) User() string { return s.Params["user"] }

// Database returns the "database" parameter, defaulting to the user name as
// PostgreSQL does.
func (s Startup) Database() string {
	if db := s.Params["database"]; db != "" {
		return db
	}
	return s.Params["user"]
}

// NeedsNegotiation reports whether the client asked for a newer minor
// protocol version or for protocol options pgsluice does not support; the
// caller must then send NegotiateProtocolVersion{NewestMinorProtocol:
// ServerMinorVersion, UnrecognizedOptions: s.UnsupportedOptions}.
func (s Startup) NeedsNegotiation() bool {
	return s.Kind == StartupMessage && (s.MinorVersion > ServerMinorVersion || len(s.UnsupportedOptions) > 0)
}

// ReadStartup reads one startup-phase packet from r: an Int32 length that
// counts itself, an Int32 code (protocol version or request code), and a
// body. maxLen bounds the length (<= 0 means MaxStartupPacketLen); ReadStartup
// never reads or allocates more than that for the packet, whatever the length
// field claims.
//
// A clean end of stream before the first byte returns io.EOF unwrapped (a
// client or health check that connected and left: PostgreSQL closes such
// connections silently). Other read failures are returned wrapped with %w.
// Malformed packets return a *pgerr.Error whose Cause chain includes
// pgerr.ErrProtocol, with PostgreSQL's code and message:
//
//	08P01 invalid length of startup packet
//	08P01 incomplete startup packet            (also wraps io.ErrUnexpectedEOF)
//	08P01 invalid startup packet layout: expected terminator as last byte
//	0A000 unsupported frontend protocol M.m: server supports 3.0 to 3.0
//	28000 no PostgreSQL user name specified in startup packet
//	22023 invalid value for parameter "replication": "x"
//
// All of them have FATAL severity. ReadStartup is safe for concurrent use on
// different readers; it buffers nothing beyond the packet it returns.
func ReadStartup(r io.Reader, maxLen int) (Startup, error) {
	if maxLen <= 0 {
		maxLen = MaxStartupPacketLen
	}
	var hdr [8]byte
	n, err := io.ReadFull(r, hdr[:4])
	if err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return Startup{}, io.EOF
		}
		return Startup{}, readErr(err)
	}
	length := int64(int32(binary.BigEndian.Uint32(hdr[:4])))
	if length < 8 || length > int64(maxLen) {
		return Startup{}, protoErr(pgerr.ProtocolViolation, "invalid length of startup packet")
	}
	if _, err := io.ReadFull(r, hdr[4:8]); err != nil {
		return Startup{}, readErr(err)
	}
	code := binary.BigEndian.Uint32(hdr[4:8])

	switch code {
	case SSLRequestCode, GSSENCRequestCode:
		if length != 8 {
			return Startup{}, protoErr(pgerr.ProtocolViolation, "invalid length of startup packet")
		}
		if code == SSLRequestCode {
			return Startup{Kind: SSLRequest}, nil
		}
		return Startup{Kind: GSSENCRequest}, nil
	case CancelRequestCode:
		if length != 16 {
			return Startup{}, protoErr(pgerr.ProtocolViolation, "invalid length of cancel request packet")
		}
		var key [8]byte
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return Startup{}, readErr(err)
		}
		return Startup{Kind: CancelRequest,
			ProcessID: binary.BigEndian.Uint32(key[:4]), SecretKey: binary.BigEndian.Uint32(key[4:])}, nil
	}

	body := make([]byte, length-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return Startup{}, readErr(err)
	}

	major, minor := code>>16, code&0xffff
	if major != 3 {
		return Startup{}, protoErr(pgerr.FeatureNotSupported,
			"unsupported frontend protocol %d.%d: server supports 3.0 to 3.%d", major, minor, ServerMinorVersion)
	}
	st := Startup{Kind: StartupMessage, MinorVersion: uint16(minor), Params: make(map[string]string, 8)}
	if err := parseStartupParams(&st, body); err != nil {
		return Startup{}, err
	}
	if st.Params["user"] == "" {
		return Startup{}, protoErr(pgerr.InvalidAuthorizationSpecification,
			"no PostgreSQL user name specified in startup packet")
	}
	return st, nil
}

// parseStartupParams decodes the name/value pairs of a StartupMessage body
// exactly as PostgreSQL's ProcessStartupPacket does: pairs of NUL-terminated
// strings, then one NUL that must be the last byte of the packet.
func parseStartupParams(st *Startup, body []byte) error {
	s := string(body) // one allocation; names and values are substrings of it
	off := 0
	for off < len(s) {
		if s[off] == 0 {
			break // packet terminator
		}
		nameEnd := strings.IndexByte(s[off:], 0)
		if nameEnd < 0 {
			break
		}
		name := s[off : off+nameEnd]
		valOff := off + nameEnd + 1
		if valOff >= len(s) {
			break // missing value: reported as a layout error below
		}
		valEnd := strings.IndexByte(s[valOff:], 0)
		if valEnd < 0 {
			break
		}
		value := s[valOff : valOff+valEnd]
		switch {
		case strings.HasPrefix(name, "_pq_."):
			st.UnsupportedOptions = append(st.UnsupportedOptions, name)
		case name == "replication":
			if !validReplication(value) {
				e := pgerr.Wrap(pgerr.ErrProtocol, pgerr.InvalidParameterValue,
					"invalid value for parameter %q: %q", "replication", value).AsFatal()
				return e.WithHint(`Valid values are: "false", 0, "true", 1, "database".`)
			}
			st.Params[name] = value
		default:
			st.Params[name] = value
		}
		off = valOff + valEnd + 1
	}
	if off != len(s)-1 || len(s) == 0 {
		return protoErr(pgerr.ProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
	}
	return nil
}

// validReplication accepts what PostgreSQL's parse_bool accepts plus
// "database".
func validReplication(v string) bool {
	if v == "database" {
		return true
	}
	l := strings.ToLower(v)
	switch l {
	case "t", "tr", "tru", "true", "f", "fa", "fal", "fals", "false",
		"y", "ye", "yes", "n", "no", "on", "of", "off", "1", "0":
		// PostgreSQL rejects the ambiguous prefix "o".
		return true
	}
	return false
}

func protoErr(code, format string, args ...any) error {
	return pgerr.Wrap(pgerr.ErrProtocol, code, format, args...).AsFatal()
}

// readErr classifies a failed read inside a packet: running out of bytes is
// a protocol error ("incomplete startup packet") that also wraps
// io.ErrUnexpectedEOF; anything else (timeouts, resets) is returned wrapped.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return pgerr.Wrap(fmt.Errorf("%w: %w", pgerr.ErrProtocol, io.ErrUnexpectedEOF),
			pgerr.ProtocolViolation, "incomplete startup packet").AsFatal()
	}
	return fmt.Errorf("wire: read startup packet: %w", err)
}

// ParseOptions parses the value of the "options" startup parameter the way
// PostgreSQL does (pg_split_opts + process_postgres_switches): arguments are
// separated by unescaped whitespace, a backslash makes the next character
// literal, and each setting is "-c name=value", "-cname=value" or
// "--name=value". Names are normalised as PostgreSQL does: '-' becomes '_'
// and the name is lower-cased (GUC names are case-insensitive). A later
// setting of the same name wins.
//
// Other server switches (-B, -d, -F, ...) are rejected with 0A000, and
// malformed settings with 42601 and PostgreSQL's message, so the caller can
// refuse the connection exactly where PostgreSQL would. The result is owned
// by the caller; an empty string yields an empty map.
func ParseOptions(s string) (map[string]string, error) {
	args := splitOptions(s)
	out := make(map[string]string, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		var setting, prefix string
		switch {
		case strings.HasPrefix(a, "--"):
			setting, prefix = a[2:], "--"
		case a == "-c":
			if i+1 >= len(args) {
				return nil, pgerr.New(pgerr.SyntaxError, "invalid command-line argument for server process: %s", a).
					WithHint("The -c switch requires a name=value argument.")
			}
			i++
			setting, prefix = args[i], "-c "
		case strings.HasPrefix(a, "-c"):
			setting, prefix = a[2:], "-c "
		case strings.HasPrefix(a, "-") && len(a) > 1:
			return nil, pgerr.New(pgerr.FeatureNotSupported,
				"unsupported switch %q in startup parameter \"options\"", a).
				WithHint("pgsluice accepts only -c name=value and --name=value in \"options\".")
		default:
			return nil, pgerr.New(pgerr.SyntaxError, "invalid command-line argument for server process: %s", a)
		}
		eq := strings.IndexByte(setting, '=')
		if eq < 0 {
			if prefix == "--" {
				return nil, pgerr.New(pgerr.SyntaxError, "--%s requires a value", setting)
			}
			return nil, pgerr.New(pgerr.SyntaxError, "-c %s requires a value", setting)
		}
		name := strings.ToLower(strings.ReplaceAll(setting[:eq], "-", "_"))
		if name == "" {
			return nil, pgerr.New(pgerr.SyntaxError, "invalid command-line argument for server process: %s", a)
		}
		out[name] = setting[eq+1:]
	}
	return out, nil
}

// splitOptions splits like PostgreSQL's pg_split_opts: whitespace (C
// isspace) separates arguments unless escaped with a backslash; a backslash
// is dropped and the following character kept literally.
func splitOptions(s string) []string {
	var args []string
	var b strings.Builder
	i := 0
	for i < len(s) {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) {
			break
		}
		b.Reset()
		escaped := false
		for i < len(s) {
			c := s[i]
			if isSpace(c) && !escaped {
				break
			}
			if !escaped && c == '\\' {
				escaped = true
			} else {
				escaped = false
				b.WriteByte(c)
			}
			i++
		}
		args = append(args, b.String())
	}
	return args
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}
