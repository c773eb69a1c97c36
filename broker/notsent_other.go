//go:build !linux

package broker

import "net"

// setNotSentLowat is Linux's (notsent_linux.go): elsewhere the kernel
// buffers what it takes, as before.
func setNotSentLowat(net.Conn) error { return nil }
