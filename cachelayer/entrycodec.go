package cachelayer

import (
	"encoding/binary"
	"errors"
	"time"
)

// Redis entry layout (version 1):
//
//	byte    version (1)
//	uvarint len(db), db
//	uvarint ntables, then per table: uvarint len, bytes
//	(ntables+2) x uint64 big endian: generations [global, db, tables...]
//	int64   created, unix nanoseconds, big endian
//	rest    frames
const entryVersion = 1

var errCorruptEntry = errors.New("cachelayer: corrupt entry")

// redisEntry is a decoded Redis entry. frames aliases the decoded buffer.
type redisEntry struct {
	db      string
	tables  []string
	remote  []uint64
	created time.Time
	frames  []byte
}

func encodeEntry(db string, tables []string, remote []uint64, created time.Time, frames []byte) []byte {
	n := 1 + binary.MaxVarintLen64*(2+len(tables)) + len(db) + 8*len(remote) + 8 + len(frames)
	for _, t := range tables {
		n += len(t)
	}
	b := make([]byte, 0, n)
	b = append(b, entryVersion)
	b = binary.AppendUvarint(b, uint64(len(db)))
	b = append(b, db...)
	b = binary.AppendUvarint(b, uint64(len(tables)))
	for _, t := range tables {
		b = binary.AppendUvarint(b, uint64(len(t)))
		b = append(b, t...)
	}
	for _, v := range remote {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(created.UnixNano()))
	return append(b, frames...)
}

// decodeEntry parses b; it never panics on malformed input.
func decodeEntry(b []byte) (redisEntry, error) {
	var e redisEntry
	if len(b) < 1 || b[0] != entryVersion {
		return e, errCorruptEntry
	}
	b = b[1:]
	str := func() (string, bool) {
		l, n := uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return "", false
		}
		s := string(b[n : n+int(l)])
		b = b[n+int(l):]
		return s, true
	}
	var ok bool
	if e.db, ok = str(); !ok {
		return e, errCorruptEntry
	}
	nt, n := uvarint(b)
	if n <= 0 || nt > uint64(len(b)) { // every table takes at least one byte
		return e, errCorruptEntry
	}
	b = b[n:]
	e.tables = make([]string, 0, nt)
	for range nt {
		t, ok := str()
		if !ok {
			return e, errCorruptEntry
		}
		e.tables = append(e.tables, t)
	}
	nv := int(nt) + 2
	if len(b) < 8*nv+8 {
		return e, errCorruptEntry
	}
	e.remote = make([]uint64, nv)
	for i := range e.remote {
		e.remote[i] = binary.BigEndian.Uint64(b)
		b = b[8:]
	}
	e.created = time.Unix(0, int64(binary.BigEndian.Uint64(b)))
	e.frames = b[8:]
	return e, nil
}

// uvarint decodes a minimally encoded uvarint (so that every entry has one
// encoding); n <= 0 means malformed.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n > 1 && b[n-1] == 0 { // a trailing zero group is a non-minimal encoding
		return 0, -1
	}
	return v, n
}
