#!/bin/bash
# rec2.sh BROKER TAG: perf record -a of scheduler events only during one latency round.
B=$1; T=$2; cd "${OUT:-.}"
perf record -a -m 1024 -o $T.data -e sched:sched_switch,sched:sched_wakeup 2>$T.perf.err &
P=$!
sleep 1
"${MOTE:-mote}" bench -rounds 1 -json -brokers $B latency > $T.json 2> $T.err &
BP=$!
sleep 1.2
BR=$(pgrep -P $BP | head -1)
echo "$BP $BR" > $T.pids
wait $BP
kill -INT $P; wait $P
perf script --ns -i $T.data -F comm,pid,tid,cpu,time,event,trace > $T.txt 2>/dev/null
rm -f $T.data
