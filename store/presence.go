package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// refreshScript extends a presence record if it still names this session,
// recreates it if it vanished (Redis restarted), and leaves it alone if it
// names another session (the user logged in elsewhere): returns 1, 2 or 0.
var refreshScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
`)

// releaseScript deletes a presence record only if it still names this
// session, so a late disconnect never wipes a newer login elsewhere.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Location is where a user is logged in: a message server and one of its
// sessions.
type Location struct {
	Server, Session string
}

func (l Location) value() string { return l.Server + " " + l.Session }

func parseLocation(v string) (Location, bool) {
	server, session, ok := strings.Cut(v, " ")
	return Location{server, session}, ok && server != ""
}

// Lookup returns where user is logged in (ok false if offline).
func (s *Store) Lookup(ctx context.Context, user string) (Location, bool, error) {
	v, err := s.rdb.Get(ctx, userKeyPrefix+user).Result()
	if errors.Is(err, redis.Nil) {
		return Location{}, false, nil
	}
	if err != nil {
		return Location{}, false, s.fail(fmt.Errorf("look up %q: %w", user, err))
	}
	loc, ok := parseLocation(v)
	return loc, ok, nil
}

// Release removes user's record if it still names at.
func (s *Store) Release(ctx context.Context, user string, at Location) error {
	err := releaseScript.Run(ctx, s.rdb, []string{userKeyPrefix + user}, at.value()).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return s.fail(fmt.Errorf("release presence of %q: %w", user, err))
	}
	return nil
}

// ReleaseAll removes the records of many sessions in one pipeline, each
// only if it still names that session.
func (s *Store) ReleaseAll(ctx context.Context, users map[string]Location) error {
	if len(users) == 0 {
		return nil
	}
	keys := make([]string, 0, len(users))
	values := make([]string, 0, len(users))
	for user, at := range users {
		keys = append(keys, userKeyPrefix+user)
		values = append(values, at.value())
	}
	cmds := s.evalAll(ctx, releaseScript, len(keys), func(i int) ([]string, []any) {
		return keys[i : i+1], []any{values[i]}
	})
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return s.fail(fmt.Errorf("release %d presence records: %w", len(users), err))
		}
	}
	return nil
}

// RefreshAll extends the records of many sessions, recreating any that
// vanished, and returns the users whose record now names another session.
//
// Plain commands, no script, for the common case: one pipeline reads every
// record, a second extends those that name their session. A record that
// changes between the two is extended by the moment in between at most:
// it was just written with the full TTL. Records found missing (or gone
// by the extension) go through refreshScript, which recreates them only
// if they are still missing.
func (s *Store) RefreshAll(ctx context.Context, users map[string]Location) (lost []string, err error) {
	if len(users) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(users))
	values := make([]string, 0, len(users))
	gets := make([]*redis.StringCmd, 0, len(users))
	_, err = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for user, at := range users {
			names = append(names, user)
			values = append(values, at.value())
			gets = append(gets, pipe.Get(ctx, userKeyPrefix+user))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, s.fail(fmt.Errorf("refresh %d presence records: %w", len(users), err))
	}
	ttl := s.cfg.PresenceTTL
	var mine, missing []int // indexes into names
	for i, g := range gets {
		switch v, err := g.Result(); {
		case errors.Is(err, redis.Nil):
			missing = append(missing, i)
		case err != nil:
			return nil, s.fail(fmt.Errorf("refresh %d presence records: %w", len(users), err))
		case v == values[i]:
			mine = append(mine, i)
		default:
			lost = append(lost, names[i])
		}
	}
	if len(mine) > 0 {
		exps := make([]*redis.BoolCmd, len(mine))
		_, err = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for j, i := range mine {
				exps[j] = pipe.PExpire(ctx, userKeyPrefix+names[i], ttl)
			}
			return nil
		})
		if err != nil {
			return nil, s.fail(fmt.Errorf("refresh %d presence records: %w", len(users), err))
		}
		for j, e := range exps {
			if !e.Val() {
				missing = append(missing, mine[j])
			}
		}
	}
	ms := ttl.Milliseconds()
	cmds := s.evalAll(ctx, refreshScript, len(missing), func(j int) ([]string, []any) {
		i := missing[j]
		return []string{userKeyPrefix + names[i]}, []any{values[i], ms}
	})
	for j, c := range cmds {
		n, err := c.Int()
		if err != nil {
			return nil, s.fail(fmt.Errorf("refresh %d presence records: %w", len(users), err))
		}
		if n == 0 {
			lost = append(lost, names[missing[j]])
		}
	}
	return lost, nil
}
