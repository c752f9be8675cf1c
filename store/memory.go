package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrNoMemoryInfo is UsedMemory's error when Redis answers but does not
// report used_memory (a Redis look-alike without INFO memory): asking
// again will not help.
var ErrNoMemoryInfo = errors.New("used_memory not reported")

// UsedMemory returns Redis's used_memory (INFO memory): the bytes its
// allocator holds for data, after expired keys are freed. In a Redis
// Cluster it is the largest among the masters, the first to run out.
func (s *Store) UsedMemory(ctx context.Context) (int64, error) {
	var n int64
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			m, err := usedMemory(ctx, c)
			mu.Lock()
			n = max(n, m)
			mu.Unlock()
			return err
		})
	} else {
		n, err = usedMemory(ctx, s.rdb)
	}
	if errors.Is(err, ErrNoMemoryInfo) {
		return 0, err // an answer, not a failure
	}
	return n, s.fail(err)
}

func usedMemory(ctx context.Context, c redis.Cmdable) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return 0, fmt.Errorf("read Redis memory use: %w: INFO memory: %w", ErrNoMemoryInfo, err)
	}
	if err != nil {
		return 0, fmt.Errorf("read Redis memory use: %w", err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read Redis memory use: %w: used_memory is %q", ErrNoMemoryInfo, v)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("read Redis memory use: %w", ErrNoMemoryInfo)
}
