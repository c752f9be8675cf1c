package store_test

import (
	"bytes"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// cutProxy forwards TCP to a Redis and, once, cuts the connection that
// carries a command containing trigger just as Redis's reply to it comes
// back: Redis has run the command, the client never hears of it, and
// go-redis sends it again on a new connection.
type cutProxy struct {
	ln      net.Listener
	target  string
	trigger []byte
	armed   atomic.Bool
	cuts    atomic.Int32
	wg      sync.WaitGroup
}

func startCutProxy(t *testing.T, target, trigger string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, trigger: []byte(trigger)}
	p.armed.Store(true)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		var triggered atomic.Bool
		p.wg.Add(2)
		go func() { // client -> Redis
			defer p.wg.Done()
			defer s.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if p.armed.Load() && bytes.Contains(buf[:n], p.trigger) {
						triggered.Store(true)
					}
					if _, werr := s.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // Redis -> client
			defer p.wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if triggered.Load() && p.armed.CompareAndSwap(true, false) {
						p.cuts.Add(1)
						s.Close()
						return // the reply is lost with the connection
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					if err != io.EOF {
						return
					}
					return
				}
			}
		}()
	}
}

// A login's inbox take whose connection fails after Redis ran it, before
// the reply arrived, is sent again by go-redis (it retries pipelines on a
// network error); the take sent again returns the same messages instead
// of an empty inbox.
func TestInboxTakeSurvivesRetriedPipeline(t *testing.T) {
	r := testenv.StartRedis(t)
	direct := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { direct.Close() })
	cfg := store.Config{PresenceTTL: time.Minute, RegistryTTL: 6 * time.Second, InboxMax: 10, InboxTTL: time.Hour}
	ctx := testenv.WithTimeout(t, 10*time.Second)
	st := store.New(direct, cfg)
	want := []string{"m0", "m1", "m2"}
	for _, m := range want {
		if err := st.PushInbox(ctx, "dee", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	// The scripts are loaded (a take by another user), so what the proxy
	// cuts is a take Redis ran, not one it answered NOSCRIPT.
	if err := st.PushInbox(ctx, "warm", []byte("w")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.TakeInbox(ctx, "warm", "warm-1"); err != nil {
		t.Fatal(err)
	}
	// The take, not the look whether the inbox exists, is cut.
	p := startCutProxy(t, r.Addr, "chatrelay:taken:")
	viaProxy := redis.NewClient(&redis.Options{Addr: p.ln.Addr().String()}) // go-redis's default retries
	t.Cleanup(func() { viaProxy.Close() })
	proxied := store.New(viaProxy, cfg)

	c := &store.Claim{User: "dee", At: store.Location{Server: "m1", Session: "s1"}, Token: "login-1"}
	proxied.ClaimLogins(ctx, []*store.Claim{c})
	if p.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d connections, want 1: the test did not fail the take", p.cuts.Load())
	}
	if c.Err != nil || c.InboxErr != nil {
		t.Fatalf("claim failed: %v, %v", c.Err, c.InboxErr)
	}
	if !reflect.DeepEqual(c.Inbox, want) {
		t.Fatalf("the retried take returned %q, want %q: the first take's messages are lost", c.Inbox, want)
	}
	if n, _ := r.Command("LLEN", "chatrelay:inbox:dee"); n != ":0" {
		t.Fatalf("inbox LLEN after the take = %s, want :0", n)
	}

	// The same for a take of its own (a login that reads the inbox again).
	for _, m := range want {
		if err := st.PushInbox(ctx, "dee", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	p.armed.Store(true)
	got, err := proxied.TakeInbox(ctx, "dee", "take-2")
	if err != nil || !reflect.DeepEqual(got, want) || p.cuts.Load() != 2 {
		t.Fatalf("TakeInbox through a cut = %q, %v (cuts %d); want %q", got, err, p.cuts.Load(), want)
	}
	// A new take takes only what arrived since.
	if err := st.PushInbox(ctx, "dee", []byte("m3")); err != nil {
		t.Fatal(err)
	}
	if got, err := st.TakeInbox(ctx, "dee", "take-3"); err != nil || !reflect.DeepEqual(got, []string{"m3"}) {
		t.Fatalf("next take = %q, %v; want [m3]", got, err)
	}
}

// The key a take leaves its result under is in the inbox key's Cluster
// slot, whatever the name (braces included).
func TestTakenKeySlot(t *testing.T) {
	for _, name := range []string{"ann", "a{b}c", "a}b", "{x", "a{}b", "}{", "名前"} {
		inbox := "chatrelay:inbox:" + name
		taken := store.TakenKeyForTest(inbox, "tok")
		if a, b := store.SlotForTest(inbox), store.SlotForTest(taken); a != b {
			t.Errorf("%q: inbox slot %d, taken key %q slot %d", name, a, taken, b)
		}
	}
}
