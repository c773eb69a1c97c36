package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestRV10_3: RV10-3 (review h-rv10 of format 3). `mote store stats` and
// `mote store dump` only read, but open the store with retain.Open, which
// migrates a format 2 file (main's, the format every production store has
// today) to format 3 in place: after the tool ran, the broker build that
// wrote the file refuses it ("format [3], this build reads 2"), so a
// look at a store before an upgrade, or with a newer binary beside an
// older broker, is an upgrade nobody asked for and cannot undo. Input: a
// format 2 file of one row "a/b" (written with bbolt, as main writes it),
// then `mote store stats -data DIR`. Fixed (h-group2): a format 2 store is
// no longer migrated; stats prints the file's format.
func TestRV10_3(t *testing.T) {
	for _, cmd := range []string{"stats", "dump"} {
		t.Run(cmd, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "mote.db")
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bolt.Tx) error {
				bs := map[string]*bolt.Bucket{}
				for _, n := range []string{"rows", "dead", "hist", "meta"} {
					if bs[n], err = tx.CreateBucket([]byte(n)); err != nil {
						return err
					}
				}
				v := []byte{1} // a string, QoS 0
				v = binary.BigEndian.AppendUint64(v, 7)
				v = binary.BigEndian.AppendUint64(v, 70)
				if err := bs["rows"].Put([]byte("a/b"), append(v, "x"...)); err != nil {
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
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := run(ctx, []string{"store", cmd, "-data", dir}, nil, &out, &out); err != nil || !strings.Contains(out.String(), "a/b") && cmd == "dump" || !strings.Contains(out.String(), "format    2\n") && cmd == "stats" {
				t.Fatalf("%v\n%s", err, out.String())
			}
			db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.View(func(tx *bolt.Tx) error {
				if v := tx.Bucket([]byte("meta")).Get([]byte("format")); !bytes.Equal(v, []byte{2}) {
					t.Errorf("after `mote store %s` the file is format %v, want 2 as it was (a read-only tool wrote it)", cmd, v)
				}
				return nil
			})
		})
	}
}
