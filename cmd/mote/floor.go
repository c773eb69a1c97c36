package main

import (
	"context"
	"flag"
	"io"
	"log/slog"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/bench/floor"
)

// runFloor is `mote floor`: the least MQTT 3.1.1 broker in Go (package
// bench/floor), what `mote bench` measures as go-floor: the floor a
// goroutine-per-connection Go broker cannot go below. Not a broker to
// run: no retained messages, no sessions, QoS 0 delivery only. With
// --hold it is go-hold: it answers CONNECTs and reads nothing more.
func runFloor(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("tcp", "127.0.0.1:1883", "TCP listener address")
	pprofAddr := fs.String("pprof", "", "serve Go profiles at ADDR/debug/pprof/ (off if empty)")
	hold := fs.Bool("hold", false, "answer each CONNECT, then hold the connection and read nothing more (go-hold: what a Go broker pays for an idle net.Conn at the least)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pprofAddr != "" {
		_, stop, err := servePprof(*pprofAddr, zerolog.New(stderr))
		if err != nil {
			return err
		}
		defer stop()
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if *hold {
		return floor.ListenAndHold(ctx, *addr, log)
	}
	return floor.ListenAndServe(ctx, *addr, log)
}
