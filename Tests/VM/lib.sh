# Shared by the guest scripts in Tests/VM (sourced, never run): steps that
# say what they did, a hard timeout on each command, the daemon on a tmpfs,
# and a cleanup that undoes everything whatever happened.
#
# Needs: bash, run as root inside the VM that tools/vm boots (the host's root
# is the guest's, read-only; /run and the tmpfs made here are writable).

set -euo pipefail
repo="${ZNBD_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
bin="${ZNBD_BIN:-$repo/.build/release}"
name="${name:-vm}"
began=$SECONDS

say() { printf '%s: [%3ds] %s\n' "$name" $((SECONDS - began)) "$*"; }
fail() { say "FAIL: $*"; exit 1; }
trap 'say "FAIL: line $LINENO: $BASH_COMMAND (exit $?)"' ERR

# t SECONDS CMD…: runs CMD with a time limit; a timeout is a failure.
t() {
    local seconds="$1"; shift
    local status=0
    timeout --kill-after=5 "$seconds" "$@" || status=$?
    if ((status == 124 || status == 137)); then fail "timed out after ${seconds}s: $*"; fi
    return "$status"
}

# The daemon's sockets and files live on a tmpfs: Unix sockets do not work
# on the 9p share, and the guest's own writes must not depend on it.
work=""
znbd_pid=""
attached=()
# Background processes of the script (znbdctl attach), stopped first.
helpers=()
mounts=()
swaps=()

make_workdir() {
    work="$(mktemp -d /run/znbd-vm.XXXXXX)"
    mount -t tmpfs -o size=64m,mode=0700 znbd-vm "$work"
    mounts+=("$work")
}

# start_znbd ARG…: znbd serve ARG… on $work/nbd.sock; waits until its
# control endpoint answers.
start_znbd() {
    "$bin/znbd" serve --socket "$work/nbd.sock" "$@" >"$work/znbd.log" 2>&1 &
    znbd_pid=$!
    local i
    for i in $(seq 200); do
        if [[ -S "$work/nbd-control.sock" ]] && ctl stats --raw >/dev/null 2>&1; then
            say "znbd (pid $znbd_pid) serves: $(sed -n 's/.*\(serving [^;]*\);.*/\1/p' "$work/znbd.log")"
            return 0
        fi
        kill -0 "$znbd_pid" 2>/dev/null || { cat "$work/znbd.log"; fail "znbd exited at start"; }
        sleep 0.1
    done
    cat "$work/znbd.log"
    fail "znbd did not answer on its control socket within 20 s"
}

ctl() { t 30 "$bin/znbdctl" --control "$work/nbd-control.sock" "$@"; }

# stats FILE: the daemon's figures (znbdctl stats --json) into FILE.
stats() { ctl stats --json >"$1"; }
# figure FILE JQ: one figure from a stats file.
figure() { jq -r "$2" "$1"; }

# attach DEVICE ARG…: nbd-client on the daemon's socket.
attach() {
    local device="$1"; shift
    t 60 nbd-client -unix "$work/nbd.sock" "$device" "$@"
    attached+=("$device")
    local i
    for i in $(seq 100); do
        [[ $(cat "/sys/block/${device#/dev/}/size") != 0 ]] && break
        sleep 0.1
    done
    say "attached $device (nbd-client $*): $(($(cat "/sys/block/${device#/dev/}/size") * 512)) bytes"
}

detach() {
    local device="$1"
    t 60 nbd-client -d "$device"
    local kept=()
    for d in "${attached[@]}"; do [[ "$d" == "$device" ]] || kept+=("$d"); done
    attached=(${kept[@]+"${kept[@]}"})
    say "detached $device"
}

# stop_znbd: SIGTERM; the daemon must exit 0 within 20 s.
stop_znbd() {
    kill -TERM "$znbd_pid"
    local i
    for i in $(seq 200); do kill -0 "$znbd_pid" 2>/dev/null || break; sleep 0.1; done
    local status=0
    if kill -0 "$znbd_pid" 2>/dev/null; then kill -KILL "$znbd_pid"; wait "$znbd_pid" || true; znbd_pid=""; fail "znbd did not exit within 20 s of SIGTERM"; fi
    wait "$znbd_pid" || status=$?
    znbd_pid=""
    ((status == 0)) || { tail -20 "$work/znbd.log"; fail "znbd exited $status on SIGTERM"; }
    say "znbd exited 0 on SIGTERM"
}

drop_caches() { t 120 sync; echo 3 >/proc/sys/vm/drop_caches; }

# Undo everything, in order, whatever failed; say what could not be undone.
cleanup() {
    local status=$?
    trap - ERR
    set +e
    if ((status != 0)); then
        say "failed (exit $status); cleaning up"
        [[ -n "$work" && -f "$work/znbd.log" ]] && { echo "--- znbd log (last 20 lines)"; tail -20 "$work/znbd.log"; }
        echo "--- dmesg (last 30 lines)"; dmesg | tail -30
    fi
    local i
    for pid in ${helpers[@]+"${helpers[@]}"}; do kill -TERM "$pid" 2>/dev/null; done
    for pid in ${helpers[@]+"${helpers[@]}"}; do timeout 30 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null; done
    for ((i = ${#swaps[@]} - 1; i >= 0; i--)); do timeout 120 swapoff "${swaps[i]}" || say "cleanup: swapoff ${swaps[i]} failed"; done
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        [[ "${mounts[i]}" == "$work" ]] && continue
        mountpoint -q "${mounts[i]}" || continue
        timeout 60 umount "${mounts[i]}" 2>/dev/null || timeout 30 umount -l "${mounts[i]}" || say "cleanup: umount ${mounts[i]} failed"
    done
    for device in ${attached[@]+"${attached[@]}"}; do timeout 60 nbd-client -d "$device" >/dev/null 2>&1 || say "cleanup: nbd-client -d $device failed"; done
    if [[ -n "$znbd_pid" ]] && kill -0 "$znbd_pid" 2>/dev/null; then
        kill -TERM "$znbd_pid"; sleep 2; kill -KILL "$znbd_pid" 2>/dev/null
    fi
    [[ -n "$work" ]] && { timeout 30 umount "$work" || timeout 30 umount -l "$work"; rmdir "$work"; }
    exit "$status"
}
trap cleanup EXIT
