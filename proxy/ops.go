package proxy

// opKind says what response a message sent to the server (or a response
// the proxy synthesises) produces, so that the pump can match each server
// message to the client message that caused it.
type opKind uint8

const (
	opParse     opKind = iota // client Parse, forwarded: expects ParseComplete
	opParseDrop               // Parse injected by the proxy: its ParseComplete is swallowed
	opBind                    // expects BindComplete
	opDescribe                // expects [ParameterDescription] RowDescription | NoData
	opExecute                 // expects rows ... CommandComplete | EmptyQueryResponse | PortalSuspended
	opClose                   // client Close, forwarded: expects CloseComplete
	opCloseDrop               // Close injected by the proxy (LRU eviction): swallowed
	opSync                    // expects ReadyForQuery
	opQuery                   // simple Query: everything up to ReadyForQuery
	opFunc                    // FunctionCall: FunctionCallResponse, ReadyForQuery
	opSettings                // settings replay injected by the proxy: all swallowed up to ReadyForQuery
	opSynth                   // a response the proxy emits itself, in order
	opSplit                   // Sync injected by the proxy to end a pipeline's replica part: its ReadyForQuery is swallowed
)

// endsWithReady reports whether the op completes at ReadyForQuery.
func (k opKind) endsWithReady() bool {
	return k == opSync || k == opQuery || k == opFunc || k == opSettings || k == opSplit
}

// toServerUnsynced reports whether the op is an extended-protocol message
// sent to the server that leaves it waiting for a Sync.
func (k opKind) toServerUnsynced() bool {
	switch k {
	case opParse, opParseDrop, opBind, opDescribe, opExecute, opClose, opCloseDrop:
		return true
	}
	return false
}

// dropped reports whether the server's responses to the op are swallowed.
func (k opKind) dropped() bool {
	return k == opParseDrop || k == opCloseDrop || k == opSettings
}

// op is one entry of the in-flight queue.
type op struct {
	kind  opKind
	cycle uint64 // the Sync cycle the op belongs to
	// stmt is the proxy-wide statement name for Parse ops, so that a
	// failed or skipped Parse can be forgotten on the backend.
	stmt string
	// msg is the encoded message an opSynth emits; synthErr marks an
	// ErrorResponse, which starts skip-until-Sync like a server error.
	msg      []byte
	synthErr bool
	// sets are session settings to record when the op completes
	// successfully (a SET through the simple or extended protocol).
	sets *pendingSets
	// q is the statistics entry of a Query or Execute op; qstart is when
	// the client message that started the statement arrived, qsent when it
	// was sent to the server (nanotime); qrows and qfailed collect its
	// outcome (see querystats.go).
	q             *fpStats
	qstart, qsent int64
	qrows         int64
	qtarget       uint8
	qfailed       bool
	// cap captures the op's result for the cache; inval is what the
	// statement writes (see cache.go).
	cap   *cacheCapture
	inval *cacheWrite
}

// opQueue is a FIFO ring of ops. Guarded by the session mutex.
type opQueue struct {
	buf        []op
	head, size int
}

func (q *opQueue) len() int { return q.size }

func (q *opQueue) push(o op) {
	if q.size == len(q.buf) {
		n := len(q.buf) * 2
		if n == 0 {
			n = 8
		}
		nb := make([]op, n)
		for i := 0; i < q.size; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.size)%len(q.buf)] = o
	q.size++
}

// front returns a pointer to the oldest op; nil when empty.
func (q *opQueue) front() *op {
	if q.size == 0 {
		return nil
	}
	return &q.buf[q.head]
}

func (q *opQueue) pop() op {
	o := q.buf[q.head]
	q.buf[q.head] = op{}
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	return o
}

// at returns the i-th op from the front.
func (q *opQueue) at(i int) *op { return &q.buf[(q.head+i)%len(q.buf)] }

// removeAt deletes the i-th op from the front, keeping order.
func (q *opQueue) removeAt(i int) op {
	o := *q.at(i)
	for j := i; j > 0; j-- {
		*q.at(j) = *q.at(j - 1)
	}
	q.buf[q.head] = op{}
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	return o
}

func (q *opQueue) reset() {
	for q.size > 0 {
		q.pop()
	}
}
