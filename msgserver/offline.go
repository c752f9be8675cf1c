package msgserver

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/wire"
)

// Offline messages: how one is kept in its recipient's inbox, and the
// limits on storing them (the per-recipient one is the store's).
//
// An inbox entry is the Forward payload (payload.go) behind a version byte
// and the message id:
//
//	version  1 byte     inboxEntryV1
//	id       16 bytes
//	from     str8
//	to       str8
//	ts       int64      unix milliseconds, big-endian
//	content  the rest, as the sender wrote it
//
// Content is not escaped: 4 KiB of '<' take 4 KiB, where the JSON line
// stored before took 24 KiB ("\u003c" for each). The event line is made
// when the entry is delivered. Entries written before this format are
// that JSON line itself, which starts with '{'; they are delivered as they
// are, so an upgrade keeps the inboxes it finds (they live --inbox-ttl).
const inboxEntryV1 = 1

var errBadInboxEntry = errors.New("unreadable offline inbox entry")

// appendInboxEntry appends the inbox entry of message id.
func appendInboxEntry(b []byte, id wire.ID, p *payload) []byte {
	b = append(b, inboxEntryV1)
	b = append(b, id[:]...)
	return appendPayload(b, p)
}

// inboxEvent is one entry taken from an inbox, ready to be sent.
type inboxEvent struct {
	line string // an entry in the JSON format: the event line itself
	ev   chatEvent
}

// parseInboxEntry reads an entry in any format. A chat message is marked
// offline, or redelivered if it was kept as it was sent live (acks.go).
func parseInboxEntry(entry string) (inboxEvent, error) {
	switch {
	case entry == "":
		return inboxEvent{}, errBadInboxEntry
	case entry[0] == '{':
		// The JSON format: encoding/json wrote it on one line.
		if strings.ContainsAny(entry, "\r\n") || !json.Valid([]byte(entry)) {
			return inboxEvent{}, errBadInboxEntry
		}
		return inboxEvent{line: entry}, nil
	}
	it, kept, err := parseEntry([]byte(entry))
	if err != nil {
		return inboxEvent{}, err
	}
	switch {
	case kept:
		it.ev.Redelivered = true
	case !it.isReceipt():
		it.ev.Offline = true
	}
	return inboxEvent{ev: it.ev}, nil
}

// appendLine appends the event's line for the recipient.
func (e *inboxEvent) appendLine(b []byte) []byte {
	if e.line != "" {
		return append(append(b, e.line...), '\n')
	}
	return e.ev.appendLine(b)
}

// inboxEvents reads the entries taken from user's inbox, oldest first. An
// entry it cannot read (not written by a message server) is logged and
// skipped: sent as it is, it could break the client's protocol.
func (s *Server) inboxEvents(user string, entries []string) []inboxEvent {
	if len(entries) == 0 {
		return nil
	}
	evs := make([]inboxEvent, 0, len(entries))
	for i, entry := range entries {
		e, err := parseInboxEntry(entry)
		if err != nil {
			s.log.Error("skipping an unreadable offline message", "user", user, "index", i, "bytes", len(entry), "err", err)
			continue
		}
		evs = append(evs, e)
	}
	return evs
}

// queueInbox queues inbox entries to sess in their order, but those skip
// (if not nil) says were sent already. When the entries were taken out of
// Redis (taken) and the session stops taking them (it closed meanwhile, or
// was cut as a slow consumer), the ones not queued go back to the head of
// the inbox for the next login rather than being lost.
func (s *Server) queueInbox(b *sendq.Batch, sess *session, user string, entries []string, taken bool, skip func(*inboxEvent) bool) {
	for i, entry := range entries {
		e, err := parseInboxEntry(entry)
		if err != nil {
			s.log.Error("skipping an unreadable offline message", "user", user, "index", i, "bytes", len(entry), "err", err)
			continue
		}
		if skip != nil && skip(&e) {
			continue
		}
		if err := sess.queueInboxEvent(b, &e); err != nil {
			if taken {
				s.restoreTaken(user, entries[i:])
			}
			return
		}
	}
}

// restoreTaken puts offline messages taken for a session that could not
// have them back at the head of user's inbox.
func (s *Server) restoreTaken(user string, entries []string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RedisTimeout)
	defer cancel()
	if err := s.store.RestoreInbox(ctx, user, entries); err != nil {
		s.log.Error("offline messages taken for a session that ended are lost", "user", user, "messages", len(entries), "err", err)
		return
	}
	s.log.Info("offline messages put back for the next login: the session ended before they were queued", "user", user, "messages", len(entries))
}

