package proxy

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// learnParams: one login per settings signature learns the parameters, the
// others with that signature wait for it (or time out with the acquire
// timeout error), and other signatures never wait behind it.
func TestLearnParams(t *testing.T) {
	p := &pool{}
	soon := func() time.Time { return time.Now().Add(5 * time.Second) }
	_, learn, doneA, err := p.learnParams("a", soon())
	if !learn || err != nil {
		t.Fatalf("first login of a: learn=%v err=%v, want to learn", learn, err)
	}
	// Another signature is not held up by a.
	_, learn, doneB, err := p.learnParams("b", soon())
	if !learn || err != nil {
		t.Fatalf("first login of b while a is learning: learn=%v err=%v", learn, err)
	}
	doneB()
	// A second login of a waits; past its deadline it gets the acquire
	// timeout, mapped to 53300.
	_, learn, _, err = p.learnParams("a", time.Now().Add(50*time.Millisecond))
	if learn || !errors.Is(err, pgerr.ErrAcquireTimeout) || pgerr.ToError(err).Code != "53300" {
		t.Fatalf("second login of a past its deadline: learn=%v err=%v, want ErrAcquireTimeout", learn, err)
	}
	// Waiters get the learned parameters once the learner stores them.
	var wg sync.WaitGroup
	got := make([]map[string]string, 5)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, learn, done, err := p.learnParams("a", soon())
			if learn {
				done()
				t.Errorf("waiter %d became a learner while a was being learned", i)
			}
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
			}
			got[i] = m
		}()
	}
	time.Sleep(50 * time.Millisecond)
	p.cacheParams("a", map[string]string{"server_version": "15"})
	doneA()
	wg.Wait()
	for i, m := range got {
		if m["server_version"] != "15" {
			t.Errorf("waiter %d got %v", i, m)
		}
	}
	// A learner that fails (stores nothing) hands over to the next login.
	_, learn, doneC, _ := p.learnParams("c", soon())
	if !learn {
		t.Fatal("first login of c did not learn")
	}
	next := make(chan bool)
	go func() {
		_, learn, done, _ := p.learnParams("c", soon())
		if learn {
			done()
		}
		next <- learn
	}()
	time.Sleep(20 * time.Millisecond)
	doneC()
	if !<-next {
		t.Error("after a failed learner, the waiting login did not become the learner")
	}
}
