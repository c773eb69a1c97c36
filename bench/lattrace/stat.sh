#!/bin/bash
# stat.sh BROKER TAG: perf stat of the broker's process for 2 s in the middle of one latency round (plain).
B=$1; T=$2; cd "${OUT:-.}"
"${MOTE:-mote}" bench -rounds 1 -json -brokers $B latency > $T.json 2> $T.err &
BP=$!
sleep 1.0
BR=$(pgrep -P $BP | head -1)
perf stat -p $BR -e task-clock,context-switches,cpu-migrations,page-faults,user_time,system_time -x, -o $T.stat -- sleep 2
wait $BP
