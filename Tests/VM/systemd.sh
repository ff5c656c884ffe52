#!/usr/bin/env bash
# `tools/vm --systemd systemd` inside a VM whose PID 1 is systemd: the
# devices of a znbd.conf started by systemd itself, through the generator,
# the template unit and the units it writes, as at boot.
#
#   [scratch]  ext4 on /dev/nbd0, mounted    [swap]  swap on /dev/nbd1
#   [served]   served only (no nbd-device)
#
# Then: files through the mount; `znbdctl list` shows the three; stopping
# the mount and restarting the attach unit keeps the filesystem (makefs
# finds it and leaves it); stopping a daemon takes its mount and attach
# down first, in order, and the daemon exits cleanly; starting the mount
# again brings the chain back. Prints "systemd: [...] PASS" at the end.
#
# With ZNBD_DEB (tools/package's .deb), the package's files are put where
# it installs them, as read-only overlays over the shared root's /usr and
# /etc: /usr/bin/znbd, /lib/systemd/system/znbd@.service, the generator,
# /etc/znbd/znbd.conf. Without it, this build's znbd ($ZNBD_BIN) and
# tools/systemd/znbd@.service go where systemd looks at run time
# (/run/systemd/system, /run/systemd/system-generators). /etc is the
# host's, read-only: a tmpfs layer takes the test's znbd.conf.
name=systemd
source "$(dirname "$0")/lib.sh"

[[ $(cat /proc/1/comm) == systemd ]] || fail "PID 1 is $(cat /proc/1/comm), not systemd (run with tools/vm --systemd)"
units=(/run/systemd/system/znbd@.service /run/systemd/system-generators/znbd-generator)
configured=""
mount_unit='mnt-znbd\x2dscratch.mount'

# Runs before lib.sh's cleanup, which exits with the status it finds.
cleanup_units() {
    local status=$?
    set +e
    if [[ -n $configured ]]; then
        timeout 120 systemctl stop "$mount_unit" dev-nbd1.swap 'znbd-attach@*.service' 'znbd@*.service'
        rm -f "${units[@]}" /etc/znbd/znbd.conf
        timeout 60 systemctl daemon-reload
    fi
    return "$status"
}
trap 'cleanup_units; cleanup' EXIT

say "systemd $(systemctl --version | head -1 | cut -d' ' -f2) is PID 1; state: $(systemctl is-system-running || true)"
t 30 modprobe nbd nbds_max=4
# The shared root is read-only: systemd makes the mount point in a tmpfs.
mount -t tmpfs -o size=1m znbd-vm-mnt /mnt
mounts+=(/mnt)
mkdir -p /run/etc-upper /run/etc-work
if [[ -n ${ZNBD_DEB:-} ]]; then
    # Installed as the package lays it out: its tree as the upper of two
    # read-only layers over /usr (where /lib points) and under /etc's tmpfs.
    mkdir -p /run/znbd-package /run/znbd-usr
    t 60 dpkg-deb -x "$ZNBD_DEB" /run/znbd-package
    cp -a /run/znbd-package/usr/. /run/znbd-usr/
    if [[ -L /lib ]]; then
        # Merged /usr (Debian 12): the package's /lib is /usr/lib.
        mkdir -p /run/znbd-usr/lib
        cp -a /run/znbd-package/lib/. /run/znbd-usr/lib/
    else
        mount -t overlay lib-overlay -o "lowerdir=/run/znbd-package/lib:/lib" /lib
        mounts+=(/lib)
    fi
    mount -t overlay usr-overlay -o "lowerdir=/run/znbd-usr:/usr" /usr
    mounts+=(/usr)
    mount -t overlay etc-overlay -o "lowerdir=/run/znbd-package/etc:/etc,upperdir=/run/etc-upper,workdir=/run/etc-work" /etc
    mounts+=(/etc)
    bin=/usr/bin
    say "installed $(basename "$ZNBD_DEB")'s files: $(/usr/bin/znbd --version)"
else
    mount -t overlay etc-overlay -o lowerdir=/etc,upperdir=/run/etc-upper,workdir=/run/etc-work /etc
    mounts+=(/etc)
    mkdir -p /etc/znbd /run/systemd/system /run/systemd/system-generators
    sed "s|/usr/local/bin/znbd|$bin/znbd|" "$repo/tools/systemd/znbd@.service" >/run/systemd/system/znbd@.service
    cp "$repo/tools/systemd/znbd@.socket" /run/systemd/system/znbd@.socket
    ln -sf "$bin/znbd" /run/systemd/system-generators/znbd-generator
fi
cat >/etc/znbd/znbd.conf <<'EOF'
[scratch]
size = 256M
mem-limit = 128M
nbd-device = /dev/nbd0
fs-type = ext4
mount-point = /mnt/znbd-scratch

