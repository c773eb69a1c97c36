package main

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
)

// reloadFlags are the flags of `mote broker` that override the reloadable
// keys of the config file. They keep their values across reloads.
type reloadFlags struct {
	pwFile, aclFile, certFile, keyFile string
	anon                               bool
	tls                                bool // a TLS, WSS or HTTPS listener is configured: it needs a certificate
}

// settings are what `mote broker` reads again on SIGHUP — the files the
// configuration names, its history rules and its translators, as one
// broker.Reload — and what it read them from, to tell what a reload
// changed.
type settings struct {
	reload                             broker.Reload
	cfg                                config
	pwFile, aclFile, certFile, keyFile string
	sums                               map[string][sha256.Size]byte // content of each file read
	cert                               *x509.Certificate            // the TLS leaf, if any
}

// readSettings reads the reloadable settings of cfg (read from cfgPath),
// flags first. An error names the file, and the line when there is one.
func readSettings(cfg config, cfgPath string, f reloadFlags) (settings, error) {
	s := settings{cfg: cfg, sums: map[string][sha256.Size]byte{}}
	ro, err := cfg.retainOptions()
	if err != nil {
		if cfgPath != "" {
			err = fmt.Errorf("config %s: %w", cfgPath, err)
		}
		return s, err
	}
	s.reload.History = ro.History
	if s.reload.Translators, err = cfg.translators(); err != nil {
		if cfgPath != "" {
			err = fmt.Errorf("config %s: %w", cfgPath, err)
		}
		return s, err
	}
	s.reload.AllowAnonymous = f.anon || cfg.AllowAnon
	if s.pwFile = firstOf(f.pwFile, cfg.PasswordFile); s.pwFile != "" {
		if s.reload.Users, err = auth.LoadPasswords(s.pwFile); err != nil {
			return s, err
		}
		s.sum(s.pwFile)
	}
	if s.aclFile = firstOf(f.aclFile, cfg.ACLFile); s.aclFile != "" {
		if s.reload.ACL, err = auth.LoadACL(s.aclFile); err != nil {
			return s, err
		}
		s.sum(s.aclFile)
	}
	if f.tls {
		s.certFile, s.keyFile = firstOf(f.certFile, cfg.Cert), firstOf(f.keyFile, cfg.Key)
		if s.certFile == "" || s.keyFile == "" {
			return s, fmt.Errorf("--tls, --wss and --https need --cert and --key")
		}
		if s.reload.TLSConfig, err = broker.LoadTLS(s.certFile, s.keyFile); err != nil {
			return s, err
		}
		if c := s.reload.TLSConfig.Certificates[0]; c.Leaf != nil {
			s.cert = c.Leaf
		} else if s.cert, err = x509.ParseCertificate(c.Certificate[0]); err != nil { // with GODEBUG x509keypairleaf=0
			return s, fmt.Errorf("TLS certificate %s: %w", s.certFile, err)
		}
		s.sum(s.certFile)
		s.sum(s.keyFile)
	}
	return s, nil
}

// sum notes what a file held (to tell a changed file; a file that changed
// again since it was parsed only shows as changed).
func (s *settings) sum(path string) {
	if b, err := os.ReadFile(path); err == nil {
		s.sums[path] = sha256.Sum256(b)
	}
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// reloadBroker reads the configuration again and hands it to the broker,
// all or nothing: on any error it logs the error (naming the file and
// line) and the broker keeps what it had. It returns the settings now in
// force.
func reloadBroker(b *broker.Broker, log zerolog.Logger, cfgPath string, f reloadFlags, cur settings) settings {
	log.Info().Msg("SIGHUP: reloading the configuration")
	cfg, err := loadConfig(cfgPath)
	var next settings
	if err == nil {
		next, err = readSettings(cfg, cfgPath, f)
	}
	if err == nil {
		err = b.Reload(next.reload)
	}
	if err != nil {
		log.Error().Err(err).Msg("reload failed; the broker keeps its configuration")
		return cur
	}
	parts, changed := next.describe(cur)
	log.Info().Strs("changed", changed).Msg("reloaded: " + strings.Join(parts, ", "))
	if keys := restartKeys(cur.cfg, next.cfg); len(keys) > 0 {
		log.Warn().Strs("keys", keys).Msg("changed in the config file, but applied only at a restart: " + strings.Join(keys, ", "))
	}
	return next
}

// describe lists what s holds, part by part ("acl file acl (12 rules;
// changed)"), and the names of the parts that differ from prev.
func (s settings) describe(prev settings) (parts, changed []string) {
	add := func(name, text, details string, differs bool) {
		if differs {
			details = strings.TrimPrefix(details+"; changed", "; ")
			changed = append(changed, name)
		}
		if details != "" {
			text += " (" + details + ")"
		}
		parts = append(parts, text)
	}
	fileDiffers := func(path, old string) bool { return path != old || s.sums[path] != prev.sums[old] }
	if s.pwFile != "" {
		add("password file", "password file "+s.pwFile, count(s.reload.Users.Len(), "user"), fileDiffers(s.pwFile, prev.pwFile))
	} else {
		add("password file", "no password file", "", prev.pwFile != "")
	}
	if s.aclFile != "" {
		add("acl file", "acl file "+s.aclFile, count(s.reload.ACL.Len(), "rule"), fileDiffers(s.aclFile, prev.aclFile))
	} else {
		add("acl file", "no acl file", "", prev.aclFile != "")
	}
	if s.reload.AllowAnonymous || prev.reload.AllowAnonymous {
		add("allow_anonymous", fmt.Sprint("allow_anonymous ", s.reload.AllowAnonymous), "", s.reload.AllowAnonymous != prev.reload.AllowAnonymous)
	}
	add("history", "history", count(len(s.reload.History), "rule"), !slices.Equal(s.reload.History, prev.reload.History))
	if s.reload.Translators.Len() > 0 || prev.reload.Translators.Len() > 0 {
		add("translate", "translate", count(s.reload.Translators.Len(), "rule"), !reflect.DeepEqual(s.reload.Translators.Rules(), prev.reload.Translators.Rules()))
	}
	if s.cert != nil {
		add("tls certificate", "tls certificate "+s.certFile,
			fmt.Sprintf("%s, serial %s, until %s", s.cert.Subject, s.cert.SerialNumber, s.cert.NotAfter.UTC().Format(time.DateOnly)),
			fileDiffers(s.certFile, prev.certFile) || fileDiffers(s.keyFile, prev.keyFile))
	}
	return parts, changed
}

// count is "1 rule", "2 rules".
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// restartKeys are the config file's top-level keys that differ between
// two readings and that a reload does not apply.
func restartKeys(old, next config) []string {
	ov, nv := reflect.ValueOf(old), reflect.ValueOf(next)
	var keys []string
	for i := range ov.NumField() {
		key, _, _ := strings.Cut(ov.Type().Field(i).Tag.Get("yaml"), ",")
		switch key {
		case "password_file", "acl_file", "allow_anonymous", "history", "translate", "cert", "key":
			continue // reloaded
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			keys = append(keys, key)
		}
	}
	return keys
}
