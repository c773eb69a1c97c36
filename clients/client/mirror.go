package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mote-mqtt/mote/tree"
)

// Mirror is a local copy of a subscribed tree ($sync/F), kept equal to the
// broker's rows: the snapshot (all its parts), then every delta merged in
// with SPEC §3's rules.
//
// It remembers the revision (mote-rev, SPEC §8) its copy reflects. When it
// has to subscribe again — a gap in mote-seq (a lost QoS 0 delta, a
// dropped message), or a reconnect of a Client with
// [Options.AutoReconnect] — it sends mote-since with that revision: the
// broker answers with a resume delta (only the rows that changed since,
// deletions as null), which the Mirror merges into the copy it kept, or
// with a full snapshot, which replaces it. Between the loss and that
// answer the copy is stale: [Mirror.Wait] waits, [Mirror.Get] still shows
// the last copy. A broker without revisions always answers with a full
// snapshot, so this works with it too, just with more bytes.
//
// With [WithHistory] the Mirror keeps a $hist/F tree instead: leaves are
// arrays of [t, value] pairs; each delta appends [receive time in Unix ms,
// value] to every row it names (null for a deleted row), the Mirror
// trimming each array to [HistoryLimit] if set, and appending nothing after
// [HistoryTo]. t of an appended pair is a json.Number for JSON trees and a
// uint64 for CBOR and MessagePack ones, as decoded pairs are. A history
// Mirror subscribes again without mote-since ($hist has no resume) and gets
// its whole history anew.
type Mirror struct {
	c      *Client
	sub    *subscription
	filter string
	codec  Codec
	opts   subOpts
	resub  func() // subscribes again (tests replace it)
	now    func() time.Time

	mu       sync.Mutex
	doc      any
	seq      int64 // last mote-seq merged; -1 before the snapshot
	parts    map[string]bool
	resume   bool // the seq 0 being collected is a resume delta
	rev      uint64
	hasRev   bool
	ready    chan struct{} // closed once the first full snapshot is in
	changed  chan struct{} // closed and replaced on every change
	resyncs  int
	resumes  int
	closed   bool
	onChange func(doc any)
}

// Mirror subscribes to $sync/F and returns once the snapshot is in.
// onChange, if not nil, is called (on the receive goroutine) with the
// copy after every snapshot, resume and delta; it must not keep or change
// it. opts: [Interval] paces the deltas; [WithHistory] and the History
// options keep a history tree instead (see [Mirror]). [Since] is not
// taken: a Mirror starts from a snapshot and resumes by itself.
func (c *Client) Mirror(ctx context.Context, filter string, codec Codec, qos byte, onChange func(doc any), opts ...SubscribeOption) (*Mirror, error) {
	o, err := newSubOpts(Sync, opts)
	if err != nil {
		return nil, err
	}
	if o.hasSince {
		return nil, fmt.Errorf("%w: a Mirror starts from a snapshot and sends Since by itself", ErrOption)
	}
	m := newMirror(c, filter, codec, qos, o, onChange)
	if err := c.subscribe(ctx, m.sub); err != nil {
		return nil, err
	}
	select {
	case <-m.ready:
		return m, nil
	case <-ctx.Done():
		uctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		m.c.unsubscribe(uctx, m.sub.topic, m.sub) //nolint:errcheck // the error that counts is ctx's
		return nil, fmt.Errorf("client: mirror %s: %w", filter, ctx.Err())
	}
}

func newMirror(c *Client, filter string, codec Codec, qos byte, o subOpts, onChange func(doc any)) *Mirror {
	m := &Mirror{c: c, filter: filter, codec: codec, opts: o, seq: -1, now: time.Now,
		ready: make(chan struct{}), changed: make(chan struct{}), onChange: onChange}
	m.sub = &subscription{topic: o.topic(filter, Sync, codec), filter: filter, mode: Sync, codec: codec, qos: qos,
		opts: o, handler: m.handle, since: m.since, dropped: m.dropped}
	m.resub = func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		// A failure (the connection is down) shows as no fresh snapshot;
		// with AutoReconnect the reconnect subscribes again.
		c.send(ctx, m.sub) //nolint:errcheck
	}
	return m
}

