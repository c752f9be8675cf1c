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
// returns it once the storm is over: when the number of parked sessions
// grew by a storm's worth since the last release (at least
// minParksToRelease, and at least a tenth of them; sessions that wake and
// park again, as clients ping, do not count), the storm is over (the last
// check saw few new parks: at most 2 % of them; with 10 %, a storm slowed
// for a moment by a loaded machine was released in its middle, and the
// memory returned taken back at once), and at least minFreeToRelease is free (free
// heap, and stacks no goroutine could be using). A check is a few metric
// reads every 2 s; a release is a forced GC (58 ms for 15,000 sessions on 2
// cores). Releasing once the parks settle, rather than at a fixed 10 s tick
// that fell in the middle of the storm, returned the memory 25 s after the
// last of 19 000 logins instead of 30 s or more after it (4.8 KB of RSS per
// idle session then, 3.1 KB once returned). Since sessions park soon after
// their login (parkAfterLogin), a storm leaves fewer stacks and mostly free
// heap: 12 MB after 19 000 logins, which a 16 MB threshold kept (0.6 KB per
// session); a release now takes from 4 MB.

const (
	memoryCheckEvery  = 2 * time.Second
	minParksToRelease = 1000
	minFreeToRelease  = 4 << 20 // bytes
	stackPerGoroutine = 8 << 10 // the most a goroutine here is expected to use
)

// releaseMemory runs until ctx ends; parkedNow counts the sessions parked
// at the moment.
func releaseMemory(ctx context.Context, log *slog.Logger, parkedNow func() int) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},   // free, not yet returned
		{Name: "/memory/classes/heap/stacks:bytes"}, // stacks, and stack spans kept for reuse
		{Name: "/sched/goroutines:goroutines"},
	}
	t := time.NewTicker(memoryCheckEvery)
	defer t.Stop()
	last := parkedNow() // parked at the last release
	prev := last        // parked at the last check
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		n := parkedNow()
		parked, recent := n-last, n-prev
		prev = n
		if n < last {
			last = n // sessions woke or ended: count new parks from here
		}
		if parked < minParksToRelease || parked < n/10 || recent > parked/50 {
			continue // no storm's worth of parks, or they are still coming
		}
		metrics.Read(samples)
		var v [3]uint64
		for i, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				return // a metric this runtime does not have
			}
			v[i] = s.Value.Uint64()
		}
		free, stacks, goroutines := v[0], v[1], v[2]
		idleStacks := stacks - min(stacks, goroutines*stackPerGoroutine)
		if free+idleStacks < minFreeToRelease {
			continue
		}
		last = n
		start := time.Now()
		debug.FreeOSMemory()
		log.Debug("returned free memory to the system", "sessions_parked", parked, "free_bytes", free+idleStacks, "took", time.Since(start))
	}
}
