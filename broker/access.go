package broker

import (
	"strings"
	"sync/atomic"

	"github.com/mote-mqtt/mote/broker/auth"
)

// Principal is who acts through the broker's door: the user and client id
// that every access decision is made for.
type Principal struct {
	User     string // username; "" for anonymous
	ClientID string // the MQTT client id, or what a front end names itself ("http")
	// Answered is set by a front end that gives every refusal back to its
	// caller (HTTP answers with the reason): no report is published on
	// $SYS/mote/errors/<ClientID>, where an MQTT client choosing the same
	// id would read the reports of every caller.
	Answered bool
	system   bool // the broker itself: reports, $SYS; never refused
	mqtt     bool // an MQTT client's (mqttPrincipal): its client id is its publishes' origin (origin)
	original bool // a client of the original dialect's listener: its publishes are read in that dialect (original.go)
	// logs is the log slot (quota) of the principal's connection (logBudget);
	// nil for requests without one (HTTP, the broker's own).
	logs *logSlot
}

// origin is whose publishes p's are for No Local [MQTT-3.8.3-3]: an MQTT
// client's own client id, "" for everyone else. A front end's name (the
// HTTP API's "http") or the broker's ("$mote") is not an MQTT client's: an
// MQTT client that chose that id as its own would otherwise miss those
// publishes on a No Local subscription.
func (p Principal) origin() string {
	if p.mqtt {
		return p.ClientID
	}
	return ""
}

// systemPrincipal is the broker's own.
var systemPrincipal = Principal{ClientID: "$mote", system: true}

// access is the one boundary where the broker decides who may connect and
// what they may read and write: the password file, anonymous access, the
// ACL file, and the broker's own rules around them. Every front end
// reaches it through the door; nothing else reads the files. A value is
// never changed once made: Broker.Reload makes a new one and swaps it in
// whole (accessRef).
type access struct {
	users     *auth.Users // nil: nobody is authenticated
	acl       *auth.ACL   // nil: everything is allowed
	anonymous bool        // clients without a username may connect
}

// accessRef is the broker's current access rules. Every decision loads
// them once, with one atomic load and no lock, so a decision never mixes
// old and new rules; Broker.Reload stores new ones (on the message loop,
// between two batches, where it also hands the tree subscriptions their
// new read checks). Its methods are access's, on the rules current when
// called; readCheck and writeCheck keep the rules they were made with.
type accessRef struct{ p atomic.Pointer[access] }

func (r *accessRef) load() *access   { return r.p.Load() }
func (r *accessRef) store(a *access) { r.p.Store(a) }

func (r *accessRef) authenticate(user string, password []byte, hasUser bool) bool {
	return r.load().authenticate(user, password, hasUser)
}
func (r *accessRef) canWrite(p Principal, topic string) bool { return r.load().canWrite(p, topic) }
func (r *accessRef) canRead(p Principal, topic string) bool  { return r.load().canRead(p, topic) }
func (r *accessRef) canSubscribe(p Principal, filter string) bool {
	return r.load().canSubscribe(p, filter)
}
func (r *accessRef) readCheck(p Principal) func(string) bool  { return r.load().readCheck(p) }
func (r *accessRef) writeCheck(p Principal) func(string) bool { return r.load().writeCheck(p) }

// authenticate checks a username and password against the password file;
// a client without a username needs anonymous access. Without a password
// file nobody is authenticated: a username is taken as given (the broker
// then listens on loopback only, unless anonymous access is allowed).
func (a *access) authenticate(user string, password []byte, hasUser bool) bool {
	switch {
	case a.users == nil:
		return true
	case !hasUser || user == "":
		return a.anonymous
	}
	return a.users.Check(user, string(password))
}

func (a *access) client(p Principal) auth.Client { return auth.Client{User: p.User, ID: p.ClientID} }

// canWrite reports whether p may publish to a topic (a row topic).
func (a *access) canWrite(p Principal, topic string) bool {
	if p.system || a.acl == nil {
		return true
	}
	return a.acl.CanWrite(a.client(p), topic)
}

// canRead reports whether p may receive a topic. A client's error reports
// are readable by that client only, whatever the ACL says (and by the other
// clients of its user: Broker.readsUsersReport).
func (a *access) canRead(p Principal, topic string) bool {
	if p.system {
		return true
	}
	if rest, ok := strings.CutPrefix(topic, ErrorTopic); ok {
		return rest == errorTopicID(p.ClientID)
	}
	if a.acl == nil {
		return true
	}
	return a.acl.CanRead(a.client(p), topic)
}

// canSubscribe reports whether p may subscribe to a plain filter. A
// filter reaching into the error reports is let through: each report is
// checked on delivery (canRead), so only the client's own arrive.
func (a *access) canSubscribe(p Principal, filter string) bool {
	if p.system {
		return true
	}
	f := filter
	if group, rest, ok := cutShare(filter); ok {
		if group == "" {
			return false
		}
		f = rest
	}
	if strings.HasPrefix(f, ErrorTopic) || f == "$SYS/mote/errors" {
		return true
	}
	if a.acl == nil {
		return true
	}
	return a.acl.CanRead(a.client(p), f)
}

// readCheck is p's per-row read check for the tree core, nil when
// everything is readable.
func (a *access) readCheck(p Principal) func(string) bool {
	if p.system || a.acl == nil {
		return nil
	}
	c := a.client(p)
	return func(topic string) bool { return a.acl.CanRead(c, topic) }
}

// writeCheck is p's per-row write check for the tree core, nil when
// everything is writable.
func (a *access) writeCheck(p Principal) func(string) bool {
	if p.system || a.acl == nil {
		return nil
	}
	c := a.client(p)
	return func(topic string) bool { return a.acl.CanWrite(c, topic) }
}

// cutShare splits a shared subscription filter $share/<group>/<filter>.
func cutShare(filter string) (group, rest string, ok bool) {
	after, found := strings.CutPrefix(filter, "$share/")
	if !found {
		return "", "", false
	}
	group, rest, _ = strings.Cut(after, "/")
	return group, rest, true
}

// errorTopicID is a client id as the last part of its error topic: '%',
// '+' and '#' percent-encoded, so every id has a valid topic of its own.
func errorTopicID(id string) string {
	if !strings.ContainsAny(id, "%+#") {
		return id
	}
	return strings.NewReplacer("%", "%25", "+", "%2B", "#", "%23").Replace(id)
}
