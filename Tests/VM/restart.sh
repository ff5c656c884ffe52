#!/usr/bin/env bash
# Guest test (issue 24): the disk outlives the daemon under the kernel's own
# NBD client. znbd serves 512 MiB from a state directory on a tmpfs;
# `znbdctl attach` connects /dev/nbd0 with two connections and stays; ext4
# on it, mounted, while a writer copies files in:
#   1. znbd is killed with SIGKILL and started again on the same state: the
#      writer completes, every file verifies after dropping caches, e2fsck
#      -fn is clean;
#   2. the same with SIGTERM and a different build of znbd (ZNBD_OTHER_BIN,
#      by default the release build when the suite runs the test build);
#   3. znbdctl attach killed with SIGKILL (the device stays attached, with
#      nobody to replace its connections), then znbd killed too, started
#      again, and a new `znbdctl attach --take-over` started: it takes the
#      device over and the writer completes as in 1.
# Then SIGTERM to znbdctl attach detaches the device.
#
# Run by `tools/vm restart` (needs root, the nbd module, znbd and znbdctl in
# ZNBD_BIN). The trap in lib.sh umounts, stops the helpers and znbd.
name=restart
source "$(dirname "$0")/lib.sh"
other_bin="${ZNBD_OTHER_BIN:-$repo/.build/release}"

make_workdir
state_fs=/run/znbd-vm-state
mkdir -p "$state_fs"
mount -t tmpfs -o size=1g,mode=0700 znbd-state "$state_fs"
mounts+=("$state_fs")
state="$state_fs/dev"
start_znbd --size 512M --state-dir "$state"
t 30 modprobe nbd

# start_attach [--take-over]: znbdctl attach in the background, logging to attach.log.
start_attach() {
    "$bin/znbdctl" attach /dev/nbd0 --socket "$work/nbd.sock" --connections 2 --timeout 5 --dead-timeout 120 "$@" \
        >"$work/attach.log" 2>&1 &
    attach_pid=$!
    helpers+=("$attach_pid")
}
start_attach
for _ in $(seq 200); do
    [[ $(cat /sys/block/nbd0/size) != 0 ]] && break
    kill -0 "$attach_pid" 2>/dev/null || { cat "$work/attach.log"; fail "znbdctl attach exited"; }
    sleep 0.1
done
[[ $(($(cat /sys/block/nbd0/size) * 512)) == $((512 << 20)) ]] || fail "nbd0 is $(cat /sys/block/nbd0/size) sectors"
connections=$(ctl stats --json | jq -r .nbd.connections_open)
((connections == 2)) || fail "znbd counts $connections connections, expected 2"
say "znbdctl attach connected /dev/nbd0 with 2 connections: $(head -1 "$work/attach.log")"

mnt=/run/znbd-vm-mnt
mkdir -p "$mnt"
t 120 mkfs.ext4 -q -E nodiscard /dev/nbd0
t 60 mount -o discard /dev/nbd0 "$mnt"
mounts+=("$mnt")
mkdir -p "$work/src"
for i in $(seq 96); do head -c $((192 << 10)) /dev/urandom >"$work/src/$i"; done
say "ext4 mounted from /dev/nbd0; 96 files of 192 KiB to copy"

# writer FROM TO: copies files FROM..TO in, a sync every 8, in the background.
writer() {
    (
        for i in $(seq "$1" "$2"); do
            cp "$work/src/$i" "$mnt/f$i"
            ((i % 8 == 0)) && sync
        done
        sync
    ) >"$work/writer.log" 2>&1 &
    writer_pid=$!
}

