package broker

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/vmihailenco/msgpack/v5"
)

// decodeTree decodes a tree payload of the codec a filter's first level
// names ($sync.cbor/…, $tree.msgpack/…) into Go maps.
func decodeTree(t *testing.T, filter string, payload []byte) map[string]any {
	t.Helper()
	var doc map[string]any
	var err error
	prefix, _, _ := strings.Cut(filter, "/") // $sync.cbor, $tree.msgpack.250ms, …
	switch {
	case strings.Contains(prefix, ".cbor"):
		dm, _ := cbor.DecOptions{DefaultMapType: reflect.TypeOf(map[string]any{})}.DecMode()
		err = dm.Unmarshal(payload, &doc)
	case strings.Contains(prefix, ".msgpack"):
		err = msgpack.Unmarshal(payload, &doc)
	default:
		err = json.Unmarshal(payload, &doc)
	}
	if err != nil {
		t.Fatalf("%s: part %q: %v", filter, payload, err)
	}
	return doc
}

// mergeDeep merges part into doc key by key, as a client merges parts.
func mergeDeep(doc, part map[string]any) {
	for k, v := range part {
		if pm, ok := v.(map[string]any); ok {
			if dm, ok := doc[k].(map[string]any); ok {
				mergeDeep(dm, pm)
				continue
			}
		}
		doc[k] = v
	}
}

// subTree reports whether every value of got is in whole, at its place.
func subTree(got, whole map[string]any) bool {
	for k, v := range got {
		if gm, ok := v.(map[string]any); ok {
			wm, ok := whole[k].(map[string]any)
			if !ok || !subTree(gm, wm) {
				return false
			}
			continue
		}
		if w, ok := whole[k]; !ok || !reflect.DeepEqual(v, w) {
			return false
		}
	}
	return true
}

// countLeaves counts the values of a decoded tree that are not objects.
func countLeaves(m map[string]any) int {
	n := 0
	for _, v := range m {
		if vm, ok := v.(map[string]any); ok {
			n += countLeaves(vm)
		} else {
			n++
		}
	}
	return n
}

// TestSnapshotSweepCodecs: a deep tree (a # filter, unicode keys, a
// 100-byte value) in every codec, to clients with and without Topic
// Aliases and Maximum Packet Sizes from 90 up past the whole snapshot,
// with the longest subscription identifier: no packet over the limit
// (roomClient.next), parts that merge key by key to the whole snapshot
// less the values left out as too large (as many as TooLarge counted),
// and, nothing left out, one message exactly when the whole one's packet
// fits.
func TestSnapshotSweepCodecs(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	for i := range 12 {
		w.pub(t, fmt.Sprintf("sw/é€😀/k%d/x", i), strconv.Itoa(i*1000))
		w.pub(t, fmt.Sprintf("sw/日本/k%d", i), `"`+strings.Repeat("v", i)+`"`)
	}
	w.pub(t, "sw/big", `"`+strings.Repeat("B", 100)+`"`)
	w.pub(t, "sw/"+strings.Repeat("long", 20)+"/a/b/c/d", "true")
	settle(t, b)
	const subID = 268435455
	for _, codec := range []string{"", ".cbor", ".msgpack"} {
		filter := "$sync" + codec + "/sw/#"
		for _, aliases := range []uint16{0, 4} {
			ref := dialRoomWith(t, b, fmt.Sprintf("ref%s%d", codec, aliases), 0, aliases)
			parts, _ := ref.readSnapshot(t, filter, subID)
			if len(parts) != 1 {
				t.Fatalf("%s: %d parts without a limit", filter, len(parts))
			}
			whole := decodeTree(t, filter, parts[0])
			// The whole snapshot's packet: the reference's, by its first
			// subscription (topic and alias both, where aliases are allowed).
			size := 0
			{
				c := dialRoomWith(t, b, fmt.Sprintf("sz%s%d", codec, aliases), 0, aliases)
				c.subscribe(t, filter, subID)
				_, size = c.next(t)
			}
			for limit := 90; limit <= size+3; limit += 4 {
				id := fmt.Sprintf("c%s%d-%d", codec, aliases, limit)
				c := dialRoomWith(t, b, id, limit, aliases)
				tooLarge := b.stats.TooLarge.Load()
				parts, _ := c.readSnapshot(t, filter, subID)
				c.nc.Close()
				if parts == nil {
					continue // refused: a value does not fit
				}
				got := map[string]any{}
				for _, p := range parts {
					mergeDeep(got, decodeTree(t, filter, p))
				}
				// A value that alone fits no part is left out (SplitSkip),
				// each counted in TooLarge: the parts merge to the whole
				// without exactly as many values as were counted.
				left := int(b.stats.TooLarge.Load() - tooLarge)
				if !subTree(got, whole) || countLeaves(whole)-countLeaves(got) != left {
					t.Fatalf("%s: %d parts merge to %v (%d values left out), want %v", id, len(parts), got, left, whole)
				}
				if left > 0 {
					continue
				}
				if (size <= limit) != (len(parts) == 1) {
					t.Errorf("%s: %d parts; the whole snapshot is a %d-byte packet", id, len(parts), size)
				}
			}
			t.Logf("%s aliases %d: whole snapshot %d bytes", filter, aliases, size)
		}
	}
}
