package logrepl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrMalformed is wrapped by every error the pgoutput and replication
// message decoders return for input that does not follow the protocol.
var ErrMalformed = errors.New("logrepl: malformed replication message")

// pgoutput message types (protocol version 1) this package decodes. Origin,
// Type and Message are validated and ignored.
const (
	msgBegin    = 'B'
	msgCommit   = 'C'
	msgOrigin   = 'O'
	msgRelation = 'R'
	msgType     = 'Y'
	msgInsert   = 'I'
	msgUpdate   = 'U'
	msgDelete   = 'D'
	msgTruncate = 'T'
	msgMessage  = 'M'
)

// pgMessage is one decoded pgoutput message. Exactly one of the pointer
// fields is set, according to Type, for the kinds the stream acts on; the
// ignored kinds (Origin, Type, Message) set none. Strings are copies: a
// pgMessage never aliases the input buffer.
type pgMessage struct {
	Type     byte
	Begin    *beginMsg
	Commit   *commitMsg
	Relation *relationMsg
	// RelationID is the relation an Insert, Update or Delete changed.
	RelationID uint32
	Truncate   *truncateMsg
}

type beginMsg struct {
	FinalLSN   lsn
	CommitTime int64 // microseconds since 2000-01-01 UTC
	Xid        uint32
}

type commitMsg struct {
	Flags      uint8
	CommitLSN  lsn
	EndLSN     lsn
	CommitTime int64
}

type relationMsg struct {
	ID              uint32
	Namespace, Name string
	ReplicaIdentity byte
	Columns         int
}

type truncateMsg struct {
	Options     uint8 // 1 = CASCADE, 2 = RESTART IDENTITY
	RelationIDs []uint32
}

// reader consumes a pgoutput body. Every method checks bounds; the first
// failure sticks in err and later reads return zero values.
type reader struct {
	b   []byte
	err error
	// what names the message being decoded, for errors.
	what string
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s: %s", ErrMalformed, r.what, fmt.Sprintf(format, args...))
	}
}

func (r *reader) need(n int, field string) bool {
	if r.err != nil {
		return false
	}
	if len(r.b) < n {
		r.fail("%s: need %d bytes, have %d", field, n, len(r.b))
		return false
	}
	return true
}

