package broker

import (
	"context"
	"log/slog"

	"github.com/rs/zerolog"
)

// slogHandler sends mochi's log/slog records to zerolog, so every log line
// of the broker goes through one logger.
type slogHandler struct {
	log   zerolog.Logger
	attrs []slog.Attr
	group string
}

func newSlog(log zerolog.Logger) *slog.Logger {
	return slog.New(&slogHandler{log: log.With().Str("component", "mochi").Logger()})
}

func zerologLevel(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.InfoLevel
	}
	return zerolog.DebugLevel
}

func (h *slogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return zerologLevel(l) >= h.log.GetLevel() && zerologLevel(l) >= zerolog.GlobalLevel()
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	ev := h.log.WithLevel(zerologLevel(r.Level))
	for _, a := range h.attrs {
		ev = addAttr(ev, h.group, a)
	}
	r.Attrs(func(a slog.Attr) bool {
		ev = addAttr(ev, h.group, a)
		return true
	})
	ev.Msg(r.Message)
	return nil
}

func addAttr(ev *zerolog.Event, group string, a slog.Attr) *zerolog.Event {
	key := a.Key
	if group != "" {
		key = group + "." + key
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return ev.Str(key, truncate(v.String(), slogValueMax))
	case slog.KindInt64:
		return ev.Int64(key, v.Int64())
	case slog.KindBool:
		return ev.Bool(key, v.Bool())
	case slog.KindGroup: // mochi's packet summary (mqtt.LogPacket): pk.type, pk.topic, …
		for _, ga := range v.Group() {
			ev = addAttr(ev, key, ga)
		}
		return ev
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return ev.Str(key, truncate(err.Error(), slogValueMax))
		}
	}
	return ev.Str(key, truncate(v.String(), slogValueMax))
}

// slogValueMax bounds each value of a mochi log line, in bytes: what a
// client sends may reach it (an error quoting a filter, a client id), and
// no line should cost in proportion to a packet. Mochi's own logs cut
// topics and client ids shorter (mqtt.LogString) and never log a payload.
const slogValueMax = 1024

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	c := *h
	if c.group != "" {
		name = c.group + "." + name
	}
	c.group = name
	return &c
}
