package logrepl

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// lsn is a PostgreSQL write-ahead log position.
type lsn uint64

// String formats the LSN the way PostgreSQL does ("16/B374D848").
func (l lsn) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// parseLSN parses PostgreSQL's "XXX/XXX" form.
func parseLSN(s string) (lsn, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("logrepl: bad LSN %q", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("logrepl: bad LSN %q", s)
	}
	return lsn(h<<32 | l), nil
}

// CopyData payload types of the streaming replication protocol.
const (
	copyXLogData      = 'w'
	copyKeepalive     = 'k'
	copyStandbyStatus = 'r'
	xLogDataHeaderLen = 1 + 8 + 8 + 8
	keepaliveLen      = 1 + 8 + 8 + 1
	standbyStatusLen  = 1 + 8 + 8 + 8 + 8 + 1
)

// pgEpoch is PostgreSQL's timestamp epoch.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// walMessage is a decoded CopyData payload sent by the server during
// START_REPLICATION: either XLogData (Data set, aliasing the input) or a
// primary keepalive.
type walMessage struct {
	Keepalive bool
	// WALStart is the position of the data (XLogData only).
	WALStart lsn
	// WALEnd is the server's current end of WAL.
	WALEnd lsn
	// ReplyRequested is set by a keepalive that wants a status update now.
	ReplyRequested bool
	// Data is the pgoutput message of an XLogData; it aliases the input.
	Data []byte
}

// decodeWALMessage decodes the payload of a CopyData received in
// CopyBoth mode. Unknown types and wrong lengths are errors wrapping
// ErrMalformed; it never panics.
func decodeWALMessage(b []byte) (walMessage, error) {
	if len(b) == 0 {
		return walMessage{}, fmt.Errorf("%w: empty CopyData", ErrMalformed)
	}
	switch b[0] {
	case copyXLogData:
		if len(b) < xLogDataHeaderLen {
			return walMessage{}, fmt.Errorf("%w: XLogData of %d bytes, header needs %d", ErrMalformed, len(b), xLogDataHeaderLen)
		}
		return walMessage{
			WALStart: lsn(binary.BigEndian.Uint64(b[1:])),
			WALEnd:   lsn(binary.BigEndian.Uint64(b[9:])),
			Data:     b[xLogDataHeaderLen:],
		}, nil
	case copyKeepalive:
		if len(b) != keepaliveLen {
			return walMessage{}, fmt.Errorf("%w: keepalive of %d bytes, want %d", ErrMalformed, len(b), keepaliveLen)
		}
		if b[17] > 1 {
			return walMessage{}, fmt.Errorf("%w: keepalive reply flag %d", ErrMalformed, b[17])
		}
		return walMessage{Keepalive: true, WALEnd: lsn(binary.BigEndian.Uint64(b[1:])), ReplyRequested: b[17] == 1}, nil
	default:
		return walMessage{}, fmt.Errorf("%w: unknown CopyData type %q", ErrMalformed, b[0])
	}
}

// appendStandbyStatus appends a standby status update ('r') reporting
// written, flushed and applied positions at time now.
func appendStandbyStatus(dst []byte, written, flushed lsn, now time.Time, replyRequested bool) []byte {
	dst = append(dst, copyStandbyStatus)
	dst = binary.BigEndian.AppendUint64(dst, uint64(written))
	dst = binary.BigEndian.AppendUint64(dst, uint64(flushed))
	dst = binary.BigEndian.AppendUint64(dst, uint64(flushed)) // applied: invalidation is applied when reported
	dst = binary.BigEndian.AppendUint64(dst, uint64(now.Sub(pgEpoch).Microseconds()))
	if replyRequested {
		return append(dst, 1)
	}
	return append(dst, 0)
}
