package tree

import (
	"encoding/json"
	"maps"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/spec"
	"github.com/mote-mqtt/mote/wire"
)

// load stores plain retained rows through Apply, as the broker does.
func load(t testing.TB, tr *Tree, rows map[string]string) {
	t.Helper()
	var ops []Op
	for topic, payload := range rows {
		v := wire.TypePlain([]byte(payload))
		if payload == "" {
			v = wire.Value{} // an empty retained payload deletes
		}
		ops = append(ops, Op{Rows: []Row{{Topic: topic, Value: v, Retain: true}}})
	}
	for _, a := range tr.Apply(ops).Applied {
		if a.Err != nil {
			t.Fatal(a.Err)
		}
	}
}

// rows returns every retained row as topic → payload.
func rows(tr *Tree) map[string]string {
	out := map[string]string{}
	tr.Store().Range(func(topic string, v wire.Value, _ byte) bool {
		out[topic] = v.Data
		return true
	})
	return out
}

// decodeJSON parses JSON for comparison, failing the test if it is invalid.
func decodeJSON(t testing.TB, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("invalid JSON %q: %v", b, err)
	}
	return v
}

func TestSpecSnapshots(t *testing.T) {
	for _, ex := range spec.Snapshots {
		t.Run(ex.Name, func(t *testing.T) {
			tr := New()
			load(t, tr, ex.Rows)
			for _, c := range wire.Codecs {
				got := toJSON(t, c, tr.Snapshot(ex.Filter, c, nil))
				if g, w := decodeJSON(t, got), decodeJSON(t, []byte(ex.Want)); !reflect.DeepEqual(g, w) {
					t.Errorf("%s %s: got %s, want %s", c, ex.Filter, got, ex.Want)
				}
			}
		})
	}
}

func TestSpecPublishes(t *testing.T) {
	ps, err := NewParser(DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	for _, ex := range spec.Publishes {
		for _, c := range wire.Codecs {
			p, err := wire.ParsePublish(ex.Topic)
			if err != nil {
				t.Fatal(err)
			}
			payload := []byte(ex.Payload)
			if p.Op == wire.PubTree && c != wire.CodecJSON {
				if payload, ok = inCodec(c, payload); !ok {
					continue // the example is about JSON itself
				}
				p.Codec = c
			} else if c != wire.CodecJSON {
				continue // a $set payload is plain: the same in every codec
			}
			t.Run(ex.Name+"/"+c.String(), func(t *testing.T) {
				tr := New()
				load(t, tr, ex.Before)
				op, err := ps.Op(p, payload, true, 1)
				if err == nil {
					err = tr.Apply([]Op{op}).Applied[0].Err
				}
				want := ex.After
				if ex.Err != "" {
					if err == nil || !strings.Contains(err.Error(), ex.Err) {
						t.Fatalf("error %v, want one containing %q", err, ex.Err)
					}
					want = ex.Before
				} else if err != nil {
					t.Fatal(err)
				}
				if want == nil {
					want = map[string]string{}
				}
				// CBOR and MessagePack carry a number as an integer or a
				// float, not as its text: -1.5e3 comes back as -1500.0.
				same := sameNumber
				if c == wire.CodecJSON {
					same = func(a, b string) bool { return a == b }
				}
				if got := rows(tr); !maps.EqualFunc(got, want, same) {
					t.Errorf("rows %v, want %v", got, want)
				}
			})
		}
	}
}

// sameNumber reports whether two row values are the same text or the same
// number.
func sameNumber(a, b string) bool {
	if a == b {
		return true
	}
	x, err1 := strconv.ParseFloat(a, 64)
	y, err2 := strconv.ParseFloat(b, 64)
	return err1 == nil && err2 == nil && x == y
}
