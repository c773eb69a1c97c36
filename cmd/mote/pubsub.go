package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/wire"
)

// conn are the connection flags shared by pub and sub (mosquitto's names).
type connFlags struct {
	host, user, pass, id, url string
	port                      int
	qos                       int
	codec                     string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.host, "h", "localhost", "broker host")
	fs.IntVar(&c.port, "p", 1883, "broker port")
	fs.StringVar(&c.url, "url", "", "broker URL instead of -h/-p (tcp://host:port or ws://host:port/mqtt)")
	fs.StringVar(&c.id, "i", "", "client id (default: assigned by the broker)")
	fs.StringVar(&c.user, "u", "", "username")
	fs.StringVar(&c.pass, "P", "", "password")
	fs.IntVar(&c.qos, "q", 0, "QoS 0, 1 or 2")
	fs.StringVar(&c.codec, "codec", "json", "tree codec: json or cbor")
}

func (c *connFlags) dial(ctx context.Context) (*client.Client, wire.Codec, error) {
	codec, err := wire.ParseCodec(c.codec)
	if err != nil {
		return nil, 0, fmt.Errorf("-codec: %w", err)
	}
	if c.qos < 0 || c.qos > 2 {
		return nil, 0, fmt.Errorf("-q %d: want 0, 1 or 2", c.qos)
	}
	addr := c.url
	if addr == "" {
		addr = net.JoinHostPort(c.host, strconv.Itoa(c.port))
	}
	cl, err := client.Dial(ctx, addr, client.Options{ClientID: c.id, Username: c.user, Password: c.pass, CleanStart: true})
	return cl, codec, err
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func runPub(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote pub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	topic := fs.String("t", "", "topic (for -tree: T of $tree/T; for -set: the filter)")
	message := fs.String("m", "", "message payload (a JSON tree with -tree)")
	lines := fs.Bool("l", false, "publish each line of standard input as a message")
	null := fs.Bool("n", false, "publish an empty message")
	retain := fs.Bool("r", false, "retain")
	asTree := fs.Bool("tree", false, "publish -m as a tree to $tree/T (JSON in, sent in -codec)")
	replace := fs.Bool("replace", false, "with -tree: delete retained rows under T that the tree omits")
	set := fs.Bool("set", false, "publish -m to $set/F: every existing row matching F takes it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *topic == "" {
		fmt.Fprintln(stderr, "mote pub: -t is required")
		return errUsage
	}
	cl, codec, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	send := func(payload string) error {
		switch {
		case *set:
			return cl.Set(ctx, *topic, []byte(payload), byte(cf.qos))
		case *asTree:
			d := json.NewDecoder(strings.NewReader(payload))
			d.UseNumber()
			var v any
			if err := d.Decode(&v); err != nil {
				return fmt.Errorf("-m is not a JSON tree: %w", err)
			}
			var tree any = json.RawMessage(payload)
			if codec == wire.CodecCBOR {
				tree = numbers(v)
			}
			return cl.PublishTree(ctx, *topic, tree, client.PublishOptions{QoS: byte(cf.qos), Retain: *retain, Codec: codec, Replace: *replace})
		}
		return cl.Publish(ctx, *topic, []byte(payload), client.PublishOptions{QoS: byte(cf.qos), Retain: *retain})
	}
	switch {
	case *lines:
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), 256<<20)
		for sc.Scan() {
			if err := send(sc.Text()); err != nil {
				return err
			}
		}
		return sc.Err()
	case *null:
		return send("")
	case *message == "":
		fmt.Fprintln(stderr, "mote pub: one of -m, -l or -n is required")
		return errUsage
	}
	return send(*message)
}

func runSub(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote sub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	var topics listFlag
	fs.Var(&topics, "t", "filter to subscribe to (repeatable)")
	verbose := fs.Bool("v", false, "print the topic before each message")
	count := fs.Int("C", 0, "exit after this many messages")
	wait := fs.Duration("W", 0, "exit after this long (e.g. 10s)")
	sync := fs.Bool("sync", false, "subscribe to $sync/F: a snapshot, then deltas, pretty-printed")
	treeOnly := fs.Bool("tree", false, "subscribe to $tree/F: deltas only, pretty-printed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(topics) == 0 {
		fmt.Fprintln(stderr, "mote sub: -t is required")
		return errUsage
	}
	mode := client.Plain
	switch {
	case *sync && *treeOnly:
		fmt.Fprintln(stderr, "mote sub: -sync and -tree exclude each other")
		return errUsage
	case *sync:
		mode = client.Sync
	case *treeOnly:
		mode = client.Tree
	}
	if *wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *wait)
		defer cancel()
	}
	cl, codec, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	got := make(chan client.Message, 1024)
	for _, t := range topics {
		if err := cl.Subscribe(ctx, t, mode, codec, byte(cf.qos), func(m client.Message) { got <- m }); err != nil {
			return err
		}
	}
	for n := 0; *count == 0 || n < *count; n++ {
		select {
		case m := <-got:
			printMessage(stdout, m, mode, *verbose)
		case <-cl.Done():
			return errors.New("connection closed by the broker")
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil
			}
			return nil
		}
	}
	return nil
}

func printMessage(w io.Writer, m client.Message, mode client.Mode, verbose bool) {
	if mode == client.Plain {
		if verbose {
			fmt.Fprintf(w, "%s %s\n", m.Topic, m.Payload)
		} else {
			fmt.Fprintf(w, "%s\n", m.Payload)
		}
		return
	}
	kind := "delta"
	if m.Snapshot {
		kind = "snapshot"
	}
	if m.Part != "" {
		kind += " part " + m.Part
	}
	out, err := json.MarshalIndent(m.Tree, "", "  ")
	if err != nil { // CBOR byte strings and the like: fall back to Go syntax
		out = []byte(fmt.Sprintf("%#v", m.Tree))
	}
	fmt.Fprintf(w, "# %s %s seq %d at %s\n%s\n", m.Topic, kind, m.Seq, time.Now().Format(time.TimeOnly), out)
}

// numbers turns json.Number into int64, uint64 or float64, so integers stay
// integers in CBOR.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		if u, err := strconv.ParseUint(x.String(), 10, 64); err == nil {
			return u
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}
