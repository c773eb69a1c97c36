package broker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/cluster"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// ErrorTopic is where a client's refused Mote requests are reported
// (SPEC §5): ErrorTopic + client id ('%', '+' and '#' in the id
// percent-encoded).
const ErrorTopic = "$SYS/mote/errors/"

// Report is the JSON published on ErrorTopic+<client-id> for every refused
// tree publish, $set, tree subscription or will.
type Report struct {
	Time   time.Time `json:"time"`
	Client string    `json:"client"`
	Op     string    `json:"op"`    // publish, subscribe, will or deliver
	Topic  string    `json:"topic"` // as the client sent it
	Code   byte      `json:"code"`  // MQTT 5 reason code
	Reason string    `json:"reason"`
	Error  string    `json:"error"`
	Path   string    `json:"path,omitempty"` // RFC 6901 pointer into the payload
}

// reportProps are the MQTT 5 properties of an error report.
var reportProps = packets.Properties{ContentType: "application/json"}

// maxReason bounds a Reason String (and a report's topic): MQTT caps
// strings at 65,535 bytes, and a client needs far less to know why.
const maxReason = 1024

// reasonCode maps a refusal to its MQTT 5 reason code (SPEC §5).
func reasonCode(op string, err error) packets.Code {
	switch {
	case errors.Is(err, tree.ErrDenied):
		return packets.ErrNotAuthorized // 0x87
	case errors.Is(err, errShutdown), errors.Is(err, retain.ErrClosed):
		return packets.ErrServerShuttingDown // 0x8B
	case errors.Is(err, retain.ErrUnstorable):
		return packets.ErrImplementationSpecificError // 0x83: the store cannot keep the row
	case errors.Is(err, retain.ErrCommit):
		return packets.ErrUnspecifiedError // 0x80: the disk failed; the row is kept in memory and retried
	case errors.Is(err, cluster.ErrUnreplicated):
		return packets.ErrUnspecifiedError // 0x80: no quorum of the cluster took it (SPEC §12)
	case errors.Is(err, cluster.ErrTooLarge):
		return packets.ErrPacketTooLarge // 0x95: more than one batch of the cluster's log holds
	case errors.Is(err, errQuota):
		return packets.ErrQuotaExceeded // 0x97
	case errors.Is(err, errTooLarge):
		return packets.ErrPacketTooLarge // 0x95
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return packets.ErrUnspecifiedError
	case op == "subscribe":
		return packets.ErrTopicFilterInvalid // 0x8F
	case errors.Is(err, wire.ErrReserved), errors.Is(err, wire.ErrPrefix), errors.Is(err, wire.ErrFilter):
		return packets.ErrTopicNameInvalid // 0x90
	}
	return packets.ErrPayloadFormatInvalid // 0x99
}

// errQuota is a subscription over the client's limits.
var errQuota = errors.New("broker: quota exceeded")

// refusal reports a refused request and returns it as a *Refusal.
func (b *Broker) refusal(p Principal, op, topic string, err error) error {
	var r *Refusal
	if errors.As(err, &r) {
		return r
	}
	return &Refusal{Code: b.refuse(p, op, topic, err), Topic: topic, Err: err}
}

// refuse reports a refused request: one log line and a report on the
// client's error topic. It never waits: the report is dropped for a
// client whose queue is full.
func (b *Broker) refuse(p Principal, op, topic string, err error) packets.Code {
	code := reasonCode(op, err)
	reason := refusalReasonOf(code, err)
	b.countRefusal(reason)
	if p.logs != nil && op != "deliver" {
		// Only what the client sent: a message skipped for it (writer.go,
		// made for what others publish) would make its next read wait for
		// a read turn as a flooder's (turns.go).
		p.logs.refusals.Add(1)
	}
	if b.logs.allow(p.logs, p.ClientID, codeKind(code)) {
		b.log.Warn().Str("op", op).Str("topic", truncate(topic, 200)).Uint8("code", code.Code).Str("client", truncate(p.ClientID, 200)).
			Str("error", truncate(err.Error(), 500)).Msg("refused")
	}
	if p.system || p.Answered || p.ClientID == "" {
		return code
	}
	// The report is made only for a subscriber of the error topic: a
	// client flooding refused packets, with none, had one encoded and
	// dropped for each (json.Marshal, 14% of the broker's CPU).
	sc := b.plainIdx.match(ErrorTopic+errorTopicID(p.ClientID), "")
	defer sc.release()
	if len(sc.out) == 0 {
		return code
	}
	r := Report{Time: time.Now().UTC(), Client: p.ClientID, Op: op, Topic: truncate(topic, maxReason), Code: code.Code,
		Reason: code.Reason, Error: truncate(err.Error(), maxReason)}
	var pe *wire.PathError
	if errors.As(err, &pe) {
		r.Path = truncate(pe.Path, maxReason)
	}
	payload, _ := json.Marshal(r)
	b.deliverTo(sc.out, &message{topic: ErrorTopic + errorTopicID(p.ClientID), payload: payload, props: &reportProps}, pubWait{})
	return code
}

// countRefusal counts a refusal (Stats.Refused, and by reason).
func (b *Broker) countRefusal(r refusalReason) {
	b.stats.Refused.Add(1)
	b.meter.refused[r].Add(1)
}

// truncate shortens s to at most n bytes, on a UTF-8 boundary, marking the
// cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

// readsUsersReport reports whether topic is the error report of another
// client that p's user may read: with a password file, an authenticated
// user reads the reports of every client id connected under the same
// username now, or last connected under it if its session is kept (the web
// view shows a user the errors of all their devices). Without a password
// file a username is only a claim: a client reads its own reports only
// (access.canRead).
func (b *Broker) readsUsersReport(p Principal, topic string) bool {
	if b.access.load().users == nil || p.User == "" || p.system { // the current rules: a Reload may drop the password file
		return false
	}
	rest, ok := strings.CutPrefix(topic, ErrorTopic)
	if !ok {
		return false
	}
	id := rest
	if strings.Contains(id, "%") { // errorTopicID's inverse
		id = strings.NewReplacer("%25", "%", "%2B", "+", "%23", "#").Replace(id)
	}
	cl, ok := b.server.Clients.Get(id)
	return ok && string(cl.Properties.Username) == p.User
}
