package broker

import (
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Password guessing. Every front end authenticates through Broker.login:
// a failed login that named a user (a guess) counts against the host it
// came from, and a host with GuessLimit guesses in the current
// GuessWindow is refused at once, without its password being checked,
// until the window ends — MQTT with CONNACK 0x9F (connection rate
// exceeded), HTTP with 429 and Retry-After. An IPv6 host counts twice:
// as its address, with GuessLimit, and as its /64, with guessNetFactor
// times as many — one machine may hold a whole /64 and use a new address
// for each guess, while on a LAN every machine shares one /64, and one
// misconfigured device retrying a wrong password must not lock the others
// out. Refused logins (guesses or not) count as bad_credentials in
// mote_refusals_total; refusals of a blocked host as connection_rate.

// Defaults of the guess throttle.
const (
	DefaultGuessLimit  = 10
	DefaultGuessWindow = time.Minute
	// maxGuessHosts bounds the hosts the throttle remembers (about 100
	// bytes each): past it, the longest-known host is forgotten.
	maxGuessHosts = 16_384
	guessShards   = 16
	// guessNetFactor is how many times GuessLimit an IPv6 /64 may make.
	guessNetFactor = 8
	// guessHostsPerShard is each shard's share of maxGuessHosts.
	guessHostsPerShard = maxGuessHosts / guessShards
)

// ErrBadCredentials is a login refused: the username or password is wrong,
// or there is none and the broker needs one.
var ErrBadCredentials = errors.New("broker: bad username or password")

// ErrThrottled is a login refused unchecked: its host made too many
// failed guesses (ThrottleError says until when).
var ErrThrottled = errors.New("broker: too many failed logins from this host")

// ThrottleError is a login refused because its host is blocked.
type ThrottleError struct {
	Host       string        // the host as counted: an address, or an IPv6 /64 ("2001:db8::/64")
	RetryAfter time.Duration // when the host may try again
}

func (e *ThrottleError) Error() string {
	return fmt.Sprintf("%v (%s): try again in %s", ErrThrottled, e.Host, e.RetryAfter.Round(time.Second))
}

// Unwrap makes errors.Is(err, ErrThrottled) hold.
func (e *ThrottleError) Unwrap() error { return ErrThrottled }

// guesses counts failed logins per host. It is sharded by host, each
// shard under its own lock, so a login takes one shard's lock for a map
// lookup and no lock is shared by every login.
//
// A guess is counted when its check begins (admit), not when it has
// failed: a host has at most limit − failures guesses being checked at
// once, and a further one waits for one of them to end (then, past the
// limit, it is refused unchecked). Counting only failures seen would let
// every guess in flight at once be checked: N connections, N guesses.
type guesses struct {
	limit  int // guesses per window; < 0: no throttle
	window time.Duration
	seed   maphash.Seed
	shards [guessShards]guessShard
}

// guessShard is one shard: mu guards hosts and every entry in it.
type guessShard struct {
	mu    sync.Mutex
	hosts map[string]*guessEntry
}

// guessEntry is one host's guesses in its current window, and those being
// checked now. An entry with neither is deleted.
type guessEntry struct {
	start   time.Time // the window's start: its first failed guess
	n       int       // failed guesses in the window
	pending int       // guesses being checked (admitted, not done)
	// wake, when not nil, is closed when a pending guess is done: logins
	// waiting for a place (admit) look again.
	wake chan struct{}
}

func newGuesses(limit int, window time.Duration) *guesses {
	return &guesses{limit: limit, window: window, seed: maphash.MakeSeed()}
}

// limitOf is the guesses key may make in a window: GuessLimit for an
// address, guessNetFactor times that for an IPv6 /64 (a key with '/').
func (g *guesses) limitOf(key string) int {
	if strings.Contains(key, "/") {
		return g.limit * guessNetFactor
	}
	return g.limit
}

func (g *guesses) shard(host string) *guessShard {
	return &g.shards[maphash.String(g.seed, host)%guessShards]
}

// blocked reports how long host must wait before its next login is
// checked; 0: it may try now.
func (g *guesses) blocked(host string, now time.Time) time.Duration {
	if g.limit < 0 {
		return 0
	}
	s := g.shard(host)
	s.mu.Lock()
	defer s.mu.Unlock()
	return g.blockedLocked(s, host, now)
}

// blockedLocked is blocked with s.mu held. A host whose window is over
// starts a new one.
func (g *guesses) blockedLocked(s *guessShard, host string, now time.Time) time.Duration {
	e := s.hosts[host]
	if e == nil || e.n == 0 {
		return 0
	}
	if left := e.start.Add(g.window).Sub(now); left > 0 {
		if e.n >= g.limitOf(host) {
			return left
		}
		return 0
	}
	e.n = 0 // its window is over
	if e.pending == 0 {
		delete(s.hosts, host)
	}
	return 0
}

// admit lets a login of host be checked now: it returns 0, and for a guess
// (a login naming a user) counts it as pending until done is called. A
// guess that would take the host past its limit with those pending waits
// until one of them is done. Otherwise it returns how long the host is
// blocked.
func (g *guesses) admit(host string, guess bool, now time.Time) time.Duration {
	if g.limit < 0 {
		return 0
	}
	s := g.shard(host)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if wait := g.blockedLocked(s, host, now); wait > 0 || !guess {
			return wait
		}
		e := s.hosts[host]
		if e == nil {
			if s.hosts == nil {
				s.hosts = map[string]*guessEntry{}
			}
			// No room is made for a login being checked (the shard holds
			// at most as many more as logins in progress, each for as
			// long as its check): a right password from a new host must
			// not make the table forget a blocked one, nor scan it. A
			// wrong one makes room (done), as a guess not admitted does
			// (failLocked).
			e = &guessEntry{}
			s.hosts[host] = e
		}
		if e.n+e.pending < g.limitOf(host) {
			e.pending++
			return 0
		}
		// As many guesses are being checked as the host has left: wait
		// for one (a password check, at most about half a second).
		if e.wake == nil {
			e.wake = make(chan struct{})
		}
		wake := e.wake
		s.mu.Unlock()
		<-wake
		s.mu.Lock()
		now = time.Now()
	}
}

