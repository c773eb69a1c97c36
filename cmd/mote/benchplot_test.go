package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchPlot runs `mote bench plot` on the bench package's fixed runs:
// a well-formed SVG with a chart per curve and the curve table on stdout;
// bad arguments and bad input are clear errors that write nothing.
func TestBenchPlot(t *testing.T) {
	in, err := filepath.Abs("../../bench/testdata/curves-runs.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "curves.svg")
	var stdout, stderr bytes.Buffer
	if err := runBench(t.Context(), []string{"plot", "-in", in, "-out", out}, &stdout, &stderr); err != nil {
		t.Fatalf("plot: %v\n%s", err, stderr.String())
	}
	svg, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	charts, curves := 0, 0
	d := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not valid XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			for _, a := range se.Attr {
				if a.Name.Local == "class" && a.Value == "chart" {
					charts++
				}
				if a.Name.Local == "class" && a.Value == "curve" {
					curves++
				}
			}
		}
	}
	if charts != 5 || curves != 15 {
		t.Errorf("%d charts and %d lines, want 5 and 15 (three brokers each)", charts, curves)
	}
	if !strings.Contains(stdout.String(), "curve-snapshot") || !strings.Contains(stdout.String(), "not reached in a round") {
		t.Errorf("stdout has no curve table:\n%s", stdout.String())
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	none := filepath.Join(dir, "none.json")
	if err := os.WriteFile(none, []byte(`[{"scenario":"fan-in","variant":"qos0","broker":"mote","value":1}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no -in", []string{"plot", "-out", filepath.Join(dir, "a.svg")}, "-in and -out are required"},
		{"no -out", []string{"plot", "-in", in}, "-in and -out are required"},
		{"missing file", []string{"plot", "-in", filepath.Join(dir, "absent.json"), "-out", filepath.Join(dir, "b.svg")}, "no such file"},
		{"not JSON", []string{"plot", "-in", bad, "-out", filepath.Join(dir, "c.svg")}, "is not mote bench -json output"},
		{"no curves", []string{"plot", "-in", none, "-out", filepath.Join(dir, "d.svg")}, "no curve points"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runBench(t.Context(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
			for _, f := range []string{"a.svg", "b.svg", "c.svg", "d.svg"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					t.Errorf("%s written despite the error", f)
				}
			}
		})
	}
}