# restart_under_writer HOW BIN FROM TO: the writer copies files FROM..TO;
# once it has copied a few, znbd is stopped HOW (KILL or TERM) and BIN's
# znbd started on the same state; the writer must finish with no error.
restart_under_writer() {
    local how="$1" build="$2" from="$3" to="$4"
    writer "$from" "$to"
    for _ in $(seq 300); do
        [[ -e "$mnt/f$((from + 6))" ]] && break
        sleep 0.1
    done
    local copied
    copied=$(ls "$mnt" | grep -c '^f' || true)
    kill "-$how" "$znbd_pid"
    wait "$znbd_pid" || true
    znbd_pid=""
    local down=$SECONDS
    sleep 2
    bin="$build" start_znbd --size 512M --state-dir "$state"
    grep -q "resumed the state in $state" "$work/znbd.log" || { cat "$work/znbd.log"; fail "znbd did not resume its state"; }
    if [[ -n ${take_over:-} ]]; then
        start_attach --take-over
        for _ in $(seq 100); do
            grep -q "taken over" "$work/attach.log" && break
            kill -0 "$attach_pid" 2>/dev/null || { cat "$work/attach.log"; fail "znbdctl attach --take-over exited"; }
            sleep 0.1
        done
        grep -q "taken over" "$work/attach.log" || { cat "$work/attach.log"; fail "znbdctl attach did not take over"; }
        say "znbdctl attach --take-over: $(grep -o '/dev/nbd0 was attached already.*' "$work/attach.log")"
    fi
    say "SIG$how to znbd with $copied files in; $build/znbd serves again after $((SECONDS - down)) s: $(grep -o 'resumed the state[^;]*' "$work/znbd.log")"
    local status=0
    t 300 tail --pid="$writer_pid" -f /dev/null
    wait "$writer_pid" || status=$?
    ((status == 0)) || { cat "$work/writer.log"; fail "the writer failed ($status) across the restart"; }
    drop_caches
    for i in $(seq 1 "$to"); do
        cmp -s "$work/src/$i" "$mnt/f$i" || fail "f$i differs after the restart"
    done
    say "the writer finished; files 1..$to verify after drop_caches"
}

restart_under_writer KILL "$bin" 1 48
grep -q "handed over" "$work/attach.log" || { cat "$work/attach.log"; fail "znbdctl attach handed over no connection"; }
t 60 umount "$mnt"
t 120 e2fsck -fn /dev/nbd0 >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "e2fsck -fn after the SIGKILL"; }
say "e2fsck -fn clean after the SIGKILL: $(tail -1 "$work/fsck.log")"

if [[ -x "$other_bin/znbd" && "$(readlink -f "$other_bin/znbd")" != "$(readlink -f "$bin/znbd")" ]] \
    && ! cmp -s "$other_bin/znbd" "$bin/znbd"; then
    t 60 mount -o discard /dev/nbd0 "$mnt"
    restart_under_writer TERM "$other_bin" 49 96
    t 60 umount "$mnt"
    t 120 e2fsck -fn /dev/nbd0 >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "e2fsck -fn after the upgrade"; }
    say "e2fsck -fn clean after SIGTERM and another build ($other_bin): $(tail -1 "$work/fsck.log")"
else
    say "no other build of znbd at $other_bin: the restart to another build was not run"
fi

# 3. Nobody supervising when the daemon dies: a new attach takes over.
t 60 mount -o discard /dev/nbd0 "$mnt"
rm -f "$mnt"/f*
t 60 sync
kill -KILL "$attach_pid"
wait "$attach_pid" 2>/dev/null || true
helpers=()
[[ -e /sys/block/nbd0/pid ]] || fail "/dev/nbd0 detached when znbdctl attach was killed"
take_over=1 restart_under_writer KILL "$bin" 1 24
t 60 umount "$mnt"
t 120 e2fsck -fn /dev/nbd0 >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "e2fsck -fn after the take-over"; }
say "e2fsck -fn clean after the take-over: $(tail -1 "$work/fsck.log")"

if dmesg | grep -E "nbd0.*I/O error|I/O error.*nbd0|Buffer I/O error on dev nbd0"; then
    fail "the kernel reported I/O errors on nbd0"
fi
kill -TERM "$attach_pid"
t 30 tail --pid="$attach_pid" -f /dev/null
wait "$attach_pid" || { cat "$work/attach.log"; fail "znbdctl attach exited non-zero on SIGTERM"; }
helpers=()
[[ ! -e /sys/block/nbd0/pid ]] || fail "/dev/nbd0 still attached after znbdctl attach exited"
say "znbdctl attach detached /dev/nbd0 on SIGTERM; dmesg: no I/O errors on nbd0"
stop_znbd
say PASS
