package broker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/internal/spec"
)

func TestSyncSnapshotThenDelta(t *testing.T) {
	b := start(t, Options{})
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "$tree/light/bedroom", 1, true, `{"is_on":1,"brightness":55}`)
	dev.pub(t, "light/livingroom/is_on", 1, true, `0`)
	settle(t, b)
	app := dial3(t, b, "app", true)
	if q := app.sub(t, "$sync/light/+/is_on", 1); q != 1 {
		t.Fatalf("granted QoS %d", q)
	}
	got := app.wait(t, 1)
	if got[0].topic != "$sync/light/+/is_on" || !jsonEqual(t, got[0].payload, `{"bedroom":1,"livingroom":0}`) || got[0].retained {
		t.Fatalf("snapshot %+v", got[0])
	}
	dev.pub(t, "$tree/light/+/is_on", 1, true, `{"bedroom":0,"hall":1}`)
	got = app.wait(t, 2)
	if !jsonEqual(t, got[1].payload, `{"bedroom":0,"hall":1}`) || got[1].qos != 1 {
		t.Fatalf("delta %+v", got[1])
	}
	// Rows of tree publishes are retained messages for plain subscribers.
	plain := dial3(t, b, "plain", true)
	plain.sub(t, "light/#", 0)
	want := map[string]string{"light/bedroom/is_on": "0", "light/bedroom/brightness": "55", "light/livingroom/is_on": "0", "light/hall/is_on": "1"}
	for _, m := range plain.wait(t, len(want)) {
		if want[m.topic] != m.payload || !m.retained {
			t.Errorf("plain retained %+v", m)
		}
	}
	plain.quiet(t, len(want))
	app.quiet(t, 2)
}

// TestSpecSnapshotsEndToEnd runs every snapshot example of the SPEC through
// the broker, in JSON, CBOR and MessagePack via the Go client, and via a plain MQTT
// 3.1.1 client subscribing to $sync itself.
func TestSpecSnapshotsEndToEnd(t *testing.T) {
	for _, ex := range spec.Snapshots {
		t.Run(ex.Name, func(t *testing.T) {
			b := start(t, Options{})
			dev := dial3(t, b, "dev", true)
			for topic, payload := range ex.Rows {
				if strings.HasPrefix(topic, "$") { // clients may not publish there
					loadRow(b, topic, payload)
					continue
				}
				dev.pub(t, topic, 1, true, payload)
			}
			settle(t, b)
			mc := mote(t, b, "app")
			for _, codec := range []client.Codec{client.JSON, client.CBOR, client.MsgPack} {
				col := newCollector()
				if err := mc.Subscribe(testCtx(t), ex.Filter, client.Sync, codec, 1, col.handle); err != nil {
					t.Fatal(err)
				}
				m := col.wait(t, 1)[0]
				if !m.Snapshot || !same(t, m.Tree, ex.Want) {
					t.Errorf("%s: snapshot %v (seq %d), want %s", codec, m.Tree, m.Seq, ex.Want)
				}
			}
			plain := dial3(t, b, "plain", true)
			plain.sub(t, "$sync/"+ex.Filter, 0)
			m := plain.wait(t, 1)[0]
			if m.topic != "$sync/"+ex.Filter || !jsonEqual(t, m.payload, ex.Want) {
				t.Errorf("plain $sync: %+v, want %s", m, ex.Want)
			}
		})
	}
}

// TestSpecPublishesEndToEnd runs every tree publish example of the SPEC
// through the broker and checks the retained rows plain clients then get.
func TestSpecPublishesEndToEnd(t *testing.T) {
	for _, ex := range spec.Publishes {
		t.Run(ex.Name, func(t *testing.T) {
			b := start(t, Options{})
			dev := dial3(t, b, "dev", true)
			for topic, payload := range ex.Before {
				dev.pub(t, topic, 1, true, payload)
			}
			settle(t, b)
			mc := mote(t, b, "pub")
			err := mc.Publish(testCtx(t), ex.Topic, []byte(ex.Payload), client.PublishOptions{QoS: 1, Retain: true})
			want := ex.After
			if ex.Err != "" {
				if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), ex.Err) {
					t.Fatalf("publish: %v, want a refusal containing %q", err, ex.Err)
				}
				want = ex.Before
			} else if err != nil {
				t.Fatal(err)
			}
			settle(t, b)
			plain := dial3(t, b, "plain", true)
			plain.sub(t, "#", 0)
			got := map[string]string{}
			if len(want) > 0 {
				for _, m := range plain.wait(t, len(want)) {
					got[m.topic] = m.payload
				}
			}
			plain.quiet(t, len(want))
			for k, v := range want {
				if got[k] != v {
					t.Errorf("row %s = %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
		})
	}
}

func TestFoldingOneMessage(t *testing.T) {
	b := start(t, Options{})
	app := dial3(t, b, "app", true)
	app.sub(t, "$tree/dev/#", 1)
	var sb strings.Builder
	sb.WriteString("{")
	for i := range 1000 {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(`"d` + itoa(i) + `":{"state":` + itoa(i) + `}`)
	}
	sb.WriteString("}")
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "$tree/dev", 1, true, sb.String())
	m := app.wait(t, 1)[0]
	app.quiet(t, 1)
	if m.topic != "$tree/dev/#" || strings.Count(m.payload, "state") != 1000 {
		t.Fatalf("delta on %s with %d rows", m.topic, strings.Count(m.payload, "state"))
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestWebSocket(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	c, err := client.Dial(ctx, "ws://"+b.WSAddr()+"/mqtt", client.Options{ClientID: "ws", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.PublishTree(ctx, "room", map[string]any{"t": 21.5}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	m, err := c.Mirror(ctx, "room/+", client.JSON, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Get(func(doc any) {
		if !same(t, doc, `{"t":21.5}`) {
			t.Errorf("mirror %v", doc)
		}
	})
	_ = time.Second
}
