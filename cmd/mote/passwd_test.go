package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPasswdIterations: -I out of range is a usage error with a clear
// message, and writes nothing.
func TestPasswdIterations(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	for _, c := range []struct {
		iter string
		ok   bool
	}{{"0", false}, {"2000000000", false}, {"1000001", false}, {"1000", true}} {
		var out, errOut strings.Builder
		err := run(context.Background(), []string{"passwd", "-c", "-I", c.iter, "-b", file, "alice", "pw"}, nil, &out, &errOut)
		if c.ok {
			if err != nil {
				t.Errorf("-I %s: %v %s", c.iter, err, errOut.String())
			}
			continue
		}
		if !errors.Is(err, errUsage) || !strings.Contains(errOut.String(), "-I "+c.iter+": PBKDF2 iterations must be 1 to 1000000") {
			t.Errorf("-I %s: %v, stderr %q", c.iter, err, errOut.String())
		}
		if _, err := os.Stat(file); err == nil {
			t.Errorf("-I %s wrote the file", c.iter)
		}
	}
}
