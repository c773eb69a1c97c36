package js

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// TestVendoredSums checks that README.md records the sha256 of every
// vendored file as embedded: a re-vendored or edited bundle must come with
// its new sum (scripts/vendor-js.sh prints them).
func TestVendoredSums(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"mqtt.esm.js": MQTTJS, "cbor-x.esm.js": CBORXJS, "msgpack.esm.js": MsgPackJS} {
		sum := sha256.Sum256([]byte(body))
		if !strings.Contains(string(readme), hex.EncodeToString(sum[:])) {
			t.Errorf("README.md does not record %s's sha256 %x", name, sum)
		}
	}
}
