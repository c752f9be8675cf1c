package msgserver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keys. Each command touches one key, so a Redis Cluster works too.
//
//	chatrelay:user:<name>    "<server id> <session id>", TTL PresenceTTL
//	chatrelay:inbox:<name>   list of chat event lines, oldest first, TTL InboxTTL
//	chatrelay:server:<id>    the server's advertised client address, TTL RegistryTTL
const (
	userKeyPrefix   = "chatrelay:user:"
	inboxKeyPrefix  = "chatrelay:inbox:"
	serverKeyPrefix = "chatrelay:server:"
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
// ARGV[2] ms, as storeOffline does.
var restoreInboxScript = redis.NewScript(`
for i = #ARGV, 3, -1 do
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// location is where a user is logged in.
type location struct {
	server, session string
}

func (l location) value() string { return l.server + " " + l.session }

func parseLocation(v string) (location, bool) {
	server, session, ok := strings.Cut(v, " ")
	return location{server, session}, ok && server != ""
}

// presence is the Redis side of the server: who is where, the server
// registry, and offline inboxes.
type presence struct {
	rdb      redis.UniversalClient
	ttl      time.Duration
	inboxMax int
	inboxTTL time.Duration
	onError  func()

	watchMu sync.Mutex
	watches map[string][]*inboxWatch // users with a login in progress here
}

func (p *presence) fail(err error) error {
	if err != nil && !errors.Is(err, redis.Nil) && p.onError != nil {
		p.onError()
	}
	return err
}

// claimLogins records, in one pipeline (one round trip), that each
// claim's user is now at its location, and atomically takes each user's
// offline inbox. Every claim gets its own outcome: a command failing for one
// key fails only that claim; a failed connection fails all. A claim whose
// presence write failed must not keep its inbox: loginBatcher.claim puts it back.
func (p *presence) claimLogins(ctx context.Context, claims []*loginClaim) {
	sets := make([]*redis.StatusCmd, len(claims))
	takes := make([]*redis.Cmd, len(claims))
	// Eval, not Run: a pipeline cannot fall back from EVALSHA on NOSCRIPT.
	_, _ = p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range claims {
			sets[i] = pipe.SetArgs(ctx, userKeyPrefix+c.user, c.loc.value(), redis.SetArgs{TTL: p.ttl, Get: true})
			takes[i] = takeInboxScript.Eval(ctx, pipe, []string{inboxKeyPrefix + c.user})
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
			c.err = p.fail(fmt.Errorf("claim presence of %q: %w", c.user, err))
		default:
			c.old, c.had = parseLocation(prev)
		}
		lines, err := takes[i].StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			c.inboxErr = p.fail(fmt.Errorf("take inbox of %q: %w", c.user, err))
		} else {
			c.inbox = lines
		}
	}
}

// lookup returns where user is logged in (ok false if offline).
func (p *presence) lookup(ctx context.Context, user string) (location, bool, error) {
	v, err := p.rdb.Get(ctx, userKeyPrefix+user).Result()
	if errors.Is(err, redis.Nil) {
		return location{}, false, nil
	}
	if err != nil {
		return location{}, false, p.fail(fmt.Errorf("look up %q: %w", user, err))
	}
	loc, ok := parseLocation(v)
	return loc, ok, nil
}

// release removes user's record if it still names loc.
func (p *presence) release(ctx context.Context, user string, loc location) error {
	err := releaseScript.Run(ctx, p.rdb, []string{userKeyPrefix + user}, loc.value()).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return p.fail(fmt.Errorf("release presence of %q: %w", user, err))
	}
	return nil
}

// releaseAll removes the records of many sessions in one pipeline.
func (p *presence) releaseAll(ctx context.Context, users map[string]location) error {
	if len(users) == 0 {
		return nil
	}
	// Eval, not Run: a pipeline cannot fall back from EVALSHA on NOSCRIPT.
	_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for user, loc := range users {
			releaseScript.Eval(ctx, pipe, []string{userKeyPrefix + user}, loc.value())
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return p.fail(fmt.Errorf("release %d presence records: %w", len(users), err))
	}
	return nil
}

// refreshAll extends the records of every local session in one pipeline
// and returns the users whose record now names another session.
func (p *presence) refreshAll(ctx context.Context, users map[string]location) (lost []string, err error) {
	if len(users) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(users))
	cmds := make([]*redis.Cmd, 0, len(users))
	ms := p.ttl.Milliseconds()
	_, err = p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for user, loc := range users {
			names = append(names, user)
			cmds = append(cmds, refreshScript.Eval(ctx, pipe, []string{userKeyPrefix + user}, loc.value(), ms))
		}
		return nil
	})
	if err != nil {
		return nil, p.fail(fmt.Errorf("refresh %d presence records: %w", len(users), err))
	}
	for i, c := range cmds {
		if n, _ := c.Int(); n == 0 {
			lost = append(lost, names[i])
		}
	}
	return lost, nil
}

// storeOffline appends an event line to user's inbox, keeping the newest
// inboxMax and renewing the inbox TTL.
func (p *presence) storeOffline(ctx context.Context, user string, line []byte) error {
	defer p.noteStore(user)()
	key := inboxKeyPrefix + user
	_, err := p.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.RPush(ctx, key, line)
		pipe.LTrim(ctx, key, int64(-p.inboxMax), -1)
		pipe.PExpire(ctx, key, p.inboxTTL)
		return nil
	})
	if err != nil {
		return p.fail(fmt.Errorf("store offline message for %q: %w", user, err))
	}
	return nil
}

// takeInbox atomically reads and removes user's offline messages, oldest first.
func (p *presence) takeInbox(ctx context.Context, user string) ([]string, error) {
	lines, err := takeInboxScript.Run(ctx, p.rdb, []string{inboxKeyPrefix + user}).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, p.fail(fmt.Errorf("take inbox of %q: %w", user, err))
	}
	return lines, nil
}

// restoreInbox puts lines taken from user's inbox back in front of
// whatever arrived since, keeping the newest inboxMax.
func (p *presence) restoreInbox(ctx context.Context, user string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := make([]any, 0, 2+len(lines))
	args = append(args, p.inboxMax, p.inboxTTL.Milliseconds())
	for _, l := range lines {
		args = append(args, l)
	}
	if err := restoreInboxScript.Run(ctx, p.rdb, []string{inboxKeyPrefix + user}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return p.fail(fmt.Errorf("restore inbox of %q: %w", user, err))
	}
	return nil
}

// inboxWatch notices offline messages stored from this server for a user
// while that user's login is in progress here. The login takes the inbox in
// the same round trip as its presence claim, before the session is in the
// local map; a local sender that finds the user claimed but not yet mapped
// stores the message offline, and without the watch it would wait in the
// inbox until the next login.
type inboxWatch struct {
	stored   bool           // a store was started while watched (under watchMu)
	inflight sync.WaitGroup // those stores still running
}

// watchInbox starts watching user's inbox for stores from this server.
func (p *presence) watchInbox(user string) *inboxWatch {
	w := &inboxWatch{}
	p.watchMu.Lock()
	if p.watches == nil {
		p.watches = make(map[string][]*inboxWatch)
	}
	p.watches[user] = append(p.watches[user], w)
	p.watchMu.Unlock()
	return w
}

// unwatchInbox stops w and reports whether a store started meanwhile; if
// so, w.inflight.Wait() returns once those stores are done.
func (p *presence) unwatchInbox(user string, w *inboxWatch) (stored bool) {
	p.watchMu.Lock()
	defer p.watchMu.Unlock()
	ws := p.watches[user]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(p.watches, user)
	} else {
		p.watches[user] = ws
	}
	return w.stored
}

// noteStore marks every watch on user and returns the function that ends
// the store.
func (p *presence) noteStore(user string) (done func()) {
	p.watchMu.Lock()
	defer p.watchMu.Unlock()
	ws := p.watches[user]
	if len(ws) == 0 {
		return func() {}
	}
	ws = append([]*inboxWatch(nil), ws...)
	for _, w := range ws {
		w.stored = true
		w.inflight.Add(1)
	}
	return func() {
		for _, w := range ws {
			w.inflight.Done()
		}
	}
}

// register writes this server's registry entry (also its heartbeat).
func (p *presence) register(ctx context.Context, id, addr string, ttl time.Duration) error {
	if err := p.rdb.Set(ctx, serverKeyPrefix+id, addr, ttl).Err(); err != nil {
		return p.fail(fmt.Errorf("register server %q: %w", id, err))
	}
	return nil
}

// deregister removes this server's registry entry.
func (p *presence) deregister(ctx context.Context, id string) error {
	if err := p.rdb.Del(ctx, serverKeyPrefix+id).Err(); err != nil {
		return p.fail(fmt.Errorf("deregister server %q: %w", id, err))
	}
	return nil
}

// Servers lists the message servers whose registry entry is alive, with
// their advertised client addresses.
func Servers(ctx context.Context, rdb redis.UniversalClient) (map[string]string, error) {
	out := make(map[string]string)
	var (
		mu   sync.Mutex // ForEachMaster runs collect concurrently
		keys []string
	)
	collect := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, serverKeyPrefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, collect)
	} else if c, ok := rdb.(*redis.Client); ok {
		err = collect(ctx, c)
	} else {
		return nil, fmt.Errorf("list servers: unsupported client %T", rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("list servers: %w", err)
	}
	for _, k := range keys {
		v, err := rdb.Get(ctx, k).Result()
		if err == nil {
			out[strings.TrimPrefix(k, serverKeyPrefix)] = v
		}
	}
	return out, nil
}
