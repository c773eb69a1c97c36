package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/mote-mqtt/mote/bench"
)

// runBenchPlot is `mote bench plot`: the curves of a `mote bench -json`
// file drawn as an SVG, and their table on stdout.
func runBenchPlot(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote bench plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "runs, as `mote bench -json` writes them (required)")
	out := fs.String("out", "", "the SVG file to write (required)")
	title := fs.String("title", "mote bench: scaling curves", "the image's title")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || *out == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("bench plot: -in and -out are required, and nothing else")
	}
	data, err := os.ReadFile(*in)
	if err != nil {
		return fmt.Errorf("bench plot: %w", err)
	}
	var runs []bench.Run
	if err := json.Unmarshal(data, &runs); err != nil {
		return fmt.Errorf("bench plot: %s is not mote bench -json output: %w", *in, err)
	}
	var svg bytes.Buffer
	if err := bench.Plot(&svg, runs, *title); err != nil {
		return fmt.Errorf("bench plot: %s: %w", *in, err)
	}
	if err := os.WriteFile(*out, svg.Bytes(), 0o644); err != nil {
		return fmt.Errorf("bench plot: %w", err)
	}
	bench.CurveTable(stdout, bench.Curves(runs))
	return nil
}
