package store

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// The registry as the relay's check reads it: live entries only, with
// their addresses.
func TestRegistry(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	st := New(rdb, Config{PresenceTTL: time.Minute, RegistryTTL: 6 * time.Second, InboxMax: 10, InboxTTL: time.Hour})

	for id, addr := range map[string]string{"msg-1": "10.0.0.1:7001", "msg-2": "10.0.0.2:7001"} {
		if err := st.Register(ctx, id, addr); err != nil {
			t.Fatal(err)
		}
	}
	if ttl := mr.TTL("chatrelay:server:msg-1"); ttl != 6*time.Second {
		t.Fatalf("registry TTL = %s, want 6s", ttl)
	}
	_ = mr.Set("chatrelay:user:ann", "msg-1 s1") // not a server
	got, err := Servers(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"msg-1": "10.0.0.1:7001", "msg-2": "10.0.0.2:7001"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Servers = %v, want %v", got, want)
	}
	if err := st.Deregister(ctx, "msg-1"); err != nil {
		t.Fatal(err)
	}
	mr.FastForward(7 * time.Second) // msg-2 missed its heartbeats
	if got, err := Servers(ctx, rdb); err != nil || len(got) != 0 {
		t.Fatalf("Servers after deregister and expiry = %v, %v; want none", got, err)
	}
}
