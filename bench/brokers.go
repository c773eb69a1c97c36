// Package bench is Mote's benchmark suite: each scenario runs against Mote
// (`mote broker`, persistence on, as users run it), bare mochi-mqtt (the
// same mochi version, no Mote hooks: what the extension costs) and
// Mosquitto, in alternation, several rounds, every broker a child process
// on a random 127.0.0.1 port so its CPU time and peak RSS can be read from
// /proc. Load generators are Paho Go clients in this process.
package bench

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Broker is one broker under test, started fresh for every run.
type Broker struct {
	Name string
	// Tree says the broker speaks the Mote extension.
	Tree bool
	// Web says the broker serves Mote's HTTP API and MQTT over WebSocket
	// (the http- and sse- scenarios).
	Web bool
	// Cluster says the broker's binary runs `mote broker --cluster`
	// nodes (the cluster scenario), bin.
	Cluster bool
	// Floor says the broker serves only the scenarios marked floor
	// (plain QoS 0 delivery, no retained messages, no sessions): go-floor.
	Floor bool
	// Hold says the broker only holds connections after their CONNACK and
	// serves only the scenarios marked hold (curve-idle): go-hold.
	Hold bool
	bin  string
	// saves is how a broker that saves its whole state now and then
	// (mosquitto-persist) shows its saves; nil for the others.
	saves *saver
	// args returns the command line for the listeners l, with dir for data.
	args func(l listeners, dir string) ([]string, error)

	cmd  *exec.Cmd
	l    listeners
	dir  string
	logs bytes.Buffer
}

// listeners are the addresses a broker under test listens on; WS and
// HTTP are empty unless a scenario needs them.
type listeners struct {
	TCP  string // MQTT
	WS   string // MQTT over WebSocket, path /mqtt
	HTTP string // Mote's HTTP API (SPEC §10)
}

// Mote is `mote broker` from the binary bin, persistence on.
func Mote(bin string) *Broker { return MoteAs("mote", bin) }

// MoteAs is `mote broker` from another binary under another name: an
// earlier build, measured side by side with this one.
func MoteAs(name, bin string) *Broker {
	web := hasFlag(bin, "-http") // builds before the HTTP API have no such flag
	return &Broker{Name: name, Tree: true, Web: web, Cluster: hasFlag(bin, "-cluster"), bin: bin, args: func(l listeners, dir string) ([]string, error) {
		or := func(a string) string {
			if a == "" {
				return "off"
			}
			return a
		}
		args := []string{bin, "broker", "--tcp", l.TCP, "--ws", or(l.WS), "--data", dir, "--log-level", "warn"}
		if web {
			args = append(args, "--http", or(l.HTTP))
		}
		return args, nil
	}}
}

// hasFlag reports whether `bin broker -h` lists flag.
func hasFlag(bin, flag string) bool {
	out, _ := exec.Command(bin, "broker", "-h").CombinedOutput()
	return strings.Contains(string(out), flag+" ")
}

// Mochi is a bare mochi-mqtt server from the binary bin (`mote mochi`).
func Mochi(bin string) *Broker {
	return &Broker{Name: "mochi", args: func(l listeners, _ string) ([]string, error) {
		return []string{bin, "mochi", "--tcp", l.TCP}, nil
	}}
}

// FloorName is the name of the Go floor broker (GoFloor).
const FloorName = "go-floor"

// GoFloor is `mote floor` from the binary bin (package bench/floor): the
// least MQTT 3.1.1 broker in Go, run only in the scenarios it can serve.
func GoFloor(bin string) *Broker {
	return &Broker{Name: FloorName, Floor: true, args: func(l listeners, _ string) ([]string, error) {
		return []string{bin, "floor", "--tcp", l.TCP}, nil
	}}
}

// HoldName is the name of the Go hold floor (GoHold).
const HoldName = "go-hold"

// GoHold is `mote floor --hold` from the binary bin: a Go program that
// answers each CONNECT and then only holds the connection, the least any
// Go broker that keeps its connections as net.Conn pays for an idle one;
// run only in curve-idle.
func GoHold(bin string) *Broker {
	return &Broker{Name: HoldName, Hold: true, args: func(l listeners, _ string) ([]string, error) {
		return []string{bin, "floor", "--hold", "--tcp", l.TCP}, nil
	}}
}

// MosquittoName and MosquittoPersistName are the names of Mosquitto run
// as the bench always ran it (persistence false: retained messages in
// memory only) and of Mosquitto saving them to disk (persistence true).
const (
	MosquittoName        = "mosquitto"
	MosquittoPersistName = "mosquitto-persist"
)

// Mosquitto is Debian's mosquitto with a generated config, persistence
// false; nil if it is not installed.
func Mosquitto() *Broker {
	path := mosquittoPath()
	if path == "" {
		return nil
	}
	return &Broker{Name: MosquittoName, args: func(l listeners, dir string) ([]string, error) {
		return mosquittoArgs(path, l, dir, "persistence false\n")
	}}
}

