package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
)

// TestGuessTable: a host is blocked at its limit-th failed guess within a
// window and until that window ends; other hosts are not; the table
// forgets hosts past its bound, the longest-known first.
func TestGuessTable(t *testing.T) {
	g := newGuesses(3, time.Minute)
	t0 := time.Unix(1000, 0)
	for i := range 2 {
		if g.fail("a", t0.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("blocked after %d guesses", i+1)
		}
	}
	if d := g.blocked("a", t0.Add(2*time.Second)); d != 0 {
		t.Fatalf("blocked %s after 2 guesses", d)
	}
	if !g.fail("a", t0.Add(3*time.Second)) {
		t.Fatal("the third guess did not block")
	}
	if d := g.blocked("a", t0.Add(10*time.Second)); d != 50*time.Second {
		t.Errorf("blocked for %s, want the rest of the window (50s)", d)
	}
	if d := g.blocked("b", t0.Add(10*time.Second)); d != 0 {
		t.Errorf("another host blocked for %s", d)
	}
	if d := g.blocked("a", t0.Add(time.Minute)); d != 0 {
		t.Errorf("still blocked for %s once the window ended", d)
	}
	// A new window starts over.
	if g.fail("a", t0.Add(61*time.Second)) || g.blocked("a", t0.Add(61*time.Second)) != 0 {
		t.Error("one guess in a new window blocked")
	}

	off := newGuesses(-1, time.Minute)
	for range 100 {
		off.fail("a", t0)
	}
	if off.blocked("a", t0) != 0 || off.len() != 0 {
		t.Error("a negative limit throttles")
	}

	// Bounded: a guess from each of many hosts keeps at most maxGuessHosts.
	g = newGuesses(3, time.Minute)
	for i := range maxGuessHosts + 5000 {
		g.fail(fmt.Sprintf("h%d", i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	if n := g.len(); n > maxGuessHosts {
		t.Errorf("%d hosts remembered, want at most %d", n, maxGuessHosts)
	}
	// The newest hosts are still there.
	last := fmt.Sprintf("h%d", maxGuessHosts+4999)
	g.fail(last, t0.Add(time.Hour/120))
	g.fail(last, t0.Add(time.Hour/120))
	if g.blocked(last, t0.Add(time.Hour/120)) == 0 {
		t.Error("the newest host was forgotten")
	}
}

func TestGuessHost(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:1234":              "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:1234": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:99":   "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:1":        "192.0.2.7",
		"[fe80::1%eth0]:1":            "fe80::/64", // a zone used to make each link-local address a host of its own
		"[fe80::2:3%2]:1":             "fe80::/64",
		"[::1]:7":                     "::/64",
		"pipe":                        "pipe",
	} {
		if got := guessHost(remote); got != want {
			t.Errorf("%s: %s, want %s", remote, got, want)
		}
	}
}

// connack3 sends an MQTT 3.1.1 CONNECT with a username and password and
// returns the CONNACK's return code.
func connack3(t *testing.T, addr, user, pw string) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	vh := append(str("MQTT"), 4, 0xC2, 0, 30) // level 4; username, password, clean session
	body := append(append(append(vh, str("g3")...), str(user)...), str(pw)...)
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("no CONNACK: %v", err)
	}
	return ack[3]
}

