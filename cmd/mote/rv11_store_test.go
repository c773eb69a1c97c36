package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// snapshotFile is every bucket of a bbolt file, key and value, in order.
func snapshotFile(t *testing.T, path string) []string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var all []string
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				all = append(all, fmt.Sprintf("%s %q=%q", name, k, v))
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// TestRV11HeldTools (review h-rv11, held): `mote store stats`, `dump` and
// `dump --history` on a format 2 file (main's layout: a parent of 100
// rows, rows that would look like format 3's own keys, "n/\x00g" and
// "n/\x00s", a marker, a history value) leave every key and value of the
// file as they were, format 2 included; dump hands out every row.
func TestRV11HeldTools(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mote.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	row := func(payload string) []byte {
		v := []byte{1} // a string, QoS 0
		v = binary.BigEndian.AppendUint64(v, 7)
		v = binary.BigEndian.AppendUint64(v, 70)
		return append(v, payload...)
	}
	topics := []string{"n/\x00g", "n/\x00s", "n/x", "a/"}
	for i := range 100 {
		topics = append(topics, fmt.Sprintf("p/%03d", i))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bs := map[string]*bolt.Bucket{}
		for _, n := range []string{"rows", "dead", "hist", "meta"} {
			if bs[n], err = tx.CreateBucket([]byte(n)); err != nil {
				return err
			}
		}
		for _, tp := range topics {
			if err := bs["rows"].Put([]byte(tp), row("v")); err != nil {
				return err
			}
		}
		if err := bs["dead"].Put(append(binary.BigEndian.AppendUint64(nil, 5), "gone/x"...), nil); err != nil {
			return err
		}
		hk := binary.BigEndian.AppendUint64(nil, 1)
		hk = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(append(append(hk, "p/000"...), 0), 6), 1)
		if err := bs["hist"].Put(hk, append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 60}, "h"...)); err != nil {
			return err
		}
		if err := bs["meta"].Put([]byte("rev"), binary.BigEndian.AppendUint64(nil, 7)); err != nil {
			return err
		}
		if err := bs["meta"].Put([]byte("clean"), []byte{1}); err != nil {
			return err
		}
		return bs["meta"].Put([]byte("format"), []byte{2})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	before := snapshotFile(t, path)
	for _, args := range [][]string{{"stats"}, {"dump"}, {"dump", "--history"}} {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := run(ctx, append(append([]string{"store"}, args...), "-data", dir), nil, &out, &out)
		cancel()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out.String())
		}
		switch strings.Join(args, " ") {
		case "stats":
			if !strings.Contains(out.String(), "format    2\n") || !strings.Contains(out.String(), "rows      104\n") {
				t.Errorf("stats:\n%s", out.String())
			}
		case "dump":
			if n := strings.Count(out.String(), "\n"); n != len(topics) || !strings.Contains(out.String(), `"n/\u0000g"`) {
				t.Errorf("dump: %d lines, want %d:\n%.300s", n, len(topics), out.String())
			}
		}
		if after := snapshotFile(t, path); !slices.Equal(after, before) {
			t.Fatalf("after `mote store %s` the file changed: %d entries, were %d", strings.Join(args, " "), len(after), len(before))
		}
	}
}
