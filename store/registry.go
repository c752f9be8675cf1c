package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Register writes server id's registry entry, its advertised client
// address, for RegistryTTL; rewriting it in time is the server's heartbeat.
func (s *Store) Register(ctx context.Context, id, addr string) error {
	if err := s.rdb.Set(ctx, serverKeyPrefix+id, addr, s.cfg.RegistryTTL).Err(); err != nil {
		return s.fail(fmt.Errorf("register server %q: %w", id, err))
	}
	return nil
}

// Deregister removes server id's registry entry.
func (s *Store) Deregister(ctx context.Context, id string) error {
	if err := s.rdb.Del(ctx, serverKeyPrefix+id).Err(); err != nil {
		return s.fail(fmt.Errorf("deregister server %q: %w", id, err))
	}
	return nil
}

// Servers lists the message servers whose registry entry is alive, with
// their advertised client addresses. It needs only a client, not a Store:
// the relay's check reads the registry without writing anything.
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
	// One round trip for all of them; a key that expired since the scan
	// is a server gone, not an error.
	gets := make([]*redis.StringCmd, len(keys))
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			gets[i] = p.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("list servers: %w", err)
	}
	for i, k := range keys {
		if v, err := gets[i].Result(); err == nil {
			out[strings.TrimPrefix(k, serverKeyPrefix)] = v
		}
	}
	return out, nil
}
