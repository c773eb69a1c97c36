package broker

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"

	"github.com/mote-mqtt/mote/wire"
)

// The filters mochi files subscriptions under are built and read here,
// and nowhere else.
//
// A tree subscription in prefix form ($sync.cbor/F) is filed as sent. One
// in property form (MQTT 5 user property mote=sync|tree on filter F) is
// filed as "$sync.prop.cbor/F" ("$sync.prop.cbor.250ms/F" with
// mote-interval=250): no client can send that filter ("prop" is no option
// of the grammar), so a resumed session still tells it from a plain
// subscription to F, and from one to $sync.cbor/F.
const propOption = "prop"

// internalFilter is the filter mochi files a subscription under.
func internalFilter(asSent string, sf wire.Subscription, prop bool) string {
	if !prop || sf.Mode == wire.Plain {
		return asSent
	}
	opts := "." + propOption + "." + sf.Codec.String()
	if sf.Interval > 0 {
		opts += "." + wire.IntervalOption(sf.Interval)
	}
	return "$" + sf.Mode.String() + opts + "/" + sf.Filter
}

// parseInternal reads a filter as mochi files it; ok is false for one that
// does not parse (it was never granted).
func parseInternal(f string) (wire.Subscription, bool) {
	if verb, rest, found := strings.Cut(f, "/"); found && strings.Contains(verb, "."+propOption+".") {
		verb = strings.Replace(verb, "."+propOption, "", 1)
		// The original dialect's codec (original.go) is no option a client
		// can send: "$sync.prop.original/F".
		verb, original := strings.CutSuffix(verb, "."+originalOption)
		sf, err := wire.ParseSubscribe(verb + "/" + rest)
		if original {
			sf.Codec = wire.CodecOriginal
		}
		return sf, err == nil && sf.Mode != wire.Plain
	}
	sf, err := wire.ParseSubscribe(f)
	return sf, err == nil
}

// outgoingTopic is the topic a tree subscription's messages are published
// on: the filter exactly as the client subscribed (SPEC §2).
func outgoingTopic(internal string, sf wire.Subscription) string {
	if verb, _, _ := strings.Cut(internal, "/"); strings.Contains(verb, "."+propOption+".") {
		return sf.Filter
	}
	return internal
}

// propFilters are the internal filters every unpaced property-form tree
// subscription to plain filter f may be filed under.
func propFilters(f string) []string {
	var out []string
	for _, m := range []wire.Mode{wire.Sync, wire.Tree, wire.Hist} {
		for _, c := range wire.Codecs {
			out = append(out, internalFilter(f, wire.Subscription{Mode: m, Codec: c, Filter: f}, true))
		}
	}
	for _, m := range []wire.Mode{wire.Sync, wire.Tree} { // the original dialect's (original.go)
		out = append(out, internalFilter(f, wire.Subscription{Mode: m, Codec: wire.CodecOriginal, Filter: f}, true))
	}
	return out
}

// propFiled lists the internal filters of cl's property-form tree
// subscriptions to plain filter f: the unpaced forms that are filed, and,
// if the connection ever filed a paced one, the paced ones, looked for
// among the session's subscriptions (their interval is part of the
// filter). Called on the connection's read goroutine.
func (c *conn) propFiled(cl *mqtt.Client, f string) []string {
	var out []string
	for _, internal := range propFilters(f) {
		if _, ok := cl.State.Subscriptions.Get(internal); ok {
			out = append(out, internal)
		}
	}
	if !c.pacedProps {
		return out
	}
	n := len(out)
	for filter := range cl.State.Subscriptions.GetAll() {
		if sf, ok := parseInternal(filter); ok && sf.Interval > 0 && sf.Filter == f && outgoingTopic(filter, sf) != filter {
			out = append(out, filter)
		}
	}
	slices.Sort(out[n:])
	return out
}

func errQuotaf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errQuota}, a...)...)
}

func isQuota(err error) bool { return errors.Is(err, errQuota) }
