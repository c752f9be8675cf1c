package store

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// flat is what the tests check in any kind of Options.
type flat struct {
	addrs          []string
	user, pass     string
	sentUser       string
	sentPass       string
	db             int
	master         string
	cluster        bool
	tls, tlsVerify bool
}

func flatten(o *Options) flat {
	var f flat
	switch {
	case o.Single != nil:
		s := o.Single
		f = flat{addrs: []string{s.Addr}, user: s.Username, pass: s.Password, db: s.DB}
		f.tls = s.TLSConfig != nil
		f.tlsVerify = f.tls && !s.TLSConfig.InsecureSkipVerify
	case o.Sentinel != nil:
		s := o.Sentinel
		f = flat{addrs: s.SentinelAddrs, user: s.Username, pass: s.Password, sentUser: s.SentinelUsername,
			sentPass: s.SentinelPassword, db: s.DB, master: s.MasterName}
		f.tls = s.TLSConfig != nil
		f.tlsVerify = f.tls && !s.TLSConfig.InsecureSkipVerify
	case o.Cluster != nil:
		s := o.Cluster
		f = flat{addrs: s.Addrs, user: s.Username, pass: s.Password, cluster: true}
		f.tls = s.TLSConfig != nil
		f.tlsVerify = f.tls && !s.TLSConfig.InsecureSkipVerify
	}
	return f
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		name       string
		url        string
		addrs      []string
		user, pass string
		db         int
		master     string
		cluster    bool
		tls        bool
	}{
		{name: "redis", url: "redis://localhost:6379", addrs: []string{"localhost:6379"}},
		{name: "redis db", url: "redis://10.0.0.5:6380/3", addrs: []string{"10.0.0.5:6380"}, db: 3},
		{name: "redis default port", url: "redis://cache", addrs: []string{"cache:6379"}},
		{name: "rediss password db", url: "rediss://:s3cret@cache.internal:6380/2",
			addrs: []string{"cache.internal:6380"}, pass: "s3cret", db: 2, tls: true},
		{name: "redis user and password", url: "redis://app:pw@h:6379/1",
			addrs: []string{"h:6379"}, user: "app", pass: "pw", db: 1},
		{name: "sentinel", url: "redis-sentinel://h1:26379,h2:26379/mymaster?db=2",
			addrs: []string{"h1:26379", "h2:26379"}, master: "mymaster", db: 2},
		{name: "sentinel one host no db", url: "redis-sentinel://h1:26379/mymaster",
			addrs: []string{"h1:26379"}, master: "mymaster"},
		{name: "sentinel password", url: "redis-sentinel://:pw@h1:26379,h2:26379/mymaster",
			addrs: []string{"h1:26379", "h2:26379"}, pass: "pw", master: "mymaster"},
		{name: "sentinel escaped password", url: "redis-sentinel://:p%40ss@h1:26379/m",
			addrs: []string{"h1:26379"}, pass: "p@ss", master: "m"},
		{name: "cluster", url: "redis-cluster://a:7000,b:7001",
			addrs: []string{"a:7000", "b:7001"}, cluster: true},
		{name: "cluster trailing slash", url: "redis-cluster://a:7000,b:7001/",
			addrs: []string{"a:7000", "b:7001"}, cluster: true},
		{name: "cluster user password", url: "redis-cluster://u:p@a:7000,b:7001,c:7002",
			addrs: []string{"a:7000", "b:7001", "c:7002"}, user: "u", pass: "p", cluster: true},
		// Forms today's go-redis parsers bring.
		{name: "sentinel over TLS", url: "rediss-sentinel://:pw@h1:26379,h2:26379/mymaster",
			addrs: []string{"h1:26379", "h2:26379"}, pass: "pw", master: "mymaster", tls: true},
		{name: "cluster over TLS", url: "rediss-cluster://u:p@a:7000,b:7001",
			addrs: []string{"a:7000", "b:7001"}, user: "u", pass: "p", cluster: true, tls: true},
		{name: "IPv6 hosts", url: "redis-cluster://[::1]:7000,[fd00::2]:7001",
			addrs: []string{"[::1]:7000", "[fd00::2]:7001"}, cluster: true},
		{name: "password with reserved characters", url: "redis-sentinel://:a%2Fb%3Fc%26d%3De@h1:26379/m",
			addrs: []string{"h1:26379"}, pass: "a/b?c&d=e", master: "m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := ParseURL(tt.url)
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tt.url, err)
			}
			f := flatten(o)
			if !reflect.DeepEqual(f.addrs, tt.addrs) {
				t.Errorf("Addrs = %q, want %q", f.addrs, tt.addrs)
			}
			if f.user != tt.user || f.pass != tt.pass {
				t.Errorf("Username, Password = %q, %q; want %q, %q", f.user, f.pass, tt.user, tt.pass)
			}
			if f.db != tt.db {
				t.Errorf("DB = %d, want %d", f.db, tt.db)
			}
			if f.master != tt.master {
				t.Errorf("MasterName = %q, want %q", f.master, tt.master)
			}
			if f.cluster != tt.cluster {
				t.Errorf("cluster = %v, want %v", f.cluster, tt.cluster)
			}
			if f.tls != tt.tls {
				t.Errorf("TLS = %v, want %v", f.tls, tt.tls)
			}
			if c := o.NewClient(); c == nil {
				t.Error("NewClient returned nil")
			} else {
				c.Close()
			}
		})
	}
}

