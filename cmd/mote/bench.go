package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mote-mqtt/mote/bench"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "plot" {
		return runBenchPlot(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("mote bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	smoke := fs.Bool("smoke", false, "tiny sizes: every scenario in seconds (CI)")
	rounds := fs.Int("rounds", 3, "rounds per scenario and broker (A B A B …)")
	asJSON := fs.Bool("json", false, "print every run as JSON instead of the table")
	baseline := fs.String("baseline", "", "another mote binary (an earlier build) to run beside this one, as "+bench.Baseline)
	translators := fs.Bool("translators", false, "also run Mote with 100 translators that match no scenario's topics, as "+bench.Translate)
	memory := fs.Bool("memory", false, "also run Mote with nothing persisted (--data off, as Mosquitto runs here), as "+bench.Memory+"; with -baseline, that build too, as "+bench.BaseMemory)
	dashboards := fs.Int("live-subs", 0, "live-dashboard subscribers (0: the default, 500): fewer show whether the bench's own clients keep up")
	only := fs.String("brokers", "", "comma-separated brokers to run (mote, mochi, "+bench.Baseline+", "+bench.Translate+", "+bench.Memory+", "+bench.BaseMemory+", "+bench.MosquittoName+", "+bench.MosquittoPersistName+", "+bench.FloorName+", "+bench.HoldName+"); default all but "+bench.MosquittoPersistName+", "+bench.FloorName+" and "+bench.HoldName)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mote bench [-smoke] [-rounds N] [-json] [scenario … | curves]\n       mote bench plot -in runs.json -out curves.svg\nscenarios: %v\n", bench.Names())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench: own binary: %w", err)
	}
	brokers := []*bench.Broker{bench.Mote(self), bench.Mochi(self)}
	if *baseline != "" {
		brokers = append(brokers, bench.MoteAs(bench.Baseline, *baseline))
	}
	if *translators {
		brokers = append(brokers, bench.MoteTranslate(self))
	}
	if *memory {
		brokers = append(brokers, bench.MoteMemory(self))
		if *baseline != "" {
			brokers = append(brokers, bench.MoteMemoryAs(bench.BaseMemory, *baseline))
		}
	}
	if m := bench.Mosquitto(); m != nil {
		brokers = append(brokers, m)
	} else {
		fmt.Fprintln(stderr, "mote bench: mosquitto is not installed (apt-get install mosquitto): running Mote and mochi only")
	}
	if *only != "" {
		brokers = append(brokers, bench.GoFloor(self), bench.GoHold(self)) // only when named
		if m := bench.MosquittoPersist(); m != nil {
			brokers = append(brokers, m) // only when named: Mosquitto saving to disk every second
		}
		keep := strings.Split(*only, ",")
		brokers = slices.DeleteFunc(brokers, func(b *bench.Broker) bool { return !slices.Contains(keep, b.Name) })
		if len(brokers) == 0 {
			return fmt.Errorf("bench: -brokers %q names none of the brokers", *only)
		}
	}
	sizes := bench.DefaultSizes()
	if *smoke {
		sizes = bench.SmokeSizes()
	}
	if *dashboards > 0 {
		sizes.Dashboards = *dashboards
	}
	names := fs.Args()
	if len(names) == 0 && !*smoke {
		// The curves take most of an hour at full size: run when named
		// ("curves"); the smoke run has them all.
		for _, n := range bench.Names() {
			if !strings.HasPrefix(n, bench.CurvePrefix) {
				names = append(names, n)
			}
		}
	}
	runs, err := bench.Suite(ctx, bench.Config{Sizes: sizes, Rounds: *rounds, Scenarios: names, Brokers: brokers, Progress: stderr})
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(runs); jerr != nil {
			return jerr
		}
	} else {
		bench.Table(stdout, bench.Summarize(runs))
		fmt.Fprintln(stdout)
		bench.RatioTable(stdout, bench.Ratios(runs))
		if cps := bench.Curves(runs); len(cps) > 0 {
			fmt.Fprintln(stdout)
			bench.CurveTable(stdout, cps)
		}
	}
	if err != nil {
		return err
	}
	for _, r := range runs {
		if r.Err != "" {
			return fmt.Errorf("bench: %s/%s on %s: %s", r.Scenario, r.Variant, r.Broker, r.Err)
		}
	}
	return nil
}

// runMochi is a bare mochi-mqtt server (no Mote hooks), what `mote bench`
// compares Mote with: the same mochi version, its defaults, anyone allowed.
func runMochi(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote mochi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("tcp", "127.0.0.1:1883", "TCP listener address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	if err := s.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *addr})); err != nil {
		return err
	}
	if err := s.Serve(); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}
