package broker

import (
	"crypto/tls"
	"net"
	"net/http"
	"strings"
)

// What front ends that are not MQTT (the HTTP API) need of the broker to
// apply MQTT's rules for who may connect: the password file, anonymous
// access, loopback-only binding and the web origin check.

// Authenticate checks a username and password as a CONNECT's are checked,
// through the same code (login): against the password file; without a
// username (hasUser false or user empty) the client needs anonymous
// access. Without a password file every client passes and a username is
// taken as given (the broker then serves loopback only, unless anonymous
// access is allowed: LocalOnly). remote is the client's address
// ("ip:port"): a host that made Options.GuessLimit failed guesses in
// GuessWindow is refused unchecked with a *ThrottleError (errors.Is
// ErrThrottled) until the window ends. Other refusals are
// ErrBadCredentials. Every refusal is counted in the metrics; the caller
// logs it.
func (b *Broker) Authenticate(remote, user, password string, hasUser bool) error {
	return b.login(remote, user, []byte(password), hasUser)
}

// ClientHost is the host a client at remote ("ip:port") counts as, for
// every limit kept per host (the guess throttle; the HTTP API's event
// streams): its IP address, an IPv4-mapped IPv6 address as IPv4, an
// IPv6 address as its /64 (one machine usually holds a whole /64, so its
// addresses are one host), e.g. "2001:db8:1:2::/64".
func ClientHost(remote string) string { return guessHost(remote) }

// HasUsers reports whether the broker authenticates users: a password
// file is in force under the access rules of the moment (a Reload may
// add or drop it).
func (b *Broker) HasUsers() bool { return b.access.load().users != nil }

// LocalOnly reports whether the broker serves loopback clients only: no
// password file and no anonymous access, under the access rules of the
// moment (a Reload may drop the password file). Its listeners then bind
// to loopback (LoopbackAddr), as every front end's must, and a front end
// whose listener is bound beyond it must refuse other peers per request.
func (b *Broker) LocalOnly() bool { return b.anonymousLocal() }

// LoopbackAddr is addr ("host:port") bound to loopback: its host replaced
// by 127.0.0.1 unless it is already a loopback address or localhost. An
// address without a port is returned as is (binding it fails).
func LoopbackAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || isLoopbackName(host) {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// OriginAllowed decides whether a web page may act on the broker through
// request r, as for a WebSocket (Options.AllowedOrigins): a request without
// an Origin header is not from a page and passes.
func (b *Broker) OriginAllowed(r *http.Request) bool { return b.originAllowed(r) }

// MaxPayload is the largest publish payload the broker takes from any
// client: the smaller of the maximum packet size and the tree payload
// limit.
func (b *Broker) MaxPayload() int {
	return min(int(b.opts.MaxPacketSize), b.opts.Limits.MaxPayload)
}

// HostAllowed decides whether a request r that proves no user may be
// served under the name it sent as Host. proven: r's credentials were
// checked against a password file (a user's own browser holds them for
// the broker's origin only, never for another name's). With anonymous
// access, a web page whose own host name an attacker points at the
// broker's address (DNS rebinding) is the broker's own origin to the
// browser, and its requests carry no Origin header when they only read:
// they would read what anonymous clients may. So a browser's request
// that proves no user must name the broker by an IP address, a loopback
// name, or a host of Options.AllowedOrigins ("*": any), the names its
// operator vouches for. A browser's request is one with an Origin, a
// Fetch Metadata header (Sec-Fetch-Site, Sec-Fetch-Mode) or a browser's
// User-Agent (fromBrowser); programs send none of them and pass under
// any name, as MQTT clients do. A broker serving loopback only is
// stricter (LocalOnly).
func (b *Broker) HostAllowed(r *http.Request, proven bool) bool {
	if proven || !fromBrowser(r) {
		return true
	}
	host := strings.TrimSuffix(hostOnly(r.Host), ".")
	if isLoopbackName(host) || net.ParseIP(host) != nil {
		return true
	}
	for _, o := range b.opts.AllowedOrigins {
		if o == "*" {
			return true
		}
		if _, hp, ok := parseOrigin(strings.TrimSuffix(o, "/")); ok && strings.EqualFold(hostOnly(hp), host) {
			return true
		}
	}
	return false
}

// ServerTLS is the TLS configuration the broker's TLS and WSS listeners
// serve, for another front end's listener (the HTTP API over HTTPS): every
// handshake takes the broker's current certificate, which Reload
// replaces. Nil when the broker has no TLS configuration.
func (b *Broker) ServerTLS() *tls.Config {
	if b.tlsConf.Load() == nil {
		return nil
	}
	return b.serverTLS()
}

// fromBrowser reports whether r comes from a web browser, which a page
// may drive: it has an Origin header, a Fetch Metadata header, or a
// User-Agent that begins "Mozilla/" (every browser's does). Fetch
// Metadata alone does not do: browsers send it only to potentially
// trustworthy URLs (https, localhost), so Chromium's requests to a
// rebound http:// name carry no Sec-Fetch-* header, and a read carries no
// Origin either; its User-Agent a page cannot replace (Chromium ignores
// one set by fetch; Firefox, which lets a page set it, is recorded by the
// web-platform-tests as sending Fetch Metadata to http URLs too). A
// program that calls itself Mozilla/… is taken for a browser: it names
// the broker by address or logs in.
func fromBrowser(r *http.Request) bool {
	h := r.Header
	return h.Get("Origin") != "" || h.Get("Sec-Fetch-Site") != "" || h.Get("Sec-Fetch-Mode") != "" ||
		strings.HasPrefix(h.Get("User-Agent"), "Mozilla/")
}
