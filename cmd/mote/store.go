package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

func runStore(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "dump" && args[0] != "stats") {
		fmt.Fprintln(stderr, "usage: mote store stats|dump [-data DIR] [-t FILTER] [--history]\n  dump: one JSON line a row, sorted by topic, except that a parent's grouped rows come together")
		return errUsage
	}
	fs := flag.NewFlagSet("mote store "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", "data", "data directory")
	filter := fs.String("t", "#", "dump: only rows matching this filter")
	history := fs.Bool("history", false, "dump: the stored past values of the rows (SPEC §9), one line each, oldest first")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if err := wire.ValidateFilter(*filter); err != nil {
		return fmt.Errorf("-t: %w", err)
	}
	st, err := retain.Open(*dir)
	if err != nil {
		return err
	}
	defer st.Close()
	if args[0] == "stats" {
		s, err := st.Stats()
		if err != nil {
			return err
		}
		m := st.Meta()
		fmt.Fprintf(stdout, "store     %s\nformat    %d\nrevision  %d (markers kept above %d; last stop clean: %v)\nrows      %d\nbytes     %d (topics and payloads)\nfile      %d bytes\n",
			s.Path, m.Format, m.Rev, m.Floor, m.Clean || m.Fresh, s.Rows, s.Bytes, s.FileSize)
		levels := make([]string, 0, len(s.TopLevel))
		for l := range s.TopLevel {
			levels = append(levels, l)
		}
		slices.Sort(levels)
		for _, l := range levels {
			fmt.Fprintf(stdout, "  %-20s %d rows\n", l+"/…", s.TopLevel[l])
		}
		return nil
	}
	enc := json.NewEncoder(stdout)
	if *history {
		var werr error
		err := st.History(*filter, 0, func(topic string, pairs []retain.Pair) bool {
			for _, p := range pairs {
				if werr = enc.Encode(dumpLine(topic, p.Value, 0, p.Rev, p.MS)); werr != nil {
					return false
				}
			}
			return true
		})
		return errors.Join(err, werr)
	}
	return st.Load(func(r retain.Row) error {
		if !wire.Match(*filter, r.Topic) {
			return nil
		}
		return enc.Encode(dumpLine(r.Topic, r.Value, r.QoS, r.Rev, r.MS))
	})
}

// storeLine is one line of mote store dump.
type storeLine struct {
	Topic   string `json:"topic"`
	Kind    string `json:"kind"`
	QoS     byte   `json:"qos"`
	Rev     uint64 `json:"rev"`
	T       int64  `json:"t"` // Unix ms of the change; 0 unknown
	Payload string `json:"payload,omitempty"`
	Base64  string `json:"base64,omitempty"`
}

func dumpLine(topic string, v wire.Value, qos byte, rev uint64, ms int64) storeLine {
	line := storeLine{Topic: topic, Kind: v.Kind.String(), QoS: qos, Rev: rev, T: ms}
	if v.Kind == wire.None {
		line.Kind = "deleted"
	}
	if utf8.ValidString(v.Data) {
		line.Payload = v.Data
	} else {
		line.Base64 = base64.StdEncoding.EncodeToString([]byte(v.Data))
	}
	return line
}
