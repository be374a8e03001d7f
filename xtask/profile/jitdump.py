#!/usr/bin/env python3
# Dumps a loaded BPF program's JITed image, one file per function: jitdump.py PROG_ID OUTDIR
# (bpftool here has no libbfd and refuses to; this asks the kernel directly.)
import ctypes, struct, sys, os
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = 321
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_bpf, cmd, buf, 128)
    if r < 0: raise OSError(ctypes.get_errno(), 'bpf cmd %d' % cmd)
    return r
pid, out = int(sys.argv[1]), sys.argv[2]
fd = bpf(13, struct.pack('<I', pid))  # BPF_PROG_GET_FD_BY_ID
def info(buf):
    b = ctypes.create_string_buffer(buf, 256)
    attr = struct.pack('<IIQ', fd, 256, ctypes.addressof(b))
    bpf(15, attr)  # BPF_OBJ_GET_INFO_BY_FD
    return b
i = info(b'\0' * 256)
jlen, = struct.unpack_from('<I', i.raw, 16)
nks, nfl = struct.unpack_from('<II', i.raw, 104)
img = ctypes.create_string_buffer(jlen); ks = (ctypes.c_uint64 * nks)(); fl = (ctypes.c_uint32 * nfl)()
req = bytearray(256)
struct.pack_into('<I', req, 16, jlen); struct.pack_into('<Q', req, 24, ctypes.addressof(img))
struct.pack_into('<II', req, 104, nks, nfl)
struct.pack_into('<QQ', req, 112, ctypes.addressof(ks), ctypes.addressof(fl))
info(bytes(req))
syms = {}
for line in open('/proc/kallsyms'):
    a, t, n = line.split()[:3]
    if n.startswith('bpf_prog_'): syms[int(a, 16)] = n
pos = 0
for k in range(nks):
    name = syms.get(ks[k], hex(ks[k]))
    open(os.path.join(out, name + '.bin'), 'wb').write(img.raw[pos:pos + fl[k]])
    print(name, fl[k]); pos += fl[k]
