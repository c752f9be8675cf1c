package msgserver_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
)

// A client that sends far more messages at once than the server may have
// in flight to other servers is not refused: the server stops reading it
// until acks make room (flow control), and every message arrives, in order,
// with its "relayed" reply. Before, all but the first MaxUnacked got
// backlog_full.
func TestFlowControlPushesBackInsteadOfRefusing(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		c.MaxUnacked = 8
		c.SendWindow = 4
		c.RequestRate = -1 // the burst is the point
	})
	alice := login(t, tr.a, "alice")
	bob := login(t, tr.b, "bob")
	const n = 400
	var burst strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&burst, `{"cmd":"chat","recv":"bob","content":"m%d"}`+"\n", i)
	}
	alice.SendLine(strings.TrimSuffix(burst.String(), "\n")) // one write: far more than the window
	for i := 0; i < n; i++ {
		m, err := bob.Read(10 * time.Second)
		if err != nil {
			t.Fatalf("bob got %d of %d messages: %v", i, n, err)
		}
		if m.S("event") != "chat" || m.S("content") != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d: got %v", i, m)
		}
	}
	for i := 0; i < n; i++ {
		m, err := alice.Read(10 * time.Second)
		if err != nil {
			t.Fatalf("alice got %d of %d replies: %v", i, n, err)
		}
		if m.S("reply") != "chat" || m["ok"] != true || m.S("status") != "relayed" {
			t.Fatalf("reply %d: %v, want relayed (no refusal)", i, m)
		}
	}
}
