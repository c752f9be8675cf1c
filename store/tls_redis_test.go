package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs/certstest"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// A real redis-server serving TLS answers a client given its CA, and a
// client without it fails on the certificate.
func TestRedisOverTLS(t *testing.T) {
	ca := certstest.NewCA(t)
	r := testenv.StartRedisTLS(t, ca)
	for _, withCA := range []bool{true, false} {
		o, err := store.ParseURL(r.URL() + "?dial_timeout=1s&max_retries=-1")
		if err != nil {
			t.Fatal(err)
		}
		if withCA {
			if err := o.UseCA(ca.File); err != nil {
				t.Fatal(err)
			}
		}
		rdb := o.NewClient()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = rdb.Ping(ctx).Err()
		cancel()
		rdb.Close()
		if withCA && err != nil {
			t.Fatalf("PING over TLS with the CA: %v", err)
		}
		if !withCA && (err == nil || !strings.Contains(err.Error(), "certificate")) {
			t.Fatalf("PING over TLS without the CA: %v, want a certificate error", err)
		}
	}
}