func TestParseURLSentinelPassword(t *testing.T) {
	o, err := ParseURL("redis-sentinel://:masterpw@h1:26379/mymaster?sentinel_password=sentpw&db=1")
	if err != nil {
		t.Fatal(err)
	}
	f := flatten(o)
	if f.pass != "masterpw" || f.sentPass != "sentpw" || f.db != 1 {
		t.Errorf("Password, SentinelPassword, DB = %q, %q, %d; want masterpw, sentpw, 1", f.pass, f.sentPass, f.db)
	}
	o, err = ParseURL("redis-sentinel://app:masterpw@h1:26379/mymaster?sentinel_username=watch&sentinel_password=sentpw")
	if err != nil {
		t.Fatal(err)
	}
	if f := flatten(o); f.user != "app" || f.sentUser != "watch" || f.sentPass != "sentpw" {
		t.Errorf("Username, SentinelUsername, SentinelPassword = %q, %q, %q; want app, watch, sentpw", f.user, f.sentUser, f.sentPass)
	}
}

// Every option go-redis's parsers know reaches the client, in every form.
func TestParseURLGoRedisOptions(t *testing.T) {
	const q = "dial_timeout=250ms&read_timeout=2&pool_size=7&client_name=msg-1&max_retries=-1"
	for _, u := range []string{
		"redis://h:6379/0?" + q,
		"redis-sentinel://h1:26379,h2:26379/mymaster?" + q,
		"redis-cluster://a:7000,b:7001?" + q,
	} {
		o, err := ParseURL(u)
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", u, err)
		}
		var dial, read time.Duration
		var pool, retries int
		var name string
		switch {
		case o.Single != nil:
			dial, read, pool, name, retries = o.Single.DialTimeout, o.Single.ReadTimeout, o.Single.PoolSize, o.Single.ClientName, o.Single.MaxRetries
		case o.Sentinel != nil:
			dial, read, pool, name, retries = o.Sentinel.DialTimeout, o.Sentinel.ReadTimeout, o.Sentinel.PoolSize, o.Sentinel.ClientName, o.Sentinel.MaxRetries
		case o.Cluster != nil:
			dial, read, pool, name, retries = o.Cluster.DialTimeout, o.Cluster.ReadTimeout, o.Cluster.PoolSize, o.Cluster.ClientName, o.Cluster.MaxRetries
		}
		if dial != 250*time.Millisecond || read != 2*time.Second || pool != 7 || name != "msg-1" || retries != -1 {
			t.Errorf("%s: dial %s, read %s, pool %d, name %q, retries %d", u, dial, read, pool, name, retries)
		}
	}
	o, err := ParseURL("rediss-sentinel://h1:26379/m?skip_verify=true")
	if err != nil {
		t.Fatal(err)
	}
	if f := flatten(o); !f.tls || f.tlsVerify {
		t.Errorf("rediss-sentinel with skip_verify: TLS %v, verify %v; want TLS without verification", f.tls, f.tlsVerify)
	}
	// Reads from replicas need the cluster-shaped failover client; the
	// plain one would panic.
	o, err = ParseURL("redis-sentinel://h1:26379/m?route_randomly=true")
	if err != nil {
		t.Fatal(err)
	}
	o.NewClient().Close()
}

