//go:build !linux

package broker

import "net"

// rawIO is Linux's (direct_linux.go): elsewhere connections read and write
// through the net package only, and nothing is written directly.
type rawIO struct{}

func newRawIO(net.Conn) *rawIO { return nil }

func (c *netConn) tryWrite([]byte) (int, bool, error) { return 0, false, nil }

func (c *netConn) hasRest() bool { return false }

func (c *netConn) writeRest() (int, error) { return 0, nil }

func (c *netConn) writeRestLocked() (int, error) { return 0, nil }
