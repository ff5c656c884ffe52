#!/usr/bin/env bash
# zram's figures beside znbd's on the same workload, both as kernel block
# devices in the guest: a fresh ext4, then the same files copied in. Prints
# DATA (orig_data_size), same_pages and COMPR for each after mkfs and after
# the copy, and DATA against zram's; fails only when a step fails (the
# figures are a measurement, docs/BENCHMARKS.md keeps them).
#
# Run by `tools/vm zram-figures` (the same tar of real files as guest test
# 1). znbd goes through the kernel's nbd client (nbd-client -b 4096), zram
# is the guest kernel's own, lzo, the same size.
name=zram-figures
source "$(dirname "$0")/lib.sh"
tar="${ZNBD_VM_TAR:?ZNBD_VM_TAR: a tar of the files to copy (tools/vm zram-figures makes it)}"
size_mib=512

make_workdir
mnt="$work/mnt"
mkdir -p "$mnt"

# fill DEVICE FIGURES-COMMAND: mkfs, mount, figures, copy, sync, figures.
# FIGURES-COMMAND prints "DATA SAME COMPR" in bytes, bytes and pages.
fill() {
    local device="$1" figures="$2"
    t 120 mkfs.ext4 -q -F "$device"
    t 60 mount "$device" "$mnt"
    mounts+=("$mnt")
    t 60 sync
    fresh=$($figures)
    t 300 tar -xf "$tar" -C "$mnt"
    t 120 sync
    written=$($figures)
    t 60 umount "$mnt"
    unset 'mounts[-1]'
}

znbd_figures() {
    stats "$work/s.json"
    echo "$(figure "$work/s.json" .orig_data_size) $(figure "$work/s.json" .same_pages) $(figure "$work/s.json" .compr_data_size)"
}
zram_figures() {
    # mm_stat: orig_data_size compr_data_size mem_used_total mem_limit mem_used_max same_pages …
    awk '{ print $1, $6, $2 }' /sys/block/zram0/mm_stat
}

start_znbd --size "${size_mib}M"
t 30 modprobe nbd
attach /dev/nbd0 -b 4096
fill /dev/nbd0 znbd_figures
znbd_fresh=$fresh znbd_written=$written
detach /dev/nbd0
stop_znbd

t 30 modprobe zram num_devices=1
# lzo where the kernel takes it; else zram's default, which says which
# (DATA and same_pages do not depend on the codec; COMPR does).
echo lzo 2>/dev/null >/sys/block/zram0/comp_algorithm || say "zram refuses lzo; its default is used"
say "zram's comp_algorithm: $(cat /sys/block/zram0/comp_algorithm)"
echo "${size_mib}M" >/sys/block/zram0/disksize
fill /dev/zram0 zram_figures
zram_fresh=$fresh zram_written=$written
echo 1 >/sys/block/zram0/reset

row() {
    local label="$1" figures="$2"
    read -r data same compr <<<"$figures"
    printf '%-14s DATA %8.1f MiB  same_pages %6d  COMPR %8.1f MiB\n' "$label" \
        "$(echo "$data / 1048576" | bc -l)" "$same" "$(echo "$compr / 1048576" | bc -l)"
}
say "figures (${size_mib} MiB device, ext4, then $(tar -tf "$tar" | wc -l) entries of $tar):"
row "zram fresh" "$zram_fresh"
row "znbd fresh" "$znbd_fresh"
row "zram written" "$zram_written"
row "znbd written" "$znbd_written"
ratio() { echo "scale=3; ${1%% *} / ${2%% *}" | bc; }
say "DATA znbd/zram: fresh $(ratio "$znbd_fresh" "$zram_fresh"), after the copy $(ratio "$znbd_written" "$zram_written")"
