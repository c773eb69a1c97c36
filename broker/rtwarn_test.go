package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/wire"
)

// TestRefusedPublishReset: a client that sends a run of refused QoS 1 or 2
// PUBLISHes and resets its connection at once has the broker's acks of
// the refusals fail. Each failed ack wrote mochi's Error line "publish
// packet error", outside refusal_log, and mochi went on with the
// refused publish as if it were taken (its ack held, OnPublished): 28
// lines a connection, a line for each refused publish still in the read
// buffer (red team h-rtwarn). The first failed ack ends the connection.
func TestRefusedPublishReset(t *testing.T) {
	cases := []struct {
		name string
		qos  byte
	}{
		{"QoS 1", 1},
		{"QoS 2", 2},
	}
	const conns, each = 20, 200
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// An interval longer than the test: the bound does not depend on
			// how fast the machine is.
			b, logs := startLogged(t, Options{RefusalLog: LogLimit{Interval: time.Hour}})
			start := len(logLines(t, logs.String()))
			for i := range conns {
				id := fmt.Sprintf("rst%d", i)
				nc := hxDial(t, b.TCPAddr())
				if _, err := nc.Write(connectPacket(5, id)); err != nil {
					t.Fatal(err)
				}
				r := bufio.NewReader(nc)
				if h, _, err := readPacketBody(r); err != nil || h>>4 != 2 {
					t.Fatalf("%s: no CONNACK: %#x %v", id, h, err)
				}
				var flood []byte
				for j := range each {
					flood = append(flood, hxPublish("$sync/rst", c.qos, uint16(j+1), hxProps(), "x")...)
				}
				if _, err := nc.Write(flood); err != nil {
					t.Fatal(err)
				}
				nc.(*net.TCPConn).SetLinger(0)
				nc.Close() // RST: the acks the broker writes after it fail
				waitConnGone(t, b, id)
			}
			lines := logLines(t, logs.String())[start:]
			errs := 0
			for _, l := range lines {
				if msg, _ := l["message"].(string); strings.Contains(msg, "publish packet error") {
					errs++
				}
			}
			t.Logf("%d connections of %d refused publishes then RST: %d log lines, %d of them \"publish packet error\"", conns, each, len(lines), errs)
			// refusal_log: 100 lines broker-wide, the first of each kind,
			// and the lines counting the rest.
			if errs > 0 || len(lines) > 100+int(refusalReasons)+conns+1 {
				t.Errorf("%d log lines (%d \"publish packet error\"), want at most %d and none of mochi's", len(lines), errs, 100+int(refusalReasons)+conns+1)
			}
		})
	}
}

