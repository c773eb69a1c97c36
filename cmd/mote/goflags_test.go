package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestTestShGOFLAGS (review h-rv9, RV9-2): scripts/test.sh builds the
// tests with -pgo=off (or PGO's value) added to the caller's GOFLAGS, but
// leaves a -pgo the caller's GOFLAGS has: the go command takes the last of
// two, so one appended after it overrode the caller's (GOFLAGS=-pgo=auto
// tested the plain build).
func TestTestShGOFLAGS(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	tests := []struct{ goflags, pgo, want string }{
		{"", "", "-pgo=off"},
		{"", "auto", "-pgo=auto"},
		{"-buildvcs=false", "", "-buildvcs=false -pgo=off"},
		{"-pgo=auto", "", "-pgo=auto"},
		{"-buildvcs=false -pgo=/tmp/x.pgo", "", "-buildvcs=false -pgo=/tmp/x.pgo"},
		{"--pgo=auto -trimpath", "off", "--pgo=auto -trimpath"},
		{"-gcflags=-pgo=x", "", "-gcflags=-pgo=x -pgo=off"},
	}
	for _, tt := range tests {
		cmd := exec.Command("bash", "-c", ". ../../scripts/goflags.sh && pgo_goflags")
		cmd.Env = append(os.Environ(), "GOFLAGS="+tt.goflags, "PGO="+tt.pgo)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GOFLAGS=%q PGO=%q: %v", tt.goflags, tt.pgo, err)
		}
		if got := strings.TrimSpace(string(out)); got != tt.want {
			t.Errorf("GOFLAGS=%q PGO=%q: %q, want %q", tt.goflags, tt.pgo, got, tt.want)
		}
	}
}
