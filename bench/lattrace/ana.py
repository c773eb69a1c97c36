#!/usr/bin/env python3
"""Per-message syscalls, switches and a timeline from `perf script` of a
system-wide perf record (raw_syscalls + sched_switch + sched_wakeup) taken
during `mote bench -rounds 1 latency` on one broker.

usage: ana.py SCRIPT.txt BENCHPID BROKERPID
"""
import re
import sys
from collections import Counter, defaultdict

NAMES = {0: 'read', 1: 'write', 202: 'futex', 232: 'epoll_wait', 281: 'epoll_pwait',
         441: 'epoll_pwait2', 35: 'nanosleep', 24: 'sched_yield', 230: 'clock_nanosleep',
         45: 'recvfrom', 44: 'sendto', 234: 'tgkill', 15: 'rt_sigreturn', 14: 'rt_sigprocmask',
         13: 'rt_sigaction', 28: 'madvise', 9: 'mmap', 20: 'writev', 19: 'readv', 7: 'poll',
         23: 'select', 270: 'pselect6', 228: 'clock_gettime', 96: 'gettimeofday', 39: 'getpid',
         186: 'gettid', 200: 'tkill', 54: 'setsockopt', 288: 'accept4', 233: 'epoll_ctl'}

path, bench, broker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# line: comm  pid/tid [cpu] time: event: trace
rx = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
ev = []
for line in open(path, errors='replace'):
    m = rx.match(line)
    if not m:
        continue
    comm, pid, tid, cpu, t, name, rest = m.groups()
    ev.append((float(t), int(pid), int(tid), int(cpu), name, rest, comm))

# Pending syscall per tid (enter args), so exits get their number and fd.
pend = {}
recs = []  # (t_enter, t_exit, pid, tid, nr, args, ret)
sw = []    # (t, prev_pid, prev_tid, prev_state, next_pid, next_tid)
wk = []    # (t, waker_pid, waker_tid, wakee_tid, cpu)
tid2pid = {}
for t, pid, tid, cpu, name, rest, comm in ev:
    tid2pid[tid] = pid
    if name.endswith('sys_enter'):
        m = re.match(r'NR (\d+) \((.*)\)', rest)
        if m:
            pend[tid] = (t, int(m.group(1)), [int(x, 16) for x in m.group(2).split(', ')])
    elif name.endswith('sys_exit'):
        m = re.match(r'NR (-?\d+) = (-?\d+)', rest)
        if m and tid in pend:
            te, nr, args = pend.pop(tid)
            recs.append((te, t, pid, tid, nr, args, int(m.group(2))))
    elif name.endswith('sched_switch'):
        m = re.search(r'prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=.* next_pid=(\d+)', rest)
        if m:
            sw.append((t, pid, tid, m.group(2), int(m.group(3)), cpu))
    elif name.endswith('sched_wakeup'):
        m = re.search(r'pid=(\d+) .*target_cpu=(\d+)', rest)
        if m:
            wk.append((t, pid, tid, int(m.group(1)), int(m.group(2))))

# The message markers: the broker's reads returning a 28-byte PUBLISH (plain:
# topic lat/t, 19-digit payload) and its 28-byte writes.
MSG = 28
b_reads = [r for r in recs if r[2] == broker and r[4] in (0, 45) and r[6] in (MSG, MSG - 2)]
b_writes = [r for r in recs if r[2] == broker and r[4] in (1, 44, 20) and r[5][2] == MSG]
p_writes = [r for r in recs if r[2] == bench and r[4] in (1, 44, 20) and r[5][2] == MSG]
s_reads = [r for r in recs if r[2] == bench and r[4] in (0, 45) and r[6] in (MSG, MSG - 2)]
print(f'bench publish writes {len(p_writes)}, broker reads {len(b_reads)}, broker writes {len(b_writes)}, bench sub reads {len(s_reads)}')
if len(b_reads) < 100:
    sys.exit('too few messages')
# Steady window: from the 200th broker read to the 200th from the end.
t0, t1 = b_reads[200][0], b_reads[-200][0]
n = sum(1 for r in b_reads if t0 <= r[0] < t1)
print(f'window {t1 - t0:.3f} s, {n} messages')

