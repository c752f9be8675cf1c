package msgserver

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ParseRedisURL turns a Redis address into go-redis UniversalOptions, so
// one flag selects a single server, Sentinel or Cluster:
//
//	redis://[:password@]host:6379/0            a single server (rediss:// for TLS)
//	redis-sentinel://[:password@]h1:26379,h2:26379/mymaster?db=0
//	redis-cluster://[:password@]h1:7000,h2:7000
func ParseRedisURL(raw string) (*redis.UniversalOptions, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, fmt.Errorf("redis url %q: want redis://, rediss://, redis-sentinel:// or redis-cluster://", raw)
	}
	switch scheme {
	case "redis", "rediss":
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("redis url: %w", err)
		}
		return &redis.UniversalOptions{
			Addrs:     []string{o.Addr},
			Username:  o.Username,
			Password:  o.Password,
			DB:        o.DB,
			TLSConfig: o.TLSConfig,
		}, nil
	case "redis-sentinel", "redis-cluster":
	default:
		return nil, fmt.Errorf("redis url %q: unknown scheme %q", raw, scheme)
	}
	// Hosts are comma-separated, which url.Parse rejects: split them off.
	// Credentials end at the last '@'; the host list at the first '/' or '?'.
	var user, pass string
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		ui, err := url.Parse("x://" + rest[:at+1] + "h")
		if err != nil {
			return nil, fmt.Errorf("redis url credentials: %w", err)
		}
		user = ui.User.Username()
		pass, _ = ui.User.Password()
		rest = rest[at+1:]
	}
	hostPart, pathQuery := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		hostPart, pathQuery = rest[:i], strings.TrimPrefix(rest[i:], "/")
	}
	addrs := strings.Split(hostPart, ",")
	for _, a := range addrs {
		if a == "" {
			return nil, fmt.Errorf("redis url %q: empty host", raw)
		}
	}
	path, query, _ := strings.Cut(pathQuery, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("redis url query: %w", err)
	}
	o := &redis.UniversalOptions{Addrs: addrs, Username: user, Password: pass}
	if scheme == "redis-sentinel" {
		if path == "" {
			return nil, fmt.Errorf("redis url %q: sentinel needs the master name as the path", raw)
		}
		o.MasterName = path
		o.SentinelPassword = q.Get("sentinel_password")
		if db := q.Get("db"); db != "" {
			if o.DB, err = strconv.Atoi(db); err != nil || o.DB < 0 {
				return nil, fmt.Errorf("redis url db %q: want a number ≥ 0", db)
			}
		}
	} else {
		o.IsClusterMode = true
	}
	return o, nil
}
