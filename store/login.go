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

// ClaimLogins records that each claim's user is now at its location and
// atomically takes each user's offline inbox. Every claim gets its own
// outcome: a command failing for one key fails only that claim; a failed
// connection fails all. A claim whose presence write failed does not take
// its inbox: it stays for the login that will work.
//
// One round trip for all the claims: the presence write and a look whether
// the inbox exists (plain commands, no script). Only the inboxes that
// exist are then taken, with the take script, in a second round trip: most
// logins find none. A message stored after the look is one stored after
// the take, as it was when the take ran in the first round trip.
func (s *Store) ClaimLogins(ctx context.Context, claims []*Claim) {
	sets := make([]*redis.StatusCmd, len(claims))
	exists := make([]*redis.IntCmd, len(claims))
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range claims {
			sets[i] = pipe.SetArgs(ctx, userKeyPrefix+c.User, c.At.value(), redis.SetArgs{TTL: s.cfg.PresenceTTL, Get: true})
			exists[i] = pipe.Exists(ctx, inboxKeyPrefix+c.User)
		}
		return nil
	})
	// Each command carries its own error: go-redis stamps a connection
	// failure on every command whose reply was not read.
	var reads []*InboxRead
	var readFor []*Claim
	for i, c := range claims {
		prev, err := sets[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			c.Err = s.fail(fmt.Errorf("claim presence of %q: %w", c.User, err))
			continue
		default:
			c.Old, c.Had = parseLocation(prev)
		}
		n, err := exists[i].Result()
		switch {
		case err != nil:
			c.InboxErr = s.fail(fmt.Errorf("take inbox of %q: %w", c.User, err))
		case n > 0:
			reads = append(reads, &InboxRead{User: c.User, Token: c.Token, Keep: c.Keep})
			readFor = append(readFor, c)
		}
	}
	s.takeInboxes(ctx, reads)
	for i, r := range reads {
		readFor[i].Inbox, readFor[i].InboxErr = r.Lines, r.Err
	}
}

// InboxRead is one user's inbox to take (named by Token, take.go) or, with
// Keep, to read without taking (as Claim.Keep), and its outcome once
// ReadInboxes returns.
type InboxRead struct {
	User  string
	Token string
	Keep  bool
	Lines []string // oldest first
	Err   error
}

// ReadInboxes takes (or reads, Keep) the inboxes of many users: one round
// trip looks which exist, a second takes those, so users without offline
// messages cost one plain command each. Each read gets its own outcome.
func (s *Store) ReadInboxes(ctx context.Context, reads []*InboxRead) {
	if len(reads) == 0 {
		return
	}
	exists := make([]*redis.IntCmd, len(reads))
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, r := range reads {
			exists[i] = pipe.Exists(ctx, inboxKeyPrefix+r.User)
		}
		return nil
	})
	var some []*InboxRead
	for i, r := range reads {
		n, err := exists[i].Result()
		switch {
		case err != nil:
			r.Err = s.fail(fmt.Errorf("read inbox of %q: %w", r.User, err))
		case n > 0:
			some = append(some, r)
		}
	}
	s.takeInboxes(ctx, some)
}

// TakeInboxesAgain runs again the takes (and reads) of reads that failed,
// with the same tokens: a take whose reply was lost returns what it moved
// then. It does not look first which inboxes exist, as ReadInboxes does:
// the take that ran has renamed the inbox away.
func (s *Store) TakeInboxesAgain(ctx context.Context, reads []*InboxRead) {
	for _, r := range reads {
		r.Lines, r.Err = nil, nil
	}
	s.takeInboxes(ctx, reads)
}

// takeInboxes runs the take script (the read script, for reads that
// Keep) of every read, one pipeline per script.
func (s *Store) takeInboxes(ctx context.Context, reads []*InboxRead) {
	var take, keep []*InboxRead
	for _, r := range reads {
		if r.Keep {
			keep = append(keep, r)
		} else {
			take = append(take, r)
		}
	}
	cmds := s.evalAll(ctx, takeInboxScript, len(take), func(i int) ([]string, []any) {
		key := inboxKeyPrefix + take[i].User
		return []string{key, takenKey(key, take[i].Token)}, []any{takenTTL}
	})
	for i, r := range take {
		r.Lines, r.Err = s.inboxLines(cmds[i], "take", r.User)
	}
	cmds = s.evalAll(ctx, readInboxScript, len(keep), func(i int) ([]string, []any) {
		return []string{inboxKeyPrefix + keep[i].User}, nil
	})
	for i, r := range keep {
		r.Lines, r.Err = s.inboxLines(cmds[i], "read", r.User)
	}
}

// inboxLines is the outcome of a take or read script.
func (s *Store) inboxLines(cmd *redis.Cmd, verb, user string) ([]string, error) {
	lines, err := cmd.StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, s.fail(fmt.Errorf("%s inbox of %q: %w", verb, user, err))
	}
	return lines, nil
}
