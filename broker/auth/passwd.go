// Package auth reads and writes Mosquitto's password and ACL files, so a
// Mosquitto user moves to Mote with their files unchanged.
//
// Password file: one "user:hash" per line; hashes "$7$iterations$salt$hash"
// (PBKDF2-HMAC-SHA512, Mosquitto 2's default) or "$6$salt$hash" (one
// SHA-512 of password then salt, older Mosquitto), salt and hash in base64.
// Plain-text passwords are refused, and so are iteration counts above
// MaxIterations (a file that would make every login burn a core for
// minutes). Users.Check verifies a dummy "$7$" hash for an unknown user, so
// the time a login takes does not tell whether the user exists.
//
// ACL file: "user NAME", "topic [read|write|readwrite|deny] FILTER" (for the
// preceding user, or anonymous clients before any user line) and
// "pattern [read|write|readwrite|deny] FILTER" (every client; %u and %c
// stand for its username and client id). Nothing is allowed that no line
// grants; deny wins.
//
// A username or client id that is empty or holds '/', '+' or '#' would
// change the shape of a filter it is put into. For such a client, a
// pattern line that uses that placeholder is handled conservatively: a
// granting line (read, write, readwrite) does not apply, as in Mosquitto;
// a deny line denies with '+' in place of every level that holds the
// placeholder, so it denies at least what it denies any client with a
// plain name, and also its literal substitution when that is a valid filter
// (client id "a/b" is denied "devices/a/b/config" by "pattern deny
// devices/%c/config", and "a/+" every "devices/a/…/config"): choosing a
// name cannot escape a deny. (A '+', like any, does not match a first level
// starting with '$'.) A placeholder with a
// plain name is substituted, and pattern lines without placeholders apply
// to every client alike.
//
// A shared subscription "$share/GROUP/FILTER" is checked as FILTER
// (ACL.CanSubscribe).
package auth

import (
	"bufio"
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// DefaultIterations is Mosquitto's PBKDF2 iteration count for "$7$" hashes.
const DefaultIterations = 101

// MaxIterations is the most PBKDF2 iterations a "$7$" hash may ask for.
// It is about five times OWASP's 2023 advice for PBKDF2-HMAC-SHA512
// (210,000), so any sensible setting fits, and bounds a login's cost to
// about half a second of one core (0.45 s measured on an EPYC), where
// "$7$2000000000$…" takes some 15 minutes.
const MaxIterations = 1_000_000

// dummyHash is verified when Check is asked about an unknown user: the
// same cost as a hash Set writes with DefaultIterations (12-byte salt). Its
// sum is random bytes, and Check refuses an unknown user whatever it
// computes.
const dummyHash = "$7$101$a0J4xm2OlDxDAJN9$xjihMGe6/qkj3JVgsStWbz7sB3ZgkdBPBxXMV4Z9JQZxILvFctxhOrnebAsN0d3IwXnq4MEOOS5T1PHRf/Aufg=="

// Users are the entries of a password file.
type Users struct {
	hashes map[string]string
	order  []string // file order, kept when writing back
}

// ErrFormat is a password or ACL file line that does not parse.
var ErrFormat = errors.New("auth: bad line")

// ErrIterations is a PBKDF2 iteration count below 1 or above MaxIterations.
var ErrIterations = errors.New("auth: PBKDF2 iteration count out of range")

// LoadPasswords reads a Mosquitto password file.
func LoadPasswords(path string) (*Users, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: password file: %w", err)
	}
	u := &Users{hashes: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("%w: %s:%d: want user:hash", ErrFormat, path, n)
		}
		if _, err := parseHash(hash); err != nil {
			return nil, fmt.Errorf("%w: %s:%d: user %q: %w", ErrFormat, path, n, name, err)
		}
		if _, dup := u.hashes[name]; !dup {
			u.order = append(u.order, name)
		}
		u.hashes[name] = hash
	}
	return u, nil
}

// NewUsers is an empty password set.
func NewUsers() *Users { return &Users{hashes: map[string]string{}} }

