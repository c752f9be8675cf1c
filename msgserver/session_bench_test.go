package msgserver

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"
)

// BenchmarkSessionRequests is a session's read path per request, over
// loopback TCP: read a line, take a token, decode it, queue the reply;
// pipelined, 64 requests a write. "limited" takes each request from the
// connection's token bucket (at a rate it never reaches), "unlimited" does
// not: the difference is the bucket's cost.
func BenchmarkSessionRequests(b *testing.B) {
	for _, bc := range []struct {
		name string
		rate float64
	}{{"unlimited", -1}, {"limited", 1e9}} {
		b.Run(bc.name, func(b *testing.B) {
			_, addr, _ := startBareServer(b, Config{RequestRate: bc.rate, LoginTimeout: time.Hour, ParkIdleAfter: -1})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			const batch = 64
			reqs := bytes.Repeat([]byte(`{"cmd":"ping"}`+"\n"), batch)
			want := []byte(`{"reply":"ping","ok":true}` + "\n")
			br := bufio.NewReaderSize(c, 64<<10)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				if _, err := c.Write(reqs); err != nil {
					b.Fatal(err)
				}
				for range batch {
					line, err := br.ReadSlice('\n')
					if err != nil || !bytes.Equal(line, want) {
						b.Fatalf("reply %q, %v", line, err)
					}
				}
			}
		})
	}
}

// BenchmarkAllowRequest is the token bucket alone, per request.
func BenchmarkAllowRequest(b *testing.B) {
	srv := newBareServer(b, Config{RequestRate: 1e9})
	s := &session{srv: srv}
	at := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		at = at.Add(time.Microsecond) // the read time, which the read loop has at hand
		if !s.allowRequest(at) {
			b.Fatal("refused")
		}
	}
}
