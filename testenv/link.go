package testenv

import (
	"net"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/wire"
)

// Peer is a hand-driven relay link, speaking the wire protocol as a message
// server would, so tests can send exact frames (duplicates, forged origins)
// through a real relay.
type Peer struct {
	t    testing.TB
	ID   string
	Conn net.Conn
	fr   *wire.Reader
}

// DialPeer connects to a relay and authenticates as server id with secret.
// It returns the peer and the relay's answer frame type (Welcome or Reject).
func DialPeer(t testing.TB, addr, id string, secret []byte) (*Peer, byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial relay: %v", err)
	}
	p, typ, _ := greetPeer(t, conn, id, secret)
	return p, typ
}

// greetPeer runs the server side of the link handshake on conn and returns
// the relay's answer frame: its type and body.
func greetPeer(t testing.TB, conn net.Conn, id string, secret []byte) (*Peer, byte, []byte) {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	p := &Peer{t: t, ID: id, Conn: conn, fr: wire.NewReader(conn, 1<<20)}
	typ, body := p.Next()
	if typ != wire.TypeChallenge {
		t.Fatalf("first frame from relay is type %d, want challenge", typ)
	}
	nonce, err := wire.ParseChallenge(body)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(wire.AppendAuth(nil, wire.Auth{ServerID: id, MAC: wire.AuthMAC(secret, nonce, id)}))
	typ, body = p.Next()
	return p, typ, body
}

// Write sends raw bytes.
func (p *Peer) Write(b []byte) {
	p.t.Helper()
	_ = p.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.Conn.Write(b); err != nil {
		p.t.Fatalf("peer %s write: %v", p.ID, err)
	}
}

// Next returns the next frame that is not a heartbeat, answering pings.
func (p *Peer) Next() (byte, []byte) {
	p.t.Helper()
	typ, body, err := p.Read(5 * time.Second)
	if err != nil {
		p.t.Fatalf("peer %s read: %v", p.ID, err)
	}
	return typ, body
}

// Read is Next with an error instead of a test failure.
func (p *Peer) Read(timeout time.Duration) (byte, []byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		_ = p.Conn.SetReadDeadline(deadline)
		typ, body, _, err := p.fr.Next()
		if err != nil {
			return 0, nil, err
		}
		switch typ {
		case wire.TypePing:
			nanos, _ := wire.ParsePing(body)
			_, _ = p.Conn.Write(wire.AppendPing(nil, wire.TypePong, nanos))
		case wire.TypePong:
		default:
			return typ, append([]byte(nil), body...), nil
		}
	}
}

// ConnectPeer dials r as server id with the test secret and waits until the
// relay routes to it.
func ConnectPeer(t testing.TB, r *InRelay, id string) *Peer {
	t.Helper()
	p, typ := DialPeer(t, r.Addr, id, Secret)
	if typ != wire.TypeWelcome {
		t.Fatalf("%s: handshake answered with frame type %d", id, typ)
	}
	Eventually(t, 2*time.Second, id+" registered", func() bool {
		for _, l := range r.Links() {
			if l.Peer == id && l.Up {
				return true
			}
		}
		return false
	})
	return p
}
