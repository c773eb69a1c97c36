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
// log line comes just before it opens its temporary file, so once the
// line is there and, saverSettle later, that file is not, the save is
// done. At most a minute.
func (s *saver) saveAfter(ctx context.Context, dir string, n int) (int64, error) {
	end := time.Now().Add(time.Minute)
	for {
		m, err := s.begun(dir)
		if err != nil {
			return 0, err
		}
		if m > n {
			break
		}
		if err := pause(ctx, end, "a save to begin"); err != nil {
			return 0, err
		}
	}
	time.Sleep(saverSettle)
	for {
		if _, err := os.Stat(filepath.Join(dir, s.tmp)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if err := pause(ctx, end, "a save to end"); err != nil {
			return 0, err
		}
	}
	fi, err := os.Stat(filepath.Join(dir, s.db))
	if err != nil {
		return 0, fmt.Errorf("bench: saved database: %w", err)
	}
	return fi.Size(), nil
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
