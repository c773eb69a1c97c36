package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/gorilla/websocket"
	"github.com/tidwall/gjson"

	"github.com/mote-mqtt/mote/internal/wsstream"
)

// The scenarios of Mote's HTTP API (SPEC §10), each against the same
// thing over MQTT on the same broker:
//
//   - http-get: GET /api/tree/dev/+/state of Rows rows against a
//     $sync/dev/+/state snapshot over MQTT (TCP), JSON and CBOR, in turn
//     in the same run: time from the request to the whole answer, and
//     bytes on the wire;
//   - sse-fanout: Dashboards event streams of dev/+/state against as many
//     $sync subscribers over MQTT-over-WebSocket, while the live-dashboard
//     load changes rows: broker CPU while the changes are delivered, and
//     every change counted at every watcher;
//   - sse-idle: IdleStreams idle event streams (or $sync subscribers over
//     WebSocket): the broker's RSS per connection, and a GET answered
//     while they are open.
//
// The clients are raw (an HTTP/1.1 request on a TCP connection, MQTT
// 3.1.1 packets written and read by hand), the same on both sides, and
// count the bytes they read from the socket.

// target is a running broker, for the scenarios of the HTTP API.
type target struct {
	listeners
	b *Broker
}

// cpu is the broker's CPU time so far.
func (t target) cpu() time.Duration {
	c, _, _ := t.b.Usage()
	return c
}

// rss is the broker's resident set size now.
func (t target) rss() int64 {
	r, _ := t.b.RSS()
	return r
}

// treeFilter is the filter every scenario here reads: the rows loadRows
// writes.
const treeFilter = "dev/+/state"

// treePath is treeFilter as an API path.
const treePath = "/api/tree/dev/%2B/state"

// countConn counts the bytes read from a connection.
type countConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// dialCount connects to addr, counting what it reads; the connection's
// deadline is ctx's.
func dialCount(ctx context.Context, addr string) (*countConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bench: dial %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl) //nolint:errcheck // a new connection
	}
	return &countConn{Conn: c}, nil
}

// rowCount is how many rows a tree of dev/+/state holds: the keys of its
// top level.
func rowCount(payload []byte, isCBOR bool) (int, error) {
	if isCBOR {
		var m map[string]cbor.RawMessage
		if err := cbor.Unmarshal(payload, &m); err != nil {
			return 0, fmt.Errorf("bench: CBOR tree: %w", err)
		}
		return len(m), nil
	}
	if !gjson.ValidBytes(payload) {
		return 0, fmt.Errorf("bench: not JSON: %.80q", payload)
	}
	n := 0
	gjson.ParseBytes(payload).ForEach(func(_, _ gjson.Result) bool { n++; return true })
	return n, nil
}

// mqttClient is a raw MQTT 3.1.1 client: enough to subscribe and read.
type mqttClient struct {
	c net.Conn
	r *bufio.Reader
}

func newMQTT(c net.Conn, id string) (*mqttClient, error) {
	m := &mqttClient{c: c, r: bufio.NewReaderSize(c, 16<<10)}
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, 0, byte(len(id))} // clean session, no keep-alive
	body = append(body, id...)
	if err := m.write(0x10, body); err != nil {
		return nil, err
	}
	typ, ack, err := m.next()
	if err != nil {
		return nil, err
	}
	if typ != 0x20 || len(ack) < 2 || ack[1] != 0 {
		return nil, fmt.Errorf("bench: CONNECT %s refused: %x %x", id, typ, ack)
	}
	return m, nil
}

func (m *mqttClient) write(header byte, body []byte) error {
	pk := append(append([]byte{header}, remaining(len(body))...), body...)
	_, err := m.c.Write(pk)
	return err
}

// subscribe sends a SUBSCRIBE of filter at QoS 0; the SUBACK comes as a
// packet like any.
func (m *mqttClient) subscribe(filter string) error {
	body := append([]byte{0, 1, byte(len(filter) >> 8), byte(len(filter))}, filter...)
	return m.write(0x82, append(body, 0))
}

