package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// The ACLs of the reload tests: bob reads house/# and writes house/bob/#
// (wide), or reads house/# but house/secret/#, and writes nothing
// (narrow). alice may do anything.
const (
	wideACL = `
user alice
topic readwrite #
user bob
topic read house/#
topic write house/bob/#
`
	narrowACL = `
user alice
topic readwrite #
user bob
topic read house/#
topic deny house/secret/#
`
)

func parseACL(t testing.TB, text string) *auth.ACL {
	t.Helper()
	if text == "" {
		return nil
	}
	acl, err := auth.ParseACL("acl", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return acl
}

// stillConnected fails the test if c's connection ended.
func stillConnected(t *testing.T, c *client.Client, who string) {
	t.Helper()
	select {
	case <-c.Done():
		t.Fatalf("%s was disconnected", who)
	default:
	}
	if !c.Connected() {
		t.Fatalf("%s is not connected", who)
	}
}

// TestReloadACL: each reload's ACL applies to a connected reader from its
// next message on — its plain subscription, the deltas of its $sync
// subscription, the retained replay, snapshot and $hist answer of a new
// subscription, its writes (0x87 once forbidden) — and it stays connected throughout,
// through narrower, wider, no ACL at all and back; a refused reload
// changes nothing.
func TestReloadACL(t *testing.T) {
	u := users(t)
	b := start(t, Options{Users: u, ACL: parseACL(t, wideACL)})
	ctx := testCtx(t)
	alice, bob := dialAs(t, b, "alice"), dialAs(t, b, "bob")
	plain, sync := newCollector(), newCollector()
	if err := bob.Subscribe(ctx, "house/#", client.Plain, client.JSON, 1, plain.handle); err != nil {
		t.Fatal(err)
	}
	if err := bob.Subscribe(ctx, "house/#", client.Sync, client.JSON, 1, sync.handle); err != nil {
		t.Fatal(err)
	}
	plain.wait(t, 0)
	sync.wait(t, 1) // the snapshot
	bobP := Principal{User: "bob", ClientID: "bob-door"}

	for i, step := range []struct {
		name   string
		acl    string
		bad    bool // a reload that must be refused, leaving the last rules
		secret bool // bob may read house/secret/x
		write  bool // bob may write house/bob/x
	}{
		{"narrower", narrowACL, false, false, false},
		{"wider", wideACL, false, true, true},
		{"no ACL", "", false, true, true},
		{"narrower than none", narrowACL, false, false, false},
		{"refused reload", wideACL, true, false, false},
		{"wider again", wideACL, false, true, true},
	} {
		r := Reload{Users: u, ACL: parseACL(t, step.acl)}
		if step.bad {
			r.History = []retain.HistoryRule{{Filter: "a/#/b", Keep: 1}}
		}
		if err := b.Reload(r); (err != nil) != step.bad || (step.bad && !errors.Is(err, ErrReload)) {
			t.Fatalf("%s: Reload: %v", step.name, err)
		}
		// alice changes both rows, then a marker row, in order.
		fromPlain, fromSync := len(plain.wait(t, 0)), len(sync.wait(t, 0))
		if err := alice.PublishTree(ctx, "house", map[string]any{"a": i, "secret": map[string]any{"x": i}}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
		if err := alice.Publish(ctx, "house/end", []byte(fmt.Sprint(i)), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
		// Plain: house/a always, house/secret/x only if readable.
		got := map[string]string{}
		for n := fromPlain + 1; ; n++ {
			m := plain.wait(t, n)[n-1]
			got[m.Topic] = string(m.Payload)
			if m.Topic == "house/end" && string(m.Payload) == fmt.Sprint(i) {
				break
			}
		}
		if _, ok := got["house/secret/x"]; got["house/a"] != fmt.Sprint(i) || ok != step.secret {
			t.Errorf("%s: plain messages %v; want house/a, and house/secret/x %v", step.name, got, step.secret)
		}
		// $sync: the deltas carry secret only if readable.
		var deltas []string
		for n := fromSync + 1; ; n++ {
			m := sync.wait(t, n)[n-1]
			j, _ := json.Marshal(m.Tree)
			deltas = append(deltas, string(j))
			if strings.Contains(string(j), fmt.Sprintf(`"end":%d`, i)) {
				break
			}
		}
		all := strings.Join(deltas, " ")
		if strings.Contains(all, `"secret"`) != step.secret || !strings.Contains(all, fmt.Sprintf(`"a":%d`, i)) {
			t.Errorf("%s: deltas %s; want a, and secret %v", step.name, all, step.secret)
		}
		// A snapshot and a retained replay made now follow the rules too.
		snap, _, err := b.Tree(ctx, bobP, "house/#", wire.CodecJSON)
		if err != nil || strings.Contains(string(snap), "secret") != step.secret {
			t.Errorf("%s: snapshot %s, %v", step.name, snap, err)
		}
		if replayed := replayOf(t, b, alice, bobP, "house/#"); strings.Contains(replayed, "house/secret/x") != step.secret || !strings.Contains(replayed, "house/a") {
			t.Errorf("%s: retained replay %s", step.name, replayed)
		}
		h, err := bob.History(ctx, "house/#", client.JSON)
		if err != nil {
			t.Fatal(err)
		}
		if j, _ := json.Marshal(h.Tree); strings.Contains(string(j), "secret") != step.secret || !strings.Contains(string(j), `"a"`) {
			t.Errorf("%s: $hist answer %s", step.name, j)
		}
		// bob's write: allowed, or refused with 0x87.
		err = bob.PublishTree(ctx, "house/bob", map[string]any{"x": i}, client.PublishOptions{QoS: 1, Retain: true})
		if step.write && err != nil {
			t.Errorf("%s: bob's write: %v", step.name, err)
		}
		if !step.write && (!errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "0x87")) {
			t.Errorf("%s: bob's write: %v, want refused with 0x87", step.name, err)
		}
		stillConnected(t, bob, "bob")
		stillConnected(t, alice, "alice")
	}
}

// replayOf subscribes a door session of p to filter and returns the topics
// its retained replay brought, sorted as they came: a non-retained
// marker alice publishes after the subscription arrives after the replay.
func replayOf(t *testing.T, b *Broker, alice *client.Client, p Principal, filter string) string {
	t.Helper()
	var mu sync.Mutex
	var topics []string
	done := make(chan struct{})
	marker := fmt.Sprint("house/marker/", time.Now().UnixNano())
	s := b.Open(p, func(d Delivery) {
		mu.Lock()
		defer mu.Unlock()
		if d.Topic == marker {
			close(done)
			return
		}
		if d.Retain {
			topics = append(topics, d.Topic)
		}
	})
	defer s.Close()
	if err := s.Subscribe(filter, 0); err != nil {
		t.Fatal(err)
	}
	if err := alice.Publish(testCtx(t), marker, []byte("m"), client.PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("no marker after the replay")
	}
	mu.Lock()
	defer mu.Unlock()
	return strings.Join(topics, " ")
}

// TestReloadPasswords: a connected client stays connected when its
// password changes or its user goes; new connections are checked against
// the new password file.
func TestReloadPasswords(t *testing.T) {
	b := start(t, Options{Users: users(t)})
	ctx := testCtx(t)
	alice := dialAs(t, b, "alice")
	col := newCollector()
	if err := alice.Subscribe(ctx, "t", client.Plain, client.JSON, 1, col.handle); err != nil {
		t.Fatal(err)
	}
	try := func(user, pw string) error {
		c, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: fmt.Sprint(user, "-", pw), Username: user, Password: pw, CleanStart: true})
		if err == nil {
			c.Close()
		}
		return err
	}
	changed := auth.NewUsers()
	changed.Set("alice", "new-pw", 10)
	changed.Set("bob", "bob-pw", 10)
	gone := auth.NewUsers()
	gone.Set("bob", "bob-pw", 10)
	for i, step := range []struct {
		name  string
		users *auth.Users
		ok    [][2]string // logins that work
		bad   [][2]string // and those refused
	}{
		{"alice's password changed", changed, [][2]string{{"alice", "new-pw"}, {"bob", "bob-pw"}}, [][2]string{{"alice", "alice-pw"}}},
		{"alice removed", gone, [][2]string{{"bob", "bob-pw"}}, [][2]string{{"alice", "alice-pw"}, {"alice", "new-pw"}}},
	} {
		if err := b.Reload(Reload{Users: step.users}); err != nil {
			t.Fatal(err)
		}
		for _, l := range step.ok {
			if err := try(l[0], l[1]); err != nil {
				t.Errorf("%s: %s/%s: %v", step.name, l[0], l[1], err)
			}
		}
		for _, l := range step.bad {
			if err := try(l[0], l[1]); err == nil {
				t.Errorf("%s: %s/%s connected", step.name, l[0], l[1])
			}
		}
		// alice, connected before, still publishes and receives.
		if err := alice.Publish(ctx, "t", []byte(fmt.Sprint(i)), client.PublishOptions{QoS: 1}); err != nil {
			t.Fatalf("%s: alice's publish: %v", step.name, err)
		}
		if m := col.wait(t, i+1)[i]; string(m.Payload) != fmt.Sprint(i) {
			t.Errorf("%s: alice got %q", step.name, m.Payload)
		}
		stillConnected(t, alice, "alice")
	}
}

