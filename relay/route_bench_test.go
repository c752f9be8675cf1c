package relay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/wire"
)

// BenchmarkRelayForward measures forwarding through a real relay over
// loopback: peer A writes b.N Forward frames (100-byte payloads) in batches
// of n frames per write, peer B reads them. At most 64 batches are unread at
// once, so the relay's queue for B stays far below its slow-link cut. The
// allocation counts are the whole process: the relay's read, route and
// write paths plus the two peers (which allocate nothing per frame).
func BenchmarkRelayForward(b *testing.B) {
	for _, batch := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchmarkForward(b, batch) })
	}
}

func benchmarkForward(b *testing.B, batch int) {
	r := testenv.StartRelay(b, "", relay.Config{Metrics: relay.NewMetrics(prometheus.NewRegistry())})
	pa := testenv.ConnectPeer(b, r, "bench-a")
	pb := testenv.ConnectPeer(b, r, "bench-b")

	f := &wire.Forward{Origin: "bench-a", Dest: "bench-b", Payload: make([]byte, 100)}
	var frames []byte
	for i := 0; i < batch; i++ {
		f.ID[0], f.ID[1] = byte(i), byte(i>>8)
		frames = wire.AppendForward(frames, f)
	}
	frameLen := len(frames) / batch

	const window = 64 // batches written and not yet read by B
	tokens := make(chan struct{}, window)
	done := make(chan error, 1)
	b.SetBytes(int64(frameLen))
	b.ReportAllocs()
	b.ResetTimer()
	go func() { done <- readForwards(pb, b.N, batch, tokens) }()
	for sent := 0; sent < b.N; {
		n := min(batch, b.N-sent)
		select {
		case tokens <- struct{}{}:
		case err := <-done: // B failed: stop writing
			b.Fatalf("peer B after %d frames sent: %v", sent, err)
		}
		pa.Write(frames[:n*frameLen])
		sent += n
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}

// readForwards reads n Forward frames at p, answering the relay's pings so
// the link stays up (a frame the relay could not route never comes: the
// read times out), and releases one token per batch read. It reads with
// its own frame reader: DialPeer's reader has nothing buffered once it has
// returned the Welcome (the relay sends nothing more until its first ping,
// 200 ms later, and A writes only after both peers are up).
func readForwards(p *testenv.Peer, n, batch int, tokens <-chan struct{}) error {
	fr := wire.NewReader(p.Conn, wire.DefaultMaxFrame)
	var pong []byte
	for got := 0; got < n; {
		if got%batch == 0 {
			_ = p.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		}
		typ, body, _, err := fr.Next()
		if err != nil {
			return fmt.Errorf("read after %d of %d frames: %w", got, n, err)
		}
		switch typ {
		case wire.TypeForward:
			got++
			if got%batch == 0 || got == n {
				<-tokens
			}
		case wire.TypePing:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return err
			}
			pong = wire.AppendPing(pong[:0], wire.TypePong, nanos)
			if _, err := p.Conn.Write(pong); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected frame type %d", typ)
		}
	}
	return nil
}
