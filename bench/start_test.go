package bench

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestStartFailsClean (RV8-1): a broker that cannot be started, its
// command line not made (mosquitto-persist's config not written) or its
// binary not run, leaves no data directory behind and nothing for Stop
// to do.
func TestStartFailsClean(t *testing.T) {
	for _, c := range []struct {
		name string
		args func(listeners, string) ([]string, error)
	}{
		{"args", func(listeners, string) ([]string, error) { return nil, errors.New("no config") }},
		{"exec", func(_ listeners, dir string) ([]string, error) {
			return []string{filepath.Join(dir, "no-such-binary")}, nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			b := &Broker{Name: "rv8-" + c.name, args: c.args}
			if err := b.Start(false); err == nil {
				b.Stop()
				t.Fatal("started")
			}
			if err := b.Stop(); err != nil {
				t.Fatalf("Stop after a failed Start: %v", err)
			}
			left, err := os.ReadDir(tmp)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range left {
				t.Errorf("left behind: %s", e.Name())
			}
		})
	}
}
