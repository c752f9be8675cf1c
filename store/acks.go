package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Events kept until the client acks them. A session with acks reads its
// inbox without taking it (Claim.Keep), and every event delivered to it
// live is pushed to the same list first (PushAll), so the list holds
// everything the client has not acked, in the order it was sent; an ack
// removes entries by message id (AckAll). One key per user, as before:
// a Cluster works the same.
//
// The store reads one thing of an entry: bytes 2 to 17 (after the version
// byte; Lua's 1-based string.sub positions in ackScript) are the message
// id the client acks.

// readInboxScript returns the inbox, oldest first, and removes only the
// entries of the JSON format of earlier versions (they start with '{' and
// carry no id an ack can name): they are delivered once, as before.
var readInboxScript = redis.NewScript(`
local v = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #v do
  if string.byte(v[i], 1) == 123 then
    redis.call('LREM', KEYS[1], 1, v[i])
  end
end
return v
`)

// ackScript removes the entries of KEYS[1] whose id is one of ARGV and
// returns how many bytes of entries it read (the cost of the scan, as a
// decimal string), then the entries removed, oldest first.
var ackScript = redis.NewScript(`
local want = {}
for i = 1, #ARGV do want[ARGV[i]] = true end
local v = redis.call('LRANGE', KEYS[1], 0, -1)
local gone = {''}
local scanned = 0
for i = 1, #v do
  scanned = scanned + #v[i]
  if want[string.sub(v[i], 2, 17)] then
    gone[#gone + 1] = v[i]
  end
end
for i = 2, #gone do
  redis.call('LREM', KEYS[1], 1, gone[i])
end
gone[1] = tostring(scanned)
return gone
`)

// Push is one entry to append to a user's inbox unless it holds Limit
// entries, and its outcome once PushAll returns: Err is ErrInboxFull, a
// Redis error, or nil.
type Push struct {
	User  string
	Entry []byte
	Limit int
	Err   error
}

// PushAll appends every push's entry in one pipeline, in order; each gets
// its own outcome. A pipeline go-redis sends again after a connection
// failure may append an entry twice: its client sees the id twice and
// drops the second.
func (s *Store) PushAll(ctx context.Context, pushes []*Push) {
	cmds := make([]*redis.Cmd, len(pushes))
	ttl := s.cfg.InboxTTL.Milliseconds()
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, p := range pushes {
			cmds[i] = pushInboxScript.Eval(ctx, pipe, []string{inboxKeyPrefix + p.User}, p.Limit, ttl, p.Entry)
		}
		return nil
	})
	for i, p := range pushes {
		n, err := cmds[i].Int()
		switch {
		case err != nil:
			p.Err = s.fail(fmt.Errorf("keep event for %q: %w", p.User, err))
		case n == 0:
			p.Err = ErrInboxFull
		}
	}
}

// Ack is one user's acked message ids (16 bytes each), and what AckAll
// removed for them: the entries, oldest first.
type Ack struct {
	User    string
	IDs     [][]byte
	Removed []string
	Scanned int64 // bytes of entries Redis read to find them: what the ack cost it
	Err     error
}

// AckAll removes the acked entries of every user in one pipeline. An id
// with no entry (acked already, or never kept) removes nothing. A
// pipeline sent again after a connection failure removes nothing more:
// what the first run removed is then not returned.
func (s *Store) AckAll(ctx context.Context, acks []*Ack) {
	cmds := make([]*redis.Cmd, len(acks))
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, a := range acks {
			args := make([]any, len(a.IDs))
			for j, id := range a.IDs {
				args[j] = id
			}
			cmds[i] = ackScript.Eval(ctx, pipe, []string{inboxKeyPrefix + a.User}, args...)
		}
		return nil
	})
	for i, a := range acks {
		v, err := cmds[i].StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			a.Err = s.fail(fmt.Errorf("ack events of %q: %w", a.User, err))
			continue
		}
		if len(v) == 0 {
			continue // not this script's reply: nothing removed
		}
		a.Scanned, _ = strconv.ParseInt(v[0], 10, 64)
		a.Removed = v[1:]
	}
}

// ReadInbox returns user's inbox without taking it (as Claim.Keep does).
func (s *Store) ReadInbox(ctx context.Context, user string) ([]string, error) {
	v, err := readInboxScript.Run(ctx, s.rdb, []string{inboxKeyPrefix + user}).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, s.fail(fmt.Errorf("read inbox of %q: %w", user, err))
	}
	return v, nil
}
