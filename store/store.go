// Package store is the Redis side of the chat tier: where each user is
// logged in (presence), offline inboxes, and the registry of message
// servers. It owns the key layout, the Lua scripts, the pipelines and the
// TTLs; the message server decides when to call it.
//
// Redis keys. Each command touches one key, so a Redis Cluster works too
// (the presence refresh, which takes many users' keys per call on one
// server, takes one on a Cluster).
//
//	chatrelay:user:<name>    "<server id> <session id>", TTL Config.PresenceTTL
//	chatrelay:inbox:<name>   list of offline message entries, oldest first, at most Config.InboxMax, TTL Config.InboxTTL
//	chatrelay:server:<id>    the server's advertised client address, TTL Config.RegistryTTL
package store

import (
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	userKeyPrefix   = "chatrelay:user:"
	inboxKeyPrefix  = "chatrelay:inbox:"
	serverKeyPrefix = "chatrelay:server:"
)

// Config holds the store's limits. Every field must be set (the message
// server validates them): a zero TTL would make records live forever.
type Config struct {
	PresenceTTL time.Duration // TTL of a user's presence record
	RegistryTTL time.Duration // TTL of a server's registry entry
	InboxMax    int           // offline messages an inbox holds; PushInbox refuses more
	InboxTTL    time.Duration // how long an offline inbox lives
	// OnError, if not nil, is called once for every Redis command that
	// fails (a missing key is not a failure), for the error metric.
	OnError func()
}

// Store reads and writes presence, inboxes and the registry through one
// Redis client. It is safe for concurrent use.
type Store struct {
	rdb redis.UniversalClient
	cfg Config
}

// New returns a store using rdb, which stays the caller's to close.
func New(rdb redis.UniversalClient, cfg Config) *Store {
	return &Store{rdb: rdb, cfg: cfg}
}

// fail counts err (unless it is nil or a missing key) and returns it.
func (s *Store) fail(err error) error {
	if err != nil && !errors.Is(err, redis.Nil) && s.cfg.OnError != nil {
		s.cfg.OnError()
	}
	return err
}

// Options is a parsed Redis URL (see ParseURL): exactly one of Single,
// Sentinel and Cluster is set, as go-redis's own URL parser filled it.
type Options struct {
	Single   *redis.Options
	Sentinel *redis.FailoverOptions
	Cluster  *redis.ClusterOptions
}

// NewClient returns a new client for o; it connects on first use. o can
// make several clients.
func (o *Options) NewClient() redis.UniversalClient {
	switch {
	case o.Sentinel != nil && (o.Sentinel.RouteByLatency || o.Sentinel.RouteRandomly):
		// Reads spread over replicas need the cluster-shaped failover
		// client (NewFailoverClient refuses these options), as
		// redis.NewUniversalClient does.
		return redis.NewFailoverClusterClient(o.Sentinel)
	case o.Sentinel != nil:
		return redis.NewFailoverClient(o.Sentinel)
	case o.Cluster != nil:
		co := *o.Cluster // NewClusterClient fills in defaults in place: keep o as parsed
		return redis.NewClusterClient(&co)
	default:
		return redis.NewClient(o.Single)
	}
}
