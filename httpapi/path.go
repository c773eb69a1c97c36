package httpapi

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// errPath is a topic or filter in a URL path that does not parse.
var errPath = errors.New("httpapi: bad topic in path")

// parseTopic reads the MQTT topic or filter that follows a route's prefix
// in an escaped URL path (SPEC §10): levels separated by '/', each
// path-escaped on its own ('#' as %23; '+' as is or %2B). A level cannot
// contain '/' (SPEC §3), so an escaped one (%2F) is an error, as is a
// malformed escape. Whether the result is a valid topic or filter is the
// broker's to say.
func parseTopic(escaped string) (string, error) {
	if escaped == "" {
		return "", fmt.Errorf("%w: no topic after the route (GET /api/tree/<filter>)", errPath)
	}
	if !strings.Contains(escaped, "%") {
		return escaped, nil // nothing escaped: the levels are as written
	}
	var b strings.Builder
	b.Grow(len(escaped))
	for i, level := range strings.Split(escaped, "/") {
		s, err := url.PathUnescape(level)
		if err != nil {
			return "", fmt.Errorf("%w: level %d (%.100q): %v", errPath, i+1, level, err)
		}
		if strings.Contains(s, "/") {
			return "", fmt.Errorf("%w: level %d (%.100q) holds an escaped '/' (%%2F): a level cannot contain '/'", errPath, i+1, level)
		}
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(s)
	}
	return b.String(), nil
}
