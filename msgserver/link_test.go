package msgserver_test

import (
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/wire"
)

// A message resent after a lost ack reaches the user once; both copies are
// acked so the origin stops resending.
func TestDestinationDropsDuplicateByMessageID(t *testing.T) {
	tr := startTier(t, nil)
	wendy := login(t, tr.b, "wendy")
	peer, typ := testenv.DialPeer(t, tr.relay.Addr, "msg-x", testenv.Secret)
	if typ != wire.TypeWelcome {
		t.Fatalf("handshake answer %d", typ)
	}
	f := &wire.Forward{ID: wire.ID{1, 2, 3}, Origin: "msg-x", Dest: "msg-b",
		Payload: msgserver.EncodePayload("xavier", "wendy", time.Now().UnixMilli(), "only once")}
	for i := 0; i < 2; i++ {
		peer.Write(wire.AppendForward(nil, f))
		typ, body := peer.Next()
		a, err := wire.ParseAck(body)
		if typ != wire.TypeAck || err != nil || a.ID != f.ID || a.Code != wire.AckDelivered {
			t.Fatalf("copy %d: frame %d %+v %v, want a delivered ack", i, typ, a, err)
		}
	}
	wendy.Expect(map[string]any{"event": "chat", "content": "only once", "from": "xavier"})
	wendy.SendLine(`{"cmd":"ping"}`)
	if m := wendy.Next(); m.S("reply") != "ping" {
		t.Fatalf("duplicate shown to the user: %v", m)
	}
}

// A message for a user the destination does not have is answered "not
// here", so the origin looks again instead of trusting a stale route.
func TestDestinationSaysNotHere(t *testing.T) {
	tr := startTier(t, nil)
	peer, _ := testenv.DialPeer(t, tr.relay.Addr, "msg-x", testenv.Secret)
	f := &wire.Forward{ID: wire.ID{9}, Origin: "msg-x", Dest: "msg-b",
		Payload: msgserver.EncodePayload("xavier", "nobody-here", time.Now().UnixMilli(), "hello?")}
	peer.Write(wire.AppendForward(nil, f))
	typ, body := peer.Next()
	a, err := wire.ParseAck(body)
	if typ != wire.TypeAck || err != nil || a.Code != wire.AckNotHere {
		t.Fatalf("frame %d %+v %v, want a not-here ack", typ, a, err)
	}
}

// A server with the wrong link secret never gets a link; the others chat on.
func TestWrongLinkSecretRefused(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.NoRouteGiveUp = 500 * time.Millisecond })
	bad := tr.server(t, "msg-evil", func(c *msgserver.Config) { c.Secret = []byte("not-the-right-secret!") })
	login(t, bad, "eve")
	a := login(t, tr.a, "alice")
	b := login(t, tr.b, "bob")
	a.Chat("bob", "fine")
	b.Expect(map[string]any{"event": "chat", "content": "fine"})
	a.Expect(map[string]any{"reply": "chat", "status": "relayed"})
	for _, l := range tr.relay.Links() {
		if l.Peer == "msg-evil" {
			t.Fatalf("relay accepted a link with the wrong secret: %+v", l)
		}
	}
	if l := bad.Links(); len(l) != 1 || l[0].Up {
		t.Fatalf("server with the wrong secret reports its link as %+v", l)
	}
	// A message to eve cannot be routed; after the give-up time it is
	// kept in her inbox, not lost and not relayed.
	a.Chat("eve", "kept for later")
	a.Expect(map[string]any{"reply": "chat", "status": "offline"})
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:eve"); n != ":1" {
		t.Fatalf("eve's inbox length = %s, want :1", n)
	}
}
