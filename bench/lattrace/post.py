#!/usr/bin/env python3
"""After the broker's write of a message: when does the subscriber's woken
thread run, and when does the broker's thread stop?"""
import re, sys, bisect
path, bench, broker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rx = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
writes = []   # (t_enter, t_exit, tid, cpu, wakee, target)
pend = {}
switch_in = {}  # tid -> list of times switched in
switch_out = {}  # tid -> list of (time, state)
for line in open(path, errors='replace'):
    m = rx.match(line)
    if not m: continue
    comm, pid, tid, cpu, t, name, rest = m.groups()
    pid, tid, cpu, t = int(pid), int(tid), int(cpu), float(t)
    if name.endswith('sched_switch'):
        mm = re.search(r'prev_pid=(\d+) .*prev_state=(\S+) ==> .*next_pid=(\d+)', rest)
        switch_out.setdefault(int(mm.group(1)), []).append((t, mm.group(2), cpu))
        switch_in.setdefault(int(mm.group(3)), []).append((t, cpu))
        continue
    if pid != broker: continue
    if name.endswith('sys_enter') and rest.startswith('NR 1 ') and ', 1c, ' in rest:
        pend[tid] = [t, None, tid, cpu, None, None]
    elif name.endswith('sched_wakeup') and tid in pend and pend[tid][4] is None:
        mm = re.search(r' pid=(\d+) .*target_cpu=(\d+)', rest)
        pend[tid][4], pend[tid][5] = int(mm.group(1)), int(mm.group(2))
    elif name.endswith('sys_exit') and tid in pend and rest.startswith('NR 1 '):
        w = pend.pop(tid); w[1] = t; writes.append(w)
writes = writes[200:-200]
def nextafter(lst, t):
    ts = [x[0] for x in lst]
    i = bisect.bisect_left(ts, t)
    return lst[i] if i < len(lst) else None
sl, run, same, waited, woke = [], [], 0, 0, 0
for te, tx, tid, cpu, wakee, target in writes:
    o = nextafter(switch_out.get(tid, []), tx)
    if o: sl.append(o[0] - tx)
    if wakee is None: continue
    woke += 1
    r = nextafter(switch_in.get(wakee, []), te)
    if not r: continue
    run.append(r[0] - tx)
    if target == cpu:
        same += 1
        if o and r[0] >= o[0] - 1e-7: waited += 1
def q(a, f):
    a = sorted(a); return a[min(len(a) - 1, int(f * len(a)))] * 1e6
n = len(writes)
print(f'{n} writes; {woke} woke a thread in the write; wakee placed on the writer CPU: {same}; of those ran only after the writer stopped: {waited}')
print(f'write exit -> writer thread off CPU: p50 {q(sl, .5):.1f} µs p90 {q(sl, .9):.1f} mean {sum(sl)/len(sl)*1e6:.1f}')
print(f'write exit -> woken subscriber thread on CPU: p50 {q(run, .5):.1f} µs p90 {q(run, .9):.1f} mean {sum(run)/len(run)*1e6:.1f}')
