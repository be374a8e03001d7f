#!/usr/bin/env python3
# Instruction-level profile of JITed BPF functions: jitprof.py PERF_DATA JIT_DIR NAME_SUFFIX
# JIT_DIR holds <ksym name>.bin files from jitdump.py of the same object.
import subprocess, sys, collections, re, os
data, jdir, want = sys.argv[1:4]
out = subprocess.run(['perf', 'script', '-i', data, '--show-bpf-events', '-F', 'ip,sym'],
                     capture_output=True, text=True).stdout
ranges = collections.defaultdict(set)
counts = collections.Counter(); total = 0
for line in out.splitlines():
    m = re.search(r'PERF_RECORD_KSYMBOL addr ([0-9a-f]+) len (\d+) .*name (\S+)', line)
    if m:
        ranges[m.group(3)].add((int(m.group(1), 16), int(m.group(2)))); continue
    p = line.split()
    if len(p) == 2 and p[1].endswith(want):
        ip = int(p[0], 16)
        for a, l in ranges[p[1]]:
            if a <= ip < a + l:
                counts[(p[1], ip - a)] += 1; total += 1; break
names = {n for n, _ in counts}
for n in names:
    binf = os.path.join(jdir, n + '.bin')
    dis = subprocess.run(['objdump', '-D', '-b', 'binary', '-mi386:x86-64', binf],
                         capture_output=True, text=True).stdout
    print('=====', n, sum(c for (nn, _), c in counts.items() if nn == n), 'samples')
    for line in dis.splitlines():
        m = re.match(r'\s+([0-9a-f]+):\s', line)
        if not m: continue
        off = int(m.group(1), 16)
        c = counts.get((n, off), 0)
        print('%6d %5.1f%% %s' % (c, 100.0 * c / max(total, 1), line.strip()))
