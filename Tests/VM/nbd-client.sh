#!/usr/bin/env bash
# Guest test 1 (issue 13): znbd under the kernel's own NBD client.
#
# Run by `tools/vm nbd` inside a VM (needs root, the nbd module, and a
# release build of znbd and znbdctl in .build/release). Every step says what
# it did; the first failure stops the script with a non-zero exit; the trap
# in lib.sh always umounts, detaches, stops znbd and removes its tmpfs.
#
#   ZNBD_VM_TAR   a tar of real files to copy in (tools/vm nbd makes one of
#                 Perl's Unicode tables and /usr/share/zoneinfo, 1,447 files:
#                 read through 9p as one file it takes a second, file by file
#                 under TCG half a minute)
name=nbd-client
source "$(dirname "$0")/lib.sh"
tar="${ZNBD_VM_TAR:?ZNBD_VM_TAR: a tar of the files to copy (tools/vm nbd makes it)}"
size=$((512 << 20))

make_workdir
start_znbd --size 512M
# 0. Root in the guest has every capability: the daemon's swap protections
# must all hold, the I/O flusher flag on every thread (ProcessProtection).
flushers=$(sed -n 's/.*I\/O flusher threads: \([0-9]*\) of \([0-9]*\).*/\1 \2/p' "$work/znbd.log")
read -r flagged threads <<<"$flushers"
[[ -n "$flagged" && "$flagged" == "$threads" ]] || { cat "$work/znbd.log"; fail "I/O flusher threads: '$flushers', expected N of N"; }
grep -q "memory lock: on" "$work/znbd.log" || fail "znbd did not lock its memory as root"
[[ $(cat /proc/$znbd_pid/oom_score_adj) == -1000 ]] || fail "oom_score_adj $(cat /proc/$znbd_pid/oom_score_adj), expected -1000"
say "znbd protects itself: $flagged of $threads threads I/O flushers, memory locked ($(awk '/VmLck/ {print $2, $3}' /proc/$znbd_pid/status)), oom_score_adj -1000"
t 30 modprobe nbd
say "modprobe nbd: $(modinfo -F filename nbd)"

# 1. One connection on nbd0, and the kernel's view of the export.
attach /dev/nbd0 -b 4096
sys=/sys/block/nbd0
kernel_size=$(($(cat $sys/size) * 512))
((kernel_size == size)) || fail "/sys/block/nbd0/size x 512 = $kernel_size, znbd serves $size"
granularity=$(cat $sys/queue/discard_granularity)
max_discard=$(cat $sys/queue/discard_max_bytes)
say "kernel's view of nbd0: size $kernel_size (= znbd's $size);" \
    "logical_block_size $(cat $sys/queue/logical_block_size), physical_block_size $(cat $sys/queue/physical_block_size)," \
    "discard_granularity $granularity, discard_max_bytes $max_discard, discard_max_hw_bytes $(cat $sys/queue/discard_max_hw_bytes)," \
    "write_zeroes_max_bytes $(cat $sys/queue/write_zeroes_max_bytes), max_hw_sectors_kb $(cat $sys/queue/max_hw_sectors_kb)," \
    "max_sectors_kb $(cat $sys/queue/max_sectors_kb), rotational $(cat $sys/queue/rotational), read-only $(cat $sys/ro)"
# znbd advertises SEND_TRIM and NBD_INFO_BLOCK_SIZE 512/4096/32M; the kernel
# takes its block size from -b and makes that the discard granularity.
((granularity == 4096)) || fail "discard_granularity $granularity, expected 4096 (-b 4096, znbd's preferred block size)"
((max_discard > 0)) || fail "discard_max_bytes is 0: the kernel did not see SEND_TRIM"
[[ $(cat $sys/ro) == 0 ]] || fail "nbd0 is read-only"

# 2. Two connections on nbd1, the same export. Both devices are checked with
# O_DIRECT I/O (no page cache on either side), never with two mounts.
attach /dev/nbd1 -b 4096 -C 2
((($(cat /sys/block/nbd1/size) * 512) == size)) || fail "nbd1's size differs"
stats "$work/s0.json"
open=$(figure "$work/s0.json" .nbd.connections_open)
((open == 3)) || fail "znbd has $open connections open, expected 3 (1 on nbd0, 2 on nbd1)"
say "znbd counts $open connections open (nbd0: 1, nbd1: -C 2)"
offset_mib=500
head -c $((4 << 20)) /dev/urandom >"$work/a"
head -c $((4 << 20)) /dev/urandom >"$work/b"
t 60 dd if="$work/a" of=/dev/nbd1 bs=1M seek=$offset_mib oflag=direct status=none
t 60 dd if=/dev/nbd0 of="$work/a.back" bs=1M skip=$offset_mib count=4 iflag=direct status=none
cmp "$work/a" "$work/a.back" || fail "4 MiB written on nbd1 read back different on nbd0"
t 60 dd if="$work/b" of=/dev/nbd0 bs=1M seek=$offset_mib oflag=direct status=none
t 60 dd if=/dev/nbd1 of="$work/b.back" bs=1M skip=$offset_mib count=4 iflag=direct status=none
cmp "$work/b" "$work/b.back" || fail "4 MiB written on nbd0 read back different on nbd1"
t 60 blkdiscard -o $((offset_mib << 20)) -l $((4 << 20)) /dev/nbd1
t 60 dd if=/dev/nbd0 of="$work/z.back" bs=1M skip=$offset_mib count=4 iflag=direct status=none
cmp "$work/z.back" <(head -c $((4 << 20)) /dev/zero) || fail "4 MiB discarded on nbd1 do not read as zeroes on nbd0"
say "4 MiB written on nbd1 read back on nbd0, and the other way; discarded on nbd1, zeroes on nbd0 (O_DIRECT)"

