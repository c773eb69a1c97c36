#!/bin/bash
# run.sh BIN PORT [refuseflood flags]: one round of "Refusal floods"
# (bench/README.md): a fresh `BIN broker` on 127.0.0.1:PORT, the probe in a
# process of its own (2 s alone, then 6 s), the flood (5 s) niced by
# $NICE (19 unless set: the broker's share of the cores, not the
# flooder's, is measured), and the broker's CPU (clock ticks) and log lines.
# WS=127.0.0.1:P opens the broker's WebSocket listener there (pass
# -ws 127.0.0.1:P to flood over it); PROBE adds flags to the probe (-burst 20).
set -e
BIN=$1; PORT=$2; shift 2
TOOL=${TOOL:-$(dirname "$0")/refuseflood}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
"$BIN" broker --data off --tcp 127.0.0.1:$PORT --ws ${WS:-off} --http off --allow-anonymous --log-level info >"$D/log" 2>&1 &
BP=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
CPU0=$(awk '{print $14+$15}' /proc/$BP/stat)
timeout 60 "$TOOL" -addr 127.0.0.1:$PORT -n 0 -pre 2s -d 6s ${PROBE:-} >"$D/probe" &
PP=$!
sleep 2
timeout 60 nice -n "${NICE:-19}" "$TOOL" -addr 127.0.0.1:$PORT -noprobe -pre 0 -d 5s "$@" | grep flood
wait $PP
grep -E "baseline|during" "$D/probe"
CPU1=$(awk '{print $14+$15}' /proc/$BP/stat)
echo "broker cpu ticks: $((CPU1 - CPU0)) log lines: $(wc -l <"$D/log")"
kill $BP
wait $BP 2>/dev/null || true