type hash struct {
	pbkdf2     bool
	iterations int
	salt, sum  []byte
}

func parseHash(s string) (hash, error) {
	parts := strings.Split(s, "$")
	var h hash
	var salt, sum string
	switch {
	case len(parts) == 4 && parts[0] == "" && parts[1] == "6":
		salt, sum = parts[2], parts[3]
	case len(parts) == 5 && parts[0] == "" && parts[1] == "7":
		n, err := strconv.Atoi(parts[2])
		if err != nil || n < 1 {
			return h, fmt.Errorf("bad iteration count %q", parts[2])
		}
		if err := checkIterations(n); err != nil {
			return h, err
		}
		h.pbkdf2, h.iterations = true, n
		salt, sum = parts[3], parts[4]
	default:
		return h, errors.New(`not a "$6$" or "$7$" hash (plain-text passwords are refused)`)
	}
	var err error
	if h.salt, err = base64.StdEncoding.DecodeString(salt); err != nil {
		return h, fmt.Errorf("salt: %w", err)
	}
	if h.sum, err = base64.StdEncoding.DecodeString(sum); err != nil || len(h.sum) != sha512.Size {
		return h, fmt.Errorf("hash: not 64 bytes of base64")
	}
	return h, nil
}

func (h hash) compute(password string) []byte {
	if h.pbkdf2 {
		k, _ := pbkdf2.Key(sha512.New, password, h.salt, h.iterations, sha512.Size)
		return k
	}
	d := sha512.New()
	d.Write([]byte(password))
	d.Write(h.salt)
	return d.Sum(nil)
}

// checkIterations refuses an iteration count outside 1 to MaxIterations.
func checkIterations(n int) error {
	if n < 1 || n > MaxIterations {
		return fmt.Errorf("%w: %d, want 1 to %d", ErrIterations, n, MaxIterations)
	}
	return nil
}

// hashOf is user's stored hash, or dummyHash for an unknown user.
func (u *Users) hashOf(user string) (s string, known bool) {
	if s, ok := u.hashes[user]; ok {
		return s, true
	}
	return dummyHash, false
}

// Check reports whether password is user's. An unknown user costs as much
// as one with a default "$7$" hash, and the comparison is constant-time.
func (u *Users) Check(user, password string) bool {
	s, known := u.hashOf(user)
	h, err := parseHash(s)
	if err != nil {
		return false
	}
	match := subtle.ConstantTimeCompare(h.compute(password), h.sum) == 1
	return match && known
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.hashes) }

// Set sets user's password, hashed "$7$" with iterations (1 to
// MaxIterations, else an error wrapping ErrIterations) and a fresh salt.
func (u *Users) Set(user, password string, iterations int) error {
	if user == "" || strings.ContainsAny(user, ":\n\r") {
		return fmt.Errorf("auth: user name %q: empty, or holds ':' or a newline", user)
	}
	if err := checkIterations(iterations); err != nil {
		return fmt.Errorf("auth: user %q: %w", user, err)
	}
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		return fmt.Errorf("auth: salt: %w", err)
	}
	h := hash{pbkdf2: true, iterations: iterations, salt: salt}
	s := fmt.Sprintf("$7$%d$%s$%s", iterations, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(h.compute(password)))
	if _, ok := u.hashes[user]; !ok {
		u.order = append(u.order, user)
	}
	u.hashes[user] = s
	return nil
}

// Delete removes user and reports whether it was there.
func (u *Users) Delete(user string) bool {
	if _, ok := u.hashes[user]; !ok {
		return false
	}
	delete(u.hashes, user)
	u.order = slices.DeleteFunc(u.order, func(n string) bool { return n == user })
	return true
}

// Save writes the file (mode 0600), atomically.
func (u *Users) Save(path string) error {
	var b strings.Builder
	for _, name := range u.order {
		fmt.Fprintf(&b, "%s:%s\n", name, u.hashes[name])
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	return nil
}
