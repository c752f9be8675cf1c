package store

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// SetLogger sends go-redis's own log lines (a pool that cannot dial, a
// Sentinel announcing a new master) to log instead of its default
// log.Logger on stderr, so they take the binary's format (text or JSON)
// and carry component=redis. go-redis logs for the whole process and gives
// its lines no level; they are about trouble or failover, so they go out
// at Warn.
// The package's own lines (UsePasswordFile's) go to log too.
func SetLogger(log *slog.Logger) {
	redis.SetLogger(slogPrinter{log})
	pkgLog.Store(log)
}

var pkgLog atomic.Pointer[slog.Logger]

// logger is SetLogger's logger, or slog's default.
func logger() *slog.Logger {
	if l := pkgLog.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// slogPrinter has the one method of go-redis's logging interface
// (internal.Logging, which redis.SetLogger takes).
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(ctx context.Context, format string, v ...any) {
	if !p.log.Enabled(ctx, slog.LevelWarn) {
		return
	}
	p.log.Log(ctx, slog.LevelWarn, strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "redis")
}
