// Package auth reads and writes Mosquitto's password and ACL files, so a
// Mosquitto user moves to Mote with their files unchanged.
//
// Password file: one "user:hash" per line; hashes "$7$iterations$salt$hash"
// (PBKDF2-HMAC-SHA512, Mosquitto 2's default) or "$6$salt$hash" (one
// SHA-512 of password then salt, older Mosquitto), salt and hash in base64.
// Plain-text passwords are refused.
//
// ACL file: "user NAME", "topic [read|write|readwrite|deny] FILTER" (for the
// preceding user, or anonymous clients before any user line) and
// "pattern [read|write|readwrite|deny] FILTER" (every client; %u and %c
// stand for its username and client id). Nothing is allowed that no line
// grants; deny wins.
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

// Users are the entries of a password file.
type Users struct {
	hashes map[string]string
	order  []string // file order, kept when writing back
}

// ErrFormat is a password or ACL file line that does not parse.
var ErrFormat = errors.New("auth: bad line")

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

// Check reports whether password is user's.
func (u *Users) Check(user, password string) bool {
	s, ok := u.hashes[user]
	if !ok {
		return false
	}
	h, err := parseHash(s)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(h.compute(password), h.sum) == 1
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.hashes) }

// Set sets user's password, hashed "$7$" with iterations and a fresh salt.
func (u *Users) Set(user, password string, iterations int) error {
	if user == "" || strings.ContainsAny(user, ":\n\r") {
		return fmt.Errorf("auth: user name %q: empty, or holds ':' or a newline", user)
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