// since is the revision to resume from, for the subscription's SUBSCRIBE.
func (m *Mirror) since() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.opts.history {
		return 0, false
	}
	return m.rev, m.hasRev
}

// dropped: the connection is gone, so the copy is stale until the
// subscription's seq 0 comes again.
func (m *Mirror) dropped() {
	m.mu.Lock()
	m.seq = -1
	m.parts = nil
	m.mu.Unlock()
}

func (m *Mirror) handle(msg Message) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	resync, notify := false, false
	switch {
	case msg.Seq == 0: // the snapshot or resume delta, or one part of it
		if m.parts == nil || msg.Part == "" || strings.HasPrefix(msg.Part, "1/") {
			m.parts = map[string]bool{}
			m.resume = msg.Resume
			m.seq = -1
			if !msg.Resume {
				// The copy is being replaced: until the snapshot is whole
				// it reflects no revision to resume from. (A resume cut
				// short leaves the revision as it was: merging the same
				// rows again does no harm.)
				m.doc, m.hasRev = nil, false
			}
		}
		switch {
		case m.resume: // merged into the copy we kept, part by part
			m.doc = tree.Merge(m.doc, msg.Tree, m.filter)
		case msg.Part == "":
			m.doc = msg.Tree
		default:
			m.doc = mergeParts(m.doc, msg.Tree)
		}
		if msg.Part != "" {
			m.parts[msg.Part] = true
		}
		if complete(msg.Part, m.parts) {
			if msg.HasRev {
				m.rev, m.hasRev = msg.Rev, true
			}
			m.seq = 0
			notify = true
			if m.resume {
				m.resumes++
			}
			select {
			case <-m.ready:
			default:
				close(m.ready)
			}
		}
	case m.seq < 0: // deltas before the snapshot is whole: wait for it
	case msg.Seq == m.seq+1 || msg.Seq < 0: // MQTT 3.1.1 brokers send no mote-seq
		if m.opts.history {
			m.doc = m.appendHistory(msg.Tree)
		} else {
			m.doc = tree.Merge(m.doc, msg.Tree, m.filter)
		}
		if msg.Seq > 0 {
			m.seq = msg.Seq
		}
		if msg.HasRev {
			m.rev, m.hasRev = msg.Rev, true
		}
		notify = true
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
		go m.resub()
		return
	}
	if m.onChange != nil && notify {
		m.onChange(doc)
	}
}

// appendHistory appends a delta's values to the history tree, under m.mu.
func (m *Mirror) appendHistory(delta any) any {
	now := m.now()
	if !m.opts.to.IsZero() && now.After(m.opts.to) {
		return m.doc
	}
	var t any = json.Number(strconv.FormatInt(now.UnixMilli(), 10))
	if m.codec != JSON {
		t = uint64(now.UnixMilli())
	}
	return AppendHistory(m.doc, delta, m.filter, t, m.opts.limit)
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

// Wait blocks until ok(copy) is true or ctx ends. It does not look at a
// copy that is stale (after a gap or a lost connection, until the broker
// has answered the new subscription).
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

// Rev is the revision (mote-rev) the copy reflects, and whether the
// broker sent one at all (a broker without SPEC §8 does not).
func (m *Mirror) Rev() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev, m.hasRev
}

// Resyncs is how many times a gap made the mirror re-subscribe.
func (m *Mirror) Resyncs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resyncs
}

// Resumes is how many resume deltas the mirror merged (after a gap or a
// reconnect, when the broker could answer mote-since).
func (m *Mirror) Resumes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resumes
}

// Close ends the mirror's subscription; the copy stays readable.
func (m *Mirror) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	return m.c.unsubscribe(ctx, m.sub.topic, m.sub)
}
