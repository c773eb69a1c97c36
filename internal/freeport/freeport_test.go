package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestLoopback: the addresses are distinct, free (each can be listened
// on), and below the ephemeral range when there is room.
func TestLoopback(t *testing.T) {
	addrs, err := Loopback(6)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 6 {
		t.Fatalf("%d addresses, want 6", len(addrs))
	}
	seen := map[string]bool{}
	top := ephemeralLow()
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s twice", a)
		}
		seen[a] = true
		_, ps, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(ps)
		if top-lowest >= 1000 && (p < lowest || p >= top) {
			t.Errorf("%s: port outside [%d, %d)", a, lowest, top)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s is not free: %v", a, err)
		}
		l.Close()
	}
}
