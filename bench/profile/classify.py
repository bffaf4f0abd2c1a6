#!/usr/bin/env python3
"""Classifies perf samples of Tessera's processes by their call stacks: each sample goes to the
first category (in the order below) one of whose frames it contains.
Usage: perf script -i F -F comm,pid,tid,ip,sym | classify.py [COORDINATOR_PID]
Without the pid, the process with the most `tessera_coordinator` frames is the coordinator."""
import sys, re, collections
TESSERA_COMMS = ("tokio-rt-worker", "tessera", "blob_store_keep")
CATS = [
    ("spawn: fork/exec of the action process", ["Command>::spawn", "spawn_child", "copy_page_range", "dup_mmap", "spawner"]),
    ("lease directories: delete", ["remove_tree", "remove_dir_all", "unlinkat", "do_rmdir"]),
    ("inputs laid out: mkdir, links", ["tessera_agent::materialize", "tessera_agent::layer"]),
    ("blob store: a file per blob (create, write, rename)", ["write_whole", "DiskUpload", "disk::Inner::install", "do_renameat2", "link_hashed"]),
    ("other file creation", ["__ext4_new_inode", "do_mkdirat"]),
    ("hashing", ["sha2::", "blake3", "digest_blocks"]),
    ("zstd", ["ZSTD_", "zstd::"]),
    ("metadata store (redb)", ["redb::", "GroupFlush", "fsync", "tessera_cas::meta"]),
    ("outputs collected and uploaded", ["tessera_agent::outputs"]),
    ("gRPC/HTTP2, TLS-free transport, tokio", ["h2::", "hyper", "tonic", "prost", "tcp_", "epoll", "mio::", "tokio::"]),
]
counts = collections.Counter(); per_proc = collections.Counter(); total = 0
lines = sys.stdin.readlines()
coord = sys.argv[1] if len(sys.argv) > 1 else None
if coord is None:
    seen = collections.Counter(); pid = None
    for line in lines:
        if line.strip() and not line[0].isspace():
            m = re.match(r"\s*(.+?)\s+(\d+)/(\d+)", line); pid = m.group(2) if m else None
        elif pid and "tessera_coordinator" in line:
            seen[pid] += 1
    coord = seen.most_common(1)[0][0] if seen else None
cur = None; stack = []
def flush():
    global total
    if cur is None: return
    comm, pid = cur
    if not comm.startswith(TESSERA_COMMS): return
    total += 1
    who = "coordinator" if pid == coord else "agents"
    per_proc[who] += 1
    text = "\n".join(stack)
    for name, keys in CATS:
        if any(k in text for k in keys):
            counts[(who, name)] += 1; return
    counts[(who, "other")] += 1
for line in lines:
    if not line.strip():
        flush(); cur = None; stack = []; continue
    if not line.startswith((" ", "\t")):
        m = re.match(r"\s*(.+?)\s+(\d+)/(\d+)", line)
        if m: cur = (m.group(1).strip(), m.group(2))
        else: cur = None
    else:
        stack.append(line.strip())
flush()
print(f"samples in Tessera processes: {total}")
for who in ("coordinator", "agents"):
    n = per_proc[who]
    print(f"\n{who}: {n} samples ({100*n/max(total,1):.0f}%)")
    for (w, name), c in sorted(counts.items(), key=lambda x: -x[1]):
        if w == who: print(f"  {100*c/max(n,1):5.1f}%  {name}")