# 3. A filesystem on nbd0: copy real files, verify them from the device.
t 180 mkfs.ext4 -q -F /dev/nbd0
mnt="$work/mnt"; mkdir "$mnt"
t 60 mount -o discard /dev/nbd0 "$mnt"; mounts+=("$mnt")
say "mkfs.ext4 and mount -o discard /dev/nbd0"
# The files are unpacked on a tmpfs first, their checksums taken there, and
# copied onto the device with cp -a as a user would.
stage="$(mktemp -d /run/znbd-vm-files.XXXXXX)"
mount -t tmpfs -o size=256m znbd-vm-files "$stage"; mounts+=("$stage")
t 300 tar -xf "$tar" -C "$stage"
(cd "$stage" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum >"$work/sums")
files=$(wc -l <"$work/sums")
((files > 500)) || fail "only $files files to copy"
say "unpacked $(basename "$tar") on a tmpfs: $files files, $(du -sm "$stage" | cut -f1) MiB; sha256 taken"
t 600 cp -a "$stage"/. "$mnt/"
drop_caches
say "cp -a onto nbd0, sync, drop caches"
(cd "$mnt" && t 600 sha256sum -c --quiet --strict "$work/sums") || fail "checksums differ after drop_caches"
stats "$work/s1.json"
say "all $files sha256 match, read back from nbd0;" \
    "orig_data_size $(figure "$work/s1.json" .orig_data_size), compr_data_size $(figure "$work/s1.json" .compr_data_size)," \
    "mem_used_total $(figure "$work/s1.json" .mem_used_total), rss $(figure "$work/s1.json" .rss_bytes)"
(($(figure "$work/s1.json" .orig_data_size) > 16 << 20)) || fail "orig_data_size $(figure "$work/s1.json" .orig_data_size) after the copy"

# 4. Delete every second file, fstrim: the pool lets go of the pages.
(cd "$mnt" && awk 'NR % 2 == 0 { print substr($0, 67) }' "$work/sums" | tr '\n' '\0' | xargs -0 rm -f --)
awk 'NR % 2 == 1' "$work/sums" >"$work/kept"
t 120 sync
trimmed=$(t 300 fstrim -v "$mnt")
stats "$work/s2.json"
before=$(figure "$work/s1.json" .orig_data_size); after=$(figure "$work/s2.json" .orig_data_size)
freed_before=$(figure "$work/s1.json" .notify_free); freed_after=$(figure "$work/s2.json" .notify_free)
say "deleted half, $trimmed; orig_data_size $before -> $after, notify_free $freed_before -> $freed_after"
((after < before)) || fail "orig_data_size did not fall after fstrim ($before -> $after)"
((freed_after > freed_before)) || fail "notify_free did not rise after fstrim ($freed_before -> $freed_after)"
drop_caches
(cd "$mnt" && t 600 sha256sum -c --quiet --strict "$work/kept") || fail "kept files differ after fstrim"
say "the $(wc -l <"$work/kept") kept files still match after drop_caches"

# 5. Unmount, check the filesystem through both devices, detach, stop.
t 120 umount "$mnt"; mounts=("$work" "$stage")
t 300 e2fsck -fn /dev/nbd0 >"$work/fsck0" 2>&1 || { cat "$work/fsck0"; fail "e2fsck -fn /dev/nbd0"; }
say "umount; e2fsck -fn /dev/nbd0 clean: $(tail -1 "$work/fsck0")"
t 60 blockdev --flushbufs /dev/nbd1
t 300 e2fsck -fn /dev/nbd1 >"$work/fsck1" 2>&1 || { cat "$work/fsck1"; fail "e2fsck -fn /dev/nbd1"; }
say "e2fsck -fn /dev/nbd1 (the same export over -C 2) clean too"
stats "$work/s3.json"
say "requests as znbd saw them (count, mean size):" \
    $(jq -r '.nbd.commands | to_entries[] | select(.value.requests > 0)
        | "\(.key) \(.value.requests) x \((.value.bytes / .value.requests / 1024 * 10 | floor) / 10) KiB\(if (.value.errors | length) > 0 then " errors \(.value.errors)" else "" end);"' "$work/s3.json")
errors=$(jq '[.nbd.commands[].errors[]] | add // 0' "$work/s3.json")
((errors == 0)) || fail "znbd answered $errors requests with an error"
((($(figure "$work/s3.json" .invalid_io) + $(figure "$work/s3.json" .failed_writes) + $(figure "$work/s3.json" .failed_reads)) == 0)) \
    || fail "invalid_io, failed_writes or failed_reads is not 0"
detach /dev/nbd1
detach /dev/nbd0
if dmesg | grep -iE 'nbd[0-9].*(error|timed out|stuck|dead)|blk_update_request|I/O error'; then
    fail "the kernel logged NBD errors (above)"
fi
say "dmesg: no NBD errors ($(dmesg | grep -c nbd) lines mention nbd)"
stop_znbd
say "PASS"
