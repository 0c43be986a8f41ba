// Package wire owns the framing of the PostgreSQL v3 protocol: reading the
// startup-phase packets a client sends first (ReadStartup), peeking at the
// 5-byte header of a regular message, forwarding whole frames from one
// buffered connection to another without decoding them, and reading a body
// when a decision needs it.
//
// wire knows nothing of routing, pooling or caching. It enforces the size
// limits: startup packets are bounded like PostgreSQL's own (10000 bytes),
// regular messages by max_message_size. Violations are errors wrapping
// pgerr.ErrProtocol or pgerr.ErrMessageTooLarge, which the caller turns into
// an ErrorResponse with SQLSTATE 08P01 or 54000 through pgerr.
//
// Memory: bodies returned by ReadBody alias the bufio.Reader's buffer when the
// frame fits in it and are valid only until the next read; callers copy what
// they keep. Nothing in this package is safe for concurrent use on the same
// reader or writer.
package wire
