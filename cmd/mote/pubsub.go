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
	fs.StringVar(&c.codec, "codec", "json", "tree codec: json, cbor or msgpack")
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
			if codec != wire.CodecJSON {
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
	history := fs.Bool("history", false, "subscribe to $hist/F: the rows' past values as [t, value] pairs, then deltas")
	var since uint64
	var hasSince bool
	fs.Func("since", "with -sync: resume from revision `R` (mote-since): the broker answers with only what changed after R if it can", func(s string) error {
		v, err := strconv.ParseUint(s, 10, 64)
		since, hasSince = v, true
		return err
	})
	every := fs.Duration("every", 0, "with -sync, -tree or -history: paced deltas, at most one per `interval` (whole ms, 1ms to 1h; e.g. 250ms)")
	from := fs.String("from", "", "with -history: pairs at or after `time` (Unix ms, RFC 3339, a date, or a signed duration from now such as -1h)")
	to := fs.String("to", "", "with -history: pairs at or before `time` (as -from)")
	limit := fs.Int("limit", 0, "with -history: at most `n` pairs per row, the newest")
	if err := fs.Parse(args); err != nil {
		return err
	}
	usage := func(msg string) error {
		fmt.Fprintln(stderr, "mote sub: "+msg)
		return errUsage
	}
	if len(topics) == 0 {
		return usage("-t is required")
	}
	mode := client.Plain
	var opts []client.SubscribeOption
	switch {
	case btoi(*sync)+btoi(*treeOnly)+btoi(*history) > 1:
		return usage("-sync, -tree and -history exclude each other")
	case *sync:
		mode = client.Sync
	case *treeOnly:
		mode = client.Tree
	case *history:
		mode = client.Sync
		opts = append(opts, client.WithHistory())
	}
	if hasSince {
		if !*sync {
			return usage("-since needs -sync")
		}
		opts = append(opts, client.Since(since))
	}
	if *every != 0 {
		if mode == client.Plain {
			return usage("-every needs -sync, -tree or -history")
		}
		opts = append(opts, client.Interval(*every))
	}
	if (*from != "" || *to != "" || *limit != 0) && !*history {
		return usage("-from, -to and -limit need -history")
	}
	now := time.Now()
	for _, tf := range []struct {
		name, val string
		opt       func(time.Time) client.SubscribeOption
	}{{"-from", *from, client.HistoryFrom}, {"-to", *to, client.HistoryTo}} {
		if tf.val == "" {
			continue
		}
		t, err := parseTime(tf.val, now)
		if err != nil {
			return usage(tf.name + ": " + err.Error())
		}
		opts = append(opts, tf.opt(t))
	}
	if *limit != 0 {
		opts = append(opts, client.HistoryLimit(*limit))
	}
	if err := client.CheckOptions(mode, opts...); err != nil {
		return usage(err.Error())
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
		if err := cl.Subscribe(ctx, t, mode, codec, byte(cf.qos), func(m client.Message) { got <- m }, opts...); err != nil {
			return err
		}
	}
	for n := 0; *count == 0 || n < *count; n++ {
		select {
		case m := <-got:
			printMessage(stdout, m, mode, *history, *verbose)
		case <-cl.Done():
			return errors.New("connection closed by the broker")
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// parseTime reads a -from/-to time: Unix milliseconds (1700000000000),
// RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02, local midnight),
// "now", or a signed duration from now (-1h, -90m, +10s).
func parseTime(s string, now time.Time) (time.Time, error) {
	switch {
	case s == "now":
		return now, nil
	case s[0] == '-' || s[0] == '+':
		d, err := time.ParseDuration(s)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q: not a duration (-1h, -30m, +10s)", s)
		}
		return now.Add(d), nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, s, time.Local); err == nil {
		return t, nil
	}
	if _, err := time.ParseDuration(s); err == nil {
		return time.Time{}, fmt.Errorf("%q: give a duration a sign (-%s is that long ago)", s, s)
	}
	return time.Time{}, fmt.Errorf("%q: want Unix milliseconds, RFC 3339, a date (2006-01-02), now, or a signed duration (-1h)", s)
}

// printMessage prints one message: a plain one as mosquitto_sub does, a
// tree one after a header line
//
//	# <topic> <kind>[ part i/n] seq <mote-seq>[ rev <mote-rev>] at <time>
//
// where kind is snapshot, resume (the answer to -since: merge it into the
// copy that had revision R), history (the first message of -history) or
// delta; rev is shown when the broker sends it.
func printMessage(w io.Writer, m client.Message, mode client.Mode, history, verbose bool) {
	if mode == client.Plain {
		if verbose {
			fmt.Fprintf(w, "%s %s\n", m.Topic, m.Payload)
		} else {
			fmt.Fprintf(w, "%s\n", m.Payload)
		}
		return
	}
	kind := "delta"
	switch {
	case m.Resume:
		kind = "resume"
	case m.Snapshot && history:
		kind = "history"
	case m.Snapshot:
		kind = "snapshot"
	}
	if m.Part != "" {
		kind += " part " + m.Part
	}
	rev := ""
	if m.HasRev {
		rev = " rev " + strconv.FormatUint(m.Rev, 10)
	}
	out, err := json.MarshalIndent(m.Tree, "", "  ")
	if err != nil { // CBOR byte strings and the like: fall back to Go syntax
		out = []byte(fmt.Sprintf("%#v", m.Tree))
	}
	fmt.Fprintf(w, "# %s %s seq %d%s at %s\n%s\n", m.Topic, kind, m.Seq, rev, time.Now().Format(time.TimeOnly), out)
}

// numbers turns json.Number into int64, uint64 or float64, so integers stay
// integers in CBOR and MessagePack.
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