// TestReloadRefused: a reload with a bad part is refused whole, and the
// broker goes on with what it had: the same users, ACL, history rules and
// TLS configuration.
func TestReloadRefused(t *testing.T) {
	cert, leaf := genCert(t, 1, "before")
	store, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rules := []retain.HistoryRule{{Filter: "h/#", Keep: 3}}
	b := start(t, Options{Users: users(t), ACL: parseACL(t, wideACL), Store: store, Retain: retain.Options{History: rules},
		TLS: "127.0.0.1:0", TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	next, _ := genCert(t, 2, "after")
	good := Reload{ACL: parseACL(t, narrowACL), History: []retain.HistoryRule{{Filter: "x/#", Keep: 1}}, TLSConfig: &tls.Config{Certificates: []tls.Certificate{next}}}
	for _, tc := range []struct {
		name string
		bad  func(*Reload)
	}{
		{"history filter", func(r *Reload) { r.History = append(r.History, retain.HistoryRule{Filter: "a/#/b", Keep: 1}) }},
		{"history keep", func(r *Reload) { r.History = []retain.HistoryRule{{Filter: "a/#", Keep: maxHistLimit + 1}} }},
		{"TLS without a certificate", func(r *Reload) { r.TLSConfig = &tls.Config{} }},
	} {
		r := good
		r.Users = users(t)
		tc.bad(&r)
		if err := b.Reload(r); !errors.Is(err, ErrReload) {
			t.Errorf("%s: %v, want ErrReload", tc.name, err)
		}
	}
	// Everything as before: bob may still write house/bob/x and read
	// house/secret/x, the history rules and the certificate are the first.
	bob := dialAs(t, b, "bob")
	if err := bob.PublishTree(testCtx(t), "house/bob", map[string]any{"x": 1}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Errorf("bob's write after refused reloads: %v", err)
	}
	if !b.access.canRead(Principal{User: "bob"}, "house/secret/x") {
		t.Error("the narrow ACL of a refused reload applies")
	}
	if got := b.ret.HistoryRules(); len(got) != 1 || got[0] != rules[0] {
		t.Errorf("history rules %+v after refused reloads", got)
	}
	if got := peerCert(t, b.TLSAddr(), poolOf(leaf)); got.SerialNumber.Int64() != 1 {
		t.Errorf("certificate %v after refused reloads", got.SerialNumber)
	}
}

// TestReloadKeepsLoopbackSafe: a broker whose listeners are bound beyond
// loopback refuses a reload without a password file or anonymous access
// (it would let anyone in under any name); a loopback-only broker takes a
// password file (its listeners stay on loopback until a restart).
func TestReloadKeepsLoopbackSafe(t *testing.T) {
	wide, err := New(Options{TCP: ":0", WS: "off", Users: users(t)}) // bound beyond loopback; the test talks to 127.0.0.1 only
	if err != nil {
		t.Fatal(err)
	}
	if err := wide.Start(); err != nil {
		t.Fatal(err)
	}
	defer wide.Close()
	if err := wide.Reload(Reload{}); !errors.Is(err, ErrReload) || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("reload without users on a wide broker: %v", err)
	}
	if err := wide.Reload(Reload{AllowAnonymous: true}); err != nil {
		t.Errorf("reload with anonymous access on a wide broker: %v", err)
	}
	local := start(t, Options{})
	if err := local.Reload(Reload{Users: users(t)}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(local.TCPAddr(), "127.0.0.1:") {
		t.Errorf("rebound to %s", local.TCPAddr())
	}
	if _, err := client.Dial(testCtx(t), local.TCPAddr(), client.Options{ClientID: "anon", Timeout: 5 * time.Second}); err == nil {
		t.Error("an anonymous client connected after a password file was added")
	}
}

// TestReloadWill: a will is checked against the rules when it fires, not
// those of its CONNECT.
func TestReloadWill(t *testing.T) {
	u := users(t)
	b := start(t, Options{Users: u, ACL: parseACL(t, wideACL)})
	for _, tc := range []struct {
		acl string // when the will fires
		set bool
	}{{wideACL, true}, {narrowACL, false}} {
		if err := b.Reload(Reload{Users: u, ACL: parseACL(t, wideACL)}); err != nil {
			t.Fatal(err)
		}
		topic := fmt.Sprint("house/bob/will", tc.set)
		id := "bob-" + topic
		if _, _, err := dial5As(t, b, "bob", id, &paho5.WillMessage{Topic: topic, Payload: []byte("gone"), Retain: true, QoS: 1}, paho5.ClientConfig{}); err != nil {
			t.Fatal(err)
		}
		if err := b.Reload(Reload{Users: u, ACL: parseACL(t, tc.acl)}); err != nil {
			t.Fatal(err)
		}
		b.connOf(t, id).out.(*mqttOut).cl.Net.Conn.Close() // no DISCONNECT: the will fires
		waitConnGone(t, b, id)
		settle(t, b)
		if s := string(b.snapshot(topic)); (s == `"gone"`) != tc.set {
			t.Errorf("will on %s with the ACL at firing time %v: row %q", topic, tc.set, s)
		}
	}
}

// TestReloadTLS: after a reload with a new certificate, new TLS and WSS
// handshakes get it, while a client connected over TLS before stays
// connected and keeps working.
func TestReloadTLS(t *testing.T) {
	one, leaf1 := genCert(t, 1, "one")
	two, leaf2 := genCert(t, 2, "two")
	pool := poolOf(leaf1, leaf2)
	b := start(t, Options{TLS: "127.0.0.1:0", WSS: "127.0.0.1:0", TLSConfig: &tls.Config{Certificates: []tls.Certificate{one}}})
	ctx := testCtx(t)
	for _, addr := range []string{b.TLSAddr(), b.WSSAddr()} {
		if got := peerCert(t, addr, pool); got.Subject.CommonName != "one" {
			t.Fatalf("%s serves %q", addr, got.Subject.CommonName)
		}
	}
	old, err := client.Dial(ctx, "mqtts://"+b.TLSAddr(), client.Options{ClientID: "old", CleanStart: true, TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	col := newCollector()
	if err := old.Subscribe(ctx, "t", client.Plain, client.JSON, 1, col.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(Reload{TLSConfig: &tls.Config{Certificates: []tls.Certificate{two}}}); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{b.TLSAddr(), b.WSSAddr()} {
		if got := peerCert(t, addr, pool); got.SerialNumber.Int64() != 2 || got.Subject.CommonName != "two" {
			t.Errorf("%s serves %v %q after the reload", addr, got.SerialNumber, got.Subject.CommonName)
		}
	}
	if err := old.Publish(ctx, "t", []byte("still here"), client.PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if m := col.wait(t, 1)[0]; string(m.Payload) != "still here" {
		t.Errorf("got %q", m.Payload)
	}
	stillConnected(t, old, "the TLS client connected before the reload")
	// A reload without a TLS configuration keeps the current one.
	if err := b.Reload(Reload{}); err != nil {
		t.Fatal(err)
	}
	if got := peerCert(t, b.TLSAddr(), pool); got.SerialNumber.Int64() != 2 {
		t.Errorf("serves %v after a reload without TLS", got.SerialNumber)
	}
}

// TestReloadHistory: a history rule added by a reload keeps the changes
// made after it; those before it were not kept.
func TestReloadHistory(t *testing.T) {
	store, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: store})
	ctx := testCtx(t)
	c := mote(t, b, "c")
	pub := func(v int) {
		t.Helper()
		if err := c.Publish(ctx, "sensor/a", []byte(fmt.Sprint(v)), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	values := func() string {
		t.Helper()
		h, err := c.History(ctx, "sensor/#", client.JSON)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := h.Rows()
		if err != nil {
			t.Fatal(err)
		}
		var vs []string
		for _, p := range rows["sensor/a"] {
			vs = append(vs, fmt.Sprint(p.Value))
		}
		return strings.Join(vs, " ")
	}
	pub(1)
	pub(2)
	if got := values(); got != "2" {
		t.Fatalf("history without a rule: %q, want the current value only", got)
	}
	if err := b.Reload(Reload{History: []retain.HistoryRule{{Filter: "sensor/#", Keep: 10}}}); err != nil {
		t.Fatal(err)
	}
	pub(3)
	pub(4)
	if got := values(); got != "3 4" {
		t.Errorf("history after the rule came: %q, want 3 4", got)
	}
}

// poolOf is a pool trusting certs.
func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// genCert makes a self-signed certificate for 127.0.0.1 with a serial
// number and common name.
func genCert(t *testing.T, serial int64, name string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, leaf
}

// peerCert makes a TLS handshake with addr and returns the certificate it
// was shown.
func peerCert(t *testing.T, addr string, pool *x509.CertPool) *x509.Certificate {
	t.Helper()
	d := &net.Dialer{Timeout: testTimeout}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// BenchmarkReload: one Reload that swaps the ACL of a broker holding n
// tree subscriptions (one door session's): the time the message loop is
// held to give each its new read check, and the access decision as each
// publish and delivery makes it.
func BenchmarkReload(b *testing.B) {
	for _, n := range []int{0, 10_000} {
		b.Run(fmt.Sprint("subs=", n), func(b *testing.B) {
			br := start(b, Options{MaxSubscriptions: max(n, 1)})
			s := br.Open(Principal{User: "bob", ClientID: "bench"}, func(Delivery) {})
			defer s.Close()
			for i := range n {
				if err := s.Subscribe(fmt.Sprintf("$tree/house/%d/#", i), 0); err != nil {
					b.Fatal(err)
				}
			}
			reloads(b, br)
		})
	}
	// One filter, many sessions: the subscriptions of one group move
	// between its shared and private encodings at each reload.
	b.Run("subs=10000,one-filter", func(b *testing.B) {
		br := start(b, Options{})
		for i := range 10_000 {
			s := br.Open(Principal{User: "bob", ClientID: fmt.Sprint("bench", i)}, func(Delivery) {})
			defer s.Close()
			if err := s.Subscribe("$tree/house/#", 0); err != nil {
				b.Fatal(err)
			}
		}
		reloads(b, br)
	})
	b.Run("canRead", func(b *testing.B) {
		br := start(b, Options{ACL: parseACL(b, narrowACL)})
		p := Principal{User: "bob", ClientID: "bench"}
		for b.Loop() {
			br.access.canRead(p, "house/kitchen/temp")
		}
	})
}

// reloads reloads br in a loop, between no ACL and the narrow one: every
// tree subscription gets a read check, then loses it.
func reloads(b *testing.B, br *Broker) {
	acls := []*auth.ACL{nil, parseACL(b, narrowACL)}
	for i := 0; b.Loop(); i++ {
		if err := br.Reload(Reload{ACL: acls[i%2]}); err != nil {
			b.Fatal(err)
		}
	}
}
