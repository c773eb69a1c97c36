package client

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/mote-mqtt/mote/tree"
)

// Mirror is a local copy of a subscribed tree ($sync/F), kept equal to the
// broker's rows: the snapshot (all its parts), then every delta merged in
// with SPEC §3's rules. A gap in mote-seq (a lost QoS 0 delta, a dropped
// message) makes it re-subscribe for a fresh snapshot.
type Mirror struct {
	c      *Client
	filter string
	codec  Codec
	qos    byte

	mu       sync.Mutex
	doc      any
	seq      int64 // last mote-seq merged; -1 before the snapshot
	parts    map[string]bool
	ready    chan struct{} // closed once the first full snapshot is in
	changed  chan struct{} // closed and replaced on every change
	resyncs  int
	onChange func(doc any)
}

// Mirror subscribes to $sync/F and returns once the snapshot is in.
// onChange, if not nil, is called (on the receive goroutine) with the
// copy after every snapshot and delta; it must not keep or change it.
func (c *Client) Mirror(ctx context.Context, filter string, codec Codec, qos byte, onChange func(doc any)) (*Mirror, error) {
	m := &Mirror{c: c, filter: filter, codec: codec, qos: qos, seq: -1,
		ready: make(chan struct{}), changed: make(chan struct{}), onChange: onChange}
	if err := c.Subscribe(ctx, filter, Sync, codec, qos, m.handle); err != nil {
		return nil, err
	}
	select {
	case <-m.ready:
		return m, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("client: mirror %s: %w", filter, ctx.Err())
	}
}

func (m *Mirror) handle(msg Message) {
	m.mu.Lock()
	resync := false
	switch {
	case msg.Seq == 0: // the snapshot, or one part of it
		if m.parts == nil || msg.Part == "" || strings.HasPrefix(msg.Part, "1/") {
			m.doc, m.parts = nil, map[string]bool{}
		}
		if msg.Part == "" {
			m.doc = msg.Tree
		} else {
			m.doc = mergeParts(m.doc, msg.Tree)
			m.parts[msg.Part] = true
		}
		if complete(msg.Part, m.parts) {
			m.seq = 0
			select {
			case <-m.ready:
			default:
				close(m.ready)
			}
		}
	case m.seq < 0: // deltas before the snapshot is whole: wait for it
	case msg.Seq == m.seq+1 || msg.Seq < 0: // MQTT 3.1.1 brokers send no mote-seq
		m.doc = tree.Merge(m.doc, msg.Tree, m.filter)
		if msg.Seq > 0 {
			m.seq = msg.Seq
		}
	default: // a gap: our copy is stale
		m.seq = -1
		m.resyncs++
		resync = true
	}
	doc := m.doc
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	if resync {
		go m.c.Subscribe(context.Background(), m.filter, Sync, m.codec, m.qos, m.handle) //nolint:errcheck // a failure shows as no fresh snapshot
		return
	}
	if m.onChange != nil && m.seq >= 0 {
		m.onChange(doc)
	}
}

// mergeParts deep-merges a snapshot part into what came before.
func mergeParts(doc, part any) any {
	a, ok1 := doc.(map[string]any)
	b, ok2 := part.(map[string]any)
	if !ok1 || !ok2 {
		return part
	}
	for k, v := range b {
		if av, ok := a[k]; ok {
			a[k] = mergeParts(av, v)
		} else {
			a[k] = v
		}
	}
	return a
}

// complete reports whether every part i/n of a snapshot has arrived.
func complete(part string, parts map[string]bool) bool {
	if part == "" {
		return true
	}
	_, n, ok := strings.Cut(part, "/")
	total, err := strconv.Atoi(n)
	return ok && err == nil && len(parts) == total
}

// Get calls fn with the current copy under the mirror's lock; fn must not
// keep or change it.
func (m *Mirror) Get(fn func(doc any)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn(m.doc)
}

// Wait blocks until ok(copy) is true or ctx ends.
func (m *Mirror) Wait(ctx context.Context, ok func(doc any) bool) error {
	for {
		m.mu.Lock()
		done, ch := m.seq >= 0 && ok(m.doc), m.changed
		m.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Resyncs is how many times a gap made the mirror re-subscribe.
func (m *Mirror) Resyncs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resyncs
}
