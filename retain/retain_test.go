package retain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

func val(s string) wire.Value { return wire.Value{Kind: wire.String, Data: s} }

func rowsOf(t *testing.T, s RowStore) map[string]Row {
	t.Helper()
	out := map[string]Row{}
	if err := s.Load(func(r Row) error { out[r.Topic] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	rej, err := s.Commit(Batch{Changes: []Change{
		{Topic: "a/b", Value: val("x"), QoS: 1},
		{Topic: "a/c", Value: wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}},
		{Topic: "d", Value: wire.Value{Kind: wire.Object, Data: `{"k":1}`}, QoS: 2},
		{Topic: "gone", Value: val("y")},
	}})
	if err != nil || rej != nil {
		t.Fatal(rej, err)
	}
	if rej, err := s.Commit(Batch{Changes: []Change{{Topic: "gone"}, {Topic: "never"}}}); err != nil || rej != nil {
		t.Fatal(rej, err)
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := rowsOf(t, s)
	want := map[string]Row{
		"a/b": {Topic: "a/b", Value: val("x"), QoS: 1},
		"a/c": {Topic: "a/c", Value: wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}},
		"d":   {Topic: "d", Value: wire.Value{Kind: wire.Object, Data: `{"k":1}`}, QoS: 2},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows %v\nwant %v", got, want)
	}
	st, err := s.Stats()
	if err != nil || st.Rows != 3 || st.TopLevel["a"] != 2 {
		t.Errorf("stats %+v %v", st, err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	os.WriteFile(path, []byte(strings.Repeat("not a bolt file ", 1000)), 0o600)
	_, err := Open(dir)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Errorf("corrupt file: %v", err)
	}
	dir2 := t.TempDir()
	s, err := Open(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir2); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open: %v", err)
	}
	if _, err := Open("/proc/no/such/dir"); err == nil {
		t.Error("opened a store in an impossible directory")
	}
}

// TestCorruptPages damages a valid store's pages: opening or loading it
// is an error naming the file, never a panic.
func TestCorruptPages(t *testing.T) {
	for _, offset := range []int64{0, 4096, 8192, 12288, 16384} {
		dir := t.TempDir()
		s, _ := Open(dir)
		var cs []Change
		for i := range 2000 {
			cs = append(cs, Change{Topic: fmt.Sprintf("t/%d", i), Value: val(strings.Repeat("v", 50))})
		}
		if _, err := s.Commit(Batch{Changes: cs}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		f, _ := os.OpenFile(filepath.Join(dir, FileName), os.O_RDWR, 0)
		f.WriteAt([]byte(strings.Repeat("\xde\xad\xbe\xef", 256)), offset)
		f.Close()
		s, err := Open(dir)
		if err == nil {
			err = s.Load(func(Row) error { return nil })
			s.Close()
		}
		if err != nil && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), FileName)) {
			t.Errorf("offset %d: %v", offset, err)
		}
	}
}

// TestStoreLimits: a row bbolt cannot hold is returned as Rejected and the
// rows around it are committed in the same transaction.
func TestStoreLimits(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range []struct {
		name string
		c    Change
		want error // nil: stored (or, for a delete, applied)
	}{
		{"topic of MaxTopic bytes", Change{Topic: strings.Repeat("k", MaxTopic), Value: val("v")}, nil},
		{"topic of MaxTopic+1 bytes", Change{Topic: strings.Repeat("k", MaxTopic+1), Value: val("v")}, berrors.ErrKeyTooLarge},
		{"empty topic", Change{Topic: "", Value: val("v")}, berrors.ErrKeyRequired},
		{"unknown kind", Change{Topic: "kind", Value: wire.Value{Kind: wire.Object + 1, Data: "v"}}, ErrUnstorable},
		{"QoS 3", Change{Topic: "qos", Value: val("v"), QoS: 3}, ErrUnstorable},
		{"delete of an empty topic", Change{Topic: ""}, nil},
		{"delete of a topic over MaxTopic", Change{Topic: strings.Repeat("k", MaxTopic+1)}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, after := "a/"+c.name, "z/"+c.name
			rej, err := s.Commit(Batch{Changes: []Change{{Topic: after, Value: val("1")}, c.c, {Topic: before, Value: val("1")}}})
			if err != nil {
				t.Fatal(err)
			}
			rows := rowsOf(t, s)
			if _, ok := rows[before]; !ok {
				t.Error("the row before it was not committed")
			}
			if _, ok := rows[after]; !ok {
				t.Error("the row after it was not committed")
			}
			_, stored := rows[c.c.Topic]
			switch {
			case c.want == nil && len(rej) != 0:
				t.Errorf("refused: %v", rej)
			case c.want == nil && c.c.Value.Kind != wire.None && !stored:
				t.Error("not stored")
			case c.want != nil && (len(rej) != 1 || rej[0].Topic != c.c.Topic || !errors.Is(rej[0].Err, ErrUnstorable) || !errors.Is(rej[0].Err, c.want)):
				t.Errorf("rejected %v, want the row, %v", rej, c.want)
			case c.want != nil && stored:
				t.Error("a refused row is in the store")
			}
		})
	}
}

