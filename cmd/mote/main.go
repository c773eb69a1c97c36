// Command mote is the Mote broker and its tools:
//
//	mote broker   run the broker (TCP :1883, WebSocket :1884/mqtt, HTTP API and web view :1885, data in ./data)
//	mote pub      publish plain messages or trees
//	mote sub      subscribe, plain or to trees ($sync / $tree)
//	mote store    inspect a store offline (stats, dump)
//	mote translate check FILE   validate a config file's translators offline
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: mote <command> [flags]

commands:
  broker   run the broker
  pub      publish a message or a tree
  sub      subscribe and print what arrives
  store    inspect a stopped broker's store: store stats|dump [-data DIR] [-t FILTER]
  translate validate a config file's translators offline: translate check FILE
  passwd   manage a Mosquitto password file: passwd [-c] [-D] [-b] FILE USER [PASSWORD]
  bench    benchmark Mote against bare mochi-mqtt and Mosquitto: bench [-smoke] [-json] [scenario … | curves]; bench plot -in runs.json -out curves.svg

'mote <command> -help' lists a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case errors.Is(err, errInvalid): // its reasons are printed
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "mote:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// run dispatches a command line; it is main without the process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "broker":
		return runBroker(ctx, args[1:], stderr)
	case "pub":
		return runPub(ctx, args[1:], stdin, stdout, stderr)
	case "sub":
		return runSub(ctx, args[1:], stdout, stderr)
	case "store":
		return runStore(args[1:], stdout, stderr)
	case "passwd":
		return runPasswd(args[1:], stdin, stdout, stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "translate":
		return runTranslate(args[1:], stdout, stderr)
	case "mochi": // bare mochi-mqtt, for mote bench
		return runMochi(ctx, args[1:], stderr)
	case "floor": // the least Go MQTT broker, for mote bench
		return runFloor(ctx, args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "mote: unknown command %q\n\n%s", args[0], usage)
	return errUsage
}