// next reads a packet: its type (the first byte, flags cleared) and body.
func (m *mqttClient) next() (byte, []byte, error) {
	h, body, err := m.nextInto(nil)
	return h & 0xf0, body, err
}

// nextInto reads a packet: its first byte (type and flags) and its body,
// read into buf when it is large enough (else into a new slice).
func (m *mqttClient) nextInto(buf []byte) (byte, []byte, error) {
	h, err := m.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for {
		b, err := m.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; shift > 21 {
			return 0, nil, errors.New("bench: malformed remaining length")
		}
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	body := buf[:n]
	if _, err := io.ReadFull(m.r, body); err != nil {
		return 0, nil, err
	}
	return h, body, nil
}

// publish reads packets until a PUBLISH (QoS 0) and returns its payload;
// a refused SUBSCRIBE is an error.
func (m *mqttClient) publish() ([]byte, error) {
	for {
		typ, body, err := m.next()
		switch {
		case err != nil:
			return nil, err
		case typ == 0x90 && len(body) >= 3 && body[2] >= 0x80:
			return nil, fmt.Errorf("bench: SUBSCRIBE refused: %#x", body[2])
		case typ == 0x30 && len(body) >= 2:
			tl := int(body[0])<<8 | int(body[1])
			if 2+tl > len(body) {
				return nil, errors.New("bench: malformed PUBLISH")
			}
			return body[2+tl:], nil
		}
	}
}

// dialWS opens MQTT over WebSocket to addr (path /mqtt), counting the
// bytes read from the socket in cc.
func dialWS(ctx context.Context, addr string) (net.Conn, *countConn, error) {
	var cc *countConn
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second,
		NetDialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
			c, err := dialCount(ctx, a)
			cc = c
			return c, err
		}}
	ws, err := wsstream.Dial(ctx, d, "ws://"+addr+"/mqtt")
	if err != nil {
		return nil, nil, fmt.Errorf("bench: websocket %s: %w", addr, err)
	}
	c, err := wsstream.New(ws, false)
	if err != nil {
		ws.Close()
		return nil, nil, fmt.Errorf("bench: websocket %s: %w", addr, err)
	}
	return c, cc, nil
}

// sseClient is a raw event stream reader.
type sseClient struct {
	c *countConn
	r *bufio.Reader
}

// openSSE opens an event stream of path, the response's headers read.
func openSSE(ctx context.Context, addr, path string) (*sseClient, error) {
	c, err := dialCount(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: event stream %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		c.Close()
		return nil, fmt.Errorf("bench: event stream %s: %s %s", path, resp.Status, b)
	}
	return &sseClient{c: c, r: bufio.NewReaderSize(resp.Body, 16<<10)}, nil
}