// MosquittoPersist is Mosquitto as Mosquitto, but persisting: its
// in-memory database (retained messages, sessions) saved to
// mosquitto.db in the run's directory every autosave_interval 1, the
// shortest period it takes (whole seconds), whether anything changed or
// not (autosave_on_changes false, the default); mosquitto.conf(5). Each
// save writes the whole database to mosquitto.db.new and renames it, and
// logs a line first (to mosquitto.log here, read by saver). Mote's
// retainer commits a row within 50 ms (retain.interval), 20× sooner:
// this Mosquitto is the less durable of the two. nil if it is not
// installed.
func MosquittoPersist() *Broker {
	path := mosquittoPath()
	if path == "" {
		return nil
	}
	return &Broker{Name: MosquittoPersistName, saves: &mosquittoSaver, args: func(l listeners, dir string) ([]string, error) {
		extra := fmt.Sprintf("persistence true\npersistence_location %s/\nautosave_interval 1\nautosave_on_changes false\n"+
			"log_dest file %s\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
			dir, filepath.Join(dir, mosquittoSaver.log))
		return mosquittoArgs(path, l, dir, extra)
	}}
}

// mosquittoPath is where mosquitto is installed; "" if it is not.
func mosquittoPath() string {
	if path, err := exec.LookPath("mosquitto"); err == nil {
		return path
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	return ""
}

// mosquittoArgs writes a config for the listener l, with the lines extra
// (persistence), into dir and returns the command line that runs it.
func mosquittoArgs(path string, l listeners, dir, extra string) ([]string, error) {
	host, port, _ := net.SplitHostPort(l.TCP)
	conf := filepath.Join(dir, "mosquitto.conf")
	text := fmt.Sprintf("user root\nlistener %s %s\nallow_anonymous true\n%smax_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n", port, host, extra)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("bench: mosquitto config: %w", err)
	}
	return []string{path, "-c", conf}, nil
}

// freePort is a 127.0.0.1 address with a port free at the moment.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start runs the broker on a free port (with web, also its WebSocket and
// HTTP listeners) and waits until it accepts.
func (b *Broker) Start(web bool) error {
	var err error
	b.l = listeners{}
	if b.l.TCP, err = freePort(); err != nil {
		return err
	}
	if web {
		if b.l.WS, err = freePort(); err != nil {
			return err
		}
		if b.l.HTTP, err = freePort(); err != nil {
			return err
		}
	}
	if b.dir, err = os.MkdirTemp("", "mote-bench-"+b.Name); err != nil {
		return err
	}
	args, err := b.args(b.l, b.dir)
	if err != nil {
		os.RemoveAll(b.dir) // no process: Stop would leave it (RV8-1)
		return err
	}
	b.logs.Reset()
	b.cmd = exec.Command(args[0], args[1:]...)
	b.cmd.Stdout, b.cmd.Stderr = &b.logs, &b.logs
	if err := b.cmd.Start(); err != nil {
		b.cmd = nil
		os.RemoveAll(b.dir)
		return fmt.Errorf("bench: start %s: %w", b.Name, err)
	}
	for _, addr := range []string{b.l.TCP, b.l.WS, b.l.HTTP} {
		if addr == "" {
			continue
		}
		up := false
		for i := 0; i < 200 && !up; i++ {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				up = true
			} else {
				time.Sleep(25 * time.Millisecond)
			}
		}
		if !up {
			b.Stop()
			return fmt.Errorf("bench: %s never listened on %s: %s", b.Name, addr, b.logs.String())
		}
	}
	return nil
}

// Addr is where the running broker listens for MQTT.
func (b *Broker) Addr() string { return b.l.TCP }

// Usage reads the running broker's CPU time and peak RSS from /proc.
func (b *Broker) Usage() (cpu time.Duration, peakRSS int64, err error) {
	return procUsage(b.cmd.Process.Pid)
}

// procUsage reads process pid's CPU time and peak RSS from /proc.
func procUsage(p int) (cpu time.Duration, peakRSS int64, err error) {
	pid := strconv.Itoa(p)
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if len(f) < 13 {
		return 0, 0, errors.New("bench: short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return cpu, 0, err
	}
	return cpu, statusKB(status, "VmHWM:"), nil
}

// RSS reads the running broker's resident set size now (VmRSS).
func (b *Broker) RSS() (int64, error) {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(b.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0, err
	}
	return statusKB(status, "VmRSS:"), nil
}

// statusKB is the size in bytes of the field key ("VmHWM:") of a
// /proc/PID/status file.
func statusKB(status []byte, key string) int64 {
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Stop ends the broker (SIGTERM, then SIGKILL) and removes its data.
func (b *Broker) Stop() error {
	if b.cmd == nil || b.cmd.Process == nil {
		return nil
	}
	b.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-done
	}
	b.cmd = nil
	return os.RemoveAll(b.dir)
}
