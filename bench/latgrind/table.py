#!/usr/bin/env python3
"""table.py RUN IDLE COUNT [N] [inclusive]: per-message counts from two
callgrind dumps of run.sh (RUN: COUNT messages; IDLE: a window as long with
none). Each function's Ir, I1mr, D1mr, D1mw, DLmr+DLmw of RUN less IDLE,
divided by COUNT; the N largest by Ir, exclusive unless 'inclusive'."""
import re, subprocess, sys

EV = ["Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw"]

def load(path, inclusive):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", "--inclusive=" + ("yes" if inclusive else "no"), path],
                         capture_output=True, text=True, check=True).stdout
    fns, tot = {}, None
    for line in out.splitlines():
        m = re.match(r"^\s*((?:(?:[\d,]+(?: \([ \d.]+%\))?|\.)\s+){9})(.*)$", line)
        if not m:
            continue
        nums = [int(a.replace(",", "")) if a else 0 for a in re.findall(r"([\d,]+)(?: \([ \d.]+%\))?|\.", m.group(1))][:9]
        name = m.group(2).strip()
        if name.startswith("PROGRAM TOTALS"):
            tot = nums
            continue
        name = re.sub(r" \[.*\]$", "", name)
        name = name.split(":", 1)[1] if ":" in name else name
        name = name.replace("github.com/mote-mqtt/mote/", "")
        a = fns.setdefault(name, [0] * 9)
        for i in range(9):
            a[i] += nums[i]
    return fns, tot

def main():
    run, idle, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    inc = len(sys.argv) > 5 and sys.argv[5] == "inclusive"
    r, rt = load(run, inc)
    i, it = load(idle, inc)
    d = lambda a, b: [(x - y) / count for x, y in zip(a, b)]
    t = d(rt, it)
    print(f"{'per message':60s} {'Ir':>8s} {'I1mr':>7s} {'D1mr':>6s} {'D1mw':>6s} {'DLm':>5s}")
    row = lambda name, v: print(f"{name[:60]:60s} {v[0]:8.0f} {v[3]:7.1f} {v[4]:6.1f} {v[5]:6.1f} {v[7]+v[8]:5.1f}")
    row("TOTAL (run - idle)", t)
    rows = sorted(((k, d(v, i.get(k, [0] * 9))) for k, v in r.items()), key=lambda kv: -kv[1][0])
    for k, v in rows[:n]:
        row(k, v)

main()
