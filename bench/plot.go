package bench

import (
	"bytes"
	"cmp"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Plot draws the curves of runs (mote bench -json) as one SVG image: a
// line chart per curve scenario and measure, its x axis logarithmic, one
// line per broker through the medians of the rounds, each point with a bar
// from its minimum to its maximum, axis labels and a legend. The y axis is
// logarithmic when the medians span more than 30×, else linear from 0.
// Points at X ≤ 0 (no place on a log axis) and points no round reached
// are left out; the latter are listed under their chart.
func Plot(w io.Writer, runs []Run, title string) error {
	charts := chartsOf(Curves(runs))
	if len(charts) == 0 {
		return errors.New("bench: no curve points in these runs (run the curve-* scenarios with -json)")
	}
	const cols = 2
	rows := (len(charts) + cols - 1) / cols
	width, height := cols*chartW, headerH+rows*chartH
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" font-weight="bold">%s</text>`+"\n", marginL, esc(title))
	fmt.Fprintf(&b, `<text x="%d" y="42" fill="#555">median of the rounds at each point; bars: min–max; x axes logarithmic</text>`+"\n", marginL)
	for i, c := range charts {
		c.draw(&b, (i%cols)*chartW, headerH+(i/cols)*chartH)
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

// The layout of one chart, in pixels.
const (
	chartW, chartH   = 640, 380
	headerH          = 56
	marginL, marginR = 72, 130 // the legend goes right
	marginT, marginB = 36, 80  // notes of points not reached go below
)

// chart is one curve scenario's measure: a line per broker.
type chart struct {
	scenario, variant, measure, xName string
	lines                             []line
	missing                           []string // points no round reached
}

// line is one broker's points on a chart, in the order of X.
type line struct {
	broker string
	pts    []CurvePoint
}

// chartsOf groups curve points by scenario, variant and measure (a chart)
// and broker (a line), in the order they first appear.
func chartsOf(cps []CurvePoint) []*chart {
	var out []*chart
	find := func(cp CurvePoint) *chart {
		for _, c := range out {
			if c.scenario == cp.Scenario && c.variant == cp.Variant && c.measure == cp.Measure {
				return c
			}
		}
		c := &chart{scenario: cp.Scenario, variant: cp.Variant, measure: cp.Measure, xName: cp.XName}
		out = append(out, c)
		return c
	}
	for _, cp := range cps {
		c := find(cp)
		if cp.Rounds == 0 {
			c.missing = append(c.missing, fmt.Sprintf("%s at %s %s: %s", cp.Broker, xLabel(cp.X), cp.XName, cp.Failed))
			continue
		}
		if cp.X <= 0 {
			continue
		}
		i := slices.IndexFunc(c.lines, func(l line) bool { return l.broker == cp.Broker })
		if i < 0 {
			c.lines = append(c.lines, line{broker: cp.Broker})
			i = len(c.lines) - 1
		}
		c.lines[i].pts = append(c.lines[i].pts, cp)
	}
	out = slices.DeleteFunc(out, func(c *chart) bool { return len(c.lines) == 0 && len(c.missing) == 0 })
	for _, c := range out {
		for _, l := range c.lines {
			slices.SortFunc(l.pts, func(a, b CurvePoint) int { return cmp.Compare(a.X, b.X) })
		}
	}
	return out
}

// brokerColors are the lines' colors, the same broker the same color on
// every chart.
var brokerColors = map[string]string{"mote": "#1f77b4", "mochi": "#ff7f0e", MosquittoName: "#2ca02c", MosquittoPersistName: "#98df8a",
	Baseline: "#9467bd", Translate: "#8c564b", Memory: "#bcbd22", FloorName: "#d62728", HoldName: "#7f7f7f"}

var otherColors = []string{"#e377c2", "#17becf", "#aec7e8", "#ff9896"}

func colorOf(broker string, i int) string {
	if c, ok := brokerColors[broker]; ok {
		return c
	}
	return otherColors[i%len(otherColors)]
}

// scale maps values to pixels along one axis, linear or logarithmic.
type scale struct {
	log      bool
	lo, hi   float64 // in axis units (log10 of the value when log)
	p0, p1   float64 // pixels of lo and hi
	ticks    []float64
	tickText func(float64) string
}

func (s scale) at(v float64) float64 {
	if s.log {
		v = math.Log10(v)
	}
	if s.hi == s.lo {
		return (s.p0 + s.p1) / 2
	}
	return s.p0 + (v-s.lo)/(s.hi-s.lo)*(s.p1-s.p0)
}

// logScale spans the values vs (all > 0) with half a decade to spare at
// most, ticked at ticks.
func logScale(vs []float64, p0, p1 float64, ticks []float64, text func(float64) string) scale {
	lo, hi := math.Log10(slices.Min(vs)), math.Log10(slices.Max(vs))
	pad := max(0.1, (hi-lo)*0.05)
	if hi-lo < 0.5 {
		pad = 0.25
	}
	return scale{log: true, lo: lo - pad, hi: hi + pad, p0: p0, p1: p1, ticks: ticks, tickText: text}
}

// linearScale spans 0 (or the smallest value, if negative) to a round
// number above the largest value, with about five ticks.
func linearScale(vs []float64, p0, p1 float64) scale {
	lo, hi := min(0, slices.Min(vs)), slices.Max(vs)
	if hi <= lo {
		hi = lo + 1
	}
	step := niceStep((hi - lo) / 5)
	lo, hi = math.Floor(lo/step)*step, math.Ceil(hi/step)*step
	var ticks []float64
	for v := lo; v <= hi+step/2; v += step {
		ticks = append(ticks, v)
	}
	return scale{lo: lo, hi: hi, p0: p0, p1: p1, ticks: ticks, tickText: func(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }}
}

// niceStep is the smallest 1, 2 or 5 × 10^k at least x.
func niceStep(x float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

// decades are the powers of ten from below lo to above hi (log10 units).
func decades(lo, hi float64) []float64 {
	var out []float64
	for e := math.Floor(lo); e <= math.Ceil(hi); e++ {
		if e >= lo && e <= hi {
			out = append(out, math.Pow(10, e))
		}
	}
	return out
}

// xLabel writes a count short: 1, 10, 1k, 5k, 1M.
func xLabel(x float64) string {
	switch {
	case x >= 1e6 && math.Mod(x, 1e5) == 0:
		return strconv.FormatFloat(x/1e6, 'g', -1, 64) + "M"
	case x >= 1e3 && math.Mod(x, 100) == 0:
		return strconv.FormatFloat(x/1e3, 'g', -1, 64) + "k"
	}
	return strconv.FormatFloat(x, 'g', 4, 64)
}

// yLabel writes a value on a log axis: 0.001, 0.1, 10, 1k, 100k.
func yLabel(y float64) string {
	if y >= 1000 {
		return xLabel(y)
	}
	return strconv.FormatFloat(y, 'g', 3, 64)
}

func (c *chart) draw(b *bytes.Buffer, ox, oy int) {
	x0, x1 := float64(ox+marginL), float64(ox+chartW-marginR)
	y0, y1 := float64(oy+chartH-marginB), float64(oy+marginT) // y grows up the page
	var xs, ys, meds []float64
	for _, l := range c.lines {
		for _, p := range l.pts {
			xs = append(xs, p.X)
			ys = append(ys, p.Min, p.Max)
			meds = append(meds, p.Median)
		}
	}
	fmt.Fprintf(b, `<g class="chart" data-scenario="%s" data-measure="%s">`+"\n", esc(c.scenario), esc(c.measure))
	fmt.Fprintf(b, `<text x="%.0f" y="%d" font-size="14" font-weight="bold">%s</text>`+"\n", x0, oy+22,
		esc(fmt.Sprintf("%s (%s): %s", c.scenario, c.variant, c.measure)))
	if len(xs) == 0 {
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f">no point reached</text>`+"\n", x0, (y0+y1)/2)
	} else {
		ticks := slices.Compact(slices.Sorted(slices.Values(xs)))
		xsc := logScale(xs, x0, x1, ticks, xLabel)
		var ysc scale
		if slices.Min(ys) > 0 && slices.Max(meds)/slices.Min(meds) > 30 {
			ysc = logScale(ys, y0, y1, nil, yLabel)
			ysc.ticks = decades(ysc.lo, ysc.hi)
		} else {
			ysc = linearScale(ys, y0, y1)
		}
		c.axes(b, xsc, ysc, x0, x1, y0, y1)
		for i, l := range c.lines {
			col := colorOf(l.broker, i)
			var d strings.Builder
			for j, p := range l.pts {
				cmd := "L"
				if j == 0 {
					cmd = "M"
				}
				fmt.Fprintf(&d, "%s%.1f %.1f ", cmd, xsc.at(p.X), ysc.at(p.Median))
			}
			fmt.Fprintf(b, `<path class="curve" data-broker="%s" d="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n",
				esc(l.broker), strings.TrimSpace(d.String()), col)
			for _, p := range l.pts {
				px := xsc.at(p.X)
				fmt.Fprintf(b, `<line class="range" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n",
					px, ysc.at(p.Min), px, ysc.at(p.Max), col)
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s</title></circle>`+"\n",
					px, ysc.at(p.Median), col, esc(fmt.Sprintf("%s at %s %s: %.4g (%.4g–%.4g), %d rounds",
						l.broker, xLabel(p.X), p.XName, p.Median, p.Min, p.Max, p.Rounds)))
			}
		}
	}
	// The legend, right of the plot.
	for i, l := range c.lines {
		ly := int(y1) + 8 + i*18
		fmt.Fprintf(b, `<rect x="%.0f" y="%d" width="14" height="4" fill="%s"/>`+"\n", x1+12, ly, colorOf(l.broker, i))
		fmt.Fprintf(b, `<text class="legend" x="%.0f" y="%d">%s</text>`+"\n", x1+32, ly+6, esc(l.broker))
	}
	for i, m := range c.missing {
		if i == 2 {
			m = fmt.Sprintf("and %d more not reached", len(c.missing)-2)
		}
		fmt.Fprintf(b, `<text class="missing" x="%.0f" y="%.0f" fill="#b00" font-size="11">not reached: %s</text>`+"\n",
			x0, y0+50+float64(i)*14, esc(truncate(m, 90)))
		if i == 2 {
			break
		}
	}
	b.WriteString("</g>\n")
}

// axes draws the frame, ticks, grid lines and axis labels.
func (c *chart) axes(b *bytes.Buffer, xsc, ysc scale, x0, x1, y0, y1 float64) {
	fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", x0, y1, x1-x0, y0-y1)
	for _, t := range xsc.ticks {
		px := xsc.at(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#ddd"/>`+"\n", px, y1, px, y0)
		fmt.Fprintf(b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", px, y0+16, esc(xsc.tickText(t)))
	}
	for _, t := range ysc.ticks {
		py := ysc.at(t)
		fmt.Fprintf(b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, py, x1, py)
		fmt.Fprintf(b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-6, py+4, esc(ysc.tickText(t)))
	}
	fmt.Fprintf(b, `<text class="xlabel" x="%.0f" y="%.0f" text-anchor="middle">%s (log scale)</text>`+"\n", (x0+x1)/2, y0+34, esc(c.xName))
	ylab := c.measure
	if ysc.log {
		ylab += " (log scale)"
	}
	fmt.Fprintf(b, `<text class="ylabel" transform="translate(%.0f %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n",
		x0-52, (y0+y1)/2, esc(ylab))
}

func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// esc escapes text for XML.
func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s)) //nolint:errcheck // a strings.Builder does not fail
	return b.String()
}
