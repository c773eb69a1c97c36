package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigHistory: the history and resume_window keys are read, and a
// bad entry is an error naming its key.
func TestConfigHistory(t *testing.T) {
	cases := []struct {
		yaml string
		err  string // "" for none
	}{
		{"history: [{filter: \"sensor/#\", keep: 1000, max_age: 168h}]\nresume_window: 5000\n", ""},
		{"history: [{filter: \"sensor/#\", keep: -1}]\n", "history[0]"},
		{"history: [{filter: \"sensor/#\", keep: 0}]\n", "keep 0"},
		{"history: [{filter: \"sensor/#\"}]\n", "keep is missing"},
		{"history: [{filter: \"a/#/b\", keep: 1}]\n", "history[0]"},
		{"history: [{filter: \"\", keep: 1}]\n", "history[0]"},
		{"history: [{filter: \"$sync/a\", keep: 1}]\n", "not a filter of rows"},
		{"history: [{filter: \"a\", keep: 1, max_age: -1h}]\n", "negative"},
		{"history: [{filter: \"a\", keep: 1, max_age: soon}]\n", "line 1"},
		{"resume_window: 0\n", "resume_window 0"},
		{"resume_window: -5\n", "resume_window -5"},
	}
	for _, tc := range cases {
		path := filepath.Join(t.TempDir(), "mote.yaml")
		os.WriteFile(path, []byte(tc.yaml), 0o600)
		cfg, err := loadConfig(path)
		if err == nil {
			var o any
			o, err = cfg.retainOptions()
			if tc.err == "" && err == nil {
				ro, _ := cfg.retainOptions()
				if len(ro.History) != 1 || ro.History[0].MaxAge != 168*time.Hour || ro.ResumeWindow != 5000 {
					t.Errorf("%q: %+v", tc.yaml, o)
				}
			}
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one with %q", tc.yaml, err, tc.err)
		}
	}
}

// TestConfigHTTP: the http block's limits are read; a negative one is an
// error naming its key; an unknown key is refused.
func TestConfigHTTP(t *testing.T) {
	cases := []struct {
		yaml string
		err  string
	}{
		{"http: {max_conns: 50, max_conns_per_host: 5, max_streams: 10, max_streams_per_user: 2, max_answer_bytes: 1000000, max_body: 4096}\n", ""},
		{"http: {max_conns: -1}\n", "http.max_conns -1"},
		{"http: {max_answer_bytes: -5}\n", "http.max_answer_bytes -5"},
		{"http: {max_connz: 5}\n", "max_connz"},
	}
	for _, tc := range cases {
		path := filepath.Join(t.TempDir(), "mote.yaml")
		os.WriteFile(path, []byte(tc.yaml), 0o600)
		cfg, err := loadConfig(path)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.err == "" && (cfg.HTTP.MaxConns != 50 || cfg.HTTP.MaxConnsPerHost != 5 || cfg.HTTP.MaxStreams != 10 || cfg.HTTP.MaxStreamsPerUser != 2 || cfg.HTTP.MaxAnswerBytes != 1000000 || cfg.HTTP.MaxBody != 4096):
			t.Errorf("%q: read %+v", tc.yaml, cfg.HTTP)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: %v, want an error with %q", tc.yaml, err, tc.err)
		}
	}
}

// TestConfigCluster: the cluster block's keys are read; an unknown one is
// refused.
func TestConfigCluster(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mote.yaml")
	os.WriteFile(path, []byte("cluster: {name: home, node: a, listen: \"127.0.0.1:6222\", routes: [\"127.0.0.1:6222\"], replicas: 1, catch_up: 30s, answer_wait: 5s, max_waiting: 100, max_waiting_bytes: 1000000}\n"), 0o600)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Cluster
	if c.Name != "home" || c.Node != "a" || len(c.Routes) != 1 || c.Replicas != 1 || c.CatchUp != 30*time.Second || c.AnswerWait != 5*time.Second || c.MaxWaiting != 100 || c.MaxWaitingBytes != 1000000 {
		t.Errorf("read %+v", c)
	}
	os.WriteFile(path, []byte("cluster: {name: home, answer_wiat: 5s}\n"), 0o600)
	if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), "answer_wiat") {
		t.Errorf("an unknown key: %v", err)
	}
}
