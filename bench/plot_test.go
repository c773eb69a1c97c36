package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"
)

// loadRuns reads the fixed runs of testdata/curves-runs.json: 2 rounds
// of curve-fan-in (two measures at 1, 10, 100, 1,000 publishers),
// curve-snapshot (1k … 1M rows; mochi never reaches 1M) and curve-idle
// (0, 1k, 5k connections) on mote, mochi and mosquitto, and one plain
// fan-in run.
func loadRuns(t *testing.T) []Run {
	t.Helper()
	data, err := os.ReadFile("testdata/curves-runs.json")
	if err != nil {
		t.Fatal(err)
	}
	var runs []Run
	if err := json.Unmarshal(data, &runs); err != nil {
		t.Fatal(err)
	}
	return runs
}

// svgChart is what the tests read back from one chart of the SVG.
type svgChart struct {
	scenario, measure string
	curves            map[string]int // broker → its <path class="curve"> elements
	points            int            // <circle> elements
	legend            []string
	xlabel, ylabel    string
	missing           []string
}

// parseSVG decodes the SVG with encoding/xml (so it must be well-formed)
// and collects each chart's elements.
func parseSVG(t *testing.T, svg []byte) []*svgChart {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	var charts []*svgChart
	var cur *svgChart
	var textClass string
	depth, root := 0, ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not valid XML: %v", err)
		}
		switch tk := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 {
				root = tk.Name.Local
			}
			attr := map[string]string{}
			for _, a := range tk.Attr {
				attr[a.Name.Local] = a.Value
			}
			switch {
			case tk.Name.Local == "g" && attr["class"] == "chart":
				cur = &svgChart{scenario: attr["data-scenario"], measure: attr["data-measure"], curves: map[string]int{}}
				charts = append(charts, cur)
			case cur != nil && tk.Name.Local == "path" && attr["class"] == "curve":
				cur.curves[attr["data-broker"]]++
				if !strings.HasPrefix(attr["d"], "M") {
					t.Errorf("path %q does not start with M", attr["d"])
				}
				for _, f := range strings.FieldsFunc(attr["d"], func(r rune) bool { return r == ' ' || r == 'M' || r == 'L' }) {
					var v float64
					if err := json.Unmarshal([]byte(f), &v); err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
						t.Errorf("path %q: coordinate %q", attr["d"], f)
					}
				}
			case cur != nil && tk.Name.Local == "circle":
				cur.points++
			case tk.Name.Local == "text":
				textClass = attr["class"]
			}
		case xml.CharData:
			if cur == nil {
				continue
			}
			s := string(tk)
			switch textClass {
			case "legend":
				cur.legend = append(cur.legend, s)
			case "xlabel":
				cur.xlabel = s
			case "ylabel":
				cur.ylabel = s
			case "missing":
				cur.missing = append(cur.missing, s)
			}
		case xml.EndElement:
			depth--
			textClass = ""
			if tk.Name.Local == "g" {
				cur = nil
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	return charts
}

func TestPlotStructure(t *testing.T) {
	var svg bytes.Buffer
	if err := Plot(&svg, loadRuns(t), "curves <test> & more"); err != nil {
		t.Fatal(err)
	}
	charts := parseSVG(t, svg.Bytes())
	type want struct {
		scenario, measure, xlabel, ylabel string
		points                            int // circles: brokers × points with X > 0 reached
		missing                           int
	}
	wants := []want{
		{"curve-fan-in", "msgs/s delivered", "publishers (log scale)", "msgs/s delivered", 12, 0},
		{"curve-fan-in", "broker CPU µs/msg", "publishers (log scale)", "broker CPU µs/msg", 12, 0},
		{"curve-snapshot", "s until all rows held", "retained rows (log scale)", "s until all rows held (log scale)", 11, 1},
		{"curve-idle", "RSS MiB", "idle connections (log scale)", "RSS MiB", 6, 0}, // x = 0 has no place on a log axis
		{"curve-idle", "RSS growth KiB/conn", "idle connections (log scale)", "RSS growth KiB/conn", 6, 0},
	}
	if len(charts) != len(wants) {
		t.Fatalf("%d charts, want %d", len(charts), len(wants))
	}
	for i, w := range wants {
		c := charts[i]
		if c.scenario != w.scenario || c.measure != w.measure {
			t.Errorf("chart %d is %s/%s, want %s/%s", i, c.scenario, c.measure, w.scenario, w.measure)
		}
		for _, b := range []string{"mote", "mochi", "mosquitto"} {
			if c.curves[b] != 1 {
				t.Errorf("%s/%s: %d paths for %s, want 1", c.scenario, c.measure, c.curves[b], b)
			}
		}
		if len(c.curves) != 3 {
			t.Errorf("%s/%s: paths for %v, want the three brokers", c.scenario, c.measure, c.curves)
		}
		if strings.Join(c.legend, ",") != "mote,mochi,mosquitto" {
			t.Errorf("%s/%s: legend %q", c.scenario, c.measure, c.legend)
		}
		if c.xlabel != w.xlabel || c.ylabel != w.ylabel {
			t.Errorf("%s/%s: axis labels %q, %q; want %q, %q", c.scenario, c.measure, c.xlabel, c.ylabel, w.xlabel, w.ylabel)
		}
		if c.points != w.points {
			t.Errorf("%s/%s: %d points, want %d", c.scenario, c.measure, c.points, w.points)
		}
		if len(c.missing) != w.missing {
			t.Errorf("%s/%s: notes of points not reached %q, want %d", c.scenario, c.measure, c.missing, w.missing)
		}
	}
	if m := charts[2].missing; len(m) == 1 && !strings.Contains(m[0], "mochi at 1M retained rows") {
		t.Errorf("note %q does not name mochi at 1M", m[0])
	}
	if !strings.Contains(svg.String(), "curves &lt;test&gt; &amp; more") {
		t.Error("the title is not escaped")
	}
}

