#!/bin/bash
# rec.sh BROKER TAG: perf record -a during one round of latency on BROKER.
B=$1; T=$2; cd "${OUT:-.}"
perf record -a -m 2048 -o $T.data -e raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch,sched:sched_wakeup 2>$T.perf.err &
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
rm -f $T.data; cat $T.pids; tail -2 $T.perf.err