// TestAliasACL: the ACL is checked on the topic an alias names, for plain,
// mote=tree, $tree and $set publishes: a client that may write only a/#
// publishes nothing to b through an alias, whether the alias was set by a
// refused publish or moved there from an allowed topic, and an alias
// moved from b to an allowed topic publishes there.
func TestAliasACL(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite a/#\nuser bob\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl})
	// A row under b for $set to touch; the publishes are retained, so a
	// publish that got through shows in the tree.
	if got := userExchange(t, b.TCPAddr(), "bob", retained(hxPublish("b/c", 1, 1, hxProps(), "orig"))); !hxMatch(got, []string{"40:00 01"}) {
		t.Fatalf("bob's publish: %q", got)
	}
	settle(t, b)
	before := treeOf(t, b, "b/#")
	alias := func(a uint16, more ...[]byte) []byte { return hxProps(append([][]byte{hxU16(0x23, a)}, more...)...) }
	tree := hxUser("mote", "tree")
	cases := []struct {
		name string
		send [][]byte
		want []string
	}{
		{"plain b, then alias only", [][]byte{
			hxPublish("b", 1, 1, alias(1), "x"),
			hxPublish("", 1, 2, alias(1), "y"),
		}, []string{"40:00 01 87*", "40:00 02 87*"}},
		{"mote=tree on b, then alias only with and without mote=tree", [][]byte{
			hxPublish("b", 1, 1, alias(2, tree), `{"c":1}`),
			hxPublish("", 1, 2, alias(2, tree), `{"c":2}`),
			hxPublish("", 1, 3, alias(2), "plain"),
		}, []string{"40:00 01 87*", "40:00 02 87*", "40:00 03 87*"}},
		{"$tree/b, then alias only", [][]byte{
			hxPublish("$tree/b", 1, 1, alias(3), `{"c":1}`),
			hxPublish("", 1, 2, alias(3), `{"c":2}`),
		}, []string{"40:00 01 87*", "40:00 02 87*"}},
		// $set touches only the rows the client may read (none under b):
		// acknowledged, nothing set, as without an alias.
		{"$set/b/#, without an alias, then with one, then alias only", [][]byte{
			hxPublish("$set/b/#", 1, 1, hxProps(), "0"),
			hxPublish("$set/b/#", 1, 2, alias(4), "1"),
			hxPublish("", 1, 3, alias(4), "2"),
		}, []string{"40:00 01", "40:00 02", "40:00 03"}},
		{"alias moved from a/x to b", [][]byte{
			hxPublish("a/x", 1, 1, alias(5), "ok"),
			hxPublish("b", 1, 2, alias(5), "x"),
			hxPublish("", 1, 3, alias(5), "y"),
		}, []string{"40:00 01", "40:00 02 87*", "40:00 03 87*"}},
		{"alias moved from $tree/b to a/y", [][]byte{
			hxPublish("$tree/b", 1, 1, alias(6), `{"c":1}`),
			hxPublish("a/y", 1, 2, alias(6), "ok"),
			hxPublish("", 1, 3, alias(6), "ok2"),
		}, []string{"40:00 01 87*", "40:00 02", "40:00 03"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			send := make([][]byte, len(c.send))
			for i, p := range c.send {
				send[i] = retained(p)
			}
			got := userExchange(t, b.TCPAddr(), "alice", send...)
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	settle(t, b)
	if after := treeOf(t, b, "b/#"); after != before {
		t.Errorf("rows under b: %s, were %s: written through an alias", after, before)
	}
	if a := treeOf(t, b, "a/#"); a != `{"x":"ok","y":"ok2"}` {
		t.Errorf("rows under a: %s", a)
	}
}

// retained is an MQTT PUBLISH with its retain flag set.
func retained(p []byte) []byte {
	p = bytes.Clone(p)
	p[0] |= 1
	return p
}

// treeOf is the broker's tree of filter, all rows, as JSON.
func treeOf(t *testing.T, b *Broker, filter string) string {
	t.Helper()
	got, _, err := b.Tree(testCtx(t), systemPrincipal, filter, wire.CodecJSON)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

// userExchange is hxExchange for an MQTT 5 client logged in as user (its
// password user+"-pw").
func userExchange(t *testing.T, addr, user string, send ...[]byte) []string {
	t.Helper()
	return exchangeAs(t, hxDial(t, addr), rv6Connect(5, user+"-x", user), send...)
}

// TestLogKindsByCode: the first line of each refusal an operator needs is
// kept after a flood of lines of other kinds. Kinds were refusal reasons,
// which lump many codes into "other": 100 CONNECTs with keep-alive 0 (a
// notice, not a refusal) spent the broker-wide bound and the kind, and
// the next lines of "other" — a CONNECT refused for its authentication
// method, an AUTH packet — were left out (red team h-rtwarn). Kinds are
// now reason codes, and a notice is a kind of its own.
func TestLogKindsByCode(t *testing.T) {
	b, logs := startLogged(t, Options{RefusalLog: LogLimit{Interval: time.Hour}})
	for i := range 110 {
		nc := hxDial(t, b.TCPAddr())
		if _, err := nc.Write(connectPacketKeepalive(4, fmt.Sprintf("ka%d", i), 0)); err != nil {
			t.Fatal(err)
		}
		if h, _, err := readPacketBody(bufio.NewReader(nc)); err != nil || h>>4 != 2 {
			t.Fatalf("ka%d: no CONNACK: %#x %v", i, h, err)
		}
		nc.Close()
	}
	cases := []struct {
		name    string
		connect packets.Properties
		send    []byte
		line    string // the message of the line wanted
	}{
		{"CONNECT with an authentication method", packets.Properties{AuthenticationMethod: "SCRAM-SHA-1"}, nil, "connection refused"},
		{"AUTH packet", packets.Properties{}, []byte{0xF0, 2, 0x18, 0}, "AUTH packet refused: no enhanced authentication"},
	}
	for i, c := range cases {
		id := fmt.Sprint("kc", i)
		nc := hxDial(t, b.TCPAddr())
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
			Properties:      c.connect,
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		nc.Write(append(buf.Bytes(), c.send...)) //nolint:errcheck // the broker closes it
		r := bufio.NewReader(nc)
		for {
			if _, _, err := readPacketBody(r); err != nil {
				break // closed: refused
			}
		}
		nc.Close()
		waitConnGone(t, b, id)
	}
	lines := logLines(t, logs.String())
	for _, c := range cases {
		found := false
		for _, l := range lines {
			if msg, _ := l["message"].(string); msg == c.line {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no line %q after 110 keep-alive notices", c.name, c.line)
		}
	}
}

// TestSessionEndedLogBounded: a client that leaves persistent sessions
// past max_sessions, one connection after another, had the broker write a
// Warn line for each session it ended, outside refusal_log: a line per
// connection, without bound (red team h-rtwarn). The lines now take from
// the broker-wide bound, the first one kept.
func TestSessionEndedLogBounded(t *testing.T) {
	const n = 300
	b, logs := startLogged(t, Options{MaxSessions: 2, RefusalLog: LogLimit{Interval: time.Hour}})
	h := addLeftHook(t, b)
	for i := range n {
		leave(t, b, h, 5, fmt.Sprint("se", i))
	}
	if got := b.stats.SessionsEnded.Load(); got != n-2 {
		t.Fatalf("%d sessions ended, want %d", got, n-2)
	}
	b.Close() // the count of the lines left out is written
	ended, counted := 0, int64(0)
	for _, l := range logLines(t, logs.String()) {
		msg, _ := l["message"].(string)
		switch {
		case strings.HasPrefix(msg, "session ended"):
			ended++
		case strings.HasPrefix(msg, "log lines suppressed"):
			k, _ := l["suppressed"].(float64)
			counted += int64(k)
		}
	}
	t.Logf("%d sessions ended: %d lines, %d counted", n-2, ended, counted)
	if ended == 0 || ended > 100 || int64(ended)+counted != n-2 {
		t.Errorf("%d lines of sessions ended and %d counted, want 1 to 100 lines and %d in all", ended, counted, n-2)
	}
}
