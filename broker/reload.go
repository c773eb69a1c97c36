package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
)

// Reload is the part of a running broker's configuration that changes
// without a restart (Broker.Reload): who may connect, what they may read
// and write, which rows keep history, the translators (SPEC §11) and the
// TLS certificate. The rest of Options needs a restart.
type Reload struct {
	// Users, ACL and AllowAnonymous replace Options' whole: nil Users is
	// no password file, nil ACL allows everything.
	Users          *auth.Users
	ACL            *auth.ACL
	AllowAnonymous bool
	// History replaces Options.Retain.History (nil: no rules). Without a
	// store it is checked, and otherwise unused as at start.
	History []retain.HistoryRule
	// Translators replaces Options.Translators (nil: none). Publishes
	// that pass the door after Reload returns follow them; a publish
	// already past it is translated by the rules it found there.
	Translators *translate.Set
	// TLSConfig, if not nil, replaces Options.TLSConfig for every TLS and
	// WSS handshake from then on; nil keeps the current one.
	TLSConfig *tls.Config
}

// ErrReload is a reload the broker refused: nothing of it was applied.
var ErrReload = errors.New("broker: reload refused")

// Reload applies a new configuration to the running broker, all or
// nothing: it checks every part first, and a refused reload (an error
// wrapping ErrReload) changes nothing. Call it once Start has returned;
// calls are serialised.
//
// No connection is closed or refused for it. The new access rules apply
// to every decision made from then on: publishes, subscriptions, wills as
// they fire, and every message each reader gets from then on — plain
// messages, retained replays, the snapshots, deltas, resumes and $hist
// answers of tree subscriptions (their read checks change on the message
// loop between two batches, so a delta is made wholly under the old rules
// or wholly under the new). Messages already queued to a client before it
// go out as they were made. A connected client keeps its connection even
// if its password changed or its user is gone: credentials are checked at
// CONNECT only, as a restart would, without cutting off anyone who
// authenticated; its rights are its username's under the new ACL.
//
// Listeners are never rebound. Adding a password file or anonymous access
// to a broker started with neither leaves its listeners on loopback until
// a restart (a warning says so); the reverse, on listeners bound beyond
// loopback, is refused: it would let anyone who reaches them in under any
// name. (The HTTP API is not one of the broker's listeners: it asks
// LocalOnly per request, and refuses other peers from then on.)
//
// History rules are refused without a store (Options.Store nil: mote
// broker --data off), which is where history is kept.
//
// New history rules apply to the row changes made from then on; stored
// values are pruned by them afterwards (retain.Retainer.SetHistory). A new
// TLS configuration serves the handshakes that follow; connections already
// up keep theirs.
//
// A resume (mote-since; an event stream's Last-Event-ID) from a revision
// up to the reload's is answered with a full snapshot: the copy it would
// complete was made under the old read rules.
func (b *Broker) Reload(r Reload) error {
	b.reloading.Lock()
	defer b.reloading.Unlock()
	if err := checkHistory(r.History); err != nil {
		return fmt.Errorf("%w: %w", ErrReload, err)
	}
	if len(r.History) > 0 && b.opts.Store == nil {
		return fmt.Errorf("%w: history rules need a store (SPEC §9), and the broker runs without one (--data off)", ErrReload)
	}
	if tc := r.TLSConfig; tc != nil && len(tc.Certificates) == 0 && tc.GetCertificate == nil && tc.GetConfigForClient == nil {
		return fmt.Errorf("%w: the TLS configuration has no certificate", ErrReload)
	}
	local := r.Users == nil && !r.AllowAnonymous
	if local && !b.startedLocal() && b.listensBeyondLoopback() {
		return fmt.Errorf("%w: without a password file or anonymous access the broker listens on loopback only, "+
			"and its listeners are bound beyond it: restart to apply this", ErrReload)
	}
	next := &access{users: r.Users, acl: r.ACL, anonymous: r.AllowAnonymous}
	swap := func() {
		b.access.store(next)
		b.tree.SetAllow(func(s *tree.Sub) func(string) bool { return next.readCheck(s.Data.(*treeSub).c.p) })
		// A copy that reflects a revision up to now was made under the old
		// read rules: resuming it would miss the rows they hid and keep
		// those the new ones hide. A full snapshot replaces it.
		b.resumeFloor = b.tree.Rev() + 1
	}
	if !b.started { // no loop yet (or Start failed): nothing else reads the tree
		swap()
	} else if !b.onLoop(b.stop, swap) {
		return fmt.Errorf("%w: %w", ErrReload, errShutdown)
	}
	if r.TLSConfig != nil {
		b.tlsConf.Store(r.TLSConfig)
	}
	b.trans.Store(r.Translators)
	if b.ret != nil {
		b.ret.SetHistory(r.History)
	}
	if !local && b.startedLocal() {
		b.log.Warn().Msg("reload: a password file or anonymous access is now set, but the listeners stay on loopback until a restart")
	}
	return nil
}

// serverTLS is the configuration the TLS and WSS listeners serve: every
// handshake takes the broker's current one (Reload swaps it), so new
// connections get a new certificate while those already up keep theirs.
func (b *Broker) serverTLS() *tls.Config {
	return &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := b.tlsConf.Load()
		if c.GetConfigForClient != nil { // the caller's own choice per client comes first
			if cc, err := c.GetConfigForClient(hello); cc != nil || err != nil {
				return cc, err
			}
		}
		return c, nil
	}}
}

// listensBeyondLoopback reports whether a listener is bound to an
// address other than loopback.
func (b *Broker) listensBeyondLoopback() bool {
	for _, a := range []string{b.TCPAddr(), b.WSAddr(), b.TLSAddr(), b.WSSAddr()} {
		if a == "" {
			continue
		}
		if host, _, err := net.SplitHostPort(a); err != nil || !isLoopbackName(host) {
			return true
		}
	}
	return false
}
