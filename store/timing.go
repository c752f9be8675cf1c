package store

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// TimingHook is a go-redis hook that reports how long each command took,
// failed ones included, by its lower-case name ("get", "evalsha"); a
// pipeline (or MULTI/EXEC transaction) is one "pipeline" observation.
// observe must be cheap: it runs on every command.
func TimingHook(observe func(command string, d time.Duration)) redis.Hook {
	return timingHook{observe}
}

type timingHook struct{ observe func(string, time.Duration) }

func (timingHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h timingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.observe(strings.ToLower(cmd.Name()), time.Since(start))
		return err
	}
}

func (h timingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.observe("pipeline", time.Since(start))
		return err
	}
}
