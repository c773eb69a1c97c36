// Package httpapi is the HTTP API of a Mote broker (SPEC §10): the rows of
// the broker's store as trees, read, written and streamed over HTTP, with
// the same users, ACLs and limits as MQTT. It is a thin front end over the
// broker's door: every request acts as a broker.Principal (the HTTP Basic
// user, client id "http") through Broker.Tree, Broker.Publish and broker
// Sessions, so the broker makes every check an MQTT client's request gets.
//
//	GET    /api/tree/F         the tree of a $sync/F snapshot (JSON, or CBOR or MessagePack by Accept), header Mote-Rev
//	GET    /api/tree/F?history=1&from=&to=&limit=   the $hist/F answer (SPEC §9)
//	GET    /api/tree/F         with Accept: text/event-stream: snapshot, then deltas, as Server-Sent Events
//	PUT    /api/tree/T         a retained $tree/T publish at QoS 1 (?replace=1: $tree.replace/T; CBOR body: $tree.cbor/T; MessagePack: $tree.msgpack/T)
//	DELETE /api/tree/T         $tree.replace/T with {}
//	POST   /api/set/F          $set/F with the body as the payload
//	GET    /metrics, /healthz  Options.Metrics, Options.Health
//	GET    /…                  Options.Web, the web view
//
// F and T are MQTT filters and topics, each level path-escaped on its own
// ('#' as %23). Errors are answered with a JSON body {"error": reason,
// "code": "0x87"}, the code being the MQTT 5 reason code when the broker
// refused. A write applied whose translation the broker refused
// (broker.TranslationRefused) is answered 204 with the refusal in the
// header Mote-Refused. A write the ACL forbids is answered 403 for a
// user, 401 with the Basic challenge for an anonymous caller (logging in
// may help).
//
// # Access
//
// Credentials are checked as a CONNECT's, by the same code
// (Broker.Authenticate): counted in the metrics, and throttled per host in
// one table with MQTT's — a host that made Options.GuessLimit failed
// guesses (default 10 a minute) is answered 429 with Retry-After, its
// password unchecked, until its window ends. Without credentials a request
// is anonymous, which needs anonymous access when there is a password
// file. Without a password file and without anonymous access the broker
// serves loopback only (Broker.LocalOnly): Listen binds to loopback, Serve
// refuses any other listener, and requests from other peers or under a
// Host that is not a loopback name (DNS rebinding) are refused. With
// anonymous access, a browser's request that proves no user is refused
// under a Host that is not an IP address, a loopback name or a host of
// allowed_origins (Broker.HostAllowed: a rebound page's reads). A request
// with an Origin header must pass the broker's origin check
// (Broker.OriginAllowed: the request's own scheme, host and port, or an
// allowed origin), as a WebSocket must, so a page of another site — or of
// another port of the same host — cannot write rows with the user's
// browser. GET /metrics takes the API's credentials (no ACL); /healthz
// none.
//
// Every answer carries X-Content-Type-Options: nosniff, and every answer
// under /api Cache-Control: no-store: it depends on the caller's
// credentials and rights, and no cache may hand it to another caller.
// One caller (a user of the password file; otherwise a remote host) has
// at most MaxStreamsPerUser event streams open (429 past it), so one
// cannot take all MaxStreams.
// The GET answers being built and written, and the events of 64 KiB or
// more of event streams (bigEvent), hold at most MaxAnswerBytes in all
// (answerBudget; 503 past it, or an "error" event that ends the stream),
// so slow readers of large trees cannot hold a copy each without end. A
// GET's answer counts by its estimate (Broker.AnswerSize) before it is
// built, so a refused one costs a walk of its rows, not a tree; small
// answers (smallAnswer) are built in slots of their own. An event
// stream's snapshot is estimated so too, before the broker makes it. Its
// events wait in a queue of its own, bounded by MaxStreamBacklog (then
// its session waits, the broker folding its deltas), and all streams'
// together by MaxStreamsBacklog: a client that makes no room within
// StreamStall, or an event past the total, has fallen behind and its
// stream ends, with an "error" event, a log line and
// mote_http_streams_behind_total.
// Serve keeps the connections within MaxConns, and MaxConnsPerHost per
// remote host (not loopback): one past either is closed once accepted
// (connLimit), so idle or slowly-sent connections cannot take memory
// without end.
//
// # Concurrency
//
// The Server owns its http.Server, the count of open event streams (and,
// under callersMu, the count per caller), the count of connections over
// all its listeners (connCount, under its mu), the bytes of answers being written
// (answerBudget, under its mu), and
// a semaphore that lets a few GETs at a time have their tree made on the
// message loop (publishes never queue behind many).
// Each request runs on net/http's goroutine for it, which owns the
// ResponseWriter. An event stream or a history query owns one broker
// Session, which it closes before it returns. A history query's session
// writer hands its message over an unbuffered channel to the request's
// goroutine. An event stream's session writer formats each event and
// queues it (streamState.deliver, under the stream's mutex), never
// waiting for the client; the request's goroutine writes the headers,
// the queued events and the keep-alive comments, each write bounded by a
// deadline, so the ResponseWriter has one writer. Ending a stream (a
// client behind, a gap, a panic) drops its queue, gives its bytes back
// and moves the connection's write deadline to now, which cuts a write
// under way. Close
// ends every stream, then shuts the http.Server down.
//
// # Caveats
//
// Serve speaks plain HTTP: Basic credentials cross the network in the
// clear unless ServeTLS or a TLS proxy is in front. With anonymous
// access, a DNS-rebound page's GET carries no Origin, and over plain HTTP
// no Fetch Metadata either: it is known by its browser's User-Agent
// (Broker.HostAllowed), which a browser that lets a page replace it and
// sends no Fetch Metadata over http would defeat. One slow reader of a
// large answer may hold most of MaxAnswerBytes for up to WriteTimeout,
// and other large GETs get 503 meanwhile.
//
// A history answer larger than the broker's maximum
// packet size (which the broker cuts in parts) is refused with 500, as is
// one that cannot be cut (a row whose history alone is larger); an event
// stream whose first message cannot be cut is an "error" event with the
// reason (broker.Delivery.Err), and ends. A
// request whose path has a malformed escape (%zz) is answered 400 by
// net/http before it reaches the API, without a JSON body. A refusal is
// answered in the response and logged, never reported on
// $SYS/mote/errors/http (an MQTT client with client id "http" would read
// every caller's reports there).
package httpapi
