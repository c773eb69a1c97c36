package auth

import (
	"errors"
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
