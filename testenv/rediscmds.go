package testenv

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// CommandLog is a go-redis hook (client.AddHook) that records the commands
// sent whose key Match accepts, as "name key" (the name lower-case; a
// script's first key), and how many round trips carried them: a test can
// count what an operation costs Redis without timing anything.
type CommandLog struct {
	Match func(key string) bool

	mu         sync.Mutex
	commands   []string
	roundTrips int
}

func (l *CommandLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l *CommandLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		l.record([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (l *CommandLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		l.record(cmds)
		return next(ctx, cmds)
	}
}

// record logs the matching commands of one round trip.
func (l *CommandLog) record(cmds []redis.Cmder) {
	var got []string
	for _, cmd := range cmds {
		name := strings.ToLower(cmd.Name())
		args := cmd.Args()
		key := ""
		switch {
		case (name == "evalsha" || name == "eval") && len(args) > 3:
			key, _ = args[3].(string)
		case len(args) > 1:
			key, _ = args[1].(string)
		}
		if l.Match(key) {
			got = append(got, name+" "+key)
		}
	}
	if len(got) == 0 {
		return
	}
	l.mu.Lock()
	l.commands = append(l.commands, got...)
	l.roundTrips++
	l.mu.Unlock()
}

// Take returns what was logged since the last Take and starts afresh.
func (l *CommandLog) Take() (commands []string, roundTrips int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	commands, roundTrips = l.commands, l.roundTrips
	l.commands, l.roundTrips = nil, 0
	return commands, roundTrips
}

// Count is how many commands named name were logged since the last Take.
func (l *CommandLog) Count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.commands {
		if strings.HasPrefix(c, name+" ") {
			n++
		}
	}
	return n
}
