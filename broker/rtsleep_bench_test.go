//go:build linux

package broker

import (
	"net"
	"testing"
)

// The cost of sleeping readers (red team h-rtsleep): the sweep, and a
// busy connection's wait between packets.

// BenchmarkSleepSweep is one sweep of 10,000 connections, none due for a
// kick (all busy, or waiting since this epoch): what the sleepers'
// goroutine pays every half ReaderSleep, under the broker's rawMu.
func BenchmarkSleepSweep(b *testing.B) {
	br := &Broker{raw: map[*netConn]struct{}{}}
	s := &sleepers{b: br}
	s.epoch.Store(1)
	for i := range 10_000 {
		nc := &netConn{}
		if i%2 == 0 {
			nc.sleep.Store(maxEpoch) // waiting since an epoch after every sweep's: never due
		}
		br.raw[nc] = struct{}{}
	}
	b.ReportAllocs()
	for b.Loop() {
		s.sweep()
	}
}

// BenchmarkReadLentBusy is a busy connection's wait between packets
// (ReadLent(true), input already there) with readers that may sleep and
// with none: the sleep's bookkeeping (waiting, woke) must not show.
func BenchmarkReadLentBusy(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "no-sleepers", true: "sleepers"}[on], func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			cli, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer cli.Close()
			srv, err := ln.Accept()
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			br := &Broker{}
			if on {
				br.sleepers = &sleepers{}
				br.sleepers.epoch.Store(1)
			}
			var pool readBufPool
			nc := &netConn{Conn: srv, raw: newRawIO(srv, &pool), b: br, maxConnect: 1 << 20, maxPacket: 1 << 20, packets: 1, connected: true}
			ping := []byte{0xC0, 0}
			b.ReportAllocs()
			for b.Loop() {
				cli.Write(ping)
				buf, _, err := nc.ReadLent(true)
				if err != nil {
					b.Fatal(err)
				}
				nc.ReturnLent(buf)
			}
		})
	}
}
