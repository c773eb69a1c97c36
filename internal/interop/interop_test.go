//go:build unix

package interop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The floors: what the broker passes (December 2026): client_test.py 10 of
// 10; client_test5.py 26 of 27 (test_subscribe_failure wants 0x80 where the
// broker answers 0x87 Not authorized, legal in MQTT 5.0). The floor for MQTT
// 5 is one lower: test_request_response and test_subscribe_options race a
// SUBSCRIBE on one connection against a PUBLISH on another (a broker with a
// goroutine per connection may handle either first) and fail in about a
// third of the runs, each retried twice. README.md explains every failure.
const (
	defaultMinV311 = 10
	defaultMinV5   = 25
)

const (
	testTimeout = 60 * time.Second               // one Python test, with the suite's cleanup (3-6 s)
	budget      = 5*time.Minute + 20*time.Second // the whole test, build included (a cold build takes about a minute)
	buildLimit  = 2 * time.Minute                // go build ./cmd/mote
	stopGrace   = 3 * time.Second                // SIGTERM to SIGKILL for a broker
	startLimit  = 10 * time.Second               // a broker's listener to accept
	outputLimit = 12 << 10                       // bytes of a failing test's output logged
	logLimit    = 4 << 10                        // bytes of the broker's log logged for a failing test
	aclText     = "# anonymous clients (lines before any user line): everything but subscribing to test/nosubscribe\n" +
		"topic deny test/nosubscribe\n" +
		"topic readwrite #\n"
)

// The suite's two files.
var suites = []struct{ file, version, minEnv string }{
	{"client_test.py", "MQTT 3.1.1", "MOTE_INTEROP_MIN_V311"},
	{"client_test5.py", "MQTT 5.0", "MOTE_INTEROP_MIN_V5"},
}

// racy are the tests that race a SUBSCRIBE on one connection against a
// PUBLISH on another (see the floors above): they get racyRetries
// retries, not the default 2, so that both failing every attempt (about
// one run in 60 with 2) does not fail CI; a broker that fails them for a
// reason of its own still fails all 6 attempts.
var racy = map[string]bool{"test_request_response": true, "test_subscribe_options": true}

const racyRetries = 5

// Tests started first: the longest ones (15-20 s and more), so the run
// ends soon after the last short one.
var slow = map[string]bool{
	"test_session_expiry": true, "test_keepalive": true, "test_will_delay": true,
	"test_subscribe_options": true, "test_publication_expiry": true, "test_unsubscribe": true,
}

type job struct {
	file, name string
	run        int // 1..MOTE_INTEROP_COUNT
}

type result struct {
	job
	passed    bool
	attempts  int
	took      time.Duration
	out       string // of the last failed attempt (or of the pass, if verbose)
	brokerLog string
}

