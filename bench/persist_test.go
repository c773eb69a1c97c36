package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCheckSaved: a saved database smaller than its rows' topics and
// payloads, or larger than they take with savedOverhead a row, is an
// error; one in between is not.
func TestCheckSaved(t *testing.T) {
	tests := []struct {
		name            string
		size, rows, dat int64
		ok              bool
	}{
		{"Mosquitto's 5,000 rows", 400_217, 5000, 90_000, true},
		{"just the data", 90_000, 5000, 90_000, true},
		{"most overhead", 90_000 + 5000*savedOverhead, 5000, 90_000, true},
		{"missing rows", 89_999, 5000, 90_000, false},
		{"empty", 0, 5000, 90_000, false},
		{"too big", 90_001 + 5000*savedOverhead, 5000, 90_000, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkSaved(tt.size, tt.rows, tt.dat); (err == nil) != tt.ok {
				t.Errorf("checkSaved(%d, %d, %d) = %v, want ok %v", tt.size, tt.rows, tt.dat, err, tt.ok)
			}
		})
	}
}

// TestSaveAfter plays a saving broker's files: saveAfter returns only once
// a save begun after the first n has ended (its log line there and its
// temporary file renamed), with the size of the database it wrote.
func TestSaveAfter(t *testing.T) {
	sv := &mosquittoSaver
	line := "1: " + string(sv.line) + "x/mosquitto.db.\n"
	tests := []struct {
		name  string
		lines int  // saves begun before saveAfter is called
		tmp   bool // a save in progress then
		// then is what the broker does while saveAfter waits.
		then func(dir string)
		size int64 // want; -1: still waiting at the deadline
	}{
		{"no save begun since", 2, false, func(string) {}, -1},
		{"a save in progress, begun before", 2, true, func(dir string) { save(t, sv, dir, 30, false) }, -1},
		{"a save begun and ended", 2, false, func(dir string) { save(t, sv, dir, 50, true) }, 50},
		{"one begun before, then one after", 1, true, func(dir string) {
			save(t, sv, dir, 30, false)
			save(t, sv, dir, 70, true)
		}, 70},
		// RV8-2: the broker held up (a loaded machine) between its line
		// and its temporary file for longer than saverSettle.
		{"a save slow to open its file", 2, false, func(dir string) {
			f, err := os.OpenFile(filepath.Join(dir, sv.log), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Error(err)
				return
			}
			f.WriteString("2: " + string(sv.line) + "x/mosquitto.db.\n")
			f.Close()
			time.Sleep(5 * saverSettle)
			save(t, sv, dir, 90, false)
		}, 90},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, sv.log), strings.Repeat(line, tt.lines))
			write(t, filepath.Join(dir, sv.db), "old")
			if tt.tmp {
				write(t, filepath.Join(dir, sv.tmp), "partial")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			n, err := sv.begun(dir)
			if err != nil || n != tt.lines {
				t.Fatalf("begun = %d, %v; want %d", n, err, tt.lines)
			}
			go tt.then(dir)
			size, err := sv.saveAfter(ctx, dir, n)
			switch {
			case tt.size < 0 && !errors.Is(err, context.DeadlineExceeded):
				t.Errorf("saveAfter = %d, %v; want still waiting at the deadline", size, err)
			case tt.size >= 0 && (err != nil || size != tt.size):
				t.Errorf("saveAfter = %d, %v; want %d", size, err, tt.size)
			}
		})
	}
}

// save plays one save: with begin, it logs its line and writes the
// temporary file first; it then writes size bytes there and renames it to
// the database.
func save(t *testing.T, sv *saver, dir string, size int, begin bool) {
	if begin {
		f, err := os.OpenFile(filepath.Join(dir, sv.log), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.WriteString("2: " + string(sv.line) + "x/mosquitto.db.\n")
		f.Close()
		write(t, filepath.Join(dir, sv.tmp), "")
	}
	time.Sleep(100 * time.Millisecond) // the save's work: saveAfter must wait it out
	write(t, filepath.Join(dir, sv.tmp), strings.Repeat("x", size))
	if err := os.Rename(filepath.Join(dir, sv.tmp), filepath.Join(dir, sv.db)); err != nil {
		t.Error(err)
	}
}

func write(t *testing.T, path, text string) {
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Error(err)
	}
}

// TestMosquittoPersistStorm runs a small boot storm on mosquitto-persist:
// it has every row saved in a database of their size, and the quiet-CPU
// rule still ends while it saves every second or two when idle.
func TestMosquittoPersistStorm(t *testing.T) {
	b := MosquittoPersist()
	if b == nil {
		t.Skip("mosquitto is not installed")
	}
	s := SmokeSizes()
	s.Devices = 400 // 20,000 rows
	var sc scenario
	for _, c := range scenarios() {
		if c.name == "boot-storm" && c.variant == "plain" {
			sc = c
		}
	}
	r := runOne(context.Background(), sc, b, s, 1)
	if r.Err != "" || r.Lost != 0 {
		t.Fatalf("boot storm on %s: %s, lost %d", b.Name, r.Err, r.Lost)
	}
	rows := float64(s.Devices * s.DeviceRows)
	if r.Extra["saves"] < 1 || r.Extra["db-bytes"] < 20*rows || r.Extra["db-bytes"] > 300*rows {
		t.Errorf("saves %v, database %v bytes for %v rows", r.Extra["saves"], r.Extra["db-bytes"], rows)
	}
	if q := r.Extra["quiet-s"]; q <= 0 || q > 10 {
		t.Errorf("quiet after %v s, want (0, 10]", q)
	}
	if r.Extra["saved-s"] < r.Extra["done-s"] {
		t.Errorf("saved at %v s, before the storm was done (%v s)", r.Extra["saved-s"], r.Extra["done-s"])
	}
}
