#!/usr/bin/env python3
"""Scheduler events only: a message's time in the broker, from the bench's
wake-up of a broker thread to the broker's wake-up of a bench thread."""
import re, sys
path, bench, broker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rx = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
tid2pid = {}
ev = []
for line in open(path, errors='replace'):
    m = rx.match(line)
    if not m: continue
    comm, pid, tid, cpu, t, name, rest = m.groups()
    tid2pid[int(tid)] = int(pid)
    ev.append((float(t), int(pid), int(tid), name, rest))
state = None  # (t_woken, tid)
sched, step, full = [], [], []
t_in = None
for t, pid, tid, name, rest in ev:
    if name.endswith('sched_wakeup'):
        w = int(re.search(r' pid=(\d+)', rest).group(1))
        if pid == bench and tid2pid.get(w) == broker:
            state, t_in = (t, w), None
        elif pid == broker and tid2pid.get(w) == bench and state and t_in is not None:
            sched.append(t_in - state[0]); step.append(t - t_in); full.append(t - state[0]); state = None
    elif name.endswith('sched_switch') and state and t_in is None:
        n = int(re.search(r'next_pid=(\d+)', rest).group(1))
        if n == state[1]:
            t_in = t
sched, step, full = sched[200:-200], step[200:-200], full[200:-200]
# After the broker wakes a bench thread: until the broker's thread is off
# the CPU, and until the woken bench thread is on it.
off, run, samecpu, nw = [], [], 0, 0
pendw = []  # (t, broker tid, wakee, target cpu, broker cpu)
for t, pid, tid, name, rest in ev:
    if name.endswith('sched_wakeup') and pid == broker:
        m = re.search(r' pid=(\d+) .*target_cpu=(\d+)', rest)
        w = int(m.group(1))
        if tid2pid.get(w) == bench:
            pendw.append([t, tid, w, None, None])
    elif name.endswith('sched_switch'):
        p = int(re.search(r'prev_pid=(\d+)', rest).group(1)); n = int(re.search(r'next_pid=(\d+)', rest).group(1))
        for x in pendw:
            if x[3] is None and p == x[1]: x[3] = t
            if x[4] is None and n == x[2]: x[4] = t
        pendw = [x for x in pendw if x[3] is None or x[4] is None or (off.append(x[3] - x[0]) or run.append(x[4] - x[0]))]
off, run = off[200:-200], run[200:-200]
def q(a, f):
    a = sorted(a); return a[min(len(a) - 1, int(f * len(a)))] * 1e6
print(f'{len(step)} messages')
for nm, a in (('woken by bench -> on CPU', sched), ('on CPU -> wakes the subscriber', step), ('woken -> wakes the subscriber', full)):
    print(f'  {nm:32s} p50 {q(a, .5):6.1f} µs p90 {q(a, .9):6.1f} p99 {q(a, .99):6.1f}')
for nm, a in (('wakes sub -> broker thread off CPU', off), ('wakes sub -> sub thread on CPU', run)):
    print(f'  {nm:32s} p50 {q(a, .5):6.1f} µs p90 {q(a, .9):6.1f} p99 {q(a, .99):6.1f}')
