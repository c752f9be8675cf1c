package msgserver_test

import (
	"testing"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// Names are refused with a reason, on login and as recipients; an invalid
// surrogate escape is not a name at all; names that are the same text in
// Unicode (NFC) are the same user everywhere.
func TestNameRulesOverTheWire(t *testing.T) {
	tr := startTier(t, nil)
	c := testenv.Dial(t, tr.a.Addr)
	for _, name := range []string{"   ", " alice", "alice ", "a\u200bb", "\u200b", "\u0430lice", "a\u202eb", "\u3164"} {
		c.Send(map[string]string{"cmd": "login", "name": name})
		m := c.Next()
		if m["ok"] != false || m.S("code") != msgserver.CodeBadName || m.S("error") == "" {
			t.Fatalf("login %q = %v, want bad_name with a reason", name, m)
		}
	}
	// "\ud800" is refused; a backslash and "ud800" is a name of its own.
	c.SendLine(`{"cmd":"login","name":"\ud800"}`)
	c.Expect(map[string]any{"reply": "error", "ok": false, "code": msgserver.CodeBadJSON})
	c.SendLine(`{"cmd":"login","name":"\\ud800"}`)
	c.Expect(map[string]any{"reply": "login", "ok": true, "name": `\ud800`})
	c.Send(map[string]string{"cmd": "chat", "recv": "bob ", "content": "x"})
	c.Expect(map[string]any{"reply": "chat", "ok": false, "code": msgserver.CodeBadRecipient})
	for _, raw := range []string{`"\ud800"`, `"\udc00"`} {
		c.SendLine(`{"cmd":"chat","recv":` + raw + `,"content":"x"}`)
		c.Expect(map[string]any{"ok": false, "code": msgserver.CodeBadJSON})
	}

	// Decomposed and composed ë: one user, keyed by the composed form.
	decomposed, composed := "Zoe\u0308", "Zo\u00eb"
	zoe := testenv.Dial(t, tr.b.Addr)
	zoe.Send(map[string]string{"cmd": "login", "name": decomposed})
	zoe.Expect(map[string]any{"reply": "login", "ok": true, "name": composed})
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:user:"+composed); v != ":1" {
		t.Fatalf("presence of %q: EXISTS %s", composed, v)
	}
	sender := login(t, tr.a, "sender")
	for _, to := range []string{composed, decomposed} {
		sender.Chat(to, "to "+to)
		ev, _ := zoe.Expect(map[string]any{"event": "chat", "content": "to " + to})
		if ev.S("to") != composed {
			t.Fatalf("event to %q, want %q", ev.S("to"), composed)
		}
		sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed"})
	}
	// "send" in either form is the logged-in user.
	zoe.Send(map[string]string{"cmd": "chat", "send": decomposed, "recv": "sender", "content": "me"})
	if ev, _ := sender.Expect(map[string]any{"event": "chat", "content": "me"}); ev.S("from") != composed {
		t.Fatalf("from %q, want %q", ev.S("from"), composed)
	}
	// Logging in with the other form is the same user: it takes over.
	again := login(t, tr.a, composed)
	if got := zoe.ExpectClosed(); len(got) == 0 || got[len(got)-1].S("code") != "logged_in_elsewhere" {
		t.Fatalf("the first session of %q should be kicked, got %v", composed, got)
	}
	// An offline message to one form is delivered to the other.
	again.SendLine(`{"cmd":"logout"}`)
	again.Expect(map[string]any{"reply": "logout"})
	sender.Chat(decomposed, "stored")
	sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline"})
	back := testenv.Dial(t, tr.b.Addr)
	back.Send(map[string]string{"cmd": "login", "name": composed})
	back.Expect(map[string]any{"reply": "login", "ok": true})
	if ev := back.Next(); ev.S("content") != "stored" || ev["offline"] != true {
		t.Fatalf("offline message = %v", ev)
	}
}
