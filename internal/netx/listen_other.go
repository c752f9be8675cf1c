//go:build !linux

package netx

import "net"

func listenConfig() net.ListenConfig { return net.ListenConfig{KeepAliveConfig: keepAlive} }
