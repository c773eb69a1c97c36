package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/rs/zerolog"
)

// servePprof serves Go's profiles (/debug/pprof/: heap, CPU, goroutines,
// allocations) on addr, for `mote broker --pprof ADDR`: a listener of its
// own, never the HTTP API's, so profiles are never exposed by accident. A
// host-less address (":6060") is bound to loopback. It returns the
// address it listens on and a function that stops it.
func servePprof(addr string, log zerolog.Logger) (net.Addr, func(), error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--pprof %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, nil, fmt.Errorf("--pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("pprof listener stopped")
		}
	}()
	log.Warn().Str("pprof", l.Addr().String()).Msg("profiles served at http://" + l.Addr().String() + "/debug/pprof/")
	return l.Addr(), func() { srv.Close(); <-done }, nil
}
