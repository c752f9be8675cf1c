package netx

import (
	"net"
	"os"
	"syscall"
)

func listenConfig() net.ListenConfig {
	return net.ListenConfig{
		KeepAlive: -1, // accepted sockets inherit the listener's (setListener)
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			if cerr := c.Control(func(fd uintptr) { err = setListener(int(fd)) }); cerr != nil {
				return cerr
			}
			return err
		},
	}
}

// setListener sets keep-alive and TCP_DEFER_ACCEPT on the listening socket fd.
func setListener(fd int) error {
	opts := []struct {
		level, name, value int
		what               string
	}{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(keepAlive.Idle.Seconds()), "TCP_KEEPIDLE"},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(keepAlive.Interval.Seconds()), "TCP_KEEPINTVL"},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAlive.Count, "TCP_KEEPCNT"},
		{syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, int(deferAccept.Seconds()), "TCP_DEFER_ACCEPT"},
	}
	for _, o := range opts {
		if err := syscall.SetsockoptInt(fd, o.level, o.name, o.value); err != nil {
			return os.NewSyscallError("setsockopt "+o.what, err)
		}
	}
	return nil
}
