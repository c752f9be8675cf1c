package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// takeInboxScript returns a user's offline messages, oldest first, and
// deletes them: one key, atomic, so nothing stored meanwhile is lost.
var takeInboxScript = redis.NewScript(`
local v = redis.call('LRANGE', KEYS[1], 0, -1)
if #v > 0 then
  redis.call('DEL', KEYS[1])
end
return v
`)

// restoreInboxScript puts taken messages (ARGV[3..], oldest first) back at
// the head of the inbox, keeps the newest ARGV[1] and sets the TTL to
// ARGV[2] ms, as PushInbox does.
var restoreInboxScript = redis.NewScript(`
for i = #ARGV, 3, -1 do
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// PushInbox appends an event line to user's offline inbox, keeping the
// newest InboxMax and renewing the inbox TTL.
func (s *Store) PushInbox(ctx context.Context, user string, line []byte) error {
	key := inboxKeyPrefix + user
	_, err := s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.RPush(ctx, key, line)
		pipe.LTrim(ctx, key, int64(-s.cfg.InboxMax), -1)
		pipe.PExpire(ctx, key, s.cfg.InboxTTL)
		return nil
	})
	if err != nil {
		return s.fail(fmt.Errorf("store offline message for %q: %w", user, err))
	}
	return nil
}

// TakeInbox atomically reads and removes user's offline messages, oldest first.
func (s *Store) TakeInbox(ctx context.Context, user string) ([]string, error) {
	lines, err := takeInboxScript.Run(ctx, s.rdb, []string{inboxKeyPrefix + user}).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, s.fail(fmt.Errorf("take inbox of %q: %w", user, err))
	}
	return lines, nil
}

// RestoreInbox puts lines taken from user's inbox back in front of
// whatever arrived since, keeping the newest InboxMax.
func (s *Store) RestoreInbox(ctx context.Context, user string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := make([]any, 0, 2+len(lines))
	args = append(args, s.cfg.InboxMax, s.cfg.InboxTTL.Milliseconds())
	for _, l := range lines {
		args = append(args, l)
	}
	if err := restoreInboxScript.Run(ctx, s.rdb, []string{inboxKeyPrefix + user}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return s.fail(fmt.Errorf("restore inbox of %q: %w", user, err))
	}
	return nil
}
