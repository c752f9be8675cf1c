package msgserver

import "sync"

// maxLateReaders bounds the goroutines running late inbox reads
// (readInboxLate) at once. Each read is a Redis round trip; during a login
// storm, with Redis busy, a goroutine per read (as a timer per login gave)
// piled up by the thousand, and the runtime keeps every goroutine
// descriptor it has made for the life of the process: 5 MB after 19 000
// logins. A few readers taking turns are as fast: the round trips share
// the Redis client's few connections either way.
const maxLateReaders = 8

// lateReads runs queued reads on at most maxLateReaders goroutines,
// started when reads are queued and ended when none are left.
type lateReads struct {
	mu      sync.Mutex
	queue   []func()
	running int
}

// add queues fn and starts a reader for it if fewer than maxLateReaders
// run. It does not wait.
func (l *lateReads) add(fn func()) {
	l.mu.Lock()
	l.queue = append(l.queue, fn)
	start := l.running < maxLateReaders
	if start {
		l.running++
	}
	l.mu.Unlock()
	if start {
		go l.run()
	}
}

func (l *lateReads) run() {
	for {
		l.mu.Lock()
		if len(l.queue) == 0 {
			l.running--
			l.queue = nil // a storm's backlog is not kept
			l.mu.Unlock()
			return
		}
		fn := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		l.mu.Unlock()
		fn()
	}
}