// done ends a guess of host that admit let be checked; failed: it was
// wrong, and counts. It reports whether that guess blocked the host.
func (g *guesses) done(host string, failed bool, now time.Time) bool {
	if g.limit < 0 {
		return false
	}
	s := g.shard(host)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.hosts[host]
	if failed {
		// host's own entry is pending: it stays.
		s.makeRoomLocked(now, g.window, guessHostsPerShard)
	}
	if e != nil {
		e.pending = max(0, e.pending-1)
		if e.wake != nil {
			close(e.wake)
			e.wake = nil
		}
	}
	if !failed {
		if e != nil && e.n == 0 && e.pending == 0 {
			delete(s.hosts, host)
		}
		return false
	}
	return g.failLocked(s, e, host, now)
}

// fail counts a failed guess of host that was not admitted; it reports
// whether that guess blocked the host.
func (g *guesses) fail(host string, now time.Time) bool {
	if g.limit < 0 {
		return false
	}
	s := g.shard(host)
	s.mu.Lock()
	defer s.mu.Unlock()
	return g.failLocked(s, s.hosts[host], host, now)
}

// failLocked counts a failed guess of host, whose entry is e (nil: none
// yet). s.mu is held.
func (g *guesses) failLocked(s *guessShard, e *guessEntry, host string, now time.Time) bool {
	switch {
	case e == nil:
		if s.hosts == nil {
			s.hosts = map[string]*guessEntry{}
		}
		s.makeRoomLocked(now, g.window, guessHostsPerShard-1)
		e = &guessEntry{start: now}
		s.hosts[host] = e
	case e.n == 0 || now.Sub(e.start) >= g.window:
		e.start, e.n = now, 0
	}
	e.n++
	return e.n == g.limitOf(host)
}

