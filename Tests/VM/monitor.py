#!/usr/bin/env python3
"""Watches a swap run from inside the guest: one line every INTERVAL
seconds (free memory, swap in use, swap I/O, znbd's resident and locked
memory, znbd's threads that are not asleep). It locks its own memory and
marks itself an I/O flusher first, so it keeps reporting while the guest
is short of memory. When no swap I/O has moved for 30 s it prints znbd's
threads' kernel stacks and asks the kernel (sysrq l, w) for the backtraces
of the running CPUs and of blocked tasks, once a minute.

    monitor.py ZNBD_PID [INTERVAL]
"""
import ctypes
import os
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
locked = libc.mlockall(3) == 0  # MCL_CURRENT | MCL_FUTURE
flusher = libc.prctl(57, 1, 0, 0, 0) == 0  # PR_SET_IO_FLUSHER
pid = int(sys.argv[1])
interval = float(sys.argv[2]) if len(sys.argv) > 2 else 5
began = time.monotonic()


def say(text):
    sys.stdout.write(f"monitor: [{time.monotonic() - began:5.0f}s] {text}\n")
    sys.stdout.flush()


def fields(path, sep=":"):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split(sep, 1) if sep else line.split(None, 1)
                if len(parts) == 2:
                    out[parts[0].strip()] = parts[1].strip()
    except OSError:
        pass
    return out


def mib(text):
    return int(text.split()[0]) // 1024


def threads():
    result = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
                state = stat.rsplit(")", 1)[1].split()[0]
                result.append((tid, comm, state))
            except OSError:
                pass
    except OSError:
        pass
    return result


def dump():
    for tid, comm, state in threads():
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read()
            with open(f"/proc/{pid}/task/{tid}/stack") as f:
                stack = f.read().strip().replace("\n", "\n    ")
        except OSError:
            wchan, stack = "?", "?"
        sys.stdout.write(f"  thread {tid} ({comm}) state {state} wchan {wchan}\n    {stack}\n")
    sys.stdout.flush()
    for key in "lw":
        try:
            with open("/proc/sysrq-trigger", "w") as f:
                f.write(key)
        except OSError as error:
            say(f"sysrq {key}: {error}")


say(f"watching znbd {pid}; monitor locked {locked}, I/O flusher {flusher}")
last = None
still = 0
while True:
    time.sleep(interval)
    mem = fields("/proc/meminfo")
    vm = fields("/proc/vmstat", sep=None)
    status = fields(f"/proc/{pid}/status")
    if not status:
        say("znbd is gone")
        break
    io = (int(vm.get("pswpout", 0)), int(vm.get("pswpin", 0)))
    busy = " ".join(f"{tid}:{state}" for tid, comm, state in threads() if state != "S") or "none"
    used = mib(mem["SwapTotal"]) - mib(mem["SwapFree"])
    delta = "" if last is None else f" (+{io[0] - last[0]} / +{io[1] - last[1]})"
    say(f"MemFree {mib(mem['MemFree'])} MiB, swap used {used} MiB, pswpout/pswpin {io[0]}/{io[1]}{delta}, "
        f"znbd RSS {mib(status.get('VmRSS', '0 kB'))} MiB locked {mib(status.get('VmLck', '0 kB'))} MiB, threads not asleep: {busy}")
    still = still + 1 if io == last and used > 0 else 0
    if still * interval >= 30 and (still * interval - 30) % 60 < interval:
        say(f"no swap I/O for {still * interval:.0f} s: znbd's threads, then sysrq l and w on the console")
        dump()
    last = io
