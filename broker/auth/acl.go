package auth

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

type access uint8

const (
	accRead access = 1 << iota
	accWrite
	accDeny
)

type rule struct {
	acc      access
	filter   string
	pattern  bool // a pattern line: %u / %c substituted per client
	user, id bool // the filter holds %u, %c
}

// ACL is a parsed Mosquitto ACL file.
type ACL struct {
	anonymous []rule
	users     map[string][]rule
	patterns  []rule
}

// LoadACL reads a Mosquitto ACL file.
func LoadACL(path string) (*ACL, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: ACL file: %w", err)
	}
	return ParseACL(path, b)
}

// ParseACL parses ACL text; name is used in errors.
func ParseACL(name string, text []byte) (*ACL, error) {
	a := &ACL{users: map[string][]rule{}}
	var user *string
	sc := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch word {
		case "user":
			if rest == "" {
				return nil, fmt.Errorf("%w: %s:%d: user without a name", ErrFormat, name, n)
			}
			u := rest
			user = &u
			continue
		case "topic", "pattern":
		default:
			return nil, fmt.Errorf("%w: %s:%d: %q: want user, topic or pattern", ErrFormat, name, n, word)
		}
		r := rule{acc: accRead | accWrite, pattern: word == "pattern"}
		if kind, f, ok := strings.Cut(rest, " "); ok {
			switch kind {
			case "read":
				r.acc, rest = accRead, strings.TrimSpace(f)
			case "write":
				r.acc, rest = accWrite, strings.TrimSpace(f)
			case "readwrite":
				rest = strings.TrimSpace(f)
			case "deny":
				r.acc, rest = accDeny, strings.TrimSpace(f)
			}
		}
		r.filter = rest
		r.user, r.id = r.pattern && strings.Contains(rest, "%u"), r.pattern && strings.Contains(rest, "%c")
		check := rest
		if r.pattern {
			check = strings.NewReplacer("%u", "u", "%c", "c").Replace(rest)
		}
		if err := wire.ValidateFilter(check); err != nil {
			return nil, fmt.Errorf("%w: %s:%d: %w", ErrFormat, name, n, err)
		}
		switch {
		case r.pattern:
			a.patterns = append(a.patterns, r)
		case user == nil:
			a.anonymous = append(a.anonymous, r)
		default:
			a.users[*user] = append(a.users[*user], r)
		}
	}
	return a, nil
}

// Len is the number of topic and pattern lines.
func (a *ACL) Len() int {
	n := len(a.anonymous) + len(a.patterns)
	for _, rules := range a.users {
		n += len(rules)
	}
	return n
}

// Client is who asks: username ("" for anonymous) and client id.
type Client struct {
	User, ID string
}

// CanWrite reports whether c may publish to topic.
func (a *ACL) CanWrite(c Client, topic string) bool { return a.allowed(c, topic, accWrite) }

// CanRead reports whether c may receive topic, or subscribe to a filter
// (allowed when a granting line covers the whole filter).
func (a *ACL) CanRead(c Client, topicOrFilter string) bool {
	return a.allowed(c, topicOrFilter, accRead)
}

// sharePrefix starts a shared subscription's filter (MQTT 5 §4.8.2).
const sharePrefix = "$share/"

// CanSubscribe reports whether c may subscribe to filter: CanRead, applied
// to the filter part of a shared subscription "$share/GROUP/FILTER". A
// malformed shared subscription (empty group, a group holding '+' or '#',
// no or an invalid filter) is refused.
func (a *ACL) CanSubscribe(c Client, filter string) bool {
	rest, shared := strings.CutPrefix(filter, sharePrefix)
	if !shared {
		return a.CanRead(c, filter)
	}
	group, f, ok := strings.Cut(rest, "/")
	if !ok || group == "" || strings.ContainsAny(group, "+#") || wire.ValidateFilter(f) != nil {
		return false
	}
	return a.CanRead(c, f)
}

func (a *ACL) allowed(c Client, topic string, want access) bool {
	granted := false
	visit := func(rules []rule) bool {
		for _, r := range rules {
			f, ok := r.filterFor(c)
			if !ok {
				continue
			}
			if r.acc&accDeny != 0 {
				// A deny refuses a topic it matches, or a subscription it
				// covers whole; a subscription it only overlaps is granted
				// and the denied topics are filtered out on delivery.
				if wire.Covers(f, topic) {
					return false
				}
				// With a name that is no plain level ('/' in it spans
				// levels), the line also denies its literal substitution.
				if lit, ok := r.literal(c); ok && wire.Covers(lit, topic) {
					return false
				}
				continue
			}
			if r.acc&want != 0 && wire.Covers(f, topic) {
				granted = true
			}
		}
		return true
	}
	own := a.anonymous
	if c.User != "" {
		own = a.users[c.User]
	}
	if !visit(own) || !visit(a.patterns) {
		return false
	}
	return granted
}

// plainName reports whether a username or client id can stand for a
// pattern's placeholder: not empty, and no '/', '+' or '#' that would
// change the filter's shape.
func plainName(s string) bool { return s != "" && !strings.ContainsAny(s, "/+#") }

// literal is a pattern line with c's names substituted as they are, when
// a name is no plain level and the result is a valid filter: "devices/%c"
// for client id "a/b" also stands for "devices/a/b".
func (r rule) literal(c Client) (string, bool) {
	if (!r.user || plainName(c.User)) && (!r.id || plainName(c.ID)) {
		return "", false
	}
	f := strings.NewReplacer("%u", c.User, "%c", c.ID).Replace(r.filter)
	return f, wire.ValidateFilter(f) == nil
}

// filterFor is the filter line r stands for for client c, and whether it
// applies. A placeholder whose name is not plainName makes an allowing
// line not apply, and a denying line deny with "+" for each level that
// holds such a placeholder.
func (r rule) filterFor(c Client) (string, bool) {
	if !r.user && !r.id {
		return r.filter, true
	}
	badUser, badID := r.user && !plainName(c.User), r.id && !plainName(c.ID)
	subst := strings.NewReplacer("%u", c.User, "%c", c.ID)
	if !badUser && !badID {
		return subst.Replace(r.filter), true
	}
	if r.acc&accDeny == 0 {
		return "", false
	}
	levels := strings.Split(r.filter, "/")
	for i, l := range levels {
		if (badUser && strings.Contains(l, "%u")) || (badID && strings.Contains(l, "%c")) {
			levels[i] = "+"
		} else {
			levels[i] = subst.Replace(l)
		}
	}
	return strings.Join(levels, "/"), true
}
