package main

import (
	"errors"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// writerPathBudget bounds the stack frames a connection's writer
// goroutine holds while it sends a delta (writeLoop, writeUntilDone,
// write when it is not inlined, sendTree), each with its return address
// and saved frame pointer. A goroutine's stack is 8 KiB once it has
// written; a function's prologue asks for more once less than the stack
// guard (928 bytes on linux/amd64) would be left below its frame. The
// budget leaves some 1.1 KiB for what runs under sendTree (the encode,
// the socket's write and its deadline): past it the writers of busy
// connections grow to 16 KiB, and again after every GC shrinks them.
const writerPathBudget = 6 << 10

// writerParkedBudget bounds the frames of a writer waiting for items
// (writeLoop, writeUntilDone): under 1 KiB, the GC shrinks an idle
// writer's stack to 2 KiB. With write inlined into writeUntilDone (2.8
// KiB), waiting writers stayed at 8 KiB.
const writerParkedBudget = 1 << 10

// writerPath is the delta path of a writer, outermost first.
var writerPath = []string{"writeLoop", "writeUntilDone", "write", "sendTree"}

// TestWriterStackFrames checks the frames of a writer's delta path in the
// mote binary as the tests build it (with the caller's GOFLAGS: PGO=auto
// checks the PGO build, as `go build` makes it): PGO inlined
// replayPacket's 816-byte Packet into write, whose frame grew from 4,264
// to 5,096 bytes, 7,240 on the path, and every busy $sync writer's stack
// doubled to 16 KiB: the live dashboard's $sync run held 12.0 MiB of
// stacks, against 7.9 with the cold cases out of write, and its peak RSS
// was ~5 MiB higher (bench/README.md, "PGO and the live dashboard's peak
// RSS", branch h-pgorss). The frames are read from each function's
// prologue (SUBQ $n, SP), so the test runs on amd64 only.
func TestWriterStackFrames(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("frames are read from amd64 prologues")
	}
	if testing.Short() {
		t.Skip("builds mote")
	}
	bin := buildMote(t)
	re := `^github\.com/mote-mqtt/mote/broker\.\(\*conn\)\.(` + strings.Join(writerPath, "|") + `)$`
	out, err := exec.Command("go", "tool", "objdump", "-s", re, bin).Output()
	if err != nil {
		t.Fatalf("go tool objdump: %v", err)
	}
	frames, err := prologueFrames(string(out))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := frames["writeUntilDone"]; !ok {
		t.Fatalf("no (*conn).writeUntilDone in the binary: the writer's functions were renamed? (found %v)", frames)
	}
	total := 0
	var parts []string
	for _, name := range writerPath {
		if n, ok := frames[name]; ok { // absent: inlined into its caller
			total += n
			parts = append(parts, name+" "+strconv.Itoa(n))
		}
	}
	if parked := frames["writeLoop"] + frames["writeUntilDone"]; parked > writerParkedBudget {
		t.Errorf("a writer waiting for items holds %d bytes of frames (writeLoop %d + writeUntilDone %d), over %d: the GC cannot shrink idle writers' stacks; keep write out of writeUntilDone (go:noinline)",
			parked, frames["writeLoop"], frames["writeUntilDone"], writerParkedBudget)
	}
	t.Logf("writer's delta path: %s = %d bytes (budget %d)", strings.Join(parts, " + "), total, writerPathBudget)
	if total > writerPathBudget {
		t.Errorf("writer's delta path holds %d bytes of frames (%s), over %d: busy writers' stacks double to 16 KiB; keep cold cases of write out of its frame (writeSnapshot, writeReplay)",
			total, strings.Join(parts, " + "), writerPathBudget)
	}
}

// prologueFrames reads `go tool objdump` output: for each (*conn) method
// listed, the stack it takes — its frame (the prologue's SUBQ $n, SP),
// the saved frame pointer if it pushes one, and the return address.
func prologueFrames(dump string) (map[string]int, error) {
	text := regexp.MustCompile(`^TEXT .*\(\*conn\)\.(\w+)\(SB\)`)
	sub := regexp.MustCompile(`\tSUBQ \$0x([0-9a-f]+), SP\b`)
	frames := map[string]int{}
	name, lines := "", 0
	for _, l := range strings.Split(dump, "\n") {
		if m := text.FindStringSubmatch(l); m != nil {
			name, lines = m[1], 0
			frames[name] = 8 // the return address: a leaf with no frame
			continue
		}
		if name == "" || lines > 40 {
			continue
		}
		lines++
		if strings.Contains(l, "\tPUSHQ BP") {
			frames[name] += 8
		}
		if m := sub.FindStringSubmatch(l); m != nil {
			n, err := strconv.ParseInt(m[1], 16, 64)
			if err != nil {
				return nil, err
			}
			frames[name] += int(n)
			lines = 41 // the prologue is over
		}
	}
	if len(frames) == 0 {
		return nil, errors.New("objdump listed no (*conn) method")
	}
	return frames, nil
}
