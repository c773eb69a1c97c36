package auth

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestPasswordsRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pw")
	u := NewUsers()
	if err := u.Set("alice", "s3cret", DefaultIterations); err != nil {
		t.Fatal(err)
	}
	u.Set("bob", "hunter2", 1000)
	if err := u.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	u2, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user, pw string
		ok       bool
	}{{"alice", "s3cret", true}, {"alice", "S3cret", false}, {"bob", "hunter2", true}, {"carol", "x", false}, {"alice", "", false}} {
		if got := u2.Check(c.user, c.pw); got != c.ok {
			t.Errorf("Check(%s, %s) = %v", c.user, c.pw, got)
		}
	}
	if !u2.Delete("bob") || u2.Delete("bob") || u2.Len() != 1 {
		t.Error("delete")
	}
}

func TestPasswordFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, text := range []string{"alice:plaintext\n", "nocolon\n", "a:$7$x$AAAA$AAAA\n", "a:$6$AAAA$short\n"} {
		p := filepath.Join(dir, "pw")
		os.WriteFile(p, []byte(text), 0o600)
		if _, err := LoadPasswords(p); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), p+":1") {
			t.Errorf("%q: %v", text, err)
		}
	}
}

// Hashes written by Debian's mosquitto_passwd (both algorithms) verify here.
func TestMosquittoPasswdWritesWeRead(t *testing.T) {
	mp, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mosquitto_passwd not installed")
		}
		t.Skip("mosquitto_passwd not installed")
	}
	path := filepath.Join(t.TempDir(), "pw")
	run := func(args ...string) {
		if out, err := exec.Command(mp, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd %v: %v %s", args, err, out)
		}
	}
	run("-c", "-b", path, "alice", "pbkdf2 pass")
	run("-H", "sha512", "-b", path, "bob", "old style")
	u, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Check("alice", "pbkdf2 pass") || !u.Check("bob", "old style") || u.Check("bob", "pbkdf2 pass") {
		t.Error("mosquitto_passwd hashes do not verify")
	}
}