def per_msg(pid, label):
    c = Counter()
    thr = defaultdict(Counter)
    for r in recs:
        if r[2] == pid and t0 <= r[0] < t1:
            nm = NAMES.get(r[4], str(r[4]))
            if nm in ('read', 'recvfrom') and r[6] < 0:
                nm += ' (EAGAIN)'
            c[nm] += 1
            thr[r[3]][nm] += 1
    tot = sum(c.values())
    print(f'{label}: syscalls a message {tot / n:.2f}: ' + ', '.join(f'{k} {v / n:.2f}' for k, v in c.most_common()))
    threads = [t for t in thr if sum(thr[t].values()) > 0.05 * n]
    print(f'  threads with > 0.05/msg syscalls: {len(threads)}')
    for t in sorted(threads, key=lambda t: -sum(thr[t].values())):
        print(f'    tid {t}: ' + ', '.join(f'{k} {v / n:.2f}' for k, v in thr[t].most_common()))
    sws = [s for s in sw if s[1] == pid and t0 <= s[0] < t1]
    st = Counter(s[3] for s in sws)
    print(f'  switches out a message {len(sws) / n:.2f} (' + ', '.join(f'{k} {v / n:.2f}' for k, v in st.items()) + ')')
    wks = [w for w in wk if tid2pid.get(w[3]) == pid and t0 <= w[0] < t1]
    by = Counter('self' if w[1] == pid else ('bench' if w[1] == bench else ('broker' if w[1] == broker else ('irq/idle' if w[1] == 0 else 'other'))) for w in wks)
    print(f'  wake-ups of its threads a message {len(wks) / n:.2f} (by ' + ', '.join(f'{k} {v / n:.2f}' for k, v in by.items()) + ')')
    on = 0.0
    cur = {}
    for s in sw:
        t, ppid, ptid, st_, ntid, cpu = s
        if cpu in cur and cur[cpu][0] == pid and t0 <= t < t1:
            on += t - max(cur[cpu][1], t0)
        cur[cpu] = (tid2pid.get(ntid), t)
    print(f'  on CPU a message {on / n * 1e6:.1f} µs')
    tids = Counter()
    for s in sws:
        tids[s[2]] += 1
    print(f'  distinct threads switched: {len(tids)}')

per_msg(broker, 'BROKER')
per_msg(bench, 'BENCH (both clients)')

# Timeline per message: pub write enter -> broker read exit -> broker write
# enter -> sub read exit. Matched in order by time.
import bisect
pw = [r[0] for r in p_writes]
br = [r[1] for r in b_reads]
bw = [r[0] for r in b_writes]
sr = [r[1] for r in s_reads]
hop_in, step, hop_out, total, inpart = [], [], [], [], []
for r in b_reads:
    if not (t0 <= r[0] < t1):
        continue
    tr = r[1]
    i = bisect.bisect_right(pw, tr) - 1
    j = bisect.bisect_left(bw, tr)
    if i < 0 or j >= len(bw):
        continue
    tw = bw[j]
    k = bisect.bisect_left(sr, tw)
    if k >= len(sr):
        continue
    hop_in.append(tr - pw[i]); inpart.append(tw - pw[i]); step.append(tw - tr); hop_out.append(sr[k] - tw); total.append(sr[k] - pw[i])

def q(a, f):
    a = sorted(a)
    return a[min(len(a) - 1, int(f * len(a)))] * 1e6
for name, a in (('pub write enter -> broker read exit', hop_in), ('broker read exit -> its write enter', step),
                ('pub write enter -> broker write enter', inpart), ('broker write enter -> sub read exit', hop_out), ('pub write -> sub read', total)):
    print(f'{name:40s} p50 {q(a, .5):7.1f} µs  p90 {q(a, .9):7.1f}  p99 {q(a, .99):7.1f}  mean {sum(a) / len(a) * 1e6:7.1f}')

# Which broker threads did the read and the write of each message?
same = sum(1 for r in b_reads if t0 <= r[0] < t1 and any(w[3] == r[3] and 0 <= w[0] - r[1] < 0.002 for w in b_writes[bisect.bisect_left(bw, r[1]):bisect.bisect_left(bw, r[1]) + 1]))
print(f'messages whose write was made by the reading thread: {same} of {n}')
