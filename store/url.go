package store

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/certs"
)

// ParseURL reads a Redis URL with go-redis's own parsers, so every option
// they know works as a query parameter (dial_timeout, read_timeout,
// pool_size, client_name, max_retries, skip_verify, ...: see redis.ParseURL,
// redis.ParseFailoverURL and redis.ParseClusterURL). One URL selects a
// single server, Sentinel or Cluster:
//
//	redis://[user:password@]host:6379/0?opts      a single server (rediss:// for TLS)
//	redis-sentinel://[user:password@]h1:26379,h2:26379/mymaster?db=0&opts
//	redis-cluster://[user:password@]h1:7000,h2:7000?opts
//
// rediss-sentinel:// and rediss-cluster:// are the same over TLS. The
// Sentinel and Cluster forms, a host list, are rewritten into the form
// go-redis parses, one host and the others as addr parameters:
//
//	redis-sentinel://u:p@h1:26379,h2:26379/m?db=1&sentinel_password=s
//	  -> redis://:s@h1:26379?addr=h2:26379&master_name=m&username=u&password=p&db=1
//	redis-cluster://u:p@h1:7000,h2:7000
//	  -> redis://u:p@h1:7000?addr=h2:7000
//
// In every form the user info is the data nodes' login; a Sentinel's own
// is given as sentinel_username and sentinel_password. Every host in a
// list needs its port. An error never quotes the URL, which may hold a
// password. Over TLS every connection checks the certificate of the host
// it dials, against the system's roots or the CA UseCA sets, and needs
// TLS 1.2 or later.
func ParseURL(raw string) (*Options, error) {
	o, err := parseURL(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URL, password included
		}
		if msg, ok := strings.CutPrefix(err.Error(), "redis: "); ok {
			err = errors.New(msg) // go-redis's prefix, after ours
		}
		return nil, fmt.Errorf("redis url: %w", err)
	}
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	if tc := o.tlsConfig(); tc != nil {
		// go-redis names the first host of a Sentinel or Cluster list as
		// the server for every connection; empty, each connection checks
		// the certificate against the host it dials (tls.Dial fills it in).
		// The minimum version is the project's, as on every other port.
		tc.ServerName = ""
		tc.MinVersion = certs.MinVersion
	}
	return o, nil
}

// tlsConfig is the parsed URL's TLS config, nil unless it is a TLS URL.
func (o *Options) tlsConfig() *tls.Config {
	switch {
	case o.Single != nil:
		return o.Single.TLSConfig
	case o.Sentinel != nil:
		return o.Sentinel.TLSConfig
	case o.Cluster != nil:
		return o.Cluster.TLSConfig
	}
	return nil
}

// UseCA makes the client verify Redis's certificates against the CA
// certificates in caFile (PEM) instead of the system's roots: for a Redis
// whose certificate a private CA signed. The URL must be a TLS one.
func (o *Options) UseCA(caFile string) error {
	tc := o.tlsConfig()
	if tc == nil {
		return errors.New("a CA file needs a TLS URL (rediss://, rediss-sentinel:// or rediss-cluster://)")
	}
	pool, err := certs.LoadPool(caFile)
	if err != nil {
		return err
	}
	tc.RootCAs = pool
	return nil
}

