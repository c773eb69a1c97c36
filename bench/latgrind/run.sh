#!/bin/bash
# run.sh BIN OUT [RATE COUNT IDLE SUBS]: one broker `BIN broker` under callgrind
# (cache simulation on, instrumentation off until latgrind's warm-up is
# done), driven by latgrind; writes OUT (callgrind's profile of the counted
# window only). Caches as this machine's AMD EPYC core: L1 32 KiB each,
# its 1 MiB L2 as the last level (the L3 is shared with other processes).
# GODEBUG=asyncpreemptoff=1: callgrind asserts on the runtime's preemption
# signals (valgrind 3.19). IDLE=1 counts an idle window of the same length instead.
# TREE=1 in the environment drives the `$tree` variant (latgrind -tree).
# FLOOR=1 runs `BIN floor` (the go-floor broker of `mote bench`) instead of
# `BIN broker`, for counting the same message through the Go floor.
set -eu
bin=$1 out=$2 rate=${3:-100} count=${4:-1000} idle=${5:-0} subs=${6:-1}
here=$(cd "$(dirname "$0")" && pwd)
drv=${LATGRIND:-/tmp/latgrind}
[ -x "$drv" ] || (cd "$here/../.." && go build -o "$drv" ./bench/latgrind)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
if [ "${FLOOR:-0}" = 1 ]; then
	args=(floor --tcp 127.0.0.1:$port)
	ready=
else
	args=(broker --tcp 127.0.0.1:$port --ws off --http off --data "$data" --log-level warn)
	ready=1
fi
GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no \
	--I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64 \
	--callgrind-out-file="$out" \
	"$bin" "${args[@]}" \
	>"$out.log" 2>&1 &
vg=$!
trap 'kill $vg 2>/dev/null || true' EXIT
i=0
# The floor logs nothing when it listens: only its port is waited for.
until { [ -z "$ready" ] || grep -q 'listening\|warn' "$out.log" 2>/dev/null; } && (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do
	i=$((i + 1)); [ $i -lt 600 ] || { kill $vg; echo "never listened" >&2; exit 1; }
	sleep 0.1
done
flag=
[ "$idle" = 1 ] && flag=-idle
[ "${TREE:-0}" = 1 ] && flag="$flag -tree"
"$drv" -addr 127.0.0.1:$port -rate "$rate" -count "$count" -subs "$subs" -warm 300 $flag \
	-on "callgrind_control -i on $vg >/dev/null" \
	-off "callgrind_control -d $vg >/dev/null; callgrind_control -i off $vg >/dev/null"
kill $vg
wait $vg || true
rm -rf "$data"
