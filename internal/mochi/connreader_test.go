package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/stretchr/testify/require"
)

// lender is a BufferLender over a list of reads: each ReadLent or Read
// returns the next chunk (or its error once they run out). It counts the
// buffers out, and fails the test if the reader waits (ReadLent) while
// holding one: an idle connection must hold none (change 62).
type lender struct {
	t      *testing.T
	chunks [][]byte
	end    error
	out    int // buffers lent, not given back
	lends  int
	reads  int
	noLend bool
}

func (l *lender) next() ([]byte, error) {
	if len(l.chunks) == 0 {
		return nil, l.end
	}
	c := l.chunks[0]
	l.chunks = l.chunks[1:]
	return c, nil
}

func (l *lender) ReadLent(bool) ([]byte, int, error) {
	if l.noLend {
		return nil, 0, ErrNoLending
	}
	if l.out != 0 {
		l.t.Errorf("ReadLent called with %d buffers still lent", l.out)
	}
	c, err := l.next()
	if err != nil {
		return nil, 0, err
	}
	buf := make([]byte, 8)
	l.out++
	l.lends++
	return buf, copy(buf, c), nil
}

func (l *lender) ReturnLent(buf []byte) {
	if len(buf) != 8 {
		l.t.Errorf("a buffer of %d bytes given back, not one lent", len(buf))
	}
	l.out--
}

func (l *lender) Read(p []byte) (int, error) {
	l.reads++
	c, err := l.next()
	if err != nil {
		return 0, err
	}
	return copy(p, c), nil
}

func TestConnReaderLends(t *testing.T) {
	tests := []struct {
		name   string
		chunks [][]byte
		noLend bool
		lends  int // ReadLent calls that lent a buffer
	}{
		{"one packet a read", [][]byte{{0xc0, 0}, {0xc0, 0}, {0xd0, 0}}, false, 3},
		{"a packet split across reads", [][]byte{{0x30}, {3, 0, 1}, {'a'}, {0xc0, 0}}, false, 4}, // a buffer read to its end goes back, mid-packet too
		{"two packets in one read", [][]byte{{0xc0, 0, 0xc0, 0}}, false, 1},
		{"not a lender", [][]byte{{0xc0, 0}, {0xc0, 0}}, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []byte
			for _, c := range tt.chunks {
				want = append(want, c...)
			}
			l := &lender{t: t, chunks: tt.chunks, end: io.EOF, noLend: tt.noLend}
			r := newConnReader(l, 8)
			var got []byte
			for {
				// Read's loop: wait for a packet, then read its header and body.
				if _, err := r.Peek(1); err != nil {
					require.ErrorIs(t, err, io.EOF)
					break
				}
				b, err := r.ReadByte()
				require.NoError(t, err)
				n, err := r.ReadByte()
				require.NoError(t, err)
				body := make([]byte, n)
				_, err = io.ReadFull(r, body)
				require.NoError(t, err)
				got = append(append(got, b, n), body...)
			}
			require.Equal(t, want, got)
			require.Equal(t, tt.lends, l.lends)
			require.Zero(t, l.out, "buffers still lent at the end")
			if !tt.noLend {
				require.Nil(t, r.buf, "an idle reader holds a buffer")
			}
		})
	}
}

