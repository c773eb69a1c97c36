package main

import (
	"encoding/base64"
	"encoding/json"
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
		fmt.Fprintln(stderr, "usage: mote store stats|dump [-data DIR] [-t FILTER]")
		return errUsage
	}
	fs := flag.NewFlagSet("mote store "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", "data", "data directory")
	filter := fs.String("t", "#", "dump: only rows matching this filter")
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
		fmt.Fprintf(stdout, "store     %s\nformat    %d\nrows      %d\nbytes     %d (topics and payloads)\nfile      %d bytes\n", s.Path, retain.Format, s.Rows, s.Bytes, s.FileSize)
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
	return st.Load(func(r retain.Row) error {
		if !wire.Match(*filter, r.Topic) {
			return nil
		}
		line := struct {
			Topic   string `json:"topic"`
			Kind    string `json:"kind"`
			QoS     byte   `json:"qos"`
			Payload string `json:"payload,omitempty"`
			Base64  string `json:"base64,omitempty"`
		}{Topic: r.Topic, Kind: r.Value.Kind.String(), QoS: r.QoS}
		if utf8.ValidString(r.Value.Data) {
			line.Payload = r.Value.Data
		} else {
			line.Base64 = base64.StdEncoding.EncodeToString([]byte(r.Value.Data))
		}
		return enc.Encode(line)
	})
}