// next reads one event (comments are skipped).
func (s *sseClient) next() (event string, data []byte, err error) {
	for {
		line, err := s.r.ReadBytes('\n')
		if err != nil {
			return "", nil, err
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		switch {
		case len(line) == 0:
			if event != "" || data != nil {
				return event, data, nil
			}
		case bytes.HasPrefix(line, []byte("event: ")):
			event = string(line[len("event: "):])
		case bytes.HasPrefix(line, []byte("data: ")):
			data = line[len("data: "):]
		}
	}
}

// httpGet: the tree of Rows rows by GET /api/tree and as a $sync
// snapshot over MQTT (TCP), JSON or CBOR, side by side on the same broker:
// GetReps pairs (after one untimed), in turn HTTP first and MQTT first,
// each on a fresh connection, timed from the request (the connection
// made) to the whole answer. value = the median HTTP time in ms, extra
// mqtt-ms the MQTT one and http/mqtt the median of the pairs' ratios;
// bytes = what the HTTP client read from the socket (status line and
// headers too), extra mqtt-bytes what the MQTT one read (SUBACK and
// PUBLISH header too).
func httpGet(ctx context.Context, t target, s Sizes, isCBOR bool) (outcome, error) {
	if err := loadRows(t.TCP, s.Rows, "get"); err != nil {
		return outcome{}, err
	}
	time.Sleep(time.Second) // let the broker settle (the store commits what was loaded)
	var httpMS, mqttMS, ratios []float64
	var httpWire, mqttWire, payload int64
	rows := 0
	for rep := range s.GetReps + 1 { // the first pair is a warm-up, not timed
		var pair [2]float64
		for i := range 2 {
			web := (rep+i)%2 == 0
			var body []byte
			var el time.Duration
			var n int64
			var err error
			if web {
				body, el, n, err = getHTTP(ctx, t.HTTP, isCBOR)
				httpWire = n
			} else {
				body, el, n, err = getMQTT(ctx, t.TCP, isCBOR, rep)
				mqttWire = n
			}
			if err != nil {
				return outcome{}, err
			}
			if rows, err = rowCount(body, isCBOR); err != nil {
				return outcome{}, err
			}
			if rows != s.Rows {
				break
			}
			payload = int64(len(body))
			if web {
				pair[0] = float64(el.Microseconds()) / 1000
			} else {
				pair[1] = float64(el.Microseconds()) / 1000
			}
		}
		if rep > 0 && pair[0] > 0 && pair[1] > 0 {
			httpMS, mqttMS, ratios = append(httpMS, pair[0]), append(mqttMS, pair[1]), append(ratios, pair[0]/pair[1])
		}
	}
	if len(ratios) == 0 {
		return outcome{}, fmt.Errorf("bench: %d rows of %d", rows, s.Rows)
	}
	return outcome{value: median(httpMS), msgs: int64(rows), bytes: httpWire, lost: int64(s.Rows - rows),
		extra: map[string]float64{"mqtt-ms": median(mqttMS), "http/mqtt": median(ratios),
			"http-min-ms": slices.Min(httpMS), "mqtt-min-ms": slices.Min(mqttMS),
			"mqtt-bytes": float64(mqttWire), "payload-bytes": float64(payload)}}, nil
}

// getHTTP GETs the tree of dev/+/state on a fresh connection: the body,
// how long from the request to its end, and the bytes read.
func getHTTP(ctx context.Context, addr string, isCBOR bool) ([]byte, time.Duration, int64, error) {
	c, err := dialCount(ctx, addr)
	if err != nil {
		return nil, 0, 0, err
	}
	defer c.Close()
	accept := "application/json"
	if isCBOR {
		accept = "application/cbor"
	}
	start := time.Now()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n\r\n", treePath, addr, accept); err != nil {
		return nil, 0, 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("bench: GET: %w", err)
	}
	var body []byte
	if resp.ContentLength >= 0 && resp.ContentLength <= 1<<30 { // read as the MQTT client does: into its size
		body = make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, body)
	} else {
		body, err = io.ReadAll(resp.Body)
	}
	el := time.Since(start)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("bench: GET: %s %.200s", resp.Status, body)
	}
	return body, el, c.n.Load(), err
}

// getMQTT subscribes to $sync/dev/+/state on a fresh connection: the
// snapshot, how long from the SUBSCRIBE to its end, and the bytes read
// meanwhile.
func getMQTT(ctx context.Context, addr string, isCBOR bool, rep int) ([]byte, time.Duration, int64, error) {
	c, err := dialCount(ctx, addr)
	if err != nil {
		return nil, 0, 0, err
	}
	defer c.Close()
	m, err := newMQTT(c, fmt.Sprint("get-", rep))
	if err != nil {
		return nil, 0, 0, err
	}
	verb := "$sync/"
	if isCBOR {
		verb = "$sync.cbor/"
	}
	before := c.n.Load()
	start := time.Now()
	if err := m.subscribe(verb + treeFilter); err != nil {
		return nil, 0, 0, err
	}
	body, err := m.publish()
	return body, time.Since(start), c.n.Load() - before, err
}

