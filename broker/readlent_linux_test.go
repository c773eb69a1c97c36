package broker

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestReadLent reads a plain TCP connection through ReadLent (mochi
// change 62): the input comes in a buffer of the broker's pool, scanned
// as Read scans it; a deadline, the peer's close and a packet over the
// limit end the read with the error the net package's Read gives, and no
// buffer stays lent.
func TestReadLent(t *testing.T) {
	tests := []struct {
		name    string
		send    []byte
		close   bool
		timeout bool
		want    []byte
		wantErr error
	}{
		{name: "input", send: []byte{0xc0, 0x00}, want: []byte{0xc0, 0x00}},
		{name: "deadline", timeout: true, wantErr: os.ErrDeadlineExceeded},
		{name: "closed by the peer", close: true, wantErr: io.EOF},
		{name: "packet over the limit", send: []byte{0x30, 0xff, 0x01}, wantErr: errPacketTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cli, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			srv, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			var pool readBufPool
			nc := &netConn{Conn: srv, raw: newRawIO(srv, &pool), maxConnect: 1 << 20, maxPacket: 100, packets: 1, connected: true}
			srv.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // a hang fails the test
			if tt.timeout {
				srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) //nolint:errcheck
			}
			if tt.send != nil {
				cli.Write(tt.send) //nolint:errcheck
			}
			if tt.close {
				cli.Close()
			}
			buf, n, err := nc.ReadLent()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Op != "read" {
				t.Errorf("error's Op %q, want read", oe.Op)
			}
			if string(buf[:n]) != string(tt.want) {
				t.Errorf("read % x, want % x", buf[:n], tt.want)
			}
			if buf != nil {
				if cap(buf) != clientReadBuffer {
					t.Errorf("lent a buffer of %d bytes, want %d", cap(buf), clientReadBuffer)
				}
				nc.ReturnLent(buf)
			}
			if out := pool.out.Load(); out != 0 {
				t.Errorf("%d buffers still lent", out)
			}
		})
	}
}
