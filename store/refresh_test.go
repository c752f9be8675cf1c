package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// A refresh of more users than one call carries: records that name their
// session get the TTL again, vanished ones come back, and those that name
// another session (a login elsewhere) are left alone and reported.
func TestRefreshAllManyUsers(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := store.New(rdb, store.Config{PresenceTTL: time.Minute, RegistryTTL: time.Minute, InboxMax: 10, InboxTTL: time.Hour})

	const n = 700 // more than one call's worth
	users := make([]store.Record, n)
	session := map[string]string{}
	for i := range n {
		users[i] = store.Record{User: fmt.Sprintf("u%03d", i), At: store.Location{Server: "msg-1", Session: fmt.Sprintf("s%03d", i)}}
		session[users[i].User] = users[i].At.Session
	}
	var wantLost []string
	for i := range n {
		name := fmt.Sprintf("u%03d", i)
		key := "chatrelay:user:" + name
		var err error
		switch i % 3 {
		case 0: // ours, about to expire
			err = rdb.Set(ctx, key, "msg-1 "+session[name], time.Second).Err()
		case 1: // vanished
		case 2: // logged in elsewhere since
			err = rdb.Set(ctx, key, "msg-2 other", time.Minute).Err()
			wantLost = append(wantLost, name)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	lost, err := st.RefreshAll(ctx, users)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(lost)
	if !slices.Equal(lost, wantLost) {
		t.Fatalf("lost %d users %v..., want %d", len(lost), lost[:min(len(lost), 5)], len(wantLost))
	}
	for i := range n {
		name := fmt.Sprintf("u%03d", i)
		key := "chatrelay:user:" + name
		v, err := rdb.Get(ctx, key).Result()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ttl := rdb.PTTL(ctx, key).Val()
		want := "msg-1 " + session[name]
		if i%3 == 2 {
			want = "msg-2 other"
		}
		if v != want || ttl < 50*time.Second {
			t.Fatalf("%s: record %q with TTL %s, want %q with about a minute", name, v, ttl, want)
		}
	}
}

// BenchmarkRefreshAll is a presence refresh of 10 000 users, per user: the
// garbage it makes (B/op) is what every refresh adds to the heap of a server
// holding that many idle sessions.
func BenchmarkRefreshAll(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	st := store.New(rdb, store.Config{PresenceTTL: time.Minute, RegistryTTL: time.Minute, InboxMax: 10, InboxTTL: time.Hour})
	const n = 10000
	users := make([]store.Record, n)
	for i := range n {
		users[i] = store.Record{User: fmt.Sprintf("user-%05d", i), At: store.Location{Server: "msg-1", Session: fmt.Sprintf("%016x", i)}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := st.RefreshAll(ctx, users); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/user")
}
