package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// refreshScript extends the presence records of many sessions: each that
// still names its session (ARGV[i+1] for KEYS[i]) gets the TTL ARGV[1]
// again, each that vanished (Redis restarted) is recreated, and one that
// names another session (the user logged in elsewhere) is left alone; it
// returns the positions (1-based) of those. One call per batch of users,
// not one each: a refresh of every local user made a command (and its
// arguments and reply) per user, 580 bytes of garbage per user every
// refresh, and Redis ran a script per user.
var refreshScript = redis.NewScript(`
local lost = {}
for i, key in ipairs(KEYS) do
  local want = ARGV[i + 1]
  local v = redis.call('GET', key)
  if v == want then
    redis.call('PEXPIRE', key, ARGV[1])
  elseif not v then
    redis.call('SET', key, want, 'PX', ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
`)

// refreshBatch is how many users one refresh call carries; on a Redis
// Cluster, one.
const refreshBatch = 256

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

// Record is one user's presence: the user and where it is logged in.
type Record struct {
	User string
	At   Location
}

// RefreshAll extends the records of many sessions, a batch of them per
// call in one pipeline, recreating any that vanished, and returns the
// users whose record now names another session.
func (s *Store) RefreshAll(ctx context.Context, users []Record) (lost []string, err error) {
	if len(users) == 0 {
		return nil, nil
	}
	ms := s.cfg.PresenceTTL.Milliseconds()
	per := refreshBatch
	if _, ok := s.rdb.(*redis.ClusterClient); ok {
		per = 1 // a script's keys must share a hash slot: one user per call
	}
	cmds := s.evalAll(ctx, refreshScript, (len(users)+per-1)/per, func(j int) ([]string, []any) {
		batch := users[j*per : min(len(users), (j+1)*per)]
		keys := make([]string, len(batch))
		args := make([]any, 1, len(batch)+1)
		args[0] = ms
		for i, u := range batch {
			keys[i] = userKeyPrefix + u.User
			args = append(args, u.At.value())
		}
		return keys, args
	})
	for i, c := range cmds {
		pos, err := c.Int64Slice()
		if err != nil {
			return nil, s.fail(fmt.Errorf("refresh %d presence records: %w", len(users), err))
		}
		batch := users[i*per : min(len(users), (i+1)*per)]
		for _, p := range pos {
			if p >= 1 && int(p) <= len(batch) {
				lost = append(lost, batch[p-1].User)
			}
		}
	}
	return lost, nil
}
