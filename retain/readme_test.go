package retain

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestReadmeTopicLimit: the longest topic the README says the store
// keeps (the durability contract, and max_topic_length's bound) is
// MaxTopic: a topic one byte longer is refused.
func TestReadmeTopicLimit(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`a topic must be 1 to ([0-9,]+) bytes`),
		regexp.MustCompile(`max_topic_length:.*\(at most ([0-9,]+)\)`),
	} {
		m := re.FindSubmatch(b)
		if m == nil {
			t.Errorf("README.md has no %q", re)
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(string(m[1]), ",", ""))
		if err != nil || n != MaxTopic {
			t.Errorf("README.md: %q says %s, the store keeps topics of at most %d bytes", m[0], m[1], MaxTopic)
		}
	}
	if keyError(MaxTopic) != nil || keyError(MaxTopic+1) == nil {
		t.Errorf("MaxTopic %d is not the store's bound", MaxTopic)
	}
}
