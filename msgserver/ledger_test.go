package msgserver

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/internal/tcptest"
	"github.com/chatrelay/chatrelay/wire"
)

// testConn is a linkConn over loopback TCP, and the relay's end of it.
func testConn(t *testing.T) (*linkConn, *net.TCPConn) {
	t.Helper()
	ours, relay := tcptest.Pair(t)
	q := sendq.New(1<<20, nil)
	q.Start(ours, time.Second)
	t.Cleanup(q.Close)
	return &linkConn{conn: ours, q: q, relayID: "relay-test", log: slog.New(slog.DiscardHandler)}, relay
}

// expectSent reads Forward frames from the relay's end until it has as many
// as want, and checks their ids in order; then it checks nothing follows.
func expectSent(t *testing.T, relay *net.TCPConn, want ...wire.ID) {
	t.Helper()
	fr := wire.NewReader(relay, 1<<20)
	var got []wire.ID
	_ = relay.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < len(want) {
		typ, body, _, err := fr.Next()
		if err != nil {
			t.Fatalf("after %v: %v; want %v", got, err, want)
		}
		f, err := wire.ParseForward(body)
		if typ != wire.TypeForward || err != nil {
			t.Fatalf("frame type %d, %v; want a Forward", typ, err)
		}
		got = append(got, f.ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sent %v, want %v", got, want)
	}
	_ = relay.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if typ, _, _, err := fr.Next(); err == nil {
		t.Fatalf("a frame of type %d follows %v", typ, want)
	}
}

func testLedger(tweak func(*Config)) *ledger {
	cfg := Config{MaxUnacked: 100, AckTimeout: time.Hour, BackoffMin: time.Millisecond, NoRouteGiveUp: time.Hour}
	if tweak != nil {
		tweak(&cfg)
	}
	return newLedger(&cfg, nil)
}

// upTwoLinks brings up two links on g, in slots 0 and 1; with stats (two),
// the links report when they were last heard from there.
func upTwoLinks(t *testing.T, g *ledger, stats ...*wire.LinkStats) (c0 *linkConn, relay0 *net.TCPConn, c1 *linkConn, relay1 *net.TCPConn) {
	t.Helper()
	c0, relay0 = testConn(t)
	c1, relay1 = testConn(t)
	c1.slot = 1
	if len(stats) == 2 {
		c0.stats, c1.stats = stats[0], stats[1]
	}
	g.up(c0)
	g.up(c1)
	return c0, relay0, c1, relay1
}

func fwd(n byte) *wire.Forward {
	return &wire.Forward{ID: wire.ID{n}, Origin: "msg-a", Dest: "msg-b", Payload: []byte("x")}
}

func TestLedgerEndsAMessageOnItsAck(t *testing.T) {
	g := testLedger(nil)
	c, relay := testConn(t)
	if n := g.up(c); n != 0 {
		t.Fatalf("up resent %d of nothing", n)
	}
	d1, d2 := &delivery{}, &delivery{}
	if err := g.send(d1, fwd(1)); err != nil {
		t.Fatal(err)
	}
	if err := g.send(d2, fwd(2)); err != nil {
		t.Fatal(err)
	}
	expectSent(t, relay, wire.ID{1}, wire.ID{2})

	if d, _ := g.acked(wire.Ack{ID: wire.ID{1}, Origin: "msg-c", Dest: "msg-a", Code: wire.AckDelivered}, time.Now()); d != nil {
		t.Fatal("an ack from a server the message was not sent to ended it")
	}
	if d, o := g.acked(wire.Ack{ID: wire.ID{1}, Origin: "msg-b", Dest: "msg-a", Code: wire.AckDelivered}, time.Now()); d != d1 || o != outTaken {
		t.Fatalf("ack: %p %v, want %p taken", d, o, d1)
	}
	if d, _ := g.acked(wire.Ack{ID: wire.ID{1}, Origin: "msg-b", Dest: "msg-a", Code: wire.AckDelivered}, time.Now()); d != nil {
		t.Fatal("a duplicate ack ended a message again")
	}
	if d, o := g.acked(wire.Ack{ID: wire.ID{2}, Origin: "msg-b", Dest: "msg-a", Code: wire.AckNotHere}, time.Now()); d != d2 || o != outNotHere {
		t.Fatalf("not-here ack: %p %v, want %p not here", d, o, d2)
	}
	if n := g.unacked(); n != 0 {
		t.Fatalf("%d unacked after every ack", n)
	}
}

// What went over a connection that ended, and what was sent while none was
// up, goes over the next one, in the order it was first sent.
func TestLedgerResendsOverTheNextConnection(t *testing.T) {
	g := testLedger(nil)
	_ = g.send(&delivery{}, fwd(1)) // no connection yet
	c1, relay1 := testConn(t)
	if n := g.up(c1); n != 1 {
		t.Fatalf("up sent %d, want 1", n)
	}
	_ = g.send(&delivery{}, fwd(2))
	expectSent(t, relay1, wire.ID{1}, wire.ID{2})
	g.down(c1)
	_ = g.send(&delivery{}, fwd(3))
	c2, relay2 := testConn(t)
	if n := g.up(c2); n != 3 {
		t.Fatalf("up sent %d, want 3", n)
	}
	expectSent(t, relay2, wire.ID{1}, wire.ID{2}, wire.ID{3})
}

func TestLedgerResendsWhenTheAckIsOverdue(t *testing.T) {
	g := testLedger(func(c *Config) { c.AckTimeout = time.Minute })
	c, relay := testConn(t)
	g.up(c)
	_ = g.send(&delivery{}, fwd(1))
	_ = g.send(&delivery{}, fwd(2))
	expectSent(t, relay, wire.ID{1}, wire.ID{2})
	g.resendDue(time.Now())
	expectSent(t, relay) // not due yet
	g.resendDue(time.Now().Add(time.Minute + time.Second))
	expectSent(t, relay) // due, but nothing came back: the acks may be waiting unread
	g.acked(wire.Ack{ID: wire.ID{2}, Origin: "msg-b"}, time.Now())
	g.resendDue(time.Now().Add(time.Minute + time.Second))
	expectSent(t, relay, wire.ID{1}) // one sent after it was acked: its ack is lost
	if n := g.unacked(); n != 1 {
		t.Fatalf("%d unacked, want 1", n)
	}
	_ = g.send(&delivery{}, fwd(3))
	expectSent(t, relay, wire.ID{3})
	g.resendDue(time.Now().Add(3*time.Minute + 2*time.Second))
	expectSent(t, relay, wire.ID{1}, wire.ID{3}) // twice overdue and more: resent whatever came back
}

// A NACKed message is held and retried after a backoff; a relay that keeps
// refusing it past the give-up time ends it.
func TestLedgerHoldsNackedMessagesThenGivesUp(t *testing.T) {
	g := testLedger(func(c *Config) { c.NoRouteGiveUp = 100 * time.Millisecond })
	c, relay := testConn(t)
	g.up(c)
	d := &delivery{}
	_ = g.send(d, fwd(1))
	expectSent(t, relay, wire.ID{1})
	nack := wire.Ack{ID: wire.ID{1}, Origin: "msg-a", Dest: "msg-b", Code: wire.NackNoRoute}
	if got, _ := g.nacked(c, wire.Ack{ID: wire.ID{1}, Origin: "msg-a", Dest: "msg-c"}, time.Now()); got != nil {
		t.Fatal("a NACK for a copy sent elsewhere ended the message")
	}
	if got, first := g.nacked(c, nack, time.Now()); got != nil || first != d {
		t.Fatal("the first NACK ended the message, or did not ask for a new look-up")
	}
	g.resendDue(time.Now().Add(-time.Millisecond))
	expectSent(t, relay) // held: not due yet
	g.resendDue(time.Now().Add(maxRetryWait))
	expectSent(t, relay, wire.ID{1})

	if got, _ := g.nacked(c, nack, time.Now().Add(time.Second)); got != d { // past the give-up time
		t.Fatalf("a NACK past the give-up time returned %p, want %p", got, d)
	}
	if n := g.unacked(); n != 0 {
		t.Fatalf("%d unacked after giving up", n)
	}
}

// A connection coming up sends held messages at once: a new relay may have
// the route the old one had not.
func TestLedgerSendsHeldMessagesToANewConnection(t *testing.T) {
	g := testLedger(nil)
	c1, relay1 := testConn(t)
	g.up(c1)
	_ = g.send(&delivery{}, fwd(1))
	_ = g.send(&delivery{}, fwd(2))
	expectSent(t, relay1, wire.ID{1}, wire.ID{2})
	g.nacked(c1, wire.Ack{ID: wire.ID{1}, Origin: "msg-a", Dest: "msg-b"}, time.Now())
	g.down(c1)
	c2, relay2 := testConn(t)
	if n := g.up(c2); n != 2 {
		t.Fatalf("up sent %d, want 2", n)
	}
	expectSent(t, relay2, wire.ID{2}, wire.ID{1}) // held ones last
}

func TestLedgerBacklogIsBounded(t *testing.T) {
	g := testLedger(func(c *Config) { c.MaxUnacked = 2 })
	_ = g.send(&delivery{}, fwd(1))
	_ = g.send(&delivery{}, fwd(2))
	if err := g.send(&delivery{}, fwd(3)); !errors.Is(err, errBacklogFull) {
		t.Fatalf("third send: %v, want errBacklogFull", err)
	}
	ds := g.abandon()
	if len(ds) != 2 || g.unacked() != 0 {
		t.Fatalf("abandon returned %d deliveries and left %d", len(ds), g.unacked())
	}
	if err := g.send(&delivery{}, fwd(3)); err != nil {
		t.Fatalf("send after abandon: %v", err)
	}
}

// to returns a delivery whose recipient is user (the ledger spreads by it).
func to(user string) *delivery {
	d := &delivery{}
	d.ev.To = user
	return d
}

// onSlot finds a recipient whose messages go over the link of slot first.
func onSlot(t *testing.T, slot int) string {
	t.Helper()
	for i := range 100 {
		u := "user" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if int(spreadKey(to(u))%maxRelayLinks) == slot {
			return u
		}
	}
	t.Fatal("no recipient hashes to slot", slot)
	return ""
}

// With two links up, each recipient's messages keep to one of them, and
// both links carry some.
func TestLedgerSpreadsByRecipientOverTwoLinks(t *testing.T) {
	g := testLedger(nil)
	_, relay0, _, relay1 := upTwoLinks(t, g)
	u0, u1 := onSlot(t, 0), onSlot(t, 1)
	_ = g.send(to(u0), fwd(1))
	_ = g.send(to(u1), fwd(2))
	_ = g.send(to(u0), fwd(3))
	_ = g.send(to(u1), fwd(4))
	expectSent(t, relay0, wire.ID{1}, wire.ID{3})
	expectSent(t, relay1, wire.ID{2}, wire.ID{4})
}

// When one of two links ends, what is unacknowledged on it goes over the
// other at once, in order; new messages follow it there until it is back.
func TestLedgerResendsOverTheOtherLinkAtOnce(t *testing.T) {
	g := testLedger(nil)
	c0, relay0, _, relay1 := upTwoLinks(t, g)
	u0, u1 := onSlot(t, 0), onSlot(t, 1)
	_ = g.send(to(u0), fwd(1))
	_ = g.send(to(u1), fwd(2))
	_ = g.send(to(u0), fwd(3))
	expectSent(t, relay0, wire.ID{1}, wire.ID{3})
	expectSent(t, relay1, wire.ID{2})
	if n := g.down(c0); n != 2 {
		t.Fatalf("down resent %d, want 2", n)
	}
	_ = g.send(to(u0), fwd(4))
	expectSent(t, relay1, wire.ID{1}, wire.ID{3}, wire.ID{4})
	g.acked(wire.Ack{ID: wire.ID{1}, Origin: "msg-b"}, time.Now())
	c2, relay2 := testConn(t) // the first link back
	if n := g.up(c2); n != 0 {
		t.Fatalf("up sent %d; everything is on the live link already", n)
	}
	_ = g.send(to(u0), fwd(5))
	expectSent(t, relay2, wire.ID{5})
	expectSent(t, relay1)
}

// A NACK on one link sends the message over the other at once; only when
// both relays have refused it is it held.
func TestLedgerTriesTheOtherLinkOnANack(t *testing.T) {
	g := testLedger(nil)
	c0, relay0, c1, relay1 := upTwoLinks(t, g)
	u0 := onSlot(t, 0)
	_ = g.send(to(u0), fwd(1))
	expectSent(t, relay0, wire.ID{1})
	nack := wire.Ack{ID: wire.ID{1}, Origin: "msg-a", Dest: "msg-b", Code: wire.NackNoRoute}
	g.nacked(c0, nack, time.Now())
	expectSent(t, relay1, wire.ID{1}) // at once, no backoff
	g.nacked(c1, nack, time.Now())
	expectSent(t, relay0) // both refused: held
	expectSent(t, relay1)
	g.resendDue(time.Now().Add(maxRetryWait))
	expectSent(t, relay0, wire.ID{1}) // retried after the backoff, on its own link again
}

// A link that goes silent while a message sent over it awaits its ack is
// presumed stalled: its messages go over the other link, and new ones
// avoid it until it is heard from again.
func TestLedgerMovesMessagesOffASilentLink(t *testing.T) {
	g := testLedger(func(c *Config) { c.StallAfter = 20 * time.Millisecond })
	var stats0, stats1 wire.LinkStats
	_, relay0, _, relay1 := upTwoLinks(t, g, &stats0, &stats1)
	u0 := onSlot(t, 0)
	start := time.Now()
	stats0.LastRecv.Store(start.UnixNano())
	stats1.LastRecv.Store(start.UnixNano())
	_ = g.send(to(u0), fwd(1))
	expectSent(t, relay0, wire.ID{1})
	g.resendDue(start.Add(10 * time.Millisecond))
	expectSent(t, relay1)                                              // not silent for long enough yet
	stats1.LastRecv.Store(start.Add(30 * time.Millisecond).UnixNano()) // the other link is heard from
	g.resendDue(start.Add(30 * time.Millisecond))
	expectSent(t, relay1, wire.ID{1})
	_ = g.send(to(u0), fwd(2)) // avoids the silent link
	expectSent(t, relay1, wire.ID{2})
	stats0.LastRecv.Store(start.Add(40 * time.Millisecond).UnixNano()) // heard from again
	g.resendDue(start.Add(40 * time.Millisecond))
	_ = g.send(to(u0), fwd(3))
	expectSent(t, relay0, wire.ID{3})
}

// When both links are silent, the destination rather than a relay is slow:
// messages stay where they are instead of bouncing between the links.
func TestLedgerLeavesMessagesWhenBothLinksAreSilent(t *testing.T) {
	g := testLedger(func(c *Config) { c.StallAfter = 20 * time.Millisecond })
	var stats0, stats1 wire.LinkStats
	_, relay0, _, relay1 := upTwoLinks(t, g, &stats0, &stats1)
	start := time.Now()
	stats0.LastRecv.Store(start.UnixNano())
	stats1.LastRecv.Store(start.UnixNano())
	_ = g.send(to(onSlot(t, 0)), fwd(1))
	_ = g.send(to(onSlot(t, 1)), fwd(2))
	expectSent(t, relay0, wire.ID{1})
	expectSent(t, relay1, wire.ID{2})
	for _, ms := range []time.Duration{30, 60, 90} {
		g.resendDue(start.Add(ms * time.Millisecond))
	}
	expectSent(t, relay0)
	expectSent(t, relay1)
}

// Under a load that makes acks slow, a link quiet for stall-after is not
// presumed stalled: the threshold follows the ack latency.
func TestLedgerStallThresholdFollowsAckLatency(t *testing.T) {
	g := testLedger(func(c *Config) { c.StallAfter = 20 * time.Millisecond })
	g.ackLatency = 50 * time.Millisecond // acks take 50 ms on average
	var stats0, stats1 wire.LinkStats
	_, relay0, _, relay1 := upTwoLinks(t, g, &stats0, &stats1)
	start := time.Now()
	stats0.LastRecv.Store(start.UnixNano())
	_ = g.send(to(onSlot(t, 0)), fwd(1))
	expectSent(t, relay0, wire.ID{1})
	stats1.LastRecv.Store(start.Add(100 * time.Millisecond).UnixNano())
	g.resendDue(start.Add(100 * time.Millisecond))
	expectSent(t, relay1) // 100 ms < 4 x 50 ms
	stats1.LastRecv.Store(start.Add(250 * time.Millisecond).UnixNano())
	g.resendDue(start.Add(250 * time.Millisecond))
	expectSent(t, relay1, wire.ID{1})
}

// The ledger finds a message by its id whatever the id: ids of this
// server's form that share a ring slot (sequence numbers a ring apart),
// ids of another form, and an id sent again replaces the message it had.
func TestLedgerFindsMessagesSharingASlot(t *testing.T) {
	x := newPendingIndex(8) // a ring of 64
	id := func(prefix byte, seq uint64) wire.ID {
		var v wire.ID
		v[0] = prefix
		for i := range 8 {
			v[15-i] = byte(seq >> (8 * i))
		}
		return v
	}
	a := &pending{id: id(1, 5)}
	b := &pending{id: id(1, 5+64)} // a's slot
	c := &pending{id: id(2, 5)}    // a's slot, another prefix
	for _, p := range []*pending{a, b, c} {
		x.put(p)
	}
	if x.n != 3 {
		t.Fatalf("%d indexed, want 3", x.n)
	}
	for _, p := range []*pending{a, b, c} {
		if got := x.get(p.id); got != p {
			t.Fatalf("get %x: %p, want %p", p.id, got, p)
		}
	}
	if x.get(id(1, 6)) != nil || x.get(id(3, 5)) != nil {
		t.Fatal("found an id never put")
	}
	b2 := &pending{id: b.id}
	x.put(b2)
	if x.n != 3 || x.get(b.id) != b2 {
		t.Fatalf("an id put again: %d indexed, get gives %p, want 3 and %p", x.n, x.get(b.id), b2)
	}
	x.delete(a.id)
	if x.get(a.id) != nil || x.get(b.id) != b2 || x.get(c.id) != c || x.n != 2 {
		t.Fatal("deleting the slot's message lost another, or kept it")
	}
	x.delete(c.id)
	x.delete(c.id) // twice: nothing more
	if x.get(c.id) != nil || x.n != 1 {
		t.Fatalf("after deleting c: %d indexed, want 1", x.n)
	}
	var seen []*pending
	x.each(func(p *pending) { seen = append(seen, p) })
	if len(seen) != 1 || seen[0] != b2 {
		t.Fatalf("each saw %v, want only b2", seen)
	}
	x.clear()
	if x.n != 0 || x.get(b.id) != nil {
		t.Fatal("clear left a message")
	}
}

// A ledger that held many messages out of its ring (the relay away, the
// backlog growing) gives their memory back once they are answered, even
// with one of them held long: a Go map keeps its size after its entries
// are deleted.
func TestPendingIndexGivesBackOverflowMemory(t *testing.T) {
	x := newPendingIndex(8) // a ring of 64: nearly all go to the map
	const n = 100_000
	ps := make([]*pending, n)
	for i := range ps {
		var id wire.ID
		id[0] = byte(i % 7) // not this ring's sequence numbers
		binary.BigEndian.PutUint64(id[8:], uint64(i/7)*64)
		ps[i] = &pending{id: id}
		x.put(ps[i])
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	full := heap()
	held := ps[1] // its slot is ps[0]'s: it is in the map, and held long it stays
	for _, p := range ps {
		if p != held {
			x.delete(p.id)
		}
	}
	if x.n != 1 || x.get(held.id) != held {
		t.Fatalf("%d left indexed (the held one: %v), want only the held one", x.n, x.get(held.id) != nil)
	}
	// The messages themselves are still referenced here: what the heap
	// loses is the map of 100 000 entries, megabytes.
	empty := heap()
	runtime.KeepAlive(ps)
	if full < empty || full-empty < 2<<20 {
		t.Fatalf("heap %.1f MB full, %.1f MB once all but one were answered: the index kept its map", float64(full)/(1<<20), float64(empty)/(1<<20))
	}
	x.put(&pending{id: wire.ID{9}})
	if x.get(wire.ID{9}) == nil {
		t.Fatal("the index made anew does not index")
	}
}
