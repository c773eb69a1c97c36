package retain

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var errRollback = errors.New("rollback")

// FuzzRV10Load: Load over a rows bucket of up to four forged keys (own
// keys of the given parents, group values from the fuzzer, plain keys)
// never panics or hangs; what it hands out has topics with no 0 byte,
// each once; a row key whose parent is grouped or has no flag (RV10-2b)
// is an error.
func FuzzRV10Load(f *testing.F) {
	db, err := bolt.Open(filepath.Join(f.TempDir(), "f.db"), 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	f.Add("a/", groupOf("b", "c"), "a/b/", groupOf("x"), "a/b", []byte{1, 2}, "\x00s", []byte{})
	f.Add("", groupOf("a", "z"), "a/", groupOf("", "q"), "a/\x01/x", append(make([]byte, 17), 'v'), "/", groupOf(""))
	row, _ := appendRow(nil, Change{Value: val("stray"), Rev: 1}, false)
	f.Add("a/", groupOf("b"), "x/", groupOf("y"), "a/b", row, "", []byte{})       // RV10-2b: a stray key beside its parent's group
	f.Add("a/", groupOf("b"), "a/c/", groupOf("y"), "a/d", row, "", []byte{})     // after a deeper group
	f.Add("a/", groupOf("b"), "x/", groupOf("y"), "a/", row, "", []byte{})        // leaf "": before its parent's group key
	f.Add("", groupOf("q"), "x/", groupOf("y"), "a/b", row, "a/\x00s", []byte{})  // flagged: fine
	f.Add("", groupOf("q"), "x/", groupOf("y"), "a/b", row, "a/\x00s", []byte{1}) // a flag with a value
	f.Fuzz(func(t *testing.T, k1 string, v1 []byte, k2 string, v2 []byte, k3 string, v3 []byte, k4 string, v4 []byte) {
		// Odd-length names ending in 'g' or 's' are read as group or flag
		// keys: k1, k2 are parents of groups, k3 a plain key, k4 as is.
		kvs := [][2][]byte{{groupKey(nil, k1), v1}, {groupKey(nil, k2), v2}, {[]byte(k3), v3}, {[]byte(k4), v4}}
		_ = db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket(bucketRows)
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range kvs {
				if len(kv[0]) == 0 || len(kv[0]) > bolt.MaxKeySize {
					continue
				}
				if err := b.Put(kv[0], kv[1]); err != nil {
					t.Fatal(err)
				}
			}
			seen := map[string]bool{}
			err = loadRows(b, true, func(r Row) error {
				if strings.IndexByte(r.Topic, 0) >= 0 || r.Topic == "" {
					t.Fatalf("row %q", r.Topic)
				}
				if seen[r.Topic] {
					t.Fatalf("row %q twice", r.Topic)
				}
				seen[r.Topic] = true
				return nil
			})
			if err == nil { // then every row key has its parent's flag, and no group
				b.ForEach(func(k, _ []byte) error {
					if _, _, own := ownKey(k); !own {
						p := string(k[:parentLen(string(k))])
						if b.Get(groupKey(nil, p)) != nil || b.Get(flagKey(nil, p)) == nil {
							t.Fatalf("Load took row key %q: its parent %q is grouped or has no flag", k, p)
						}
					}
					return nil
				})
			}
			return errRollback
		})
	})
}
