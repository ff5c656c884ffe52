#!/usr/bin/env bash
# Swap on a znbd device under memory pressure (issue 13), run by
# `tools/vm --memory 512M swap` inside a VM: znbd serves 1 GiB, nbd-client
# attaches it, mkswap/swapon, then a process writes a known pattern over
# 768 MiB (more than the guest's memory) and reads it back; swapoff.
# By default in the configuration that survives (docs/OPERATIONS.md, "As
# swap"): swapon --discard=pages, and the pattern in a cgroup with
# memory.high 64M. Set either variable to empty to see what happens without.
# A guest that freezes is caught by tools/vm's time limit; the monitor's
# lines and the hung-task reports (kernel console, with --verbose) show
# where it stopped.
#
# The measures under test, from the environment:
#   ZNBD_SWAP_FILL_MIB    memory the pattern covers (default 768)
#   ZNBD_SWAP_SIZE        the swap device (default 1G)
#   ZNBD_SWAP_NBD_ARGS    extra nbd-client arguments, e.g. -swap
#   ZNBD_SWAP_OOM_ADJ     written to znbd's /proc/PID/oom_score_adj, e.g. -1000
#   ZNBD_SWAP_MIN_FREE_KB vm.min_free_kbytes for the guest
#   ZNBD_SWAP_ZNBD_ENV    environment for znbd, e.g. "MALLOC_ARENA_MAX=1"
#   ZNBD_SWAP_SERVE_ARGS  extra znbd serve arguments, e.g. --workers 0, or
#                         "--lock-memory off --io-flusher off --oom-score-adj keep"
#                         for a daemon without its swap protections
#   ZNBD_SWAP_SWAPON_ARGS swapon arguments (default --discard=pages)
#   ZNBD_SWAP_CGROUP_HIGH the pattern runs in a cgroup with this memory.high
#                         (default 64M): its pages are swapped before the whole
#                         guest runs short, leaving memory for znbd and the kernel
name=swap
source "$(dirname "$0")/lib.sh"
fill="${ZNBD_SWAP_FILL_MIB:-768}"
size="${ZNBD_SWAP_SIZE:-1G}"
swapon_args="${ZNBD_SWAP_SWAPON_ARGS---discard=pages}"
cgroup_high="${ZNBD_SWAP_CGROUP_HIGH-64M}"

say "guest: $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB of memory, $(nproc) CPUs, $(uname -r)"
# Blocked tasks are reported after 20 s, with their stacks, on the console.
sysctl -qw kernel.hung_task_timeout_secs=20 kernel.hung_task_warnings=100 || true
echo 7 >/proc/sys/kernel/printk
if [[ -n "${ZNBD_SWAP_MIN_FREE_KB:-}" ]]; then
    sysctl -qw vm.min_free_kbytes="$ZNBD_SWAP_MIN_FREE_KB"
fi
say "vm.min_free_kbytes $(sysctl -n vm.min_free_kbytes), watermark_scale_factor $(sysctl -n vm.watermark_scale_factor), swappiness $(sysctl -n vm.swappiness)"

make_workdir
# shellcheck disable=SC2086
env ${ZNBD_SWAP_ZNBD_ENV:-} true  # check the assignments parse
if [[ -n "${ZNBD_SWAP_ZNBD_ENV:-}" ]]; then export ${ZNBD_SWAP_ZNBD_ENV}; fi
# shellcheck disable=SC2086
start_znbd --size "$size" ${ZNBD_SWAP_SERVE_ARGS:-}
if [[ -n "${ZNBD_SWAP_OOM_ADJ:-}" ]]; then echo "$ZNBD_SWAP_OOM_ADJ" >"/proc/$znbd_pid/oom_score_adj"; fi
say "znbd: $(grep -E '^(VmRSS|VmLck)' /proc/$znbd_pid/status | tr -s ' \n' ' '), oom_score_adj $(cat /proc/$znbd_pid/oom_score_adj)"
grep -E "mlock|flusher|memory|reserve|oom" "$work/znbd.log" || true

t 30 modprobe nbd
# shellcheck disable=SC2086
attach /dev/nbd0 -b 4096 ${ZNBD_SWAP_NBD_ARGS:-}
t 60 mkswap /dev/nbd0 >/dev/null
# shellcheck disable=SC2086
t 60 swapon $swapon_args /dev/nbd0; swaps+=(/dev/nbd0)
say "mkswap, swapon $swapon_args /dev/nbd0: $(tail -1 /proc/swaps | tr -s ' \t' ' ')"

# One line every 5 s, from a process with its memory locked (monitor.py);
# when swap I/O stops it prints where znbd's threads are.
python3 "$(dirname "$0")/monitor.py" "$znbd_pid" 5 &
monitor_pid=$!
stop_monitor() { kill "$monitor_pid" 2>/dev/null; wait "$monitor_pid" 2>/dev/null || true; }

began_fill=$SECONDS
runner=()
if [[ -n "$cgroup_high" ]]; then
    group=/sys/fs/cgroup/znbd-swap-pattern
    echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$group"
    echo "$cgroup_high" >"$group/memory.high"
    say "the pattern runs in $group with memory.high $cgroup_high"
    runner=(bash -c 'echo $$ >'"$group"'/cgroup.procs && exec "$@"' runner)
fi
t 1200 ${runner[@]+"${runner[@]}"} python3 "$(dirname "$0")/pattern.py" "$fill" || { stop_monitor; fail "the pattern did not read back"; }
stop_monitor
say "pattern over $fill MiB written and verified in $((SECONDS - began_fill)) s"
grep -E '^(pswpin|pswpout)' /proc/vmstat | tr '\n' ' '; echo
free -m
stats "$work/s.json"
say "znbd: orig_data_size $(figure "$work/s.json" .orig_data_size), compr_data_size $(figure "$work/s.json" .compr_data_size)," \
    "mem_used_total $(figure "$work/s.json" .mem_used_total), same_pages $(figure "$work/s.json" .same_pages)," \
    "huge_pages $(figure "$work/s.json" .huge_pages), notify_free $(figure "$work/s.json" .notify_free), rss $(figure "$work/s.json" .rss_bytes)," \
    "failed_writes $(figure "$work/s.json" .failed_writes)"
say "requests as znbd saw them (count, mean size):" \
    $(jq -r '.nbd.commands | to_entries[] | select(.value.requests > 0)
        | "\(.key) \(.value.requests) x \((.value.bytes / .value.requests / 1024 * 10 | floor) / 10) KiB;"' "$work/s.json")
t 300 swapoff /dev/nbd0; swaps=()
say "swapoff /dev/nbd0"
# While attached nothing may go wrong; reads of nbd0 after the detach (seen
# once: async page reads of sectors 0-24 failing) are only reported.
if dmesg | grep -iE 'nbd[0-9].*(error|timed out|stuck|dead)|I/O error|Out of memory|hung_task|blocked for more'; then
    fail "the kernel logged errors (above)"
fi
before_detach=$(dmesg | wc -l)
detach /dev/nbd0
dmesg | tail -n +$((before_detach + 1)) | grep -iE 'error' && say "(the kernel logged the above after the detach)"
stop_znbd
say "PASS"