// offlineLimiter returns the session's bucket for offline messages, or
// nil if OfflineRate does not limit them. Only messages stored take a
// token (a refused one takes no room), so a sender checks for a token
// (Tokens() >= 1) and takes it (Allow) once stored; the stores of one
// session that run at the same time may overdraw it by as many. The
// bucket is made at the first offline message, so a connection that never
// sends one costs no more; it holds a minute's worth and lives as long as
// the connection, across logouts. Any goroutine may call it: a message
// relayed, then stored offline, is stored from the relay link's side.
func (sess *session) offlineLimiter(cfg *Config) *rate.Limiter {
	if cfg.OfflineRate <= 0 {
		return nil
	}
	l := sess.offlineRate.Load()
	if l == nil {
		l = rate.NewLimiter(rate.Limit(float64(cfg.OfflineRate)/60), cfg.OfflineRate)
		if !sess.offlineRate.CompareAndSwap(nil, l) {
			l = sess.offlineRate.Load()
		}
	}
	return l
}

// memorySampleEvery is how often Redis's memory use is read for the
// offline storage cap.
const memorySampleEvery = time.Second

// entryOverhead is what Redis spends on an offline message besides its
// entry, as the cap estimates it between readings: a new inbox's key,
// list and TTL (BenchmarkOfflineStorage measured 250 to 280 bytes).
const entryOverhead = 256

// The cap, once reached, holds until Redis is capLowWater/capHighWater of
// it, so that refusals and log lines do not flap at each reading.
const capLowWater, capHighWater = 95, 100

// offlineUse is the offline storage cap's view of Redis: used_memory as
// last read, plus what this server has stored since. Other servers'
// messages show at the next reading, so the cap can be passed by what they
// store in a second.
type offlineUse struct {
	used  atomic.Int64 // used_memory at the last reading; 0: none yet
	since atomic.Int64 // bytes this server stored since, estimated
	full  atomic.Bool  // the cap was reached at a reading, and Redis has not gone below the low water since
}

// stored counts an entry of n bytes stored.
func (u *offlineUse) stored(n int) { u.since.Add(int64(n) + entryOverhead) }

// offlineFull reports whether Redis is over the offline storage cap.
func (s *Server) offlineFull() bool {
	used := s.offline.used.Load()
	return used > 0 && s.cfg.OfflineMaxBytes > 0 && (s.offline.full.Load() || used+s.offline.since.Load() > s.cfg.OfflineMaxBytes)
}

// watchOfflineStorage reads Redis's used_memory every memorySampleEvery
// until ctx ends; offline messages are refused while it (with what this
// server stored since) is above OfflineMaxBytes, and once refused, until
// it is below 95% of it. used_memory, not a count
// of bytes pushed and taken: a count would drift up whenever an inbox
// expires unread (TTL expiry tells nobody), and once up it would refuse
// every offline message; used_memory falls as Redis frees expired inboxes,
// and after a restart or a flush it is right at once. It is approximate:
// it counts presence and everything else in Redis too.
func (s *Server) watchOfflineStorage(ctx context.Context) {
	t := time.NewTicker(memorySampleEvery)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
		since := s.offline.since.Swap(0) // stores from now on may be in the reading too: counted twice, refused early
		used, err := s.store.UsedMemory(cctx)
		cancel()
		switch {
		case errors.Is(err, store.ErrNoMemoryInfo):
			s.log.Warn("no cap on offline storage: Redis does not report its memory use", "err", err)
			return
		case err != nil:
			// Redis unreachable: offline stores fail by themselves. Keep
			// counting from the last reading.
			s.offline.since.Add(since)
		default:
			s.offline.used.Store(used)
			s.m.setRedisMemory(used)
			water := int64(capHighWater)
			if s.offline.full.Load() {
				water = capLowWater
			}
			full := used > s.cfg.OfflineMaxBytes/100*water
			if s.offline.full.Swap(full) != full {
				s.m.setOfflineFull(full)
				if full {
					s.log.Warn("offline storage full: offline messages are refused", "redis_used_memory", used, "offline_max_bytes", s.cfg.OfflineMaxBytes)
				} else {
					s.log.Info("offline storage below its cap: offline messages are stored again", "redis_used_memory", used, "offline_max_bytes", s.cfg.OfflineMaxBytes)
				}
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
