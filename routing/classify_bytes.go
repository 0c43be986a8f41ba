package routing

import "unsafe"

// ClassifyBytes is Classify for text held in a buffer the caller reuses,
// such as the body of a Query or Parse message: a shape already in the
// cache costs no copy of the text. A miss classifies a copy, since the
// cache may keep parts of the text. Safe for concurrent use.
func (c *Classifier) ClassifyBytes(sql []byte) Decision {
	d, _ := c.ClassifyBytesGen(sql)
	return d
}

// ClassifyBytesGen is ClassifyBytes that also returns the catalog
// generation the decision was made in (see Generation).
func (c *Classifier) ClassifyBytesGen(sql []byte) (Decision, uint64) {
	var buf [stackKeyBytes]byte
	// The shape key is built in buf; nothing keeps the text after this.
	key, _ := appendShape(buf[:0], unsafe.String(unsafe.SliceData(sql), len(sql)))
	if d, gen, ok := c.cached(key); ok {
		return d, gen
	}
	return c.ClassifyGen(string(sql))
}
