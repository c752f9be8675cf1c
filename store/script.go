package store

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// evalAll runs script n times in one pipeline, call i with the keys and
// arguments call(i) gives, and returns the commands in order. It sends the
// script's hash (EVALSHA), not its text: Redis then neither parses nor
// hashes the body on every call. Calls that Redis answers NOSCRIPT (it
// restarted, or its script cache was flushed) did not run, so they are
// sent again as EVAL, which also loads the script for the next time.
func (s *Store) evalAll(ctx context.Context, script *redis.Script, n int, call func(i int) ([]string, []any)) []*redis.Cmd {
	cmds := make([]*redis.Cmd, n)
	if n == 0 {
		return cmds
	}
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range n {
			keys, args := call(i)
			cmds[i] = script.EvalSha(ctx, pipe, keys, args...)
		}
		return nil
	})
	var again []int
	for i, c := range cmds {
		if err := c.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return cmds
	}
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, i := range again {
			keys, args := call(i)
			cmds[i] = script.Eval(ctx, pipe, keys, args...)
		}
		return nil
	})
	return cmds
}
