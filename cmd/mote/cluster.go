package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/cluster"
)

// clusterConfig is the cluster block of the config file (SPEC §12,
// docs/cluster.md); the --cluster… flags override it.
type clusterConfig struct {
	Name       string   `yaml:"name"`        // the cluster's name: set, the broker is a cluster node
	Node       string   `yaml:"node"`        // this node's name, unique in the cluster (default: the host name)
	Listen     string   `yaml:"listen"`      // where the other nodes' NATS routes come to (host:port)
	Routes     []string `yaml:"routes"`      // the nodes' route addresses (host:port; this node's may be listed)
	NATS       []string `yaml:"nats"`        // an external NATS cluster's URLs, instead of the embedded node
	NATSListen string   `yaml:"nats_listen"` // the embedded node's client address (default: loopback, a free port)
	Replicas   int      `yaml:"replicas"`    // copies of the row log (default: 3 with routes or external NATS, else 1)
	// Bounds of the broker's side (broker.Cluster; zero: its defaults).
	CatchUp         time.Duration `yaml:"catch_up"`          // how long a starting node may take to catch up with the log
	AnswerWait      time.Duration `yaml:"answer_wait"`       // how long a publisher waits for its write to be applied
	MaxWaiting      int           `yaml:"max_waiting"`       // writes waiting for the log, at most
	MaxWaitingBytes int64         `yaml:"max_waiting_bytes"` // their topics and payloads, at most
}

// clusterFlags are the --cluster… flags.
type clusterFlags struct {
	name, node, listen, routes, nats, natsListen *string
	replicas                                     *int
}

func addClusterFlags(fs *flag.FlagSet) clusterFlags {
	return clusterFlags{
		name:       fs.String("cluster", "", "be a node of the cluster of this name (SPEC §12; docs/cluster.md); default: a broker alone"),
		node:       fs.String("cluster-node", "", "this node's name, unique in the cluster (default: the host name)"),
		listen:     fs.String("cluster-listen", "", "the embedded NATS node's route address, where the other nodes connect (e.g. :6222)"),
		routes:     fs.String("cluster-routes", "", "comma-separated route addresses of the cluster's nodes (host:port; this node's may be listed)"),
		nats:       fs.String("nats", "", "comma-separated URLs of an external NATS cluster with JetStream, instead of the embedded node"),
		natsListen: fs.String("nats-listen", "", "the embedded NATS node's client address (default: 127.0.0.1, a free port)"),
		replicas:   fs.Int("cluster-replicas", 0, "copies of the row log, at most the number of NATS nodes (default: 3 with routes or --nats, else 1)"),
	}
}

// merge gives the flags set precedence over the config file's block.
func (f clusterFlags) merge(c clusterConfig) clusterConfig {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&c.Name, *f.name)
	set(&c.Node, *f.node)
	set(&c.Listen, *f.listen)
	set(&c.NATSListen, *f.natsListen)
	if *f.routes != "" {
		c.Routes = splitList(*f.routes)
	}
	if *f.nats != "" {
		c.NATS = splitList(*f.nats)
	}
	if *f.replicas != 0 {
		c.Replicas = *f.replicas
	}
	return c
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// clusterNode is what a cluster node runs beside its broker: the
// embedded NATS node (if any) and the connection; close stops them, after
// the broker.
type clusterNode struct {
	node *cluster.Node
	nc   *nats.Conn
}

func (n *clusterNode) close() {
	if n.nc != nil {
		n.nc.Close()
	}
	if n.node != nil {
		n.node.Close()
	}
}

