package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	oldSecret = []byte("the old link secret")
	newSecret = []byte("the new link secret")
)

// handshake runs Accept and Greet against each other over a pipe.
func handshake(t *testing.T, relay, server [][]byte, id string, admit func(string) error) (acceptedID string, acceptErr error, relayID string, greetErr error) {
	t.Helper()
	rc, sc := net.Pipe()
	defer rc.Close()
	defer sc.Close()
	_ = rc.SetDeadline(time.Now().Add(5 * time.Second))
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		acceptedID, acceptErr = Accept(rc, "relay-a", admit, relay...)
	}()
	relayID, greetErr = Greet(sc, id, server...)
	sc.Close() // a Greet that gave up early leaves Accept nothing to wait for
	<-done
	return acceptedID, acceptErr, relayID, greetErr
}

// A relay that holds the current and the next secret accepts servers on
// either; one that holds only the new secret refuses the old.
func TestHandshakeDuringSecretRotation(t *testing.T) {
	for _, tc := range []struct {
		name          string
		relay, server [][]byte
		ok            bool
	}{
		{"relay old+new, server on old", [][]byte{oldSecret, newSecret}, [][]byte{oldSecret, newSecret}, true},
		{"relay old+new, server switched to new", [][]byte{oldSecret, newSecret}, [][]byte{newSecret, oldSecret}, true},
		{"relay new+old, server on old only", [][]byte{newSecret, oldSecret}, [][]byte{oldSecret}, true},
		{"relay new only, server on new", [][]byte{newSecret}, [][]byte{newSecret}, true},
		{"relay new only, server on old", [][]byte{newSecret}, [][]byte{oldSecret, newSecret}, false},
		{"relay old only, server switched to new", [][]byte{oldSecret}, [][]byte{newSecret, oldSecret}, false},
		{"empty secrets are never accepted", [][]byte{nil, {}}, [][]byte{{}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, aerr, relayID, gerr := handshake(t, tc.relay, tc.server, "msg-1", nil)
			if tc.ok {
				if aerr != nil || gerr != nil || id != "msg-1" || relayID != "relay-a" {
					t.Fatalf("accept %q %v, greet %q %v; want a link", id, aerr, relayID, gerr)
				}
				return
			}
			if aerr == nil || gerr == nil {
				t.Fatalf("accept %q %v, greet %q %v; want both to fail", id, aerr, relayID, gerr)
			}
		})
	}
}

// relayHalf plays the relay by hand over conn: a challenge, then the
// frame reply makes of the server's Auth.
func relayHalf(conn net.Conn, reply func(a Auth) []byte) error {
	var nonce [NonceLen]byte
	if _, err := conn.Write(AppendChallenge(nil, nonce)); err != nil {
		return err
	}
	typ, body, err := readHandshakeFrame(conn, MaxAuthFrame)
	if err != nil || typ != TypeAuth {
		return errors.Join(err, errors.New("no auth"))
	}
	a, err := ParseAuth(body)
	if err != nil {
		return err
	}
	_, err = conn.Write(reply(a))
	return err
}

// A server takes a Welcome made with its next secret too (a relay switched
// before it), sends its current one, and refuses any other.
func TestGreetAcceptsWelcomeUnderEitherSecret(t *testing.T) {
	for _, tc := range []struct {
		name   string
		signer []byte
		ok     bool
	}{
		{"current", oldSecret, true},
		{"next", newSecret, true},
		{"other", []byte("some other secret!!"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, sc := net.Pipe()
			defer rc.Close()
			defer sc.Close()
			_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
			var proved bool
			errc := make(chan error, 1)
			go func() {
				errc <- relayHalf(rc, func(a Auth) []byte {
					proved = CheckMAC(a.MAC, AuthMAC(oldSecret, [NonceLen]byte{}, a.ServerID))
					return AppendWelcome(nil, "relay-a", WelcomeMAC(tc.signer, a.ClientNonce, "relay-a"))
				})
			}()
			_, err := Greet(sc, "msg-1", oldSecret, newSecret)
			if rerr := <-errc; rerr != nil {
				t.Fatal(rerr)
			}
			if !proved {
				t.Error("the server did not prove its current (first) secret")
			}
			if tc.ok != (err == nil) {
				t.Fatalf("Greet: %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && !errors.Is(err, ErrRejected) {
				t.Fatalf("Greet: %v, want ErrRejected", err)
			}
		})
	}
}

// peerConn is the stranger's end: what the relay writes is collected, and
// how many bytes it read from the stranger is counted.
type peerConn struct {
	in   *bytes.Reader
	read int
	out  bytes.Buffer
}

func (p *peerConn) Read(b []byte) (int, error) {
	n, err := p.in.Read(b)
	p.read += n
	return n, err
}

func (p *peerConn) Write(b []byte) (int, error) { return p.out.Write(b) }

// rejectReason returns the reason of the Reject following the challenge
// in what the relay wrote, or "" if it wrote none.
func rejectReason(t *testing.T, out []byte) string {
	t.Helper()
	fr := NewReader(bytes.NewReader(out), 0)
	if typ, _, _, err := fr.Next(); err != nil || typ != TypeChallenge {
		t.Fatalf("first frame: type %d, %v; want a challenge", typ, err)
	}
	typ, body, _, err := fr.Next()
	if errors.Is(err, io.EOF) {
		return ""
	}
	if err != nil || typ != TypeReject {
		t.Fatalf("second frame: type %d, %v; want a reject", typ, err)
	}
	return string(body)
}

// Before the secret is proved the relay reads one Auth-sized frame and no
// byte more: a header claiming 1 MiB is refused after its 4 bytes.
func TestAcceptReadsAtMostAnAuthFrame(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     []byte
		read   int
		reason string
	}{
		{"claims 1 MiB", append([]byte{0, 0x10, 0, 0, TypeAuth}, make([]byte, 100)...), 4, "expected auth frame"},
		{"claims one byte over an auth", append(binary4(MaxAuthFrame+1), make([]byte, MaxAuthFrame+1)...), 4, "expected auth frame"},
		{"empty frame", []byte{0, 0, 0, 0, 1, 2, 3}, 4, "expected auth frame"},
		{"not an auth", append(AppendPing(nil, TypePing, 1), 9, 9, 9), HeaderLen + 8, "expected auth frame"},
		{"largest auth, wrong secret, then more", append(AppendAuth(nil, Auth{ServerID: strings.Repeat("x", MaxServerIDLen)}), 1, 2, 3),
			HeaderLen + 1 + 1 + MaxServerIDLen + NonceLen + MACLen, "authentication failed: wrong link secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &peerConn{in: bytes.NewReader(tc.in)}
			if _, err := Accept(p, "relay-a", nil, oldSecret); err == nil {
				t.Fatal("accepted")
			}
			if p.read != tc.read {
				t.Errorf("read %d bytes of the peer's %d, want %d", p.read, len(tc.in), tc.read)
			}
			if got := rejectReason(t, p.out.Bytes()); got != tc.reason {
				t.Errorf("reject reason %q, want %q", got, tc.reason)
			}
		})
	}
}

