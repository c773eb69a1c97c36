// Package freeport picks free loopback TCP addresses for tests whose
// servers must know each other's ports before they start (the cluster
// tests' NATS routes).
//
// A port found by listening on port 0 and closing comes from the
// kernel's ephemeral range, the range every outgoing connection takes
// its local port from: with thousands of test connections in flight,
// one took such a port before its NATS node bound it (CI, 2026-12-05).
// So Loopback picks ports below that range, which the kernel never hands
// out by itself, and checks that each is free. It holds no state.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest is the lowest port Loopback picks.
const lowest = 10000

// Loopback returns n distinct free 127.0.0.1:port addresses, below the
// kernel's ephemeral port range when it leaves room for them there, else
// from the ephemeral range (port 0).
func Loopback(n int) ([]string, error) {
	top := ephemeralLow()
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]string, 0, n)
	for tries := 0; len(out) < n; tries++ {
		port := 0
		if top-lowest >= 1000 && tries < 100*n {
			port = lowest + rand.IntN(top-lowest)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				continue // in use: pick another
			}
			return nil, fmt.Errorf("freeport: %w", err)
		}
		ls = append(ls, l) // held until all are picked: distinct
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// ephemeralLow is the lowest port of the kernel's ephemeral range
// (Linux), or lowest when it is not known (nothing below it is picked
// then).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lowest
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return lowest
	}
	p, err := strconv.Atoi(f[0])
	if err != nil {
		return lowest
	}
	return p
}
