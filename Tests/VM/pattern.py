#!/usr/bin/env python3
"""Writes a known pattern over N MiB of anonymous memory, then reads it
back and checks every page: under memory pressure the pages go to swap and
come back. Each 4 KiB page holds its index, 1 KiB of pseudo-random bytes
chosen by its index, and zeroes: it compresses about 3.5:1 with LZO, as
swapped memory often does (and is never a same-filled page).

    pattern.py MIB   exit 0: every page read back as written
"""
import mmap
import os
import random
import sys
import time

PAGE = 4096
mib = int(sys.argv[1]) if len(sys.argv) > 1 else 768
pages = mib * 256
rng = random.Random(13)
chunks = [rng.randbytes(1024) for _ in range(251)]
zero_tail = bytes(PAGE - 16 - 1024)


def page(i):
    head = i.to_bytes(8, "little") + (i ^ 0x5A5A5A5A5A5A5A5A).to_bytes(8, "little")
    return head + chunks[i % 251] + zero_tail


def say(text):
    print(f"pattern: [{time.monotonic() - began:6.1f}s] {text}", flush=True)


def meminfo():
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) // 1024
    return f"MemFree {fields['MemFree']} MiB, SwapFree {fields['SwapFree']} of {fields['SwapTotal']} MiB"


began = time.monotonic()
memory = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
say(f"writing {mib} MiB ({pages} pages); {meminfo()}")
step = pages // 12
for i in range(pages):
    memory[i * PAGE:(i + 1) * PAGE] = page(i)
    if i % step == step - 1:
        say(f"written {(i + 1) // 256} MiB; {meminfo()}")
say(f"reading back; {meminfo()}")
bad = 0
for i in range(pages):
    if memory[i * PAGE:(i + 1) * PAGE] != page(i):
        bad += 1
        if bad <= 5:
            say(f"page {i} differs")
    if i % step == step - 1:
        say(f"checked {(i + 1) // 256} MiB; {meminfo()}")
if bad:
    say(f"FAIL: {bad} of {pages} pages differ")
    sys.exit(1)
say(f"all {pages} pages read back as written; {meminfo()}")
