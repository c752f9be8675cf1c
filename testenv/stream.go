package testenv

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Stream is a numbered message stream ("0", "1", ...) sent by one client to
// another in the background, one message per millisecond, so that a fault
// injected while it runs lands mid-stream.
type Stream struct {
	N    int
	sent atomic.Int64
	wg   sync.WaitGroup
}

// StartStream starts sending n messages from c to the user named to.
func StartStream(t testing.TB, c *Client, to string, n int) *Stream {
	s := &Stream{N: n}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for i := 0; i < n; i++ {
			c.Chat(to, fmt.Sprint(i))
			s.sent.Add(1)
			time.Sleep(time.Millisecond) // pacing the load, not synchronisation
		}
	}()
	t.Cleanup(s.wg.Wait)
	return s
}

// WaitSent waits until at least k messages are sent.
func (s *Stream) WaitSent(t testing.TB, k int) {
	t.Helper()
	Eventually(t, 10*time.Second, fmt.Sprintf("%d messages sent", k), func() bool { return s.sent.Load() >= int64(k) })
}

// Sent is how many messages are sent so far.
func (s *Stream) Sent() int { return int(s.sent.Load()) }

// Wait waits until every message is sent.
func (s *Stream) Wait() { s.wg.Wait() }

// ExpectEachOnce reads recv's chat events until every message of the
// stream has arrived, then pings to flush anything still in flight, and
// fails for each message missing or shown more than once.
func (s *Stream) ExpectEachOnce(t testing.TB, recv *Client, within time.Duration) {
	t.Helper()
	seen := map[string]int{}
	for len(seen) < s.N {
		m, err := recv.Read(within)
		if err != nil {
			t.Fatalf("received %d of %d distinct messages: %v", len(seen), s.N, err)
		}
		if m.S("event") == "chat" {
			seen[m.S("content")]++
		}
	}
	recv.SendLine(`{"cmd":"ping"}`)
	for m := recv.Next(); m.S("reply") != "ping"; m = recv.Next() {
		if m.S("event") == "chat" {
			seen[m.S("content")]++
		}
	}
	for i := 0; i < s.N; i++ {
		if c := seen[fmt.Sprint(i)]; c != 1 {
			t.Errorf("message %d shown %d times", i, c)
		}
	}
}