[swap]
size = 128M
algorithm = zstd
nbd-device = /dev/nbd1
fs-type = swap
swap-priority = 77

[served]
size = 64M
EOF
configured=yes
t 60 systemctl daemon-reload
generated=$(ls /run/systemd/generator/ | grep -c 'znbd\|nbd1\|scratch' || true)
say "daemon-reload: the generator wrote $generated units: $(ls /run/systemd/generator | grep 'znbd\|nbd1\|scratch' | tr '\n' ' ')"
[[ $(systemctl show -p Type --value znbd@scratch.service) == notify ]] || fail "znbd@scratch is not Type=notify"

# As at boot: multi-user.target wants every generated unit. The target's
# job ends before the mount and swap units' (they are not ordered before
# it), so each unit is waited for until it is active or has failed.
t 180 systemctl start multi-user.target
for unit in znbd@scratch.service znbd@swap.service znbd@served.service znbd-attach@scratch.service \
    znbd-attach@swap.service "$mount_unit" dev-nbd1.swap; do
    for _ in $(seq 600); do
        state=$(systemctl is-active "$unit" || true)
        [[ $state == activating || $state == reloading ]] || break
        sleep 0.1
    done
    [[ $state == active ]] || { systemctl status --no-pager "$unit" || true; fail "$unit is $state"; }
done
say "multi-user.target started all seven units"
# Outputs are read first, then matched: `cmd | grep -q` under pipefail
# can fail on the SIGPIPE grep's early exit sends back.
mounted=$(findmnt -n -o SOURCE,FSTYPE /mnt/znbd-scratch || true)
[[ $mounted =~ ^/dev/nbd0\ +ext4$ ]] || fail "/mnt/znbd-scratch: '$mounted'"
swap_lines=$(swapon --show=NAME,PRIO --noheadings)
[[ $swap_lines =~ /dev/nbd1\ +77 ]] || fail "swap: '$swap_lines'"
say "ext4 from /dev/nbd0 on /mnt/znbd-scratch; /dev/nbd1 is swap with priority 77"

list=$(t 30 "$bin/znbdctl" list)
echo "$list"
for device in scratch swap served; do
    grep -q "^/run/znbd/$device.sock " <<<"$list" || fail "znbdctl list has no $device"
done

head -c 16M /dev/urandom >/run/znbd-vm-data
cp /run/znbd-vm-data /mnt/znbd-scratch/data
t 60 sync
t 30 "$bin/znbdctl" --device scratch stats

# Stop the mount, restart the attach unit (its makefs step runs again):
# the filesystem is found and kept.
t 60 systemctl stop "$mount_unit"
t 60 systemctl restart znbd-attach@scratch.service
t 60 systemctl start "$mount_unit"
drop_caches
cmp /run/znbd-vm-data /mnt/znbd-scratch/data || fail "the file differs after the attach unit restarted"
say "attach unit restarted: makefs left the filesystem alone, the file verifies"

# A restart of the daemon (an upgrade) leaves the mount in place: the
# attach unit only wants the daemon, and znbdctl attach hands the kernel
# new connections to the next one, on the same state.
t 120 systemctl restart znbd@scratch.service
for unit in "$mount_unit" znbd-attach@scratch.service; do
    [[ $(systemctl is-active "$unit") == active ]] || fail "$unit is $(systemctl is-active "$unit") after the daemon's restart"
done
journal=$(journalctl -b -u znbd@scratch.service --no-pager -o cat)
[[ $journal == *"resumed the state in /dev/shm/znbd/scratch (start 2)"* ]] \
    || fail "znbd@scratch did not resume its state: $(tail -5 <<<"$journal")"
[[ $journal == *"the NBD socket /run/znbd/scratch.sock is systemd's (socket activation)"* ]] \
    || fail "znbd@scratch did not serve the socket znbd@scratch.socket holds"
[[ $(systemctl is-active znbd@scratch.socket) == active ]] || fail "znbd@scratch.socket is not active"
cp /run/znbd-vm-data /mnt/znbd-scratch/data2
t 60 sync
drop_caches
cmp /run/znbd-vm-data /mnt/znbd-scratch/data || fail "the file differs after the daemon's restart"
cmp /run/znbd-vm-data /mnt/znbd-scratch/data2 || fail "a file written after the daemon's restart differs"
say "znbd@scratch restarted under its mount: the state resumed, the socket systemd's, the file verifies, writes go on"

# A crash: Restart=on-failure starts the daemon again, on its state.
t 30 systemctl kill -s KILL znbd@scratch.service
for _ in $(seq 300); do
    journal=$(journalctl -b -u znbd@scratch.service --no-pager -o cat)
    [[ $journal == *"(start 3)"* && $(systemctl is-active znbd@scratch.service) == active ]] && break
    sleep 0.2