func parseURL(raw string) (*Options, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New("no scheme; want redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://")
	}
	switch scheme {
	case "redis", "rediss":
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, err
		}
		return &Options{Single: o}, nil
	case "redis-sentinel", "rediss-sentinel", "redis-cluster", "rediss-cluster":
	default:
		return nil, fmt.Errorf("unknown scheme %q; want redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://", scheme)
	}
	l, err := splitHostList(rest)
	if err != nil {
		return nil, err
	}
	for _, p := range []string{"username", "password"} {
		if l.query.Has(p) {
			return nil, fmt.Errorf("give the %s in the URL's user info (%s://user:password@host...), not as a parameter", p, scheme)
		}
	}
	u := url.URL{Scheme: "redis", Host: l.hosts[0]}
	if strings.HasPrefix(scheme, "rediss") {
		u.Scheme = "rediss"
	}
	q := l.query
	for _, h := range l.hosts[1:] {
		q.Add("addr", h)
	}
	if strings.HasSuffix(scheme, "-cluster") {
		if l.path != "" && l.path != "/" {
			return nil, fmt.Errorf("a Cluster URL has no path (Redis Cluster has only database 0), got %q", l.path)
		}
		u.User = l.user
		u.RawQuery = q.Encode()
		o, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, err
		}
		return &Options{Cluster: o}, nil
	}
	master := strings.TrimPrefix(l.path, "/")
	if master == "" {
		return nil, errors.New("a Sentinel URL needs the master name as its path: redis-sentinel://h1:26379,h2:26379/mymaster")
	}
	if q.Has("master_name") {
		return nil, errors.New("the master name is the URL's path; drop master_name")
	}
	q.Set("master_name", master)
	if l.user != nil {
		q.Set("username", l.user.Username())
		if p, ok := l.user.Password(); ok {
			q.Set("password", p)
		}
	}
	sentUser, sentPass := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	if sentPass != "" {
		u.User = url.UserPassword(sentUser, sentPass)
	} else if sentUser != "" {
		u.User = url.User(sentUser)
	}
	u.RawQuery = q.Encode()
	o, err := redis.ParseFailoverURL(u.String())
	if err != nil {
		return nil, err
	}
	return &Options{Sentinel: o}, nil
}

// hostList is a Sentinel or Cluster URL after the scheme, taken apart.
type hostList struct {
	user  *url.Userinfo // nil when absent
	hosts []string      // host:port, at least one
	path  string
	query url.Values
}

// splitHostList takes apart what follows "scheme://": url.Parse rejects a
// comma-separated host list, so the authority is cut off by hand, as
// url.Parse does: it ends at the first '/', '?' or '#', and the user info
// ends at its last '@'.
func splitHostList(rest string) (hostList, error) {
	var l hostList
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		ui, err := url.Parse("x://" + authority[:at+1] + "h")
		if err != nil {
			return l, fmt.Errorf("credentials: %w", err)
		}
		l.user, authority = ui.User, authority[at+1:]
	}
	for _, h := range strings.Split(authority, ",") {
		host, port, err := net.SplitHostPort(h)
		if h == "" || err != nil || host == "" || port == "" {
			return l, fmt.Errorf("host %q: want host:port (every host of the list needs its port)", h)
		}
		l.hosts = append(l.hosts, h)
	}
	pq, err := url.Parse("x://h" + tail)
	if err != nil {
		return l, err
	}
	if l.query, err = url.ParseQuery(pq.RawQuery); err != nil {
		return l, fmt.Errorf("query: %w", err)
	}
	l.path = pq.Path
	return l, nil
}

// check rejects what go-redis's parsers let through but its clients cannot
// take: a negative database, and pool sizes it would panic on when it
// builds a pool (for a Cluster, only at the first command to a node).
func (o *Options) check() error {
	var db, poolSize, minIdle, maxIdle, maxActive, pipelinePool int
	switch {
	case o.Single != nil:
		s := o.Single
		db, poolSize, minIdle, maxIdle, maxActive, pipelinePool = s.DB, s.PoolSize, s.MinIdleConns, s.MaxIdleConns, s.MaxActiveConns, s.PipelinePoolSize
	case o.Sentinel != nil:
		s := o.Sentinel
		db, poolSize, minIdle, maxIdle, maxActive, pipelinePool = s.DB, s.PoolSize, s.MinIdleConns, s.MaxIdleConns, s.MaxActiveConns, s.PipelinePoolSize
	case o.Cluster != nil:
		s := o.Cluster
		poolSize, minIdle, maxIdle, maxActive, pipelinePool = s.PoolSize, s.MinIdleConns, s.MaxIdleConns, s.MaxActiveConns, s.PipelinePoolSize
	}
	if db < 0 {
		return fmt.Errorf("database %d: want a number ≥ 0", db)
	}
	if poolSize < 0 {
		return fmt.Errorf("pool_size %d: want a number ≥ 0 (0: go-redis's default)", poolSize)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"pool_size", poolSize}, {"min_idle_conns", minIdle}, {"max_idle_conns", maxIdle}, {"max_active_conns", maxActive}, {"pipeline_pool_size", pipelinePool}} {
		if v.n > math.MaxInt32 || v.n < math.MinInt32 {
			return fmt.Errorf("%s %d: out of range", v.name, v.n)
		}
	}
	return nil
}