// watcher is one subscriber of sseFanout: what it received after its
// snapshot.
type watcher struct {
	ready      atomic.Bool
	msgs, rows atomic.Int64
	wire       *countConn
	ended      atomic.Bool // its stream ended early
}

// sseFanout: Dashboards watchers of dev/+/state, event streams (web) or
// $sync subscribers over MQTT-over-WebSocket, each with its snapshot of
// LiveDevices rows, while one MQTT publisher changes FanoutChanges rows
// (at most LiveDevices, each once) at FanoutRate a second. value = the
// broker's CPU seconds from the first change until every watcher has
// every change (or none arrives for 3 s); msgs = the deltas received (a
// watcher behind gets several changes folded in one), bytes = what the
// watchers read from their sockets meanwhile; extra cpu-µs/msg.
func sseFanout(ctx context.Context, t target, s Sizes, web bool) (outcome, error) {
	if err := loadRows(t.TCP, s.LiveDevices, "fan"); err != nil {
		return outcome{}, err
	}
	ws := make([]*watcher, 0, s.Dashboards)
	var closers []io.Closer
	var wg sync.WaitGroup
	defer func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}()
	for i := range s.Dashboards {
		w := &watcher{}
		var read func() ([]byte, bool, error) // a message's payload, whether it is a snapshot
		if web {
			sc, err := openSSE(ctx, t.HTTP, treePath)
			if err != nil {
				return outcome{}, err
			}
			closers, w.wire = append(closers, sc.c), sc.c
			read = func() ([]byte, bool, error) {
				ev, data, err := sc.next()
				return data, ev == "snapshot", err
			}
		} else {
			c, cc, err := dialWS(ctx, t.WS)
			if err != nil {
				return outcome{}, err
			}
			closers, w.wire = append(closers, c), cc
			m, err := newMQTT(c, fmt.Sprint("fan-", i))
			if err == nil {
				err = m.subscribe("$sync/" + treeFilter)
			}
			if err != nil {
				return outcome{}, err
			}
			first := true
			read = func() ([]byte, bool, error) {
				p, err := m.publish()
				snap := first
				first = false
				return p, snap, err
			}
		}
		ws = append(ws, w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p, snap, err := read()
				n := 0
				if err == nil {
					n, err = rowCount(p, false)
				}
				if err != nil {
					w.ended.Store(ctx.Err() == nil)
					return
				}
				if snap {
					w.ready.Store(true)
					continue
				}
				w.msgs.Add(1)
				w.rows.Add(int64(n))
			}
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for slices.ContainsFunc(ws, func(w *watcher) bool { return !w.ready.Load() }) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return outcome{}, errors.New("bench: not every watcher got its snapshot within 60 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var wire0 int64
	for _, w := range ws {
		wire0 += w.wire.n.Load()
	}
	pub, err := dial(t.TCP, "fan-pub", nil)
	if err != nil {
		return outcome{}, err
	}
	defer pub.Disconnect(0)
	changes := min(s.FanoutChanges, s.LiveDevices)
	total := func() (rows int64) {
		for _, w := range ws {
			rows += w.rows.Load()
		}
		return rows
	}
	cpu0, start := t.cpu(), time.Now()
	tick := time.NewTicker(time.Second / time.Duration(s.FanoutRate))
	for i := range changes {
		<-tick.C
		pub.Publish(fmt.Sprintf("dev/d%06d/state", i), 0, true, strconv.Itoa(i+2))
	}
	tick.Stop()
	want := int64(changes * len(ws))
	for last, at := int64(-1), time.Now(); ctx.Err() == nil; time.Sleep(2 * time.Millisecond) {
		got := total()
		if got >= want || time.Since(at) > 3*time.Second {
			break
		}
		if got != last {
			last, at = got, time.Now()
		}
	}
	el, cpu1 := time.Since(start), t.cpu()
	got := total()
	var msgs, wire, ended int64
	for _, w := range ws {
		msgs += w.msgs.Load()
		wire += w.wire.n.Load()
		if w.ended.Load() {
			ended++
		}
	}
	cpu := (cpu1 - cpu0).Seconds()
	return outcome{value: cpu, msgs: msgs, bytes: wire - wire0, sent: int64(changes), lost: want - got,
		extra: map[string]float64{"deliver-s": el.Seconds(), "rows-delivered": float64(got), "ended": float64(ended),
			"cpu-µs/msg": cpu / float64(max(msgs, 1)) * 1e6}}, nil
}

// idleRows is how many rows each idle stream's snapshot holds.
const idleRows = 100

// sseIdle: IdleStreams idle event streams of dev/+/state (web), or $sync
// subscribers over MQTT-over-WebSocket, each with its snapshot of
// idleRows rows read. value = the broker's RSS growth per connection, in
// KiB; while they are open, a GET of the same tree and /healthz must
// answer (extra get-ms, healthz-ms).
func sseIdle(ctx context.Context, t target, s Sizes, web bool) (outcome, error) {
	n := s.IdleStreams
	if err := raiseFileLimit(uint64(n) + 1000); err != nil {
		return outcome{}, err
	}
	if err := loadRows(t.TCP, idleRows, "idle"); err != nil {
		return outcome{}, err
	}
	time.Sleep(500 * time.Millisecond) // let the broker settle
	rss0 := t.rss()
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// A few at a time, each read to its snapshot, then left idle: no
	// goroutine stays per connection.
	const workers = 32
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := idleConn(ctx, t, web, i)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	if err != nil {
		return outcome{}, err
	}
	open := time.Since(start)
	time.Sleep(time.Second) // let the broker settle
	rss1 := t.rss()
	// The broker must answer while they are open.
	hc := &http.Client{Timeout: 10 * time.Second}
	getMS, body, err := timedGet(hc, "http://"+t.HTTP+treePath)
	if err != nil {
		return outcome{}, err
	}
	if rows, err := rowCount(body, false); err != nil || rows != idleRows {
		return outcome{}, fmt.Errorf("bench: GET with %d connections open: %d rows (want %d): %v", n, rows, idleRows, err)
	}
	healthMS, _, err := timedGet(hc, "http://"+t.HTTP+"/healthz")
	if err != nil {
		return outcome{}, err
	}
	return outcome{value: float64(rss1-rss0) / float64(n) / 1024, msgs: int64(n),
		extra: map[string]float64{"open-s": open.Seconds(), "get-ms": getMS, "healthz-ms": healthMS,
			"rss-before-MiB": float64(rss0) / (1 << 20), "rss-after-MiB": float64(rss1) / (1 << 20)}}, nil
}

// idleConn opens the i-th idle connection of sseIdle and reads its
// snapshot.
func idleConn(ctx context.Context, t target, web bool, i int) (net.Conn, error) {
	if web {
		sc, err := openSSE(ctx, t.HTTP, treePath)
		if err != nil {
			return nil, err
		}
		if ev, _, err := sc.next(); err != nil || ev != "snapshot" {
			sc.c.Close()
			return nil, fmt.Errorf("bench: event stream %d: first event %q: %v", i, ev, err)
		}
		return sc.c, nil
	}
	c, _, err := dialWS(ctx, t.WS)
	if err != nil {
		return nil, err
	}
	m, err := newMQTT(c, fmt.Sprint("idle-", i))
	if err == nil {
		err = m.subscribe("$sync/" + treeFilter)
	}
	if err == nil {
		_, err = m.publish()
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: $sync subscriber %d: %w", i, err)
	}
	return c, nil
}

// timedGet GETs url and returns how long the answer took in ms, and its
// body; anything but 200 is an error.
func timedGet(hc *http.Client, url string) (float64, []byte, error) {
	start := time.Now()
	resp, err := hc.Get(url)
	if err != nil {
		return 0, nil, fmt.Errorf("bench: GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	ms := float64(time.Since(start).Microseconds()) / 1000
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("bench: GET %s: %s %.200s", url, resp.Status, body)
	}
	return ms, body, err
}
