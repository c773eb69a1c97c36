package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/bench/floor"
)

// TestLiveDisconnect runs the live dashboard, plain, against the Go floor
// broker through a proxy on 127.0.0.1 that sees every CONNECT and, in one
// case, ends one subscriber's connection before the publisher's CONNECT
// reaches the broker (so before any live change): the run must count that
// disconnect and every row of that subscriber as lost, and nothing else;
// and every subscriber must connect with keep-alive 0 (it never ends its
// connection itself, however late it reads).
func TestLiveDisconnect(t *testing.T) {
	s := Sizes{Dashboards: 3, LiveDevices: 20, LiveRate: 1000, LiveFor: 100 * time.Millisecond}
	const changes = 100 // LiveFor × LiveRate
	tests := []struct {
		name          string
		cut           string // the client whose connection ends when live-pub connects
		disc, lost    int64
		rowsDelivered float64
	}{
		{name: "every subscriber stays", rowsDelivered: 3 * changes},
		{name: "live-1 cut", cut: "live-1", disc: 1, lost: changes, rowsDelivered: 2 * changes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			b := floor.Serve(ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
			defer b.Close()
			p := startCutProxy(t, b.Addr().String(), tt.cut, "live-pub")
			defer p.close()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			out, err := live(ctx, p.addr(), s, "")
			if err != nil {
				t.Fatal(err)
			}
			if out.sent != changes || out.lost != tt.lost || out.extra["disconnects"] != float64(tt.disc) ||
				out.extra["rows-delivered"] != tt.rowsDelivered || out.extra["dups"] != 0 {
				t.Errorf("sent %d, lost %d, notes %v; want sent %d, lost %d, disconnects %d, rows-delivered %v, dups 0",
					out.sent, out.lost, out.extra, changes, tt.lost, tt.disc, tt.rowsDelivered)
			}
			subscriber := regexp.MustCompile(`^live-[0-9]+$`)
			n := 0
			for id, ka := range p.keepAlives() {
				if !subscriber.MatchString(id) {
					continue
				}
				n++
				if ka != 0 {
					t.Errorf("%s connected with keep-alive %d s, want 0", id, ka)
				}
			}
			if n != s.Dashboards {
				t.Errorf("%d subscribers connected, want %d", n, s.Dashboards)
			}
		})
	}
}

// cutProxy forwards MQTT connections to a broker, reading each client's
// CONNECT on the way: it keeps its keep-alive by client id and, when
// client at connects, closes client cut's connection first.
type cutProxy struct {
	t       *testing.T
	ln      net.Listener
	target  string
	cut, at string
	wg      sync.WaitGroup
	closed  atomic.Bool // close was called: a read's error is the proxy's own

	mu    sync.Mutex
	conns map[string][]net.Conn // by client id: both sides
	all   []net.Conn
	ka    map[string]int
}

func startCutProxy(t *testing.T, target, cut, at string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{t: t, ln: ln, target: target, cut: cut, at: at, conns: map[string][]net.Conn{}, ka: map[string]int{}}
	p.wg.Add(1)
	go p.accept()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

// keepAlives is every client's CONNECT keep-alive, by client id.
func (p *cutProxy) keepAlives() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for id, ka := range p.ka {
		out[id] = ka
	}
	return out
}

// close stops accepting, closes every connection and waits for the
// proxy's goroutines.
func (p *cutProxy) close() {
	p.closed.Store(true)
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.all {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.track("", c)
		p.wg.Add(1)
		go p.serve(c)
	}
}

// track keeps c to close with the proxy (and, under id, with a cut).
func (p *cutProxy) track(id string, c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if id == "" {
		p.all = append(p.all, c)
		return
	}
	p.conns[id] = append(p.conns[id], c)
}

// serve reads c's CONNECT, then forwards both ways until either side ends.
func (p *cutProxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	connect, id, ka, err := readConnect(r)
	if err != nil {
		if !p.closed.Load() {
			p.t.Errorf("proxy: CONNECT: %v", err)
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	if id == p.at && p.cut != "" {
		p.mu.Lock()
		for _, cc := range p.conns[p.cut] {
			cc.Close()
		}
		p.mu.Unlock()
	}
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		p.t.Errorf("proxy: %v", err)
		return
	}
	defer s.Close()
	p.track("", s)
	p.mu.Lock()
	p.ka[id] = ka
	p.mu.Unlock()
	p.track(id, c)
	p.track(id, s)
	if _, err := s.Write(connect); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(c, s)
		c.Close()
	}()
	io.Copy(s, r)
	s.Close()
	<-done
}

// readConnect reads an MQTT 3.1.1 CONNECT: its bytes, client id and
// keep-alive.
func readConnect(r *bufio.Reader) ([]byte, string, int, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, "", 0, err
	}
	n, err := binary.ReadUvarint(r) // MQTT's remaining length is a uvarint
	if err != nil || h != 0x10 || n < 12 || n > 1024 {
		return nil, "", 0, fmt.Errorf("not a CONNECT: %#x, %d bytes, %v", h, n, err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, "", 0, err
	}
	pl := 2 + (int(body[0])<<8 | int(body[1])) // protocol name
	if len(body) < pl+6 {
		return nil, "", 0, io.ErrUnexpectedEOF
	}
	ka := int(body[pl+2])<<8 | int(body[pl+3])
	il := int(body[pl+4])<<8 | int(body[pl+5])
	if len(body) < pl+6+il {
		return nil, "", 0, io.ErrUnexpectedEOF
	}
	pk := binary.AppendUvarint([]byte{h}, n)
	return append(pk, body...), string(body[pl+6 : pl+6+il]), ka, nil
}