// TestGuessThrottleMQTT: after GuessLimit wrong passwords from a host, its
// CONNECTs are refused unchecked — MQTT 5 with 0x9F, MQTT 3.1.1 with
// 0x05 — even with the right password, and counted as connection_rate;
// connecting without a username (not a guess) does not count.
func TestGuessThrottleMQTT(t *testing.T) {
	b := start(t, Options{Users: users(t), GuessLimit: 3})
	dial := func(user, pw string) error {
		c, err := client.Dial(testCtx(t), b.TCPAddr(), client.Options{ClientID: "g-" + user, Username: user, Password: pw, CleanStart: true})
		if err == nil {
			c.Close()
		}
		return err
	}
	for range 5 { // anonymous, refused: not guesses
		if err := dial("", ""); err == nil || !strings.Contains(err.Error(), "0x86") {
			t.Fatalf("anonymous: %v, want 0x86", err)
		}
	}
	if err := dial("alice", "alice-pw"); err != nil {
		t.Fatalf("refused after anonymous attempts: %v", err)
	}
	for i := range 3 {
		if err := dial("alice", "wrong"); err == nil || !strings.Contains(err.Error(), "0x86") {
			t.Fatalf("guess %d: %v, want 0x86", i+1, err)
		}
	}
	if err := dial("alice", "alice-pw"); err == nil || !strings.Contains(err.Error(), "0x9f") {
		t.Errorf("the right password from a blocked host: %v, want 0x9f", err)
	}
	if rc := connack3(t, b.TCPAddr(), "alice", "alice-pw"); rc != 0x05 {
		t.Errorf("MQTT 3.1.1 from a blocked host: CONNACK 0x%02x, want 0x05", rc)
	}
	waitMetric(t, b, `mote_refusals_total{reason="bad_credentials"}`, 8)
	waitMetric(t, b, `mote_refusals_total{reason="connection_rate"}`, 2)

	// The HTTP front end's logins go through the same table.
	err := b.Authenticate("127.0.0.1:5555", "alice", "alice-pw", true)
	var te *ThrottleError
	if !errors.As(err, &te) || !errors.Is(err, ErrThrottled) || te.RetryAfter <= 0 || te.Host != "127.0.0.1" {
		t.Errorf("Authenticate from the blocked host: %v", err)
	}
	if err := b.Authenticate("192.0.2.1:5555", "alice", "alice-pw", true); err != nil {
		t.Errorf("Authenticate from another host: %v", err)
	}
	if err := b.Authenticate("192.0.2.1:5555", "alice", "nope", true); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("a wrong password: %v, want ErrBadCredentials", err)
	}
}