// take consumes n bytes; nil once the body is exhausted or broken.
func (r *reader) take(n int, field string) []byte {
	if !r.need(n, field) {
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(field string) uint8 {
	if b := r.take(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16(field string) uint16 {
	if b := r.take(2, field); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32(field string) uint32 {
	if b := r.take(4, field); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64(field string) uint64 {
	if b := r.take(8, field); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// cstring reads a NUL-terminated string and returns a copy.
func (r *reader) cstring(field string) string {
	if r.err != nil {
		return ""
	}
	i := indexByte(r.b, 0)
	if i < 0 {
		r.fail("%s: missing NUL terminator", field)
		return ""
	}
	s := string(r.b[:i])
	r.b = r.b[i+1:]
	return s
}

func (r *reader) skip(n int, field string) {
	if n < 0 {
		r.fail("%s: negative length %d", field, n)
		return
	}
	r.take(n, field)
}

// done fails unless the whole body was consumed.
func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	return r.err
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// tupleData validates a TupleData block (Int16 column count, then per
// column a kind byte 'n', 'u', 't' or 'b', the last two followed by an Int32
// length and that many bytes) and skips it: invalidation needs no values.
func (r *reader) tupleData(field string) {
	n := int(r.u16(field + " column count"))
	for i := 0; i < n && r.err == nil; i++ {
		switch k := r.u8(field + " column kind"); k {
		case 'n', 'u':
		case 't', 'b':
			l := int32(r.u32(field + " value length"))
			r.skip(int(l), field+" value")
		default:
			r.fail("%s column %d: unknown kind %q", field, i, k)
		}
	}
}

// decodePgoutput decodes one pgoutput message (protocol version 1), the
// payload of an XLogData. It never panics: input that does not follow the
// protocol, including trailing bytes and unknown message types, returns an
// error wrapping ErrMalformed. The result does not alias data.
func decodePgoutput(data []byte) (pgMessage, error) {
	if len(data) == 0 {
		return pgMessage{}, fmt.Errorf("%w: empty pgoutput message", ErrMalformed)
	}
	m := pgMessage{Type: data[0]}
	r := &reader{b: data[1:]}
	switch m.Type {
	case msgBegin:
		r.what = "Begin"
		m.Begin = &beginMsg{FinalLSN: lsn(r.u64("final LSN")), CommitTime: int64(r.u64("commit time")), Xid: r.u32("xid")}
	case msgCommit:
		r.what = "Commit"
		m.Commit = &commitMsg{Flags: r.u8("flags"), CommitLSN: lsn(r.u64("commit LSN")), EndLSN: lsn(r.u64("end LSN")), CommitTime: int64(r.u64("commit time"))}
	case msgOrigin:
		r.what = "Origin"
		r.u64("commit LSN")
		r.cstring("name")
	case msgType:
		r.what = "Type"
		r.u32("type OID")
		r.cstring("namespace")
		r.cstring("name")
	case msgMessage:
		r.what = "Message"
		r.u8("flags")
		r.u64("LSN")
		r.cstring("prefix")
		r.skip(int(int32(r.u32("content length"))), "content")
	case msgRelation:
		r.what = "Relation"
		rel := &relationMsg{ID: r.u32("relation OID"), Namespace: r.cstring("namespace"), Name: r.cstring("name"), ReplicaIdentity: r.u8("replica identity")}
		rel.Columns = int(r.u16("column count"))
		for i := 0; i < rel.Columns && r.err == nil; i++ {
			r.u8("column flags")
			r.cstring("column name")
			r.u32("column type OID")
			r.u32("column type modifier")
		}
		m.Relation = rel
	case msgInsert:
		r.what = "Insert"
		m.RelationID = r.u32("relation OID")
		if k := r.u8("tuple kind"); r.err == nil && k != 'N' {
			r.fail("tuple kind %q, want 'N'", k)
		}
		r.tupleData("new tuple")
	case msgUpdate:
		r.what = "Update"
		m.RelationID = r.u32("relation OID")
		k := r.u8("tuple kind")
		if r.err == nil && (k == 'K' || k == 'O') {
			r.tupleData("old tuple")
			k = r.u8("tuple kind")
		}
		if r.err == nil && k != 'N' {
			r.fail("tuple kind %q, want 'N'", k)
		}
		r.tupleData("new tuple")
	case msgDelete:
		r.what = "Delete"
		m.RelationID = r.u32("relation OID")
		if k := r.u8("tuple kind"); r.err == nil && k != 'K' && k != 'O' {
			r.fail("tuple kind %q, want 'K' or 'O'", k)
		}
		r.tupleData("old tuple")
	case msgTruncate:
		r.what = "Truncate"
		n := int(r.u32("relation count"))
		t := &truncateMsg{Options: r.u8("options")}
		// Each id takes 4 bytes: refuse a count the body cannot hold before
		// allocating for it.
		if r.err == nil && (n < 0 || n > len(r.b)/4) {
			r.fail("relation count %d exceeds the %d bytes left", n, len(r.b))
		}
		if r.err == nil {
			t.RelationIDs = make([]uint32, n)
			for i := range t.RelationIDs {
				t.RelationIDs[i] = r.u32("relation OID")
			}
		}
		m.Truncate = t
	default:
		return pgMessage{}, fmt.Errorf("%w: unknown pgoutput message type %q", ErrMalformed, m.Type)
	}
	if err := r.done(); err != nil {
		return pgMessage{}, err
	}
	return m, nil
}

// txnTracker follows the pgoutput message sequence of one replication
// session: it remembers relation names by OID (pgoutput sends a Relation
// before the first change of each relation in a session and again after it
// changed) and collects the relations each transaction touched. It is not
// safe for concurrent use.
type txnTracker struct {
	relations map[uint32][]string // OID -> "schema.name" of the relation, then of its ancestors
	inTxn     bool
	touched   map[string]struct{}
}

func newTxnTracker() *txnTracker {
	return &txnTracker{relations: make(map[uint32][]string), touched: make(map[string]struct{})}
}

// commitResult is what a Commit reports: the relations the transaction
// changed, sorted and deduplicated (possibly empty, e.g. a transaction that
// only emitted a logical message), and the LSN just past the commit.
type commitResult struct {
	Tables []string
	EndLSN lsn
}

// apply feeds one decoded message. It returns a non-nil result at Commit.
// Messages out of sequence (a change outside a transaction, a nested Begin,
// a change of a relation never described) are errors wrapping ErrMalformed:
// the stream can no longer be trusted to report every change.
func (t *txnTracker) apply(m pgMessage) (*commitResult, error) {
	switch m.Type {
	case msgBegin:
		if t.inTxn {
			return nil, fmt.Errorf("%w: Begin inside a transaction", ErrMalformed)
		}
		t.inTxn = true
		clear(t.touched)
	case msgCommit:
		if !t.inTxn {
			return nil, fmt.Errorf("%w: Commit outside a transaction", ErrMalformed)
		}
		t.inTxn = false
		res := &commitResult{EndLSN: m.Commit.EndLSN, Tables: make([]string, 0, len(t.touched))}
		for name := range t.touched {
			res.Tables = append(res.Tables, name)
		}
		sort.Strings(res.Tables)
		clear(t.touched)
		return res, nil
	case msgRelation:
		t.relations[m.Relation.ID] = []string{qualifiedName(m.Relation.Namespace, m.Relation.Name)}
	case msgInsert, msgUpdate, msgDelete:
		if err := t.touch(m.Type, m.RelationID); err != nil {
			return nil, err
		}
	case msgTruncate:
		for _, id := range m.Truncate.RelationIDs {
			if err := t.touch(m.Type, id); err != nil {
				return nil, err
			}
		}
	}
	return nil, nil
}

func (t *txnTracker) touch(kind byte, id uint32) error {
	if !t.inTxn {
		return fmt.Errorf("%w: change (%q) outside a transaction", ErrMalformed, kind)
	}
	names, ok := t.relations[id]
	if !ok {
		return fmt.Errorf("%w: change (%q) of relation %d that was never described", ErrMalformed, kind, id)
	}
	for _, name := range names {
		t.touched[name] = struct{}{}
	}
	return nil
}

// addAncestors makes changes of relation id also report the given
// relations (its partitioned parents or inheritance parents). It must
// follow the Relation message that described id; a later Relation message
// for id forgets them.
func (t *txnTracker) addAncestors(id uint32, ancestors []string) {
	if names, ok := t.relations[id]; ok {
		t.relations[id] = append(names[:1:1], ancestors...)
	}
}

// qualifiedName joins schema and name as "schema.name", unquoted, which is
// how Handler.Changed reports relations.
func qualifiedName(schema, name string) string {
	var b strings.Builder
	b.Grow(len(schema) + 1 + len(name))
	b.WriteString(schema)
	b.WriteByte('.')
	b.WriteString(name)
	return b.String()
}
