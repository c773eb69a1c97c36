package broker

import (
	"errors"
	"net"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
)

func TestLoopbackOnlyWithoutAuth(t *testing.T) {
	b, err := New(Options{TCP: ":0", WS: ":0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, a := range []string{b.TCPAddr(), b.WSAddr()} {
		if h, _, _ := net.SplitHostPort(a); h != "127.0.0.1" {
			t.Errorf("listening on %s without auth", a)
		}
	}
}

func users(t testing.TB) *auth.Users {
	u := auth.NewUsers()
	u.Set("alice", "alice-pw", 10)
	u.Set("bob", "bob-pw", 10)
	return u
}

func TestPasswordAuth(t *testing.T) {
	b := start(t, Options{Users: users(t)})
	try := func(user, pw string) error {
		o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID("c-" + user).SetUsername(user).SetPassword(pw).SetAutoReconnect(false)
		c := paho.NewClient(o)
		tok := c.Connect()
		tok.WaitTimeout(testTimeout)
		if tok.Error() == nil {
			c.Disconnect(0)
		}
		return tok.Error()
	}
	if err := try("alice", "alice-pw"); err != nil {
		t.Errorf("alice: %v", err)
	}
	for _, bad := range [][2]string{{"alice", "bob-pw"}, {"mallory", "x"}, {"", ""}} {
		if err := try(bad[0], bad[1]); err == nil {
			t.Errorf("%q/%q connected", bad[0], bad[1])
		}
	}
}

func dialAs(t *testing.T, b *Broker, user string) *client.Client {
	t.Helper()
	c, err := client.Dial(testCtx(t), b.TCPAddr(), client.Options{ClientID: user, Username: user, Password: user + "-pw", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestACLPerRow: SPEC §6 with a Mosquitto ACL file: a tree publish or $set
// needs write access to every row it touches (else 0x87, nothing applied),
// and snapshots and deltas carry only rows the reader may read.
func TestACLPerRow(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte(`
user alice
topic readwrite house/#
topic deny house/secret/#
user bob
topic read house/+/temp
topic write house/bob/#
`))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl})
	ctx := testCtx(t)
	alice, bob := dialAs(t, b, "alice"), dialAs(t, b, "bob")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(alice.PublishTree(ctx, "house", map[string]any{"kitchen": map[string]any{"temp": 21, "light": 1}, "hall": map[string]any{"temp": 19}}, client.PublishOptions{QoS: 1, Retain: true}))
	// Whole publish refused when one row is not writable.
	err = alice.PublishTree(ctx, "house", map[string]any{"kitchen": map[string]any{"temp": 99}, "secret": map[string]any{"key": 1}}, client.PublishOptions{QoS: 1, Retain: true})
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "0x87") {
		t.Fatalf("publish with a denied row: %v", err)
	}
	// $set over rows bob may not write: refused in the ack, after the loop looked.
	if err := bob.Set(ctx, "house/+/temp", []byte("0"), 1); !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "0x87") {
		t.Fatalf("bob's $set: %v", err)
	}
	must(bob.PublishTree(ctx, "house/bob", map[string]any{"temp": 5, "note": "x"}, client.PublishOptions{QoS: 1, Retain: true}))
	m, err := bob.Mirror(ctx, "house/#", client.JSON, 1, nil)
	must(err)
	m.Get(func(doc any) {
		if !same(t, doc, `{"kitchen":{"temp":21},"hall":{"temp":19},"bob":{"temp":5}}`) {
			t.Errorf("bob's snapshot %v", normal(t, doc))
		}
	})
	must(alice.PublishTree(ctx, "house/kitchen", map[string]any{"temp": 22, "light": 0}, client.PublishOptions{QoS: 1, Retain: true}))
	must(m.Wait(ctx, func(doc any) bool { return same(t, doc, `{"kitchen":{"temp":22},"hall":{"temp":19},"bob":{"temp":5}}`) }))
	// A plain subscription bob may not make is refused; the retained rows
	// of one he may make are filtered.
	col := newCollector()
	if err := bob.Subscribe(ctx, "house/#", client.Plain, client.JSON, 0, col.handle); err == nil {
		t.Error("bob subscribed to house/#")
	}
	must(bob.Subscribe(ctx, "house/+/temp", client.Plain, client.JSON, 0, col.handle))
	if got := col.wait(t, 3); len(got) != 3 {
		t.Errorf("retained %v", got)
	}
}