// openCluster joins the cluster c describes: it starts the embedded NATS
// node (or connects to --nats), opens the row log and this node's copy of
// it in dir, and sets opts.Store and opts.Cluster.
func openCluster(ctx context.Context, c clusterConfig, dir string, opts *broker.Options, log zerolog.Logger) (*clusterNode, error) {
	if c.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("--cluster-node: none given and no host name: %w", err)
		}
		c.Node = h
	}
	if len(c.NATS) > 0 && (c.Listen != "" || len(c.Routes) > 0 || c.NATSListen != "") {
		return nil, errors.New("--nats joins an external NATS cluster: --cluster-listen, --cluster-routes and --nats-listen are the embedded node's")
	}
	names, err := natsNames(c)
	if err != nil {
		return nil, err
	}
	if len(c.Routes) > 0 && c.Listen == "" {
		return nil, errors.New("--cluster-routes needs --cluster-listen (the other nodes route to it)")
	}
	if c.Replicas == 0 {
		c.Replicas = 1
		if len(c.Routes) > 0 || len(c.NATS) > 0 {
			c.Replicas = 3
		}
	}
	if c.CatchUp < 0 || c.AnswerWait < 0 || c.MaxWaiting < 0 || c.MaxWaitingBytes < 0 {
		return nil, errors.New("cluster: catch_up, answer_wait, max_waiting and max_waiting_bytes cannot be negative")
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return nil, fmt.Errorf("--cluster-replicas %d: 1 to 5", c.Replicas)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: data directory: %w", err)
	}
	n := &clusterNode{}
	nlog := log.With().Str("component", "nats").Logger()
	if len(c.NATS) > 0 {
		n.nc, err = nats.Connect(strings.Join(c.NATS, ","), nats.Name("mote-"+c.Node), nats.MaxReconnects(-1))
		if err != nil {
			return nil, fmt.Errorf("cluster: connect to NATS %s: %w", strings.Join(c.NATS, ","), err)
		}
	} else {
		n.node, err = cluster.StartNode(cluster.NodeOptions{
			Name: c.Node, Cluster: c.Name, Dir: filepath.Join(dir, "nats"),
			Listen: c.NATSListen, ClusterListen: c.Listen, Routes: c.Routes,
		}, nlog)
		if err != nil {
			return nil, err
		}
		if n.nc, err = n.node.Connect("mote-" + c.Node); err != nil {
			n.close()
			return nil, err
		}
	}
	lg, err := cluster.OpenLog(ctx, n.nc, cluster.LogOptions{
		Stream:   names.stream,
		Subject:  names.rows,
		Replicas: c.Replicas,
		Ready:    2 * time.Minute, // the other nodes may be starting too
		OnRetry:  func(err error) { log.Warn().Err(err).Msg("cluster: following the log again") },
	})
	if err != nil {
		n.close()
		return nil, err
	}
	id, err := lg.ID(ctx)
	if err != nil {
		n.close()
		return nil, err
	}
	store, err := cluster.OpenStore(dir)
	if err != nil {
		n.close()
		return nil, err
	}
	if err := store.Bind(id); err != nil {
		store.Close()
		n.close()
		return nil, err
	}
	opts.Store = store
	opts.Cluster = &broker.Cluster{Log: lg, Events: cluster.NewEvents(n.nc, names.events, c.Node),
		CatchUp: c.CatchUp, AnswerWait: c.AnswerWait, MaxWaiting: c.MaxWaiting, MaxWaitingBytes: c.MaxWaitingBytes}
	log.Info().Str("cluster", c.Name).Str("node", c.Node).Int("replicas", c.Replicas).Int("routes", len(c.Routes)).Msg("cluster: joined")
	return n, nil
}

// clusterNames are the NATS names of a cluster's row log (JetStream
// stream and subject) and event subject; "" is cluster's default.
type clusterNames struct{ stream, rows, events string }

// natsNames are the NATS names of cluster c. An embedded NATS node
// serves one cluster (its NATS cluster has c's name): the defaults. An
// external NATS may serve several Mote clusters, which must stay apart
// (SPEC §12: the brokers of one cluster configuration are one broker, and
// no other): their names carry c.Name, which must then be a NATS name
// token.
func natsNames(c clusterConfig) (clusterNames, error) {
	if len(c.NATS) == 0 {
		return clusterNames{}, nil
	}
	if c.Name == "" || len(c.Name) > 64 || strings.IndexFunc(c.Name, func(r rune) bool {
		return !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) >= 0 {
		return clusterNames{}, fmt.Errorf("cluster name %.80q: with --nats, 1 to 64 of A-Z, a-z, 0-9, '-' and '_' (it names the cluster's NATS stream and subjects)", c.Name)
	}
	return clusterNames{stream: "MOTE_ROWS_" + c.Name, rows: "mote." + c.Name + ".rows", events: "mote." + c.Name + ".pub"}, nil
}