func TestParseURLErrors(t *testing.T) {
	tests := []struct {
		name string
		url  string
	}{
		{"empty", ""},
		{"missing scheme", "localhost:6379"},
		{"missing scheme with slashes", "//localhost:6379"},
		{"unknown scheme", "http://localhost:6379"},
		{"scheme case", "REDIS-SENTINEL://h:26379/m"},
		{"unix scheme", "unix:///tmp/redis.sock"},
		{"sentinel without master name", "redis-sentinel://h1:26379,h2:26379"},
		{"sentinel with empty path", "redis-sentinel://h1:26379/"},
		{"sentinel without master name but a query", "redis-sentinel://h1:26379/?db=1"},
		{"sentinel empty host", "redis-sentinel:///mymaster"},
		{"sentinel empty host in list", "redis-sentinel://h1:26379,,h2:26379/mymaster"},
		{"sentinel trailing comma", "redis-sentinel://h1:26379,/mymaster"},
		{"sentinel bad db", "redis-sentinel://h1:26379/mymaster?db=two"},
		{"sentinel bad query", "redis-sentinel://h1:26379/mymaster?db=%zz"},
		{"cluster empty host", "redis-cluster://"},
		{"cluster empty host after credentials", "redis-cluster://:pw@/"},
		{"cluster leading comma", "redis-cluster://,a:7000"},
		{"redis bad db", "redis://localhost:6379/notanumber"},
		// Accepted before go-redis parsed the URLs, then failing every dial
		// or silently ignored.
		{"sentinel host without port", "redis-sentinel://h1,h2/mymaster"},
		{"sentinel second host without port", "redis-sentinel://h1:26379,h2/mymaster"},
		{"cluster host without port", "redis-cluster://a,b:7001"},
		{"cluster with a database", "redis-cluster://a:7000,b:7001/3"},
		{"sentinel negative db", "redis-sentinel://h1:26379/mymaster?db=-1"},
		{"redis negative db", "redis://h:6379/-1"},
		{"unknown option", "redis://h:6379/0?dial_timout=1s"},
		{"unknown option in a host list", "redis-cluster://a:7000?pool_sise=3"},
		{"bad duration", "redis-sentinel://h1:26379/m?dial_timeout=soon"},
		{"master name twice", "redis-sentinel://h1:26379/m?master_name=n"},
		{"password as a parameter", "redis-sentinel://h1:26379/m?password=pw"},
		{"negative pool", "redis://h:6379?pool_size=-1"},
		{"pool beyond go-redis's limit", "redis-cluster://a:7000?pool_size=3000000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := ParseURL(tt.url)
			if err == nil {
				t.Fatalf("ParseURL(%q) = %+v, want an error", tt.url, o)
			}
			if o != nil {
				t.Errorf("ParseURL(%q) returned options with an error", tt.url)
			}
			if !strings.HasPrefix(err.Error(), "redis url: ") {
				t.Errorf("error %q does not start with \"redis url: \"", err)
			}
		})
	}
}

// A URL's password stays out of error messages, which end up in logs.
func TestParseURLErrorsHidePassword(t *testing.T) {
	for _, u := range []string{
		"redis://:Secr3tPw@h:notaport/0",
		"redis://:Secr3tPw@h:6379/%zz",
		"redis-sentinel://:Secr3tPw@h1/m",
		"redis-cluster://u:Secr3tPw@a:7000/0",
		"redis-sentinel://:Secr3tPw@h1:26379/m?db=%zz",
	} {
		_, err := ParseURL(u)
		if err == nil {
			t.Fatalf("ParseURL(%q): no error", u)
		}
		if strings.Contains(err.Error(), "Secr3tPw") {
			t.Errorf("ParseURL(%q): error shows the password: %v", u, err)
		}
	}
}
