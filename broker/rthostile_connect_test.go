package broker

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestHostileConnectChurn: ten attackers CONNECT with one client id for
// a while, as two users (no password file: a user name is taken as
// given), MQTT 3.1.1 and 5, clean and persistent, with and without wills
// (MQTT 5 ones delayed 0-1 s, sessions kept 0-2 s), and leave every way a
// client can: DISCONNECT, DISCONNECT 0x04 (with will), an abrupt close,
// a close halfway through the CONNECT, a second CONNECT. Nothing hangs
// (each CONNECT is answered or the connection closed), nothing panics,
// and when everyone has gone and the sessions have expired, no
// connection, writer or goroutine of theirs is left, and the broker
// serves. (Who may take the id over is TestTakeoverChecksOwnerUnderLock's.)
func TestHostileConnectChurn(t *testing.T) {
	b := start(t, Options{})
	base := runtime.NumGoroutine()
	const attackers, rounds = 10, 25
	var wg sync.WaitGroup
	for a := range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(a), 7))
			for range rounds {
				hostileConnect(t, b, r)
			}
		}()
	}
	waitGroup(t, "attackers", &wg)
	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	waitFor(t, "every connection gone", func() bool { return rawCount(b) == 0 })
	waitFor(t, "every writer stopped", func() bool { return b.stats.Writers.Load() == 0 })
	// A 3.1.1 persistent session never expires: its owner, one of the
	// two users (the other is refused), ends it with a clean start. MQTT 5
	// sessions kept up to 2 s expire (mochi's sweep runs each second).
	for _, user := range []string{"alice", "bob"} {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30,
				ClientIdentifier: "hc", UsernameFlag: true, Username: []byte(user)}}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		buf.Write([]byte{0xE0, 0})
		nc, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(testTimeout))
		nc.Write(buf.Bytes())   //nolint:errcheck // the read says
		io.Copy(io.Discard, nc) //nolint:errcheck // until the broker closes it
		nc.Close()
	}
	waitFor(t, "sessions expired", func() bool { return b.server.Clients.Len() == 0 })
	waitFor(t, "goroutines back", func() bool { return runtime.NumGoroutine() <= base })
	alive(t, b)
}

// hostileConnect makes one connection with client id "hc" and leaves it
// one of the hostile ways.
func hostileConnect(t *testing.T, b *Broker, r *rand.Rand) {
	v := byte(4 + r.IntN(2))
	user := []string{"alice", "bob"}[r.IntN(2)]
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: r.IntN(2) == 0, Keepalive: 30,
			ClientIdentifier: "hc", UsernameFlag: true, Username: []byte(user)}}
	if v == 5 && !pk.Connect.Clean {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = uint32(r.IntN(3)), true
	}
	if r.IntN(2) == 0 {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "hc/will/"+user, []byte(user)
		if v == 5 {
			pk.Connect.WillProperties.WillDelayInterval = uint32(r.IntN(2))
		}
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Error(err)
		return
	}
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Error(err)
		return
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	how := r.IntN(5)
	if how == 0 { // close halfway through the CONNECT
		nc.Write(buf.Bytes()[:buf.Len()/2]) //nolint:errcheck // closed at once
		return
	}
	if _, err := nc.Write(buf.Bytes()); err != nil {
		t.Error(err)
		return
	}
	rd := bufio.NewReader(nc)
	h, body, err := readPacketBody(rd)
	if err != nil {
		return // refused and closed (another user's live session): fine
	}
	if h>>4 != packets.Connack || len(body) < 2 {
		t.Errorf("%s v%d: got %#x % x, want CONNACK", user, v, h, body)
		return
	}
	if body[1] != 0 {
		return // refused: the connection closes
	}
	switch how {
	case 1: // abrupt close
	case 2:
		nc.Write([]byte{0xE0, 0}) //nolint:errcheck // leaving
	case 3:
		if v == 5 {
			nc.Write([]byte{0xE0, 2, 0x04, 0}) //nolint:errcheck // leaving with the will
		}
	case 4: // a second CONNECT: the broker closes the connection
		nc.Write(buf.Bytes()) //nolint:errcheck // the read says
		nc.SetReadDeadline(time.Now().Add(testTimeout))
		for {
			if _, _, err := readPacketBody(rd); err != nil {
				return
			}
		}
	}
}

// TestHostileTakeoverBeforeConnack: CONNECTs of one client id racing
// each other. A CONNECT filed under the id but not yet answered could be
// taken over then, and its client got DISCONNECT 0x8E before (instead
// of) its CONNACK — the first packet from the server MUST be the CONNACK
// [MQTT-3.2.0-1] (found by TestHostileConnectChurn). Each client's first
// packet is now its CONNACK, or the connection closes.
func TestHostileTakeoverBeforeConnack(t *testing.T) {
	b := start(t, Options{})
	const rounds, racers = 150, 3
	bad := 0
	for range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nc, err := net.Dial("tcp", b.TCPAddr())
				if err != nil {
					t.Error(err)
					return
				}
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(testTimeout))
				nc.Write(connectPacket(5, "hc-race")) //nolint:errcheck // the read says
				h, body, err := readPacketBody(bufio.NewReader(nc))
				if err == nil && h>>4 != packets.Connack {
					mu.Lock()
					if bad++; bad <= 3 {
						t.Errorf("first packet %#x % x, want CONNACK [MQTT-3.2.0-1]", h, body)
					}
					mu.Unlock()
				}
			}()
		}
		waitGroup(t, "racers", &wg)
	}
	if bad > 0 {
		t.Errorf("%d of %d CONNECTs got another packet before their CONNACK", bad, rounds*racers)
	}
	alive(t, b)
}
