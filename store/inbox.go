package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ErrInboxFull is PushInbox refusing a message: the inbox already holds
// InboxMax entries. Nothing stored is dropped to make room.
var ErrInboxFull = errors.New("offline inbox is full")

// pushInboxScript appends ARGV[3] to the inbox unless it already holds
// ARGV[1] entries (returns 0 then, 1 if stored), and sets the TTL to
// ARGV[2] ms. The check and the push are one script, so concurrent pushes
// from several servers cannot overfill an inbox.
var pushInboxScript = redis.NewScript(`
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// restoreInboxScript puts taken messages (ARGV[2..], oldest first) back at
// the head of the inbox and sets the TTL to ARGV[1] ms, as PushInbox does.
// It trims nothing: with what arrived since, the inbox may hold up to twice
// InboxMax for a while, and PushInbox refuses new messages until it is taken.
var restoreInboxScript = redis.NewScript(`
for i = #ARGV, 2, -1 do
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`)

// PushInbox appends an entry to user's offline inbox and renews the inbox
// TTL, or returns ErrInboxFull if the inbox holds InboxMax entries. Entries
// are opaque here: the message server encodes them.
func (s *Store) PushInbox(ctx context.Context, user string, entry []byte) error {
	n, err := pushInboxScript.Run(ctx, s.rdb, []string{inboxKeyPrefix + user}, s.cfg.InboxMax, s.cfg.InboxTTL.Milliseconds(), entry).Int()
	if err != nil {
		return s.fail(fmt.Errorf("store offline message for %q: %w", user, err))
	}
	if n == 0 {
		return ErrInboxFull
	}
	return nil
}

// TakeInbox atomically reads and removes user's offline messages, oldest
// first. token names this take (unique per take): a take that go-redis
// sends again after a connection failure returns the same messages
// instead of losing them (take.go).
func (s *Store) TakeInbox(ctx context.Context, user, token string) ([]string, error) {
	key := inboxKeyPrefix + user
	lines, err := takeInboxScript.Run(ctx, s.rdb, []string{key, takenKey(key, token)}, takenTTL).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, s.fail(fmt.Errorf("take inbox of %q: %w", user, err))
	}
	return lines, nil
}

// RestoreInbox puts entries taken from user's inbox back in front of
// whatever arrived since; none is dropped.
func (s *Store) RestoreInbox(ctx context.Context, user string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := make([]any, 0, 1+len(lines))
	args = append(args, s.cfg.InboxTTL.Milliseconds())
	for _, l := range lines {
		args = append(args, l)
	}
	if err := restoreInboxScript.Run(ctx, s.rdb, []string{inboxKeyPrefix + user}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return s.fail(fmt.Errorf("restore inbox of %q: %w", user, err))
	}
	return nil
}
