package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// NodeOptions configure an embedded NATS server node.
type NodeOptions struct {
	// Name is the node's server name, unique in the cluster (JetStream
	// places replicas by it); required.
	Name string
	// Cluster is the cluster's name, the same on every node; default
	// "mote".
	Cluster string
	// Dir is the node's JetStream store directory; required.
	Dir string
	// Listen is the client address (host:port); default 127.0.0.1 and a
	// free port. Port -1 also means a free port.
	Listen string
	// ClusterListen is the address routes from other nodes come to
	// (host:port). Empty: a node alone, without routes (a node alone
	// must not have one: clustered JetStream would wait for peers).
	ClusterListen string
	// Routes are the other nodes' cluster addresses (host:port, or
	// nats-route:// URLs). A node may list itself: NATS ignores it, so
	// every node of a cluster can be given the same list.
	Routes []string
	// MaxPayload bounds one message (one batch of rows); default 8 MiB.
	MaxPayload int32
	// Ready bounds how long Start waits for the node to listen; default
	// 10 s.
	Ready time.Duration
}

// DefaultMaxPayload is a node's default MaxPayload: 8 MiB.
const DefaultMaxPayload = 8 << 20

// ErrNode is a node that cannot start.
var ErrNode = errors.New("cluster: NATS node")

// Node is an embedded NATS server node with JetStream.
type Node struct {
	srv *server.Server
	log zerolog.Logger
}

// StartNode starts a node and returns once it accepts connections.
func StartNode(o NodeOptions, log zerolog.Logger) (*Node, error) {
	so, err := o.serverOptions()
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrNode, o.Name, err)
	}
	n := &Node{srv: srv, log: log}
	fatal := new(atomic.Pointer[string])
	srv.SetLoggerV2(natsLogger{log: log, fatal: fatal}, false, false, false)
	srv.Start()
	ready := o.Ready
	if ready <= 0 {
		ready = 10 * time.Second
	}
	// NATS logs a listener it cannot open (a port in use) as fatal and
	// goes on without it; ReadyForConnections would then wait its whole
	// bound and not say why. So wait in short steps and give up at the
	// first fatal line, with it.
	for end := time.Now().Add(ready); ; {
		if srv.ReadyForConnections(readyStep) {
			return n, nil
		}
		msg := fatal.Load()
		if msg == nil && time.Now().Before(end) {
			continue
		}
		srv.Shutdown()
		srv.WaitForShutdown()
		why := fmt.Sprintf("not listening after %v", ready)
		if msg != nil {
			why = *msg
		}
		return nil, fmt.Errorf("%w %q: %s (client %s, cluster %s)", ErrNode, o.Name, why, so.Host+":"+strconv.Itoa(so.Port), o.ClusterListen)
	}
}

// readyStep is how long StartNode waits for the node at a time, between
// looks for a fatal log line.
const readyStep = 50 * time.Millisecond

func (o NodeOptions) serverOptions() (*server.Options, error) {
	if o.Name == "" || strings.ContainsAny(o.Name, " \t\n") {
		return nil, fmt.Errorf("%w: name %q: required, without spaces", ErrNode, o.Name)
	}
	if o.Dir == "" {
		return nil, fmt.Errorf("%w %q: a store directory is required", ErrNode, o.Name)
	}
	so := &server.Options{
		ServerName: o.Name,
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   o.Dir,
		MaxPayload: o.MaxPayload,
		NoSigs:     true,
		// The broker's logs name the node; NATS' banner is noise.
		DisableJetStreamBanner: true,
	}
	if so.MaxPayload <= 0 {
		so.MaxPayload = DefaultMaxPayload
	}
	if o.Listen != "" {
		h, p, err := hostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("%w %q: listen: %w", ErrNode, o.Name, err)
		}
		so.Host, so.Port = h, p
	}
	if o.ClusterListen == "" {
		if len(o.Routes) > 0 {
			return nil, fmt.Errorf("%w %q: routes without a cluster address to listen on", ErrNode, o.Name)
		}
		return so, nil
	}
	h, p, err := hostPort(o.ClusterListen)
	if err != nil {
		return nil, fmt.Errorf("%w %q: cluster listen: %w", ErrNode, o.Name, err)
	}
	so.Cluster = server.ClusterOpts{Name: o.Cluster, Host: h, Port: p}
	if so.Cluster.Name == "" {
		so.Cluster.Name = "mote"
	}
	for _, r := range o.Routes {
		if !strings.Contains(r, "://") {
			r = "nats-route://" + r
		}
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("%w %q: route %q: not host:port", ErrNode, o.Name, r)
		}
		so.Routes = append(so.Routes, u)
	}
	return so, nil
}

// hostPort splits host:port; port -1 or 0 is a free port.
func hostPort(a string) (string, int, error) {
	h, ps, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < -1 || p > 65535 {
		return "", 0, fmt.Errorf("port %q", ps)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, p, nil
}

// ClientURL is the URL clients connect to.
func (n *Node) ClientURL() string { return n.srv.ClientURL() }

// ClusterAddr is the address routes come to, nil for a node alone.
func (n *Node) ClusterAddr() *net.TCPAddr { return n.srv.ClusterAddr() }

// Routes is the number of routes to other nodes now.
func (n *Node) Routes() int { return n.srv.NumRoutes() }

// Connect opens a client connection to this node, in process (no
// socket). It retries reconnects forever: the node and its broker live
// and stop together.
func (n *Node) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(n.srv), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to node %s: %w", n.srv.Name(), err)
	}
	return nc, nil
}

// Close shuts the node down and waits until it has.
func (n *Node) Close() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// natsLogger writes NATS' log lines to zerolog, and keeps the first
// fatal one in fatal (NATS logs it and goes on: StartNode reports it).
type natsLogger struct {
	log   zerolog.Logger
	fatal *atomic.Pointer[string]
}

func (l natsLogger) Noticef(f string, v ...any) { l.log.Debug().Msgf(f, v...) }
func (l natsLogger) Warnf(f string, v ...any)   { l.log.Warn().Msgf(f, v...) }
func (l natsLogger) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	l.log.Error().Msg(msg)
	l.fatal.CompareAndSwap(nil, &msg)
}
func (l natsLogger) Errorf(f string, v ...any) { l.log.Error().Msgf(f, v...) }
func (l natsLogger) Debugf(f string, v ...any) { l.log.Debug().Msgf(f, v...) }
func (l natsLogger) Tracef(f string, v ...any) { l.log.Trace().Msgf(f, v...) }
