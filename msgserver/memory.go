package msgserver

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// A reconnect storm (every client of a restarted server logging in within
// seconds) runs a goroutine per session until the sessions park; their
// stacks are then free, but the Go runtime keeps free memory for reuse and
// gives it back to the system only slowly (measured: not at all within 40 s
// of 15,000 sessions parking, 60 MB of stacks). For a chat server whose
// sessions spend hours parked that is a lasting cost in RSS, so the server
// returns it once the storm is over: when the free memory (free heap, and
// stacks no goroutine could be using) is at least 64 MiB and at least half
// of what is in use. A check is a few metric reads every 10 s; a release
// is a forced GC (58 ms for 15,000 sessions on 2 cores).

const (
	memoryCheckEvery = 10 * time.Second
	minFreeToRelease = 64 << 20 // bytes
)

// releaseMemory runs until ctx ends.
func releaseMemory(ctx context.Context, log *slog.Logger) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
		{Name: "/memory/classes/heap/objects:bytes"}, // in use (and not yet swept)
		{Name: "/memory/classes/heap/stacks:bytes"},  // stacks, and stack spans kept for reuse
		{Name: "/sched/goroutines:goroutines"},
	}
	t := time.NewTicker(memoryCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		metrics.Read(samples)
		var v [4]uint64
		for i, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				return // a metric this runtime does not have
			}
			v[i] = s.Value.Uint64()
		}
		free, used, stacks, goroutines := v[0], v[1], v[2], v[3]
		// Stack memory beyond what the goroutines there are could use:
		// the stacks of goroutines that have ended, freed by the next GC.
		if idleStacks := stacks - min(stacks, goroutines*8<<10); idleStacks > free {
			free = idleStacks + free
		}
		if free < minFreeToRelease || free < used/2 {
			continue
		}
		start := time.Now()
		debug.FreeOSMemory()
		log.Debug("returned free memory to the system", "free_bytes", free, "in_use_bytes", used, "took", time.Since(start))
	}
}