// TestPaho runs the Eclipse Paho MQTT interoperability suite (paho/, vendored
// unchanged: client_test.py for MQTT 3.1.1, client_test5.py for MQTT 5.0)
// against `mote broker`, built from this module.
//
// Every Python test runs alone (python3 client_test5.py Test.test_x) in its
// own copy of the suite whose `port = 1883` (and `host = "localhost"`) line is
// rewritten, against a fresh broker on 127.0.0.1 with its own data directory.
// The tests share two client ids, persistent sessions and retained topics;
// the suite's cleanup() clears only those two ids' sessions and the retained
// messages "#" matches, not what a failed test leaves behind (messages in
// flight, delayed wills, expiring sessions), so a broker per test keeps one
// failure from causing the next, and lets the tests run side by side (they
// mostly sleep). Each test has a hard time limit (its process group is
// killed), and the whole test a budget (MOTE_INTEROP_BUDGET, default 5m20s
// with the build, less if go test's -timeout is nearer): tests not started by
// then count as failed.
//
// The broker runs with --allow-anonymous and an ACL that allows everything
// but subscribing to test/nosubscribe (test_subscribe_failure), and with
// --max-keepalive 60 (test_server_keep_alive) when `mote broker -h` lists
// that flag; a broker without it is run without.
//
// A failing test is run twice more (MOTE_INTEROP_RETRIES, default 2): some of
// the suite's tests race two connections against each other (a SUBSCRIBE on
// one, a PUBLISH on the other, microseconds apart) or measure wall-clock
// delays, and fail now and then on a loaded machine. It counts as passed
// (and is reported as flaky) if any attempt passes.
//
// The test fails when fewer than MOTE_INTEROP_MIN_V311 tests of client_test.py
// or MOTE_INTEROP_MIN_V5 of client_test5.py pass. The defaults are what the
// broker passes today, so the test guards against regressions; raise them as
// the broker gets better.
//
// Other settings (environment):
//
//	MOTE_INTEROP_RUN       regexp: run only the matching tests ("test_flow_control2",
//	                       "client_test5.py.test_server"); the floors are then not checked
//	MOTE_INTEROP_COUNT     run each selected test this many times (flakiness; default 1)
//	MOTE_INTEROP_PARALLEL  tests run at once (default 8)
//	MOTE_INTEROP_RETRIES   runs after a failure (default 2; 0 to see every flake)
//	MOTE_INTEROP_BUDGET    time for the whole test, build included (default 5m20s)
//	MOTE_INTEROP_BROKER    a mote binary to use instead of building ./cmd/mote
//	MOTE_INTEROP_SUITE     the suite's folder (default paho/ beside this file)
//	MOTE_INTEROP_VERBOSE   1: log the output of passing tests too
//
// Run it alone with:
//
//	go test -count=1 -v -run TestPaho ./internal/interop
//
// It is skipped when python3 is missing (or under -short).
func TestPaho(t *testing.T) {
	if testing.Short() {
		t.Skip("the Paho interoperability suite takes about a minute; skipped under -short")
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found: the Paho interoperability suite needs it")
	}
	started := time.Now()
	limit := started.Add(envDuration(t, "MOTE_INTEROP_BUDGET", budget))
	if d, ok := t.Deadline(); ok { // leave time to report and clean up
		if d = d.Add(-min(30*time.Second, time.Until(d)/4)); d.Before(limit) {
			limit = d
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), limit)
	defer cancel()

	suiteDir := envOr("MOTE_INTEROP_SUITE", "paho")
	if suiteDir, err = filepath.Abs(suiteDir); err != nil {
		t.Fatal(err)
	}
	parallel := max(1, envInt(t, "MOTE_INTEROP_PARALLEL", 8))
	retries := envInt(t, "MOTE_INTEROP_RETRIES", 2)
	count := max(1, envInt(t, "MOTE_INTEROP_COUNT", 1))
	verbose := os.Getenv("MOTE_INTEROP_VERBOSE") == "1"
	var filter *regexp.Regexp
	if s := os.Getenv("MOTE_INTEROP_RUN"); s != "" {
		if filter, err = regexp.Compile(s); err != nil {
			t.Fatalf("MOTE_INTEROP_RUN: %v", err)
		}
	}

	var jobs []job
	total := map[string]int{}    // tests in each file
	selected := map[string]int{} // runs of them asked for
	for _, s := range suites {
		names, err := testNames(filepath.Join(suiteDir, s.file))
		if err != nil {
			t.Fatal(err)
		}
		total[s.file] = len(names)
		for _, n := range names {
			if filter != nil && !filter.MatchString(s.file+"."+n) {
				continue
			}
			for r := 1; r <= count; r++ {
				jobs = append(jobs, job{file: s.file, name: n, run: r})
				selected[s.file]++
			}
		}
	}
	if len(jobs) == 0 {
		t.Fatalf("no test of %s matches MOTE_INTEROP_RUN=%q", suiteDir, os.Getenv("MOTE_INTEROP_RUN"))
	}
	sort.SliceStable(jobs, func(i, j int) bool { return slow[jobs[i].name] && !slow[jobs[j].name] })

	tmp := t.TempDir()
	bin := os.Getenv("MOTE_INTEROP_BROKER")
	if bin == "" {
		bin = filepath.Join(tmp, "mote")
		buildMote(ctx, t, bin)
	}
	built := time.Now()
	extra := brokerFlags(ctx, t, bin)
	acl := filepath.Join(tmp, "acl")
	cfg := filepath.Join(tmp, "mote.yaml")
	if err := os.WriteFile(acl, []byte(aclText), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte("acl_file: "+strconv.Quote(acl)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	r := &runner{python: python, suite: suiteDir, bin: bin, cfg: cfg, extra: extra, tmp: tmp, verbose: verbose}
	results := make([]result, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				tries := retries
				if racy[jobs[i].name] {
					tries = max(retries, racyRetries)
				}
				results[i] = r.run(ctx, jobs[i], tries)
			}
		}()
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()

	// Report: one line per test, then the output of the failures.
	passed := map[string]int{}
	sort.SliceStable(results, func(i, j int) bool {
		a, b := results[i], results[j]
		if a.file != b.file {
			return a.file < b.file
		}
		if a.name != b.name {
			return a.name < b.name
		}
		return a.run < b.run
	})
	var lines []string
	for _, res := range results {
		state := "PASS"
		switch {
		case res.attempts == 0:
			state = "NOT RUN (out of time)"
		case !res.passed:
			state = "FAIL"
		case res.attempts > 1:
			state = "PASS (flaky: failed first, passed on attempt " + strconv.Itoa(res.attempts) + ")"
		}
		if res.passed {
			passed[res.file]++
		}
		run := ""
		if count > 1 {
			run = fmt.Sprintf(" #%d", res.run)
		}
		lines = append(lines, fmt.Sprintf("  %-16s %-34s %5.1fs  %s", res.file, res.name+run, res.took.Seconds(), state))
	}
	for _, res := range results {
		var what string
		switch {
		case !res.passed && res.attempts == 0:
			continue
		case !res.passed:
			what = fmt.Sprintf("failed (%d attempts); the last one's output", res.attempts)
		case res.attempts > 1:
			what = fmt.Sprintf("passed on attempt %d; the failed attempt's output", res.attempts)
		case verbose:
			what = "passed; its output"
		default:
			continue
		}
		t.Logf("==== %s %s %s:\n%s\n---- the broker's log:\n%s", res.file, res.name, what, res.out, res.brokerLog)
	}
	flags := strings.Join(extra, " ")
	if flags == "" {
		flags = "no --max-keepalive"
	}
	t.Logf("Paho interoperability suite: %d tests run in %s (%d at once, %d retries, %d for the racy two; broker build %s; %s)\n%s",
		len(results), time.Since(started).Round(time.Second), parallel, retries, max(retries, racyRetries), built.Sub(started).Round(100*time.Millisecond),
		flags, strings.Join(lines, "\n"))

	for _, s := range suites {
		what := "tests"
		if count > 1 {
			what = "runs"
		}
		t.Logf("%s (%s): %d of %d %s passed (the file has %d tests)", s.file, s.version, passed[s.file], selected[s.file], what, total[s.file])
	}
	if filter != nil || count != 1 {
		t.Logf("MOTE_INTEROP_RUN or MOTE_INTEROP_COUNT set: the floors are not checked")
		return
	}
	for _, s := range suites {
		def := defaultMinV311
		if s.file == "client_test5.py" {
			def = defaultMinV5
		}
		floor := envInt(t, s.minEnv, def)
		if passed[s.file] < floor {
			t.Errorf("%s (%s): %d of %d tests passed; want at least %d (%s)",
				s.file, s.version, passed[s.file], total[s.file], floor, s.minEnv)
		}
	}
}

// runner runs one Python test against a fresh broker.
type runner struct {
	python, suite, bin, cfg, tmp string
	extra                        []string
	verbose                      bool
}

// run runs j, again after a failure up to retries times. A test that passes
// keeps the output of the attempt that failed before (if any).
func (r *runner) run(ctx context.Context, j job, retries int) result {
	res := result{job: j}
	start := time.Now()
	for res.attempts < 1+retries {
		if ctx.Err() != nil {
			if res.attempts == 0 {
				res.out = "not run: the time budget is spent (MOTE_INTEROP_BUDGET, go test -timeout)"
			}
			break
		}
		res.attempts++
		out, blog, err := r.attempt(ctx, j, res.attempts)
		if err == nil {
			res.passed = true
			if r.verbose && res.attempts == 1 {
				res.out, res.brokerLog = out, blog
			}
			break
		}
		res.out, res.brokerLog = fmt.Sprintf("%s\n[harness: %v]", out, err), blog
	}
	res.took = time.Since(start)
	return res
}

// attempt starts a broker, runs the test against it and stops the broker.
// It returns the test's output, the tail of the broker's log, and why the
// test failed (nil if it passed).
func (r *runner) attempt(ctx context.Context, j job, n int) (string, string, error) {
	dir, err := os.MkdirTemp(r.tmp, fmt.Sprintf("%s-%s-%d-%d-", strings.TrimSuffix(j.file, ".py"), j.name, j.run, n))
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()

	b, err := startBroker(ctx, r.bin, dir, r.cfg, r.extra)
	if err != nil {
		return "", tail(filepath.Join(dir, "broker.log"), logLimit), err
	}
	defer b.stop()

	suite := filepath.Join(dir, "suite")
	if err := copySuite(r.suite, suite, b.port); err != nil {
		return "", "", err
	}
	outPath := filepath.Join(dir, "output")
	out, err := os.Create(outPath)
	if err != nil {
		return "", "", err
	}
	cmd := exec.CommandContext(ctx, r.python, "-u", j.file, "Test."+j.name)
	cmd.Dir = suite
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = procAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	runErr := cmd.Run()
	out.Close()
	text := tail(outPath, outputLimit)
	b.stop()
	blog := tail(filepath.Join(dir, "broker.log"), logLimit)
	switch {
	case ctx.Err() != nil:
		return text, blog, fmt.Errorf("killed: %w (limit %s per test, and the suite's budget)", ctx.Err(), testTimeout)
	case runErr != nil:
		return text, blog, runErr
	case !strings.Contains(text, "Ran 1 test") || !regexp.MustCompile(`(?m)^OK\b`).MatchString(text):
		return text, blog, errors.New("exit status 0 but no \"Ran 1 test ... OK\" in the output")
	}
	return text, blog, nil
}

type broker struct {
	cmd    *exec.Cmd
	port   int
	cancel context.CancelFunc
	exited chan struct{}
	once   sync.Once
}

// startBroker runs the broker on a free loopback port, in dir, until ctx
// ends or stop; it returns once the port accepts connections.
func startBroker(ctx context.Context, bin, dir, cfg string, extra []string) (*broker, error) {
	var lastErr error
	for try := 0; try < 3; try++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, "broker.log"))
		if err != nil {
			return nil, err
		}
		bctx, cancel := context.WithCancel(ctx)
		args := append([]string{"broker", "--tcp", "127.0.0.1:" + strconv.Itoa(port), "--ws", "off",
			"--data", filepath.Join(dir, "data"), "--config", cfg, "--allow-anonymous"}, extra...)
		cmd := exec.CommandContext(bctx, bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = procAttr()
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = stopGrace // then SIGKILL
		if err := cmd.Start(); err != nil {
			cancel()
			logf.Close()
			return nil, err
		}
		b := &broker{cmd: cmd, port: port, cancel: cancel, exited: make(chan struct{})}
		go func() { cmd.Wait(); logf.Close(); close(b.exited) }()
		if err := b.wait(); err != nil {
			b.stop()
			lastErr = err
			continue // most likely the port was taken meanwhile
		}
		return b, nil
	}
	return nil, fmt.Errorf("broker did not start: %w", lastErr)
}

