package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

func newStore(t *testing.T, inboxMax int) (*store.Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	return store.New(rdb, store.Config{PresenceTTL: time.Minute, RegistryTTL: 6 * time.Second, InboxMax: inboxMax, InboxTTL: time.Hour}), r
}

// A full inbox refuses the push and keeps what it has.
func TestPushInboxRefusesWhenFull(t *testing.T) {
	st, r := newStore(t, 3)
	ctx := context.Background()
	for i := range 3 {
		if err := st.PushInbox(ctx, "ann", []byte(fmt.Sprint("m", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PushInbox(ctx, "ann", []byte("m3")); !errors.Is(err, store.ErrInboxFull) {
		t.Fatalf("push to a full inbox: %v, want ErrInboxFull", err)
	}
	if ttl, _ := r.Command("TTL", "chatrelay:inbox:ann"); ttl == ":-1" || ttl == ":-2" {
		t.Fatalf("inbox TTL = %s, want a TTL", ttl)
	}
	got, err := st.TakeInbox(ctx, "ann", "t1")
	if want := []string{"m0", "m1", "m2"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("TakeInbox = %q, %v; want %q", got, err, want)
	}
	if err := st.PushInbox(ctx, "ann", []byte("again")); err != nil {
		t.Fatalf("push after the inbox was taken: %v", err)
	}
}

// Pushes racing from many clients (many servers) never overfill an inbox.
func TestPushInboxIsAtomic(t *testing.T) {
	st, r := newStore(t, 100)
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored, full := 0, 0
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				err := st.PushInbox(context.Background(), "bob", []byte(fmt.Sprint(g, "-", i)))
				mu.Lock()
				switch {
				case err == nil:
					stored++
				case errors.Is(err, store.ErrInboxFull):
					full++
				default:
					t.Error(err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n, _ := r.Command("LLEN", "chatrelay:inbox:bob"); stored != 100 || full != 300 || n != ":100" {
		t.Fatalf("stored %d, refused %d, LLEN %s; want 100, 300, :100", stored, full, n)
	}
}

// Entries put back after a failed login go in front of what arrived
// since, and none is trimmed away, even past InboxMax.
func TestRestoreInboxDropsNothing(t *testing.T) {
	st, _ := newStore(t, 2)
	ctx := context.Background()
	for _, m := range []string{"a", "b"} {
		if err := st.PushInbox(ctx, "cy", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	taken, err := st.TakeInbox(ctx, "cy", "t1")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"c", "d"} {
		if err := st.PushInbox(ctx, "cy", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.RestoreInbox(ctx, "cy", taken); err != nil {
		t.Fatal(err)
	}
	if err := st.PushInbox(ctx, "cy", []byte("e")); !errors.Is(err, store.ErrInboxFull) {
		t.Fatalf("push to an inbox over its max: %v, want ErrInboxFull", err)
	}
	got, err := st.TakeInbox(ctx, "cy", "t2")
	if want := []string{"a", "b", "c", "d"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("TakeInbox = %q, %v; want %q", got, err, want)
	}
}

func TestUsedMemory(t *testing.T) {
	st, _ := newStore(t, 10)
	ctx := context.Background()
	before, err := st.UsedMemory(ctx)
	if err != nil || before <= 0 {
		t.Fatalf("UsedMemory = %d, %v", before, err)
	}
	for i := range 100 {
		if err := st.PushInbox(ctx, fmt.Sprint("user", i), make([]byte, 10000)); err != nil {
			t.Fatal(err)
		}
	}
	if after, err := st.UsedMemory(ctx); err != nil || after < before+1_000_000 {
		t.Fatalf("UsedMemory after storing 1 MB = %d (before %d), %v", after, before, err)
	}

	// A Redis look-alike without INFO memory says so.
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	mini := store.New(rdb, store.Config{PresenceTTL: time.Minute, RegistryTTL: time.Second, InboxMax: 1, InboxTTL: time.Hour})
	if _, err := mini.UsedMemory(ctx); !errors.Is(err, store.ErrNoMemoryInfo) {
		t.Fatalf("UsedMemory from miniredis: %v, want ErrNoMemoryInfo", err)
	}
}
