package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// HeaderLen is the size of a regular message header: a type byte and an
// Int32 length that counts itself but not the type byte.
const HeaderLen = 5

// BufferSize is the size of the buffered readers and writers the proxy puts
// on each connection. A message whose whole frame fits is forwarded with one
// copy from the read buffer to the write buffer.
const BufferSize = 16 << 10

// PeekHeader returns the type and body length of the next message in r
// without consuming it. A length below 4 or a body above maxBody is a
// protocol error wrapping pgerr.ErrProtocol or pgerr.ErrMessageTooLarge.
// It blocks until the 5 header bytes are available.
func PeekHeader(r *bufio.Reader, maxBody int) (typ byte, bodyLen int, err error) {
	h, err := r.Peek(HeaderLen)
	if err != nil {
		if err == io.EOF && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	l := int64(binary.BigEndian.Uint32(h[1:5]))
	if l < 4 {
		return 0, 0, fmt.Errorf("%w: invalid message length %d for message type %q", pgerr.ErrProtocol, l, h[0])
	}
	if l-4 > int64(maxBody) {
		return 0, 0, fmt.Errorf("%w: message of type %q is %d bytes, max_message_size is %d", pgerr.ErrMessageTooLarge, h[0], l-4, maxBody)
	}
	return h[0], int(l - 4), nil
}

// Forward copies the next message (header and bodyLen body bytes, as
// returned by PeekHeader) from r to w unchanged. Small frames are copied
// straight out of r's buffer; large ones are streamed in chunks, so a 1 GiB
// DataRow never needs 1 GiB of memory.
func Forward(w *bufio.Writer, r *bufio.Reader, bodyLen int) error {
	total := HeaderLen + bodyLen
	if total <= r.Size() {
		frame, err := r.Peek(total)
		if err != nil {
			return unexpected(err)
		}
		if _, err := w.Write(frame); err != nil {
			return err
		}
		_, err = r.Discard(total)
		return err
	}
	for total > 0 {
		n := r.Buffered()
		if n == 0 {
			if _, err := r.Peek(1); err != nil {
				return unexpected(err)
			}
			n = r.Buffered()
		}
		if n > total {
			n = total
		}
		chunk, _ := r.Peek(n)
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		r.Discard(n)
		total -= n
	}
	return nil
}

// ReadBody consumes the next message, whose header PeekHeader returned, and
// returns its body. When the frame fits r's buffer the body aliases that
// buffer and is valid only until the next read from r; otherwise it is read
// into *scratch, which is grown as needed and owned by the caller.
func ReadBody(r *bufio.Reader, bodyLen int, scratch *[]byte) ([]byte, error) {
	total := HeaderLen + bodyLen
	if total <= r.Size() {
		frame, err := r.Peek(total)
		if err != nil {
			return nil, unexpected(err)
		}
		r.Discard(total)
		return frame[HeaderLen:], nil
	}
	if _, err := r.Discard(HeaderLen); err != nil {
		return nil, unexpected(err)
	}
	if cap(*scratch) < bodyLen {
		*scratch = make([]byte, bodyLen)
	}
	buf := (*scratch)[:bodyLen]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, unexpected(err)
	}
	return buf, nil
}

// Skip consumes and discards the next message.
func Skip(r *bufio.Reader, bodyLen int) error {
	_, err := r.Discard(HeaderLen + bodyLen)
	return unexpected(err)
}

// AppendHeader appends a message header for a body of bodyLen bytes.
func AppendHeader(dst []byte, typ byte, bodyLen int) []byte {
	return append(dst, typ, byte((bodyLen+4)>>24), byte((bodyLen+4)>>16), byte((bodyLen+4)>>8), byte(bodyLen+4))
}

// WriteMessage writes one message with the given type and body to w.
func WriteMessage(w *bufio.Writer, typ byte, body []byte) error {
	// The header is built in w's free space (a local array would escape
	// through w.Write and cost an allocation per message).
	if _, err := w.Write(AppendHeader(w.AvailableBuffer(), typ, len(body))); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// CString splits a NUL-terminated string off the front of b. ok is false
// when b holds no NUL.
func CString(b []byte) (s []byte, rest []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, b, false
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
