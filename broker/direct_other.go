//go:build !linux

package broker

import (
	"net"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// rawIO is Linux's (direct_linux.go): elsewhere connections read and write
// through the net package only, and nothing is written directly.
type rawIO struct{}

func newRawIO(net.Conn, *readBufPool) *rawIO { return nil }

// ReadLent is mochi's BufferLender's (change 62): elsewhere than on Linux
// a connection keeps a read buffer of its own.
func (c *netConn) ReadLent(bool) ([]byte, int, error) { return nil, 0, mqtt.ErrNoLending }

// ReturnLent is never called: ReadLent lends nothing.
func (c *netConn) ReturnLent([]byte) {}

// releaseSpare has nothing to give back: ReadLent lends nothing.
func (c *netConn) releaseSpare() {}

// takeBackLent has nothing to take back: ReadLent lends nothing.
func (c *netConn) takeBackLent() {}

func (c *netConn) tryWrite([]byte) (int, bool, error) { return 0, false, nil }

func (c *netConn) hasRest() bool { return false }

func (c *netConn) writeRest() (int, error) { return 0, nil }

func (c *netConn) writeRestLocked() (int, error) { return 0, nil }

// acked is Linux's (direct_linux.go): elsewhere what the client's TCP
// stack acknowledged is not known.
func (c *netConn) acked() (uint64, bool) { return 0, false }
