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
	// args returns the command line for a listener on addr, with dir for data.
	args func(addr, dir string) ([]string, error)

	cmd  *exec.Cmd
	addr string
	dir  string
	logs bytes.Buffer
}

// Mote is `mote broker` from the binary bin, persistence on.
func Mote(bin string) *Broker { return MoteAs("mote", bin) }

// MoteAs is `mote broker` from another binary under another name: an
// earlier build, measured side by side with this one.
func MoteAs(name, bin string) *Broker {
	return &Broker{Name: name, Tree: true, args: func(addr, dir string) ([]string, error) {
		args := []string{bin, "broker", "--tcp", addr, "--ws", "off", "--data", dir, "--log-level", "warn"}
		if hasFlag(bin, "-http") { // builds before the HTTP API have no such flag
			args = append(args, "--http", "off")
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
	return &Broker{Name: "mochi", args: func(addr, _ string) ([]string, error) {
		return []string{bin, "mochi", "--tcp", addr}, nil
	}}
}

// Mosquitto is Debian's mosquitto with a generated config; nil if it is
// not installed.
func Mosquitto() *Broker {
	path, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			return nil
		}
		path = "/usr/sbin/mosquitto"
	}
	return &Broker{Name: "mosquitto", args: func(addr, dir string) ([]string, error) {
		host, port, _ := net.SplitHostPort(addr)
		conf := filepath.Join(dir, "mosquitto.conf")
		text := fmt.Sprintf("user root\nlistener %s %s\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n", port, host)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, err
		}
		return []string{path, "-c", conf}, nil
	}}
}

// Start runs the broker on a free port and waits until it accepts.
func (b *Broker) Start() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.addr = l.Addr().String()
	l.Close()
	if b.dir, err = os.MkdirTemp("", "mote-bench-"+b.Name); err != nil {
		return err
	}
	args, err := b.args(b.addr, b.dir)
	if err != nil {
		return err
	}
	b.logs.Reset()
	b.cmd = exec.Command(args[0], args[1:]...)
	b.cmd.Stdout, b.cmd.Stderr = &b.logs, &b.logs
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("bench: start %s: %w", b.Name, err)
	}
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", b.addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	b.Stop()
	return fmt.Errorf("bench: %s never listened on %s: %s", b.Name, b.addr, b.logs.String())
}

// Addr is where the running broker listens.
func (b *Broker) Addr() string { return b.addr }

// Usage reads the running broker's CPU time and peak RSS from /proc.
func (b *Broker) Usage() (cpu time.Duration, peakRSS int64, err error) {
	pid := strconv.Itoa(b.cmd.Process.Pid)
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
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			peakRSS = kb << 10
		}
	}
	return cpu, peakRSS, nil
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
