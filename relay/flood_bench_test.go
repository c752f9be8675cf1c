package relay_test

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/wire"
)

// liveMem is the heap in use after a collection, and the goroutine stacks.
func liveMem() (heap, stacks float64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc), float64(m.StackInuse)
}

// BenchmarkHandshakeFloodHeap measures what connections that never prove
// the secret cost the relay's heap while they are held open: the issue's
// flood (a first frame header claiming 1 MiB), and connections stalled in
// their handshake. Run with -benchtime 1x; heap-B/conn and stack-B/conn
// are the figures (the heap includes the test's own end of each
// connection, a few hundred bytes).
func BenchmarkHandshakeFloodHeap(b *testing.B) {
	const n = 1000
	claim := []byte{0x00, 0x10, 0x00, 0x00, wire.TypeAuth}
	for _, bc := range []struct {
		name  string
		caps  bool // the default pending limits (64 per address) instead of room for all n
		first []byte
	}{
		{"claim-1MiB/caps-raised", false, claim},
		{"claim-1MiB/default-caps", true, claim},
		{"stalled/caps-raised", false, nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				reg := prometheus.NewRegistry()
				cfg := relay.Config{Metrics: relay.NewMetrics(reg), Logger: testenv.Logger(b)}
				if !bc.caps {
					cfg.MaxPendingHandshakes, cfg.MaxPendingPerIP = n, n
				}
				r := testenv.StartRelay(b, "", cfg)
				heap0, stacks0 := liveMem()
				conns := make([]net.Conn, 0, n)
				for j := 0; j < n; j++ {
					c, err := net.Dial("tcp", r.Addr)
					if err != nil {
						b.Fatal(err)
					}
					conns = append(conns, c)
					if bc.first != nil {
						_, _ = c.Write(bc.first)
					}
				}
				// Every connection is either pending or refused by now.
				testenv.Eventually(b, 30*time.Second, "every connection handled", func() bool {
					mfs, _ := reg.Gather()
					var pending, refused float64
					for _, mf := range mfs {
						switch mf.GetName() {
						case "relay_pending_handshakes":
							pending = mf.Metric[0].GetGauge().GetValue()
						case "relay_handshake_failures_total":
							refused = mf.Metric[0].GetCounter().GetValue()
						}
					}
					if bc.first == nil {
						return pending == n
					}
					return refused == n
				})
				heap, stacks := liveMem()
				b.ReportMetric((heap-heap0)/(1<<20), "heap-MiB")
				b.ReportMetric((heap-heap0)/n, "heap-B/conn")
				b.ReportMetric((stacks-stacks0)/n, "stack-B/conn")
				for _, c := range conns {
					c.Close()
				}
				r.Stop()
			}
		})
	}
}