// makeRoomLocked keeps at most keep hosts in the shard (its share of
// maxGuessHosts, less one before an entry is added): it forgets the hosts
// whose window is over, then, if that was not enough, the hosts whose
// window began first. Hosts with guesses being checked
// stay (there are at most as many as logins in progress). s.mu is held.
func (s *guessShard) makeRoomLocked(now time.Time, window time.Duration, keep int) {
	if len(s.hosts) <= keep {
		return
	}
	for h, e := range s.hosts {
		if e.pending == 0 && now.Sub(e.start) >= window {
			delete(s.hosts, h)
		}
	}
	for len(s.hosts) > keep {
		var oldest string
		var first time.Time
		for h, e := range s.hosts {
			if e.pending == 0 && (oldest == "" || e.start.Before(first)) {
				oldest, first = h, e.start
			}
		}
		if oldest == "" {
			return
		}
		delete(s.hosts, oldest)
	}
}

// len is the number of hosts remembered (for tests).
func (g *guesses) len() int {
	n := 0
	for i := range g.shards {
		s := &g.shards[i]
		s.mu.Lock()
		n += len(s.hosts)
		s.mu.Unlock()
	}
	return n
}

// guessHost is the host a remote address ("ip:port") counts as: its IP,
// an IPv4-mapped IPv6 address as IPv4, an IPv6 address as its /64 (one
// machine usually holds a whole /64), without its zone (a link-local
// peer's addresses are one host too, whatever interface it names).
func guessHost(remote string) string {
	host := hostOnly(remote)
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64) // cannot fail: an IPv6 address and 64 bits
	return p.String()
}

// guessKeys are the keys a remote address ("ip:port") counts under in
// the guess table: its address (an IPv4-mapped one as IPv4, without a
// zone), and for IPv6 its /64 too (guessHost).
func guessKeys(remote string) []string {
	host := hostOnly(remote)
	a, err := netip.ParseAddr(host)
	if err != nil {
		return []string{host}
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return []string{a.String()}
	}
	return []string{a.String(), guessHost(remote)}
}

// login authenticates a client from remote (its "ip:port") for any front
// end (MQTT CONNECT, HTTP Basic): the one place where credentials are
// checked, counted and throttled. It returns nil, ErrBadCredentials, or
// a *ThrottleError when remote's host (or its IPv6 /64) is blocked (its
// password then is not checked). Every refusal is counted in the
// metrics; the caller logs it with what it knows of the client.
func (b *Broker) login(remote, user string, password []byte, hasUser bool) error {
	keys := guessKeys(remote)
	guess := hasUser && user != ""
	for i, k := range keys {
		// The address first, then its /64: a login waiting for a place
		// of its /64 holds one of its address, never the other way
		// round, so none waits for another that waits for it.
		if wait := b.guesses.admit(k, guess, time.Now()); wait > 0 {
			if guess {
				for _, taken := range keys[:i] {
					b.guesses.done(taken, false, time.Now())
				}
			}
			b.countRefusal(refusedRate)
			return &ThrottleError{Host: k, RetryAfter: wait}
		}
	}
	ok := false
	if guess {
		defer func() { // also if the check panicked: the places are given back
			for _, k := range keys {
				if b.guesses.done(k, !ok, time.Now()) {
					b.log.Warn().Str("host", k).Int("guesses", b.guesses.limitOf(k)).Dur("window", b.guesses.window).
						Msg("too many failed logins: the host's logins are refused unchecked until its window ends")
				}
			}
		}()
	}
	if ok = b.access.authenticate(user, password, hasUser); ok {
		return nil
	}
	b.countRefusal(refusedBadCredentials)
	return ErrBadCredentials
}