done
[[ $journal == *"resumed the state in /dev/shm/znbd/scratch (start 3)"* ]] \
    || fail "systemd did not start znbd@scratch again after SIGKILL: $(tail -5 <<<"$journal")"
drop_caches
cmp /run/znbd-vm-data /mnt/znbd-scratch/data || fail "the file differs after the daemon was killed"
say "znbd@scratch killed with SIGKILL: systemd started it again on its state, the file verifies"

# The attach helper killed: the device stays attached and the unit fails;
# `systemctl start` takes the device back (--take-over) under the same
# mount, not remounted. Then a daemon restart proves it supervises.
mounted_at=$(systemctl show -p ActiveEnterTimestampMonotonic --value "$mount_unit")
t 30 systemctl kill -s KILL znbd-attach@scratch.service
for _ in $(seq 100); do
    [[ $(systemctl is-active znbd-attach@scratch.service) == failed ]] && break
    sleep 0.2
done
[[ $(systemctl is-active znbd-attach@scratch.service) == failed ]] \
    || fail "znbd-attach@scratch is $(systemctl is-active znbd-attach@scratch.service) after SIGKILL"
[[ -e /sys/block/nbd0/pid ]] || fail "/dev/nbd0 detached when its attach helper was killed"
t 60 systemctl start znbd-attach@scratch.service
journal=$(journalctl -b -u znbd-attach@scratch.service --no-pager -o cat)
[[ $journal == *"was attached already"*"taken over"* ]] \
    || fail "the attach unit did not take /dev/nbd0 over: $(tail -5 <<<"$journal")"
[[ $(systemctl show -p ActiveEnterTimestampMonotonic --value "$mount_unit") == "$mounted_at" ]] \
    || fail "$mount_unit was restarted with the attach unit"
t 120 systemctl restart znbd@scratch.service
cp /run/znbd-vm-data /mnt/znbd-scratch/data3
t 60 sync
drop_caches
cmp /run/znbd-vm-data /mnt/znbd-scratch/data || fail "the file differs after the take-over and a daemon restart"
cmp /run/znbd-vm-data /mnt/znbd-scratch/data3 || fail "a file written after the take-over differs"
say "znbdctl attach killed: the unit started again took /dev/nbd0 over under the same mount; a daemon restart after it: the files verify"

# Stopping all three runs the other way: umount, detach, then SIGTERM to a
# daemon with no client left. The state stays.
t 120 systemctl stop "$mount_unit" znbd-attach@scratch.service znbd@scratch.service
findmnt /mnt/znbd-scratch >/dev/null && fail "still mounted after the stop"
[[ -e /sys/block/nbd0/pid ]] && fail "/dev/nbd0 still attached after the stop"
[[ $(systemctl show -p Result --value znbd@scratch.service) == success ]] \
    || fail "znbd@scratch: $(systemctl show -p Result,ExecMainStatus znbd@scratch.service | tr '\n' ' ')"
journal=$(journalctl -b -u znbd@scratch.service --no-pager -o cat)
# The fourth daemon's lines: the journal holds the earlier three too.
last=$(sed -n '/(start 4)/,$p' <<<"$journal")
[[ $last == *"stopping: no client connected"* ]] \
    || fail "znbd@scratch did not log a stop with no client left: $(tail -5 <<<"$last")"
[[ -s /dev/shm/znbd/scratch/arena ]] || fail "no state kept in /dev/shm/znbd/scratch after the stop"
say "stopped in order: umount, detach, then znbd@scratch with no client left; its state kept"

# Back again: the mount pulls in the attach unit, which pulls in the
# daemon, which resumes the state; makefs leaves the filesystem alone.
t 120 systemctl start "$mount_unit"
[[ $(findmnt -n -o FSTYPE /mnt/znbd-scratch || true) == ext4 ]] || fail "not mounted again"
journal=$(journalctl -b -u znbd@scratch.service --no-pager -o cat)
[[ $journal == *"resumed the state in /dev/shm/znbd/scratch (start 5)"* ]] \
    || fail "znbd@scratch did not resume its state: $(tail -5 <<<"$journal")"
drop_caches
cmp /run/znbd-vm-data /mnt/znbd-scratch/data || fail "the file differs after the stop and start"
say "started again: the state resumed, the same ext4, the file verifies"

t 120 systemctl stop dev-nbd1.swap "$mount_unit"
t 120 systemctl stop 'znbd@*.service'
[[ $(swapon --show --noheadings) != *nbd1* ]] || fail "swap still on"
say PASS
