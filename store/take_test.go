package store_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

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
	p := testenv.StartCutProxy(t, r.Addr, "chatrelay:taken:")
	viaProxy := redis.NewClient(&redis.Options{Addr: p.Addr()}) // go-redis's default retries
	t.Cleanup(func() { viaProxy.Close() })
	proxied := store.New(viaProxy, cfg)

	c := &store.Claim{User: "dee", At: store.Location{Server: "m1", Session: "s1"}, Token: "login-1"}
	proxied.ClaimLogins(ctx, []*store.Claim{c})
	if p.Cuts() != 1 {
		t.Fatalf("the proxy cut %d connections, want 1: the test did not fail the take", p.Cuts())
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
	p.Arm()
	got, err := proxied.TakeInbox(ctx, "dee", "take-2")
	if err != nil || !reflect.DeepEqual(got, want) || p.Cuts() != 2 {
		t.Fatalf("TakeInbox through a cut = %q, %v (cuts %d); want %q", got, err, p.Cuts(), want)
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
