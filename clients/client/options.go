package client

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// A SubscribeOption asks more of a tree subscription than its mode and
// codec: resume from a revision (SPEC §8), paced deltas (§2), or history
// (§9). Pass them to [Client.Subscribe], [Client.Mirror] or
// [Client.History]; a combination that makes no sense for the mode is an
// error before anything is sent.
type SubscribeOption func(*subOpts)

// subOpts are the options of one subscription, as the options set them.
type subOpts struct {
	since    uint64
	hasSince bool
	interval time.Duration
	history  bool
	from, to time.Time
	limit    int
}

// Since asks a $sync subscription for only what changed after revision rev
// (the user property mote-since; SPEC §8): if the broker still knows every
// change after rev, the first message is a resume delta (Message.Resume),
// to be merged into the copy that reflected rev; otherwise it is a full
// snapshot as usual. A [Mirror] sends it by itself when it subscribes
// again; use Since with [Client.Subscribe] to resume a copy kept elsewhere.
func Since(rev uint64) SubscribeOption {
	return func(o *subOpts) { o.since, o.hasSince = rev, true }
}

// Interval paces the deltas of a $sync or $tree subscription: at most one
// message per d, later changes folded into it (SPEC §2, the option
// .<N>ms). d must be whole milliseconds from 1ms to 1h. The snapshot is
// never delayed.
func Interval(d time.Duration) SubscribeOption {
	return func(o *subOpts) { o.interval = d }
}

// WithHistory turns a $sync subscription into $hist/F (SPEC §9): the first
// message is a tree whose leaves are arrays of [t, value] pairs (t in Unix
// milliseconds, oldest first, ending with the current value); deltas
// follow as plain values. [Client.History] asks once; a [Mirror] with
// WithHistory keeps such a tree up to date.
func WithHistory() SubscribeOption {
	return func(o *subOpts) { o.history = true }
}

// HistoryFrom keeps only pairs at or after t (mote-from). It implies
// [WithHistory].
func HistoryFrom(t time.Time) SubscribeOption {
	return func(o *subOpts) { o.history, o.from = true, t }
}

// HistoryTo keeps only pairs at or before t (mote-to). It implies
// [WithHistory].
func HistoryTo(t time.Time) SubscribeOption {
	return func(o *subOpts) { o.history, o.to = true, t }
}

// HistoryLimit keeps at most n pairs per row, the newest (mote-limit); a
// [Mirror] also trims to n as deltas append. It implies [WithHistory].
func HistoryLimit(n int) SubscribeOption {
	return func(o *subOpts) { o.history, o.limit = true, n }
}

// ErrOption is a subscribe option that does not fit the subscription.
var ErrOption = errors.New("client: bad subscribe option")

// MaxInterval is the longest pacing interval the SPEC allows.
const MaxInterval = time.Hour

// CheckOptions reports whether opts fit a subscription in mode, as
// [Client.Subscribe] checks them, without sending anything: a program can
// refuse bad flags before it dials.
func CheckOptions(mode Mode, opts ...SubscribeOption) error {
	_, err := newSubOpts(mode, opts)
	return err
}

func newSubOpts(mode Mode, opts []SubscribeOption) (subOpts, error) {
	var o subOpts
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	return o, o.validate(mode)
}

func (o subOpts) validate(mode Mode) error {
	if mode == Plain && (o.hasSince || o.interval != 0 || o.history) {
		return fmt.Errorf("%w: a plain subscription takes no tree options", ErrOption)
	}
	if o.interval != 0 {
		if o.interval < time.Millisecond || o.interval > MaxInterval || o.interval%time.Millisecond != 0 {
			return fmt.Errorf("%w: interval %v: want whole milliseconds from 1ms to 1h", ErrOption, o.interval)
		}
	}
	if o.hasSince && mode != Sync {
		return fmt.Errorf("%w: Since needs a $sync subscription", ErrOption)
	}
	if o.history {
		if mode != Sync {
			return fmt.Errorf("%w: history needs mode Sync ($hist answers like $sync)", ErrOption)
		}
		if o.hasSince {
			return fmt.Errorf("%w: Since does not apply to history ($hist has no resume)", ErrOption)
		}
		if o.limit < 0 {
			return fmt.Errorf("%w: history limit %d is negative", ErrOption, o.limit)
		}
		if !o.from.IsZero() && !o.to.IsZero() && o.to.Before(o.from) {
			return fmt.Errorf("%w: history to %v is before from %v", ErrOption, o.to, o.from)
		}
		if (!o.from.IsZero() && o.from.UnixMilli() < 0) || (!o.to.IsZero() && o.to.UnixMilli() < 0) {
			return fmt.Errorf("%w: history times before 1970", ErrOption)
		}
	}
	return nil
}

// verb is the prefix verb of the subscription: sync, tree or hist.
func (o subOpts) verb(mode Mode) string {
	if o.history {
		return "hist"
	}
	return mode.String()
}

// topic is the SUBSCRIBE filter for F: F itself for a plain subscription,
// else $sync/F, $tree.cbor/F, $sync.250ms/F, $hist/F and the like. The
// pacing goes in the topic (it works over MQTT 3.1.1 too), except for
// $hist, whose options the SPEC lists as codecs only: there it is the
// user property mote-interval.
func (o subOpts) topic(filter string, mode Mode, codec Codec) string {
	if mode == Plain {
		return filter
	}
	topic := "$" + o.verb(mode)
	if codec != JSON {
		topic += "." + codec.String()
	}
	if o.interval != 0 && !o.history {
		topic += "." + strconv.FormatInt(o.interval.Milliseconds(), 10) + "ms"
	}
	return topic + "/" + filter
}

// properties are the SUBSCRIBE user properties the options ask for, in a
// fixed order.
func (o subOpts) properties() paho.UserProperties {
	var up paho.UserProperties
	if o.hasSince {
		up.Add("mote-since", strconv.FormatUint(o.since, 10))
	}
	if o.history {
		if o.interval != 0 {
			up.Add("mote-interval", strconv.FormatInt(o.interval.Milliseconds(), 10))
		}
		if !o.from.IsZero() {
			up.Add("mote-from", strconv.FormatInt(o.from.UnixMilli(), 10))
		}
		if !o.to.IsZero() {
			up.Add("mote-to", strconv.FormatInt(o.to.UnixMilli(), 10))
		}
		if o.limit > 0 {
			up.Add("mote-limit", strconv.Itoa(o.limit))
		}
	}
	return up
}
