#!/bin/bash
# wrap.sh: stands in for a mote binary as `mote bench -baseline`; every
# `broker` it is asked to run gets --pprof on a free loopback port, and a
# loop saves that broker's CPU profile in 1 s slices into $PGO_DIR; asked to
# stop, it lets the slice under way finish before it interrupts the broker,
# so a scenario's last second is not lost. Only the broker's own process is sampled, never the bench's
# clients. If the wrapper itself is killed (SIGKILL, which no trap sees:
# the bench's round timeout), the loop sees it gone and interrupts the
# broker, so no broker outlives the bench. Used by profile.sh; MOTE_BIN is
# the real binary.
set -u
bin=${MOTE_BIN:?MOTE_BIN unset}
[ "${1:-}" = broker ] || exec "$bin" "$@"
case " $* " in *" -h "*|*" --help "*) exec "$bin" "$@" ;; esac
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" "$@" --pprof 127.0.0.1:$port &
child=$!
stopf=$PGO_DIR/.stop.$$
trap 'touch "$stopf"; wait $loop; kill -INT $child 2>/dev/null' INT TERM
(
	n=0
	wrapper=$$ # the subshell's $$ is still the wrapper's pid
	while [ ! -e "$stopf" ] && kill -0 $child 2>/dev/null; do
		if ! kill -0 $wrapper 2>/dev/null; then
			kill -INT $child 2>/dev/null
			break
		fi
		n=$((n + 1))
		curl -sf -o "$PGO_DIR/$child.$n.pb.gz" "http://127.0.0.1:$port/debug/pprof/profile?seconds=1" ||
			{ rm -f "$PGO_DIR/$child.$n.pb.gz"; sleep 0.05; }
	done
) &
loop=$!
wait $child
rc=$?
wait $child 2>/dev/null; rc2=$?
[ $rc -gt 128 ] && rc=$rc2
kill $loop 2>/dev/null
rm -f "$stopf"
exit $rc
