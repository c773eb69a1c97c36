package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildMote builds the mote binary once per test run.
func buildMote(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := exec.Command("mktemp", "-d").Output()
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(string(bytes.TrimSpace(dir)), "mote")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// startBinary runs `mote broker` on a free port and waits until it listens.
func startBinary(t *testing.T, data string, extra ...string) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logs := &bytes.Buffer{}
	cmd := exec.Command(buildMote(t), append([]string{"broker", "--tcp", addr, "--ws", "off", "--http", "off", "--data", data}, extra...)...)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Up to 30 s: a start that loads a store, on a loaded machine beside
	// -race tests, can take more than the 5 s this once allowed.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(25 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd, addr, logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker never listened: %s", logs)
		}
	}
}

// TestCrash kills the broker with SIGKILL under load, several rounds. The
// store must always open, and hold every row acknowledged before the last
// completed commit: with the default 50 ms interval, every row acked a
// second before the kill; with --sync-retain, every row acked at all.
// The revision never goes back (every snapshot after a restart carries a
// higher mote-rev than any message seen before the kill), and the history
// stays consistent with the rows (the newest stored value of each row is
// the row, committed in the same transaction).
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a broker process several times")
	}
	data := t.TempDir()
	config := filepath.Join(t.TempDir(), "mote.yaml")
	if err := os.WriteFile(config, []byte("history: [{filter: \"crash/#\", keep: 5}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	const keys = 50
	var seenRev atomic.Uint64 // the highest mote-rev any client saw, over all rounds
	for round := range 4 {
		syncRetain := round%2 == 1
		extra := []string{"--config", config}
		if syncRetain {
			extra = append(extra, "--sync-retain")
		}
		cmd, addr, logs := startBinary(t, data, extra...)
		ctx, cancel := context.WithCancel(context.Background())
		watcher, err := client.Dial(ctx, addr, client.Options{ClientID: "watch", CleanStart: true, Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		before := seenRev.Load()
		first := make(chan uint64, 1)
		err = watcher.Subscribe(ctx, "crash/#", client.Sync, client.JSON, 0, func(m client.Message) {
			if m.Seq == 0 {
				select {
				case first <- m.Rev:
				default:
				}
			}
			for old := seenRev.Load(); m.Rev > old && !seenRev.CompareAndSwap(old, m.Rev); old = seenRev.Load() {
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case rev := <-first:
			if round > 0 && rev <= before {
				t.Errorf("round %d: the first snapshot after the restart has mote-rev %d, but %d was seen before the kill", round, rev, before)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: no snapshot", round)
		}
		type ack struct {
			val int
			at  time.Time
		}
		var mu sync.Mutex
		acked := map[int][]ack{}
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := client.Dial(ctx, addr, client.Options{ClientID: fmt.Sprint("w", w), CleanStart: true, Timeout: 5 * time.Second})
				if err != nil {
					return
				}
				for i := 1; ctx.Err() == nil; i++ {
					k := w*keys/4 + i%(keys/4)
					v := round*1_000_000 + i
					var err error
					if i%3 == 0 {
						err = c.PublishTree(ctx, "crash", map[string]any{fmt.Sprint("k", k): v}, client.PublishOptions{QoS: 1, Retain: true})
					} else {
						err = c.Publish(ctx, fmt.Sprint("crash/k", k), []byte(strconv.Itoa(v)), client.PublishOptions{QoS: 1, Retain: true})
					}
					if err != nil {
						return
					}
					mu.Lock()
					acked[k] = append(acked[k], ack{v, time.Now()})
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(1200+r.IntN(800)) * time.Millisecond)
		cmd.Process.Kill()
		killed := time.Now()
		cmd.Wait()
		cancel()
		wg.Wait()

		st, err := retain.Open(data)
		if err != nil {
			t.Fatalf("round %d: store does not open after kill -9: %v\n%s", round, err, logs)
		}
		stored := map[int]int{}
		rows := map[string]retain.Row{}
		err = st.Load(func(row retain.Row) error {
			var k int
			if _, err := fmt.Sscanf(row.Topic, "crash/k%d", &k); err == nil {
				stored[k], _ = strconv.Atoi(row.Value.Data)
			}
			rows[row.Topic] = row
			if m := st.Meta(); row.Rev > m.Rev {
				t.Errorf("round %d: row %s has revision %d, the store %d", round, row.Topic, row.Rev, m.Rev)
			}
			return nil
		})
		withHistory := 0
		if err == nil {
			err = st.History("crash/#", 0, func(topic string, pairs []retain.Pair) bool {
				withHistory++
				last, row := pairs[len(pairs)-1], rows[topic]
				if last.Rev != row.Rev || last.Value != row.Value {
					t.Errorf("round %d: %s: newest history value %+v, row %+v", round, topic, last, row)
				}
				return true
			})
		}
		st.Close()
		if err != nil {
			t.Fatalf("round %d: load: %v", round, err)
		}
		total := 0
		for k, acks := range acked {
			total += len(acks)
			need := 0
			for _, a := range acks {
				if syncRetain || a.at.Before(killed.Add(-time.Second)) {
					need = max(need, a.val)
				}
			}
			if stored[k] < need {
				t.Errorf("round %d (sync-retain %v): crash/k%d stored %d, but %d was acked in time", round, syncRetain, k, stored[k], need)
			}
		}
		if total == 0 || withHistory == 0 {
			t.Fatalf("round %d: nothing was published (%d rows with history)\n%s", round, withHistory, logs)
		}
		t.Logf("round %d (sync-retain %v): %d publishes acked before the kill", round, syncRetain, total)
	}
}
