#!/bin/bash
# rec.sh BROKER TAG [sched]: perf record -a during one round of latency on BROKER: system calls
# and the scheduler's switch and wake-up events, or with "sched" the scheduler's events only
# (no system call traced, so every broker is slowed alike).
B=$1; T=$2; cd "${OUT:-.}"
EVENTS=raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch,sched:sched_wakeup PAGES=2048
if [ "$3" = sched ]; then EVENTS=sched:sched_switch,sched:sched_wakeup PAGES=1024; fi
perf record -a -m $PAGES -o $T.data -e $EVENTS 2>$T.perf.err &
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
