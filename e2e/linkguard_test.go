package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/testenv"
)

// The link secret is rotated without a flag day: a relay that holds the
// current and the next secret links servers on either; once it holds only
// the new one, a server still on the old is refused and the rest chat on.
func TestLinkSecretRotation(t *testing.T) {
	s := newSystem(t)
	oldFile, newFile := s.secretFile, filepath.Join(t.TempDir(), "link.secret.next")
	if err := os.WriteFile(newFile, []byte("e2e-next-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startRelay := func(args ...string) {
		args = append([]string{"--id", "relay-e2e", "--listen", s.listenAddr(), "--admin", ""}, args...)
		s.relay = testenv.Start(t, "relay", s.relayBin, args...)
		s.relayAddr = s.relay.WaitAddr("relay listening", 10*time.Second)
	}

	// Step 1 on the relay (the next secret deployed), step 2 on msg-2
	// (switched to it), msg-1 not yet.
	startRelay("--link-secret-file", oldFile, "--link-secret-next-file", newFile)
	addr1, p1 := s.startServer("msg-1")
	addr2, _ := s.startServer("msg-2", "--link-secret-file", newFile, "--link-secret-next-file", oldFile)
	u1 := testenv.Dial(t, addr1)
	u1.Login("zhima201")
	u2 := testenv.Dial(t, addr2)
	u2.Login("zhima202")
	u1.Chat("zhima202", "mid-rotation")
	u2.Expect(map[string]any{"event": "chat", "content": "mid-rotation"})
	u1.Expect(map[string]any{"reply": "chat", "status": "relayed"})

	// Step 3 too early for msg-1: the relay drops the old secret.
	s.relay.Kill()
	startRelay("--link-secret-file", newFile)
	s.relay.WaitOutput(`msg="link up" relay=relay-e2e server=msg-2`, 10*time.Second)
	s.relay.WaitOutput("authentication failed: wrong link secret", 10*time.Second)
	p1.WaitOutput("relay refused the link: authentication failed", 10*time.Second)
}