func TestPlotNoCurves(t *testing.T) {
	runs := []Run{{Scenario: "fan-in", Variant: "qos0", Broker: "mote", Value: 1}}
	if err := Plot(io.Discard, runs, "x"); err == nil {
		t.Fatal("a plot of runs without curves: no error")
	}
}

func TestCurves(t *testing.T) {
	cps := Curves(loadRuns(t))
	find := func(sc, measure, broker string, x float64) CurvePoint {
		t.Helper()
		for _, c := range cps {
			if c.Scenario == sc && c.Measure == measure && c.Broker == broker && c.X == x {
				return c
			}
		}
		t.Fatalf("no point %s %s %s %g", sc, measure, broker, x)
		return CurvePoint{}
	}
	tests := []struct {
		sc, measure, broker string
		x                   float64
		median, min, max    float64
		rounds              int
		failed              bool
	}{
		{"curve-fan-in", "msgs/s delivered", "mote", 10, 51015, 51010, 51020, 2, false},
		{"curve-fan-in", "msgs/s delivered", "mosquitto", 1000, 152015, 152010, 152020, 2, false},
		{"curve-snapshot", "s until all rows held", "mochi", 1e6, 0, 0, 0, 0, true},
		{"curve-idle", "RSS MiB", "mochi", 0, 11, 11, 11, 2, false},
	}
	for _, tt := range tests {
		c := find(tt.sc, tt.measure, tt.broker, tt.x)
		if math.Abs(c.Median-tt.median) > 1e-9 || math.Abs(c.Min-tt.min) > 1e-9 || math.Abs(c.Max-tt.max) > 1e-9 ||
			c.Rounds != tt.rounds || (c.Failed != "") != tt.failed {
			t.Errorf("%s %s %s %g: %+v; want median %g (%g–%g), %d rounds, failed %v", tt.sc, tt.measure, tt.broker, tt.x,
				c, tt.median, tt.min, tt.max, tt.rounds, tt.failed)
		}
	}
	// The table's order: curve, measure, X, broker.
	if c := cps[0]; c.Scenario != "curve-fan-in" || c.Measure != "msgs/s delivered" || c.X != 1 || c.Broker != "mote" {
		t.Errorf("first point %+v", c)
	}
	if c := cps[1]; c.X != 1 || c.Broker != "mochi" {
		t.Errorf("second point %+v", c)
	}
	var table bytes.Buffer
	CurveTable(&table, cps)
	if !strings.Contains(table.String(), "not reached in a round: loading:") {
		t.Errorf("the table does not say mochi's 1M point was not reached:\n%s", table.String())
	}
}

func TestScales(t *testing.T) {
	tests := []struct {
		x, want float64
	}{{0.3, 0.5}, {1, 1}, {1.1, 2}, {3, 5}, {7, 10}, {120, 200}}
	for _, tt := range tests {
		if got := niceStep(tt.x); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("niceStep(%g) = %g, want %g", tt.x, got, tt.want)
		}
	}
	labels := map[float64]string{1: "1", 10: "10", 1000: "1k", 5000: "5k", 1e6: "1M", 2.5e6: "2.5M", 1500: "1.5k", 0.25: "0.25"}
	for x, want := range labels {
		if got := xLabel(x); got != want {
			t.Errorf("xLabel(%g) = %q, want %q", x, got, want)
		}
	}
	s := logScale([]float64{1, 1000}, 0, 300, nil, xLabel)
	if a, b, c := s.at(1), s.at(31.622776601683793), s.at(1000); !(a < b && b < c) || math.Abs((b-a)-(c-b)) > 1e-6 {
		t.Errorf("log scale: 1 → %g, √1000 → %g, 1000 → %g (want evenly spaced)", a, b, c)
	}
	l := linearScale([]float64{3, 47}, 100, 0)
	if l.at(0) != 100 || l.ticks[0] != 0 || l.ticks[len(l.ticks)-1] < 47 {
		t.Errorf("linear scale %+v", l)
	}
}
