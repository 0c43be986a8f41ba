package cachelayer

import "sync"

// genSlot names one generation counter: the global one, one per database and
// one per (database, table).
type genSlot struct {
	db    string
	table string
	kind  uint8 // slotDB or slotTable
}

const (
	slotDB uint8 = iota + 1
	slotTable
)

// localGens holds the in-process generation counters. Counters only grow
// and are never deleted, so a value is never reused for the same slot within
// a process: an entry that recorded value v for a slot is stale as soon as
// the slot holds anything else. Safe for concurrent use.
type localGens struct {
	mu     sync.RWMutex
	global uint64
	m      map[genSlot]uint64
}

func newLocalGens() *localGens { return &localGens{m: make(map[genSlot]uint64)} }

// snapshot returns [global, db, tables...] for normalized tables.
func (l *localGens) snapshot(db string, tables []string) []uint64 {
	out := make([]uint64, len(tables)+2)
	l.mu.RLock()
	out[0] = l.global
	out[1] = l.m[genSlot{db: db, kind: slotDB}]
	for i, t := range tables {
		out[i+2] = l.m[genSlot{db: db, table: t, kind: slotTable}]
	}
	l.mu.RUnlock()
	return out
}

// current reports whether vals (a snapshot layout for db, tables) still
// equals the counters.
func (l *localGens) current(db string, tables []string, vals []uint64) bool {
	if len(vals) != len(tables)+2 {
		return false
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if vals[0] != l.global || vals[1] != l.m[genSlot{db: db, kind: slotDB}] {
		return false
	}
	for i, t := range tables {
		if vals[i+2] != l.m[genSlot{db: db, table: t, kind: slotTable}] {
			return false
		}
	}
	return true
}

func (l *localGens) bumpTables(db string, tables []string) {
	l.mu.Lock()
	for _, t := range tables {
		l.m[genSlot{db: db, table: t, kind: slotTable}]++
	}
	l.mu.Unlock()
}

func (l *localGens) bumpDB(db string) {
	l.mu.Lock()
	l.m[genSlot{db: db, kind: slotDB}]++
	l.mu.Unlock()
}

func (l *localGens) bumpAll() {
	l.mu.Lock()
	l.global++
	l.mu.Unlock()
}
