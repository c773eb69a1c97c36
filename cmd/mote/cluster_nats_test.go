package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/cluster"
	"github.com/mote-mqtt/mote/wire"
)

// TestClusterExternalNATSNames: SPEC §12, brokers "started with the same
// cluster configuration (NATS JetStream underneath, external or embedded
// in each broker) are one broker" — and brokers of another configuration
// are not. Three brokers share one external NATS server (--nats): two of
// cluster "home", one of cluster "office". A row written on one home
// node is on the other; the office node never sees it, though it sees
// its own write (which, were the clusters one log, would come after
// home's).
func TestClusterExternalNATSNames(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and three cluster brokers")
	}
	dir := t.TempDir()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	srv, err := cluster.StartNode(cluster.NodeOptions{Name: "shared", Dir: filepath.Join(dir, "nats")}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := func(name, node string) *broker.Broker {
		t.Helper()
		opts := broker.Options{TCP: "127.0.0.1:0", WS: "off", AllowAnonymous: true, Log: log}
		cn, err := openCluster(ctx, clusterConfig{Name: name, Node: node, NATS: []string{srv.ClientURL()}, Replicas: 1},
			filepath.Join(dir, name+"-"+node), &opts, log)
		if err != nil {
			t.Fatalf("%s/%s: %v", name, node, err)
		}
		b, err := broker.New(opts)
		if err != nil {
			cn.close()
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			b.Close()
			cn.close()
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close(); cn.close() })
		return b
	}
	home1, home2, office := start("home", "a"), start("home", "b"), start("office", "a")
	p := broker.Principal{ClientID: "test"}
	write := func(b *broker.Broker, topic string) {
		t.Helper()
		if err := b.Publish(ctx, p, broker.Message{Topic: topic, Payload: []byte("1"), QoS: 1, Retain: true}); err != nil {
			t.Fatalf("write %s: %v", topic, err)
		}
	}
	tree := func(b *broker.Broker) string {
		t.Helper()
		got, _, err := b.Tree(ctx, p, "x/#", wire.CodecJSON)
		if err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	write(home1, "x/home")
	for tree(home2) != `{"home":1}` {
		if ctx.Err() != nil {
			t.Fatalf("home node b: %s, want home's row", tree(home2))
		}
		time.Sleep(10 * time.Millisecond)
	}
	write(office, "x/office")
	if got := tree(office); got != `{"office":1}` {
		t.Errorf("office: %s, want only its own row", got)
	}
	if got := tree(home1); strings.Contains(got, "office") {
		t.Errorf("home node a: %s has office's row", got)
	}
	// A name that cannot name a NATS stream and subject is refused, not
	// mangled into another cluster's.
	for _, name := range []string{"a.b", "a b", "a*", "a>", "a/b"} {
		opts := broker.Options{}
		if _, err := openCluster(ctx, clusterConfig{Name: name, Node: "z", NATS: []string{srv.ClientURL()}, Replicas: 1}, filepath.Join(dir, "bad"), &opts, log); err == nil || !strings.Contains(err.Error(), "name") {
			t.Errorf("cluster name %q: %v", name, err)
		}
	}
}