func TestACL(t *testing.T) {
	a, err := ParseACL("acl", []byte(`
# anonymous clients
topic read public/#

user alice
topic readwrite house/#
topic deny house/secret/#
topic write cmd/+

user bob
topic read house/+/temp

pattern readwrite users/%u/#
pattern read clients/%c
`))
	if err != nil {
		t.Fatal(err)
	}
	if a.Len() != 7 {
		t.Errorf("Len %d, want 7 lines", a.Len())
	}
	alice, bob, anon := Client{"alice", "a1"}, Client{"bob", "b1"}, Client{"", "x"}
	for _, c := range []struct {
		c     Client
		write bool
		topic string
		ok    bool
	}{
		{anon, false, "public/news", true}, {anon, true, "public/news", false}, {anon, false, "house/x", false},
		{alice, false, "house/kitchen/temp", true}, {alice, true, "house/kitchen/temp", true},
		{alice, false, "house/secret/key", false}, {alice, true, "house/secret", false}, // "a/#" matches "a"
		{alice, false, "house/#", true}, // granted; house/secret/… is filtered per message
		{alice, false, "house/secret/+", false},
		{alice, false, "house/+/temp", true}, {alice, true, "cmd/go", true}, {alice, false, "cmd/go", false},
		{alice, false, "public/news", false}, // anonymous lines are not alice's
		{bob, false, "house/kitchen/temp", true}, {bob, false, "house/+/temp", true}, {bob, false, "house/#", false},
		{bob, true, "house/kitchen/temp", false},
		{bob, true, "users/bob/x", true}, {bob, true, "users/alice/x", false}, {anon, true, "users//x", false},
		{bob, false, "clients/b1", true}, {bob, false, "clients/a1", false},
		{Client{"evil/#", "c"}, false, "users/evil/x", false},
	} {
		got := false
		if c.write {
			got = a.CanWrite(c.c, c.topic)
		} else {
			got = a.CanRead(c.c, c.topic)
		}
		if got != c.ok {
			t.Errorf("%v write=%v %q = %v, want %v", c.c, c.write, c.topic, got, c.ok)
		}
	}
	for _, bad := range []string{"user\n", "frob x\n", "topic read a/#/b\n"} {
		if _, err := ParseACL("acl", []byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// TestPatternNames: a username or client id holding '/', '+' or '#' (or
// empty) makes granting pattern lines that use it not apply, and deny
// pattern lines that use it deny with '+' for its level; lines without
// placeholders apply to every client.
func TestPatternNames(t *testing.T) {
	a, err := ParseACL("acl", []byte(`
topic read home/#

user carol
topic readwrite #

user dave

user bad/u
topic readwrite #
user bad+
topic readwrite #
user bad#
topic readwrite #
user eve/x

pattern deny secret/#
pattern deny private/%c/#
pattern deny home/%u/locked
pattern deny mixed/%u/%c
pattern readwrite own/%u/#
pattern read clients/%c/+
`))
	if err != nil {
		t.Fatal(err)
	}
	type check struct {
		write bool
		topic string // or a subscription filter
		ok    bool
	}
	carolDenied := []check{ // carol may do anything but what a deny covers
		{false, "secret/plan", false}, {true, "secret/plan", false}, {false, "secret/#", false}, {false, "secret/+", false},
		{false, "#", true}, // overlaps the denies: granted, filtered per message
		{false, "private/carol/x", false}, {true, "private/c1/x", false}, {false, "private/+/x", false},
		{false, "private/#", true}, // overlaps private/+/#: granted, filtered per message
		{true, "home/carol/locked", false}, {false, "home/bob/open", true},
		{false, "public/x", true},
	}
	for _, c := range []struct {
		client Client
		checks []check
	}{
		{Client{"carol", "c1"}, []check{ // plain names: placeholders substituted
			{false, "secret/plan", false}, {true, "secret/plan", false},
			{false, "private/c1/x", false}, {false, "private/c2/x", true}, {false, "private/+/x", true},
			{false, "home/carol/locked", false}, {false, "home/bob/locked", true},
			{true, "mixed/carol/c1", false}, {true, "mixed/carol/c2", true}, {true, "mixed/bob/c1", true},
		}},
		{Client{"carol", "carol/x"}, append(carolDenied, check{true, "mixed/carol/any", false}, check{true, "mixed/bob/c1", true})},
		{Client{"carol", "carol+"}, append(carolDenied, check{true, "mixed/carol/any", false})},
		{Client{"carol", "carol#"}, append(carolDenied, check{true, "mixed/carol/any", false})},
		{Client{"carol", "#"}, append(carolDenied, check{false, "mixed/carol/+", false})},
		{Client{"dave", "d1"}, []check{ // granting patterns only
			{false, "clients/d1/a", true}, {false, "clients/d2/a", false},
			{true, "own/dave/x", true}, {false, "own/dave/#", true}, {true, "own/eve/x", false},
		}},
		{Client{"dave", "d/1"}, []check{{false, "clients/d/1/a", false}, {false, "clients/d/1", false}, {false, "clients/x/a", false}}},
		{Client{"dave", "d+"}, []check{{false, "clients/dx/a", false}, {false, "clients/+/a", false}}},
		{Client{"dave", "#"}, []check{{false, "clients/x/y", false}, {false, "clients/#", false}}},
		{Client{"dave", ""}, []check{{false, "clients//a", false}}},
		{Client{"eve/x", "e1"}, []check{{true, "own/eve/x/y", false}, {false, "own/eve/x/#", false}, {false, "clients/e1/a", true}}},
		{Client{"bad/u", "b1"}, []check{
			{false, "secret/plan", false}, {false, "home/x/locked", false}, {false, "home/bad/u/locked", false}, // its literal substitution too
			{false, "home/+/locked", false}, {false, "home/x/open", true}, {true, "mixed/any/b1", false}, {true, "mixed/any/b2", true},
		}},
		{Client{"bad+", "b1"}, []check{{false, "secret/x", false}, {false, "home/x/locked", false}, {true, "home/x/open", true}}},
		{Client{"bad#", "b1"}, []check{{false, "secret/x", false}, {false, "home/x/locked", false}, {true, "home/x/open", true}}},
		{Client{"", "anon"}, []check{ // anonymous: no username for %u
			{false, "home/x/open", true}, {false, "home/x/locked", false}, {false, "home/+/locked", false},
			{false, "secret/x", false}, {false, "clients/anon/a", true}, {true, "own//x", false},
		}},
	} {
		for _, ch := range c.checks {
			got := false
			if ch.write {
				got = a.CanWrite(c.client, ch.topic)
			} else {
				got = a.CanRead(c.client, ch.topic)
			}
			if got != ch.ok {
				t.Errorf("%+v write=%v %q = %v, want %v", c.client, ch.write, ch.topic, got, ch.ok)
			}
		}
	}
}

func TestCanSubscribe(t *testing.T) {
	a, err := ParseACL("acl", []byte(`
user alice
topic read home/a/#
topic deny home/a/secret/#
pattern read clients/%c/#
`))
	if err != nil {
		t.Fatal(err)
	}
	alice := Client{"alice", "a1"}
	for _, c := range []struct {
		filter string
		ok     bool
	}{
		{"home/a/#", true}, {"$share/g/home/a/#", true}, {"$share/g/home/a/x", true}, {"$share/g/home/a/+/t", true},
		{"$share/g/home/b/#", false}, {"$share/g/#", false}, {"$share/g/home/a/secret/#", false},
		{"$share/g/clients/a1/#", true}, {"$share/g/clients/b1/#", false},
		{"$share/g", false}, {"$share/g/", false}, {"$share//home/a/#", false}, {"$share/g+/home/a/#", false},
		{"$share/#/home/a/#", false}, {"$share/g/home/a/#/x", false},
		{"home/b/#", false}, {"$share", false},
	} {
		if got := a.CanSubscribe(alice, c.filter); got != c.ok {
			t.Errorf("CanSubscribe(%q) = %v, want %v", c.filter, got, c.ok)
		}
	}
}

// TestIterationBound: a "$7$" hash asking for more than MaxIterations is
// refused at load (naming file and line) and by Set.
func TestIterationBound(t *testing.T) {
	dir := t.TempDir()
	salt, sum := "a0J4xm2OlDxDAJN9", strings.Repeat("A", 86)+"=="
	for _, c := range []struct {
		iterations int
		ok         bool
	}{{1, true}, {DefaultIterations, true}, {MaxIterations, true}, {MaxIterations + 1, false}, {2_000_000_000, false}} {
		p := filepath.Join(dir, "pw")
		os.WriteFile(p, fmt.Appendf(nil, "# users\nalice:$7$%d$%s$%s\n", c.iterations, salt, sum), 0o600)
		_, err := LoadPasswords(p)
		if c.ok && err != nil {
			t.Errorf("%d iterations: %v", c.iterations, err)
		}
		if !c.ok && (!errors.Is(err, ErrFormat) || !errors.Is(err, ErrIterations) || !strings.Contains(err.Error(), p+":2")) {
			t.Errorf("%d iterations: %v, want an error naming %s:2", c.iterations, err, p)
		}
	}
	u := NewUsers()
	for _, n := range []int{0, -1, MaxIterations + 1} {
		if err := u.Set("alice", "pw", n); !errors.Is(err, ErrIterations) {
			t.Errorf("Set with %d iterations: %v", n, err)
		}
	}
	if u.Len() != 0 {
		t.Error("a refused Set added the user")
	}
}

// TestUnknownUserCost: Check on an unknown user verifies a hash of the
// same kind and cost as a default one (BenchmarkCheck shows the time).
func TestUnknownUserCost(t *testing.T) {
	u := NewUsers()
	if err := u.Set("alice", "pw", DefaultIterations); err != nil {
		t.Fatal(err)
	}
	s, known := u.hashOf("mallory")
	if known || s != dummyHash {
		t.Fatalf("hashOf(unknown) = %q, %v", s, known)
	}
	dummy, err := parseHash(s)
	if err != nil {
		t.Fatal(err)
	}
	real, _ := parseHash(u.hashes["alice"])
	if !dummy.pbkdf2 || dummy.iterations != real.iterations || len(dummy.salt) != len(real.salt) {
		t.Errorf("dummy hash %+v does not cost what %+v does", dummy, real)
	}
	if u.Check("mallory", "") || u.Check("mallory", "pw") {
		t.Error("an unknown user logged in")
	}
}

// BenchmarkCheck: a login's time for a known user, a wrong password and an
// unknown user (the last two must not differ from the first).
func BenchmarkCheck(b *testing.B) {
	u := NewUsers()
	if err := u.Set("alice", "s3cret", DefaultIterations); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ name, user, pw string }{
		{"known", "alice", "s3cret"}, {"wrong-password", "alice", "guess"}, {"unknown-user", "mallory", "guess"},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				u.Check(c.user, c.pw)
			}
		})
	}
}

// TestPatternDenyMultiLevelNames: a client id holding '/' or '+' spans
// levels when substituted; a deny pattern still denies its literal
// substitution (the red team wrote devices/a/b/config as id "a/b").
func TestPatternDenyMultiLevelNames(t *testing.T) {
	acl, err := ParseACL("acl", []byte("topic readwrite #\npattern deny devices/%c/config\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id, topic string
		denied    bool
	}{
		{"x", "devices/x/config", true},
		{"x", "devices/y/config", false},
		{"a/b", "devices/a/b/config", true},
		{"a/b", "devices/a/config", true}, // the '+' widening
		{"a/+", "devices/a/z/config", true},
		{"+", "devices/q/config", true},
		{"#", "devices/q/config", true},
		{"a/b", "other/a/b/config", false},
	} {
		c := Client{User: "", ID: tc.id}
		if got := !acl.CanWrite(c, tc.topic); got != tc.denied {
			t.Errorf("id %q writing %s: denied %v, want %v", tc.id, tc.topic, got, tc.denied)
		}
	}
}