// wait waits for the broker's port to accept a connection.
func (b *broker) wait() error {
	addr := "127.0.0.1:" + strconv.Itoa(b.port)
	deadline := time.Now().Add(startLimit)
	for time.Now().Before(deadline) {
		select {
		case <-b.exited:
			return fmt.Errorf("broker exited at start (%v)", b.cmd.ProcessState)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			select { // a broker that could not bind exits at once; the port may be another's
			case <-b.exited:
				return fmt.Errorf("broker exited at start (%v)", b.cmd.ProcessState)
			case <-time.After(50 * time.Millisecond):
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("broker not listening on %s after %s", addr, startLimit)
}

// stop stops the broker (SIGTERM, SIGKILL after stopGrace) and waits for it.
func (b *broker) stop() {
	b.once.Do(func() {
		b.cancel()
		<-b.exited
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// copySuite copies the suite to dst and points its two scripts at port on
// 127.0.0.1 (the scripts read their port from a `port = 1883` line, and
// client_test.py hands -p on to unittest, which refuses it).
func copySuite(src, dst string, port int) error {
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		return err
	}
	for _, s := range suites {
		p := filepath.Join(dst, s.file)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		text := string(b)
		for old, new := range map[string]string{
			"port = 1883":        "port = " + strconv.Itoa(port),
			`host = "localhost"`: `host = "127.0.0.1"`,
		} {
			if n := strings.Count(text, old); n != 1 {
				return fmt.Errorf("%s: %d lines %q, want 1 (has the suite changed?)", s.file, n, old)
			}
			text = strings.Replace(text, old, new, 1)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// testNames lists the unittest methods of a suite file (unittest runs the
// methods whose names start with "test").
func testNames(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("the Paho suite: %w (MOTE_INTEROP_SUITE)", err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^    def (test\w*)\(self\)`).FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s: no test methods found", path)
	}
	return names, nil
}

// buildMote builds ./cmd/mote into bin.
func buildMote(ctx context.Context, t *testing.T, bin string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	ctx, cancel := context.WithTimeout(ctx, buildLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/mote-mqtt/mote/cmd/mote")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/mote: %v\n%s", err, out)
	}
}

// brokerFlags returns the flags given to every broker beyond the fixed
// ones: --http off and --max-keepalive 60 when this mote has those flags.
func brokerFlags(ctx context.Context, t *testing.T, bin string) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "broker", "-h").CombinedOutput()
	var flags []string
	if strings.Contains(string(out), "-http ") {
		flags = append(flags, "--http", "off") // not the default :1885, open to all with --allow-anonymous
	}
	if strings.Contains(string(out), "-max-keepalive") {
		return append(flags, "--max-keepalive", "60")
	}
	t.Logf("this mote has no --max-keepalive flag: test_server_keep_alive cannot pass")
	return flags
}

// tail returns the last max bytes of a file.
func tail(path string, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > max {
		return "[…]" + string(b[len(b)-max:])
	}
	return string(b)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a number", name, v)
	}
	return n
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a duration such as 4m", name, v)
	}
	return d
}
