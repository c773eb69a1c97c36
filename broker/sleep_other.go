//go:build !linux

package broker

// sleepers is Linux's (sleep_linux.go): elsewhere every connection keeps
// its read goroutine, and no reader answers ErrAsleep.
type sleepers struct{}

func newSleepers(*Broker) *sleepers { return nil }

func (s *sleepers) sleep(nc *netConn, id string, serve func() error) { go nc.b.serve(id, nc, serve) }
func (s *sleepers) closing(*netConn)                                 {}
func (c *netConn) quiet() bool                                       { return false }
func (s *sleepers) asleepNow() int                                   { return 0 }
func (s *sleepers) halt()                                            {}
func (s *sleepers) stop()                                            {}