func binary4(n int) []byte { return []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)} }

// A server id must be plain: even a holder of the secret is refused a bad
// one, with a reason that says what is allowed.
func TestAcceptRejectsBadServerIDs(t *testing.T) {
	for _, id := range []string{"", "bad\nid", strings.Repeat("x", MaxIDLen), strings.Repeat("x", MaxServerIDLen+1), "msg 1", "msg-1\x00", "mség"} {
		rc, sc := net.Pipe()
		_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
		type result struct {
			id  string
			err error
		}
		res := make(chan result, 1)
		go func() {
			id, err := Accept(rc, "relay-a", nil, oldSecret)
			res <- result{id, err}
		}()
		_, err := Greet(sc, id, oldSecret)
		r := <-res
		rc.Close()
		sc.Close()
		if r.err == nil || r.id != "" || !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "bad server id: want "+ServerIDRule) {
			t.Errorf("id %q: accept %q %v, greet %v; want a bad server id reject", id, r.id, r.err, err)
		}
	}
}

// admit's error refuses an authenticated server, and is its reason.
func TestAcceptAsksAdmit(t *testing.T) {
	busy := errors.New("server id already linked")
	id, aerr, _, gerr := handshake(t, [][]byte{oldSecret}, [][]byte{oldSecret}, "msg-1", func(id string) error {
		if id != "msg-1" {
			t.Errorf("admit asked about %q", id)
		}
		return busy
	})
	if id != "msg-1" || !errors.Is(aerr, busy) || !errors.Is(gerr, ErrRejected) || !strings.Contains(gerr.Error(), busy.Error()) {
		t.Fatalf("accept %q %v, greet %v; want the admit error as the reject", id, aerr, gerr)
	}
	// A peer without the secret is refused before admit is asked.
	_, aerr, _, _ = handshake(t, [][]byte{oldSecret}, [][]byte{newSecret}, "msg-1", func(string) error {
		t.Error("admit asked about an unauthenticated peer")
		return nil
	})
	if aerr == nil {
		t.Fatal("wrong secret accepted")
	}
}

// The server reads nothing past the Welcome: a frame the relay sends right
// after it is left for the link's own Reader.
func TestGreetLeavesFramesAfterWelcome(t *testing.T) {
	rc, sc := net.Pipe()
	defer rc.Close()
	defer sc.Close()
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		_ = relayHalf(rc, func(a Auth) []byte {
			b := AppendWelcome(nil, "relay-a", WelcomeMAC(oldSecret, a.ClientNonce, "relay-a"))
			return AppendPing(b, TypePing, 42)
		})
	}()
	if _, err := Greet(sc, "msg-1", oldSecret); err != nil {
		t.Fatal(err)
	}
	typ, body, _, err := NewReader(sc, 0).Next()
	if n, _ := ParsePing(body); err != nil || typ != TypePing || n != 42 {
		t.Fatalf("frame after the welcome: type %d, %v", typ, err)
	}
}

func TestValidServerID(t *testing.T) {
	for id, want := range map[string]bool{
		"msg-1": true, "relay_a.example": true, strings.Repeat("a", MaxServerIDLen): true, "A.9_-": true,
		"": false, strings.Repeat("a", MaxServerIDLen+1): false, "bad\nid": false, "msg 1": false,
		"msg/1": false, "mség": false, "msg\u200b1": false, " msg-1": false,
	} {
		if got := ValidServerID(id); got != want {
			t.Errorf("ValidServerID(%q) = %v, want %v", id, got, want)
		}
	}
	if !strings.HasPrefix(ServerIDRule, "1.."+strconv.Itoa(MaxServerIDLen)+" ") {
		t.Errorf("ServerIDRule %q does not say MaxServerIDLen %d", ServerIDRule, MaxServerIDLen)
	}
}
