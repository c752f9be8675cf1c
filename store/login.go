package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Claim is one login: the user and the location it claims going in, the
// outcome once ClaimLogins returns.
type Claim struct {
	User string
	At   Location
	// Token names the inbox take (unique per login), so a retried
	// pipeline returns the same messages (take.go). Keep reads the inbox
	// without taking it: a session with acks removes entries as it acks.
	Token string
	Keep  bool

	Old      Location // where the user was logged in before (if Had)
	Had      bool
	Err      error    // presence not claimed: the login fails
	Inbox    []string // offline messages taken, oldest first
	InboxErr error    // inbox not taken: it stays for the next login
}

// ClaimLogins records, in one pipeline (one round trip), that each claim's
// user is now at its location, and atomically takes each user's offline
// inbox. Every claim gets its own outcome: a command failing for one key
// fails only that claim; a failed connection fails all. A claim whose
// presence write failed must not keep its inbox: the caller puts it back
// with RestoreInbox.
func (s *Store) ClaimLogins(ctx context.Context, claims []*Claim) {
	sets := make([]*redis.StatusCmd, len(claims))
	takes := make([]*redis.Cmd, len(claims))
	// Eval, not Run: a pipeline cannot fall back from EVALSHA on NOSCRIPT.
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range claims {
			sets[i] = pipe.SetArgs(ctx, userKeyPrefix+c.User, c.At.value(), redis.SetArgs{TTL: s.cfg.PresenceTTL, Get: true})
			key := inboxKeyPrefix + c.User
			if c.Keep {
				takes[i] = readInboxScript.Eval(ctx, pipe, []string{key})
			} else {
				takes[i] = takeInboxScript.Eval(ctx, pipe, []string{key, takenKey(key, c.Token)}, takenTTL)
			}
		}
		return nil
	})
	// Each command carries its own error: go-redis stamps a connection
	// failure on every command whose reply was not read.
	for i, c := range claims {
		prev, err := sets[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			c.Err = s.fail(fmt.Errorf("claim presence of %q: %w", c.User, err))
		default:
			c.Old, c.Had = parseLocation(prev)
		}
		lines, err := takes[i].StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			c.InboxErr = s.fail(fmt.Errorf("take inbox of %q: %w", c.User, err))
		} else {
			c.Inbox = lines
		}
	}
}