// TestOriginRule: the one origin rule of WebSockets and the HTTP API: the
// request's own scheme, host and port, or a listed origin; "null" never.
func TestOriginRule(t *testing.T) {
	b := start(t, Options{Users: users(t)})
	listed := start(t, Options{Users: users(t), AllowedOrigins: []string{"https://app.example:8443/", "http://Local.Example"}})
	anon := start(t, Options{})
	for _, tc := range []struct {
		b      *Broker
		host   string
		tls    bool
		origin string
		want   bool
	}{
		{b, "broker.example:1885", false, "", true},
		{b, "broker.example:1885", false, "http://broker.example:1885", true},
		{b, "broker.example:1885", false, "HTTP://BROKER.example:1885", true},
		{b, "broker.example:1885", false, "https://broker.example:1885", true}, // a TLS proxy in front
		{b, "broker.example:1885", false, "http://broker.example:8080", false}, // the same host, another port
		{b, "broker.example:1885", false, "http://broker.example", false},
		{b, "broker.example", false, "http://broker.example:80", true},
		{b, "broker.example", false, "http://broker.example", true},
		{b, "broker.example", false, "https://broker.example", true},
		{b, "broker.example:443", true, "https://broker.example", true},
		{b, "broker.example:443", true, "http://broker.example:443", false}, // plain page, TLS broker
		{b, "broker.example:8884", true, "https://broker.example:9000", false},
		{b, "broker.example:1885", false, "null", false},
		{b, "broker.example:1885", false, "http://evil.example:1885", false},
		{b, "broker.example:1885", false, "http://broker.example:1885/path", false},
		{b, "broker.example:1885", false, "ftp://broker.example:1885", false},
		{b, "broker.example:1885", false, "http://user@broker.example:1885", false},
		{listed, "broker.example:1885", false, "https://app.example:8443", true},
		{listed, "broker.example:1885", false, "http://local.example:80", true},
		{listed, "broker.example:1885", false, "http://app.example:8443", false}, // another scheme
		{listed, "broker.example:1885", false, "https://app.example", false},     // another port
		{listed, "broker.example:1885", false, "http://broker.example:1885", false},
		{anon, "127.0.0.1:1885", false, "http://127.0.0.1:1885", true},
		{anon, "localhost:1885", false, "http://localhost:1885", true},
		{anon, "127.0.0.1:1885", false, "http://127.0.0.1:8080", false},
		{anon, "rebind.example:1885", false, "http://rebind.example:1885", false},
		// Red team, round 15: forms of one origin, and near misses.
		{anon, "[::1]:1885", false, "http://[::1]:1885", true},
		{anon, "[::1]:1885", false, "http://[::1]:1886", false},
		{anon, "LOCALHOST:1885", false, "http://localhost:1885", true},
		{anon, "localhost.:1885", false, "http://localhost.:1885", false}, // not a loopback name as written
		{anon, "localhost:1885", false, "http://localhost.:1885", false},
		{anon, "127.0.0.1:1885", false, "http://127.0.0.1:1885.", false},
		{anon, "127.0.0.1", false, "http://127.0.0.1:80", true},
		{anon, "127.0.0.1:443", false, "https://127.0.0.1", false}, // plain HTTP on 443 is not https's default
		{anon, "127.0.0.1:1885", false, "http://127.0.0.1:1885 ", false},
		{anon, "127.0.0.1:1885", false, "http://127.0.0.1:1885, http://evil.example", false},
		{anon, "127.0.0.1:1885", false, "NULL", false},
		{anon, "127.0.0.1:1885", false, "file://", false},
		{anon, "127.0.0.1:1885", false, "http://127.0.0.1%2e:1885", false},
		{anon, "[::ffff:127.0.0.1]:1885", false, "http://[::ffff:127.0.0.1]:1885", true},
		{b, "broker.example:1885", false, "http://broker.example.:1885", false},
		{b, "[2001:db8::1]:1885", false, "http://[2001:DB8::1]:1885", true},
		{b, "broker.example:1885", false, "http://broker.example:1885?x", false},
		{b, "broker.example:1885", false, "http://broker.example:1885#x", false},
	} {
		r := httptest.NewRequest(http.MethodGet, "/api/tree/x", nil)
		r.Host = tc.host
		if tc.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if got := tc.b.OriginAllowed(r); got != tc.want {
			t.Errorf("Host %s (TLS %v), Origin %q: %v, want %v", tc.host, tc.tls, tc.origin, got, tc.want)
		}
	}
	if _, err := New(Options{AllowedOrigins: []string{"app.example"}}); err == nil {
		t.Error("an allowed origin without a scheme was taken")
	}
}

// BenchmarkGuesses: what the throttle adds to a login — a blocked check
// (every login) and, for a failure, a count — with the table full, from
// parallel logins of many hosts. A login's password hash (PBKDF2, ~1 ms
// at Mosquitto's default iterations) dwarfs it.
func BenchmarkGuesses(b *testing.B) {
	g := newGuesses(DefaultGuessLimit, DefaultGuessWindow)
	now := time.Now()
	hosts := make([]string, maxGuessHosts)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)
		g.fail(hosts[i], now)
	}
	b.Run("blocked", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				g.blocked(hosts[i%len(hosts)], now)
				i += 7919
			}
		})
	})
	b.Run("login-ok", func(b *testing.B) { // a right password: admitted, then done
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				h := "192.0.2." + strconv.Itoa(i&255)
				g.admit(h, true, now)
				g.done(h, false, now)
				i++
			}
		})
	})
	b.Run("fail", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				g.fail(hosts[i%len(hosts)], now)
				i += 7919
			}
		})
	})
	b.Run("authenticate", func(b *testing.B) { // the check it guards, for scale: a 10-iteration hash
		u := users(nil)
		b.ReportAllocs()
		for b.Loop() {
			u.Check("alice", "wrong")
		}
	})
}
