package wire

import "sync/atomic"

// LinkStats are the counters of one link, kept by whichever side owns it
// and read by its health endpoint.
type LinkStats struct {
	FramesIn, FramesOut atomic.Uint64
	BytesIn, BytesOut   atomic.Uint64
	LastRecv            atomic.Int64 // unix nanos of the last frame received
	RTT                 atomic.Int64 // nanos, last ping round trip
}
