package retain

import (
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestReopenReusesPages: committed rows survive every reopen, pages freed
// by rewrites are used again after a reopen (the store does not grow with
// rewrites: bbolt's freelist is kept), and a file written by bbolt's
// default options opens and is written again.
func TestReopenReusesPages(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	payload := string(make([]byte, 200))
	commit := func(s *Store, gen int) {
		t.Helper()
		cs := make([]Change, 500)
		for i := range cs {
			cs[i] = Change{Topic: fmt.Sprintf("dev/%03d", i), Value: val(fmt.Sprintf("%d%s", gen, payload)), Rev: uint64(gen*1000 + i + 1)}
		}
		if rej, err := s.Commit(Batch{Changes: cs, Rev: uint64(gen*1000 + len(cs))}); err != nil || rej != nil {
			t.Fatal(rej, err)
		}
	}
	check := func(s *Store, gen int) {
		t.Helper()
		rows := rowsOf(t, s)
		if len(rows) != 500 {
			t.Fatalf("generation %d: %d rows, want 500", gen, len(rows))
		}
		if r := rows["dev/123"]; r.Value.Data != fmt.Sprintf("%d%s", gen, payload) {
			t.Fatalf("generation %d: dev/123 is %.3q", gen, r.Value.Data)
		}
	}
	size := func() int64 { // the pages in use up to bbolt's high-water mark (the file grows by 16 MiB steps)
		t.Helper()
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n int64
		if err := db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var grown []int64
	gen := 0
	for round := range 6 {
		if round == 3 { // a write by bbolt's default options
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte("x"), []byte{1}) }); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if gen > 0 {
			check(s, gen)
		}
		for range 10 {
			gen++
			commit(s, gen)
		}
		check(s, gen)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		grown = append(grown, size())
	}
	// Each round rewrites the same rows 10 times: with the free pages
	// known at open, the store stays the size the first rounds made it
	// (were they lost, every round would add a copy of the rows).
	t.Logf("file sizes by round: %v", grown)
	if last, second := grown[len(grown)-1], grown[1]; last > second {
		t.Errorf("file sizes by round %v: it grew after the second (free pages not used again)", grown)
	}
}