// TestConnReaderAsBufio reads the same input through connReader and
// bufio.Reader, by the methods mochi uses, and compares what each returns.
func TestConnReaderAsBufio(t *testing.T) {
	src := make([]byte, 3000)
	for i := range src {
		src[i] = byte(i * 7)
	}
	type op struct {
		kind byte // 'p' Peek(n), 'b' ReadByte, 'r' ReadFull(n)
		n    int
	}
	ops := []op{{'p', 1}, {'b', 0}, {'p', 5}, {'r', 10}, {'b', 0}, {'r', 600}, {'p', 16}, {'r', 16}, {'r', 1}, {'r', 2000}, {'p', 1}, {'r', 300}, {'b', 0}}
	a := newConnReader(iotestHalfReader{bytes.NewReader(src)}, 16)
	b := bufio.NewReaderSize(iotestHalfReader{bytes.NewReader(src)}, 16)
	for i, o := range ops {
		switch o.kind {
		case 'p':
			pa, ea := a.Peek(o.n)
			pb, eb := b.Peek(o.n)
			require.Equal(t, pb, pa, "op %d", i)
			require.Equal(t, eb, ea, "op %d", i)
		case 'b':
			ca, ea := a.ReadByte()
			cb, eb := b.ReadByte()
			require.Equal(t, cb, ca, "op %d", i)
			require.Equal(t, eb, ea, "op %d", i)
		case 'r':
			pa, pb := make([]byte, o.n), make([]byte, o.n)
			na, ea := io.ReadFull(a, pa)
			nb, eb := io.ReadFull(b, pb)
			require.Equal(t, nb, na, "op %d", i)
			require.Equal(t, pb, pa, "op %d", i)
			require.True(t, errors.Is(ea, eb) || ea == eb, "op %d: %v, bufio %v", i, ea, eb)
		}
		require.Equal(t, b.Buffered() > 0, a.Buffered() > 0, "op %d", i)
	}
}

// iotestHalfReader returns at most half of what is asked (at least one
// byte), as a socket may.
type iotestHalfReader struct{ r io.Reader }

func (h iotestHalfReader) Read(p []byte) (int, error) {
	return h.r.Read(p[:(len(p)+1)/2])
}

// sleepyConn is a net.Conn that lends its reads (a BufferLender over a
// list of reads, as lender) and answers ErrAsleep to the next wait
// between packets once asleep is set.
type sleepyConn struct {
	net.Conn
	lender
	asleep bool
}

func (c *sleepyConn) Read(p []byte) (int, error) { return c.lender.Read(p) }

func (c *sleepyConn) ReadLent(next bool) ([]byte, int, error) {
	if next && c.asleep {
		c.asleep = false
		return nil, 0, ErrAsleep
	}
	return c.lender.ReadLent(next)
}

// TestReaderAsleepHoldsNoConnReader: a reader that answers ErrAsleep
// between packets gives its connReader up, and the next Read (the
// connection served again) makes a new one and reads on as before
// (change 84).
func TestReaderAsleepHoldsNoConnReader(t *testing.T) {
	tests := []struct {
		name   string
		chunks [][]byte // what the connection gives after the sleep
		want   []byte   // the packet types read after it
	}{
		{"a packet", [][]byte{{packets.Pingreq << 4, 0}}, []byte{packets.Pingreq}},
		{"two packets in one read", [][]byte{{packets.Pingreq << 4, 0, packets.Pingreq << 4, 0}}, []byte{packets.Pingreq, packets.Pingreq}},
		{"a packet split across reads", [][]byte{{packets.Pingreq << 4}, {0}}, []byte{packets.Pingreq}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, _, w := newTestClient()
			defer cl.Stop(errClientStop)
			c := &sleepyConn{Conn: w, asleep: true}
			c.lender = lender{t: t, chunks: [][]byte{{packets.Pingreq << 4, 0}}, end: ErrAsleep}
			cl.Net.Conn, cl.Net.bconn = c, newConnReader(c, 8)

			var got []byte
			read := func(cl *Client, pk *packets.Packet) error {
				got = append(got, pk.FixedHeader.Type)
				return nil
			}
			require.ErrorIs(t, cl.Read(read), ErrAsleep) // asleep before its first packet
			require.Nil(t, cl.Net.bconn, "a reader asleep holds a connReader")
			require.ErrorIs(t, cl.Read(read), ErrAsleep) // woken: one packet, then asleep again (the lender's end)
			require.Nil(t, cl.Net.bconn, "a reader asleep holds a connReader")
			require.Equal(t, []byte{packets.Pingreq}, got)

			got = nil
			c.lender.chunks, c.lender.end = tt.chunks, io.EOF
			require.ErrorIs(t, cl.Read(read), io.EOF)
			require.Equal(t, tt.want, got)
			require.NotNil(t, cl.Net.bconn, "a reader that ended without sleeping gave its connReader up")
			require.Zero(t, c.lender.out, "buffers still lent at the end")
		})
	}
}
