package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// saver is how a broker that saves its whole state periodically
// (mosquitto-persist) shows its saves in its data directory: it logs
// line to the file log as a save begins, writes the database to tmp and
// renames it to db.
type saver struct {
	db, tmp, log string
	line         []byte
}

// mosquittoSaver is Mosquitto's (persist_write.c: persist__backup).
var mosquittoSaver = saver{db: "mosquitto.db", tmp: "mosquitto.db.new", log: "mosquitto.log",
	line: []byte("Saving in-memory database to ")}

// begun is how many saves the broker has begun in dir so far.
func (s *saver) begun(dir string) (int, error) {
	log, err := os.ReadFile(filepath.Join(dir, s.log))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bench: saves: %w", err)
	}
	return bytes.Count(log, s.line), nil
}

// saveAfter waits until a save begun after the first n of dir's has
// ended, and returns the size of the database it wrote: the first save
// that holds everything the broker held when begun returned n. A save's
// log line comes just before it opens its temporary file, and it ends
// renaming that file to the database: so the save is done once the line
// is there, the temporary file is not, and the database is another file
// than the one there before the line (RV8-2: the temporary file's absence
// alone, saverSettle after the line, took the save before for this one
// when the broker was held up between its line and its file, as a loaded
// machine does). At most a minute.
func (s *saver) saveAfter(ctx context.Context, dir string, n int) (int64, error) {
	end := time.Now().Add(time.Minute)
	// before is the database as it was before the last read of the log
	// that found no new line (or, if the first found one, before that
	// read): a database renamed later is another file. Read before the
	// log, never the new save's, even one begun and ended between polls.
	var before os.FileInfo // nil: none
	for first := true; ; first = false {
		now, _ := os.Stat(filepath.Join(dir, s.db))
		if first {
			before = now
		}
		m, err := s.begun(dir)
		if err != nil {
			return 0, err
		}
		if m > n {
			break
		}
		before = now
		if err := pause(ctx, end, "a save to begin"); err != nil {
			return 0, err
		}
	}
	time.Sleep(saverSettle)
	for {
		fi, err := os.Stat(filepath.Join(dir, s.db))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("bench: saved database: %w", err)
		}
		if _, tmpErr := os.Stat(filepath.Join(dir, s.tmp)); errors.Is(tmpErr, os.ErrNotExist) && replaced(before, fi) {
			return fi.Size(), nil
		}
		if err := pause(ctx, end, "a save to end"); err != nil {
			return 0, err
		}
	}
}

// replaced reports whether the database now is another one than before
// (nil: none): another file, or, its number taken again by a file made
// since the one before was replaced, written at another time or of
// another size.
func replaced(before, now os.FileInfo) bool {
	if now == nil {
		return false
	}
	return before == nil || !os.SameFile(before, now) || !now.ModTime().Equal(before.ModTime()) || now.Size() != before.Size()
}

// saverSettle is longer than a save's log line takes to become its
// temporary file (a few system calls).
const saverSettle = 20 * time.Millisecond

// pause sleeps a poll's interval, or says what did not happen by end.
func pause(ctx context.Context, end time.Time, what string) error {
	if time.Now().After(end) {
		return fmt.Errorf("bench: no sign of %s within a minute", what)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Millisecond):
		return nil
	}
}

// checkSaved says whether a database of size bytes plausibly holds rows
// retained messages whose topics and payloads take data bytes in all:
// each row's topic and payload, plus at most savedOverhead bytes of
// records around them (Mosquitto: a message-store and a retain chunk,
// about 70 bytes).
func checkSaved(size int64, rows, data int64) error {
	if size < data || size > data+rows*savedOverhead {
		return fmt.Errorf("bench: the saved database is %d bytes, not what %d rows of %d bytes of topics and payloads take (%d–%d)",
			size, rows, data, data, data+rows*savedOverhead)
	}
	return nil
}

// savedOverhead bounds a saved row's bytes beyond its topic and payload.
const savedOverhead = 256
