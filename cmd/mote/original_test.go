package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOriginalListenerConfig runs the binary with listeners.original in the
// config file: a client of the original broker (mote-native's CONNECT,
// a "/F" subscription) gets the rows a native client published, as a tree
// with string leaves on F.
func TestOriginalListenerConfig(t *testing.T) {
	dir := t.TempDir()
	bin := buildMote(t)
	port, orig := freePort(t), "127.0.0.1:"+strconv.Itoa(freePort(t))
	cfg := filepath.Join(dir, "mote.yaml")
	if err := os.WriteFile(cfg, []byte("listeners: {original: \""+orig+"\", ws: \"off\", http: \"off\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	cmd := exec.Command(bin, "broker", "--config", cfg, "--tcp", "127.0.0.1:"+strconv.Itoa(port), "--data", filepath.Join(dir, "data"))
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }() //nolint:errcheck // ends the test's broker
	var nc net.Conn
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if nc, err = net.Dial("tcp", orig); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no original listener on %s: %s", orig, logs.String())
		}
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second)) //nolint:errcheck // a hang fails the read

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"pub", "-p", strconv.Itoa(port), "-h", "127.0.0.1", "-t", "a/b", "-m", "21.5", "-r", "-q", "1"}, nil, &out, &out); err != nil {
		t.Fatalf("pub: %v %s", err, out.String())
	}

	str := func(s string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...) }
	packet := func(head byte, parts ...[]byte) []byte {
		body := bytes.Join(parts, nil)
		return append([]byte{head, byte(len(body))}, body...)
	}
	read := func() (byte, []byte) {
		h := make([]byte, 2)
		if _, err := io.ReadFull(nc, h); err != nil {
			t.Fatalf("read: %v\n%s", err, logs.String())
		}
		body := make([]byte, h[1])
		if _, err := io.ReadFull(nc, body); err != nil {
			t.Fatalf("read: %v", err)
		}
		return h[0], body
	}
	nc.Write(packet(0x10, str("mote"), []byte{0, 0x02, 0x4e, 0x20}, str("native-1"))) //nolint:errcheck // the read says
	if h, body := read(); h != 0x20 || body[1] != 0 {
		t.Fatalf("CONNACK %x % x", h, body)
	}
	nc.Write(packet(0x82, []byte{0, 1}, str("/a/+"), []byte{1})) //nolint:errcheck // the read says
	if h, body := read(); h != 0x90 || !bytes.Equal(body, []byte{0, 1, 1}) {
		t.Fatalf("SUBACK %x % x", h, body)
	}
	h, body := read()
	if want := append(append(str("a/+"), 0, 1), `{"b":"21.5"}`...); h != 0x32 || !bytes.Equal(body, want) {
		t.Errorf("snapshot %x %q, want 32 %q", h, body, want)
	}
	// The listening line comes once Start has published $SYS, which may
	// be after a fast client got its snapshot.
	named := func() bool {
		return strings.Contains(logs.String(), `"original":"`+orig+`"`) || strings.Contains(logs.String(), "original="+orig)
	}
	for deadline := time.Now().Add(20 * time.Second); !named() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if !named() {
		t.Errorf("the listening line does not name the original listener: %s", logs.String())
	}
}