// TestSizeLimits: the payload limit, checked by sizes (a 2 GiB payload is
// too big for a unit test).
func TestSizeLimits(t *testing.T) {
	for _, c := range []struct {
		topic, payload int
		want           error
	}{
		{1, 0, nil},
		{MaxTopic, MaxPayload, nil},
		{1, MaxPayload + 1, berrors.ErrValueTooLarge},
		{MaxTopic + 1, 0, berrors.ErrKeyTooLarge},
		{0, 0, berrors.ErrKeyRequired},
	} {
		err := sizeError(c.topic, c.payload)
		if (c.want == nil) != (err == nil) || (err != nil && (!errors.Is(err, c.want) || !errors.Is(err, ErrUnstorable))) {
			t.Errorf("topic %d, payload %d bytes: %v, want %v", c.topic, c.payload, err, c.want)
		}
	}
	if rowHead+MaxPayload != bolt.MaxValueSize {
		t.Error("MaxPayload plus the row head is not bbolt's value limit")
	}
}

// TestRefusedRowDropsOldValue: a refused set deletes what was stored under
// its topic, so a restart does not bring back an older value as current.
func TestRefusedRowDropsOldValue(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Commit(Batch{Changes: []Change{{Topic: "t", Value: val("old")}}}); err != nil {
		t.Fatal(err)
	}
	rej, err := s.Commit(Batch{Changes: []Change{{Topic: "t", Value: val("new"), QoS: 3}}})
	if err != nil || len(rej) != 1 {
		t.Fatal(rej, err)
	}
	if rows := rowsOf(t, s); len(rows) != 0 {
		t.Errorf("rows %v, want none", rows)
	}
}

// TestTypeBytes: the type bytes are the disk format, mapped both ways.
func TestTypeBytes(t *testing.T) {
	for _, c := range []struct {
		kind wire.Kind
		b    byte
	}{{wire.String, 1}, {wire.Bytes, 2}, {wire.JSON, 3}, {wire.Object, 4}} {
		if b, ok := typeByte(c.kind); !ok || b != c.b {
			t.Errorf("typeByte(%v) = %d, %v, want %d", c.kind, b, ok, c.b)
		}
		if k, ok := kindOf(c.b); !ok || k != c.kind {
			t.Errorf("kindOf(%d) = %v, %v, want %v", c.b, k, ok, c.kind)
		}
	}
	if _, ok := typeByte(wire.None); ok {
		t.Error("None has a type byte")
	}
	for _, b := range []byte{0, 5, 15} {
		if _, ok := kindOf(b); ok {
			t.Errorf("type byte %d is known", b)
		}
	}
}

// TestLoadsFormat1: a store written byte for byte as format 1 stores rows
// (before revisions) loads, migrated to format 3 (through 2).
func TestLoadsFormat1(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw := map[string]string{
		"s": "\x11hi",        // string, QoS 1
		"b": "\x02\x00\xff",  // bytes, QoS 0
		"j": "\x2321.5",      // JSON, QoS 2
		"o": "\x04{\"k\":1}", // object, QoS 0
	}
	err = db.Update(func(tx *bolt.Tx) error {
		rows, err := tx.CreateBucket([]byte("rows"))
		if err != nil {
			return err
		}
		for k, v := range raw {
			if err := rows.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		return meta.Put([]byte("format"), []byte{1})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := rowsOf(t, s)
	want := map[string]Row{
		"s": {Topic: "s", Value: wire.Value{Kind: wire.String, Data: "hi"}, QoS: 1},
		"b": {Topic: "b", Value: wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}, QoS: 0},
		"j": {Topic: "j", Value: wire.Value{Kind: wire.JSON, Data: "21.5"}, QoS: 2},
		"o": {Topic: "o", Value: wire.Value{Kind: wire.Object, Data: `{"k":1}`}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows %v\nwant %v", got, want)
	}
	if m := s.Meta(); !m.Clean || m.Fresh || m.Rev != 0 {
		t.Errorf("migrated store meta %+v", m)
	}
	err = s.db.View(func(tx *bolt.Tx) error { // migrated to format 2, which it stays (review h-rv10 RV10-5)
		if v := tx.Bucket(bucketMeta).Get(keyFormat); len(v) != 1 || v[0] != 2 {
			t.Errorf("format after migration %v", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
