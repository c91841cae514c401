#!/bin/sh
# /init of the guest of tests/linux_initiator.rs (busybox ash).
#
# Logs in to bootlun with the kernel's iSCSI initiator, exercises the disks
# and prints markers on the serial console for the host:
#   BOOTLUN-VM-STEP name uptime=S   a step finished
#   BOOTLUN-VM-DISK lun=N ...       what the kernel made of LUN N
#   BOOTLUN-VM-INFO / -SG / -DMESG  details for the report
#   BOOTLUN-VM-OK | BOOTLUN-VM-FAIL step
# then powers off. Settings (addresses, offsets) come from /etc/vmtest.conf;
# the patterns it writes and compares are in /data.
export PATH=/bin:/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mkdir -p /proc /sys /dev /tmp /run /mnt/t /var/lock /var/run /etc/iscsi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
. /etc/vmtest.conf

up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "BOOTLUN-VM-STEP $1 uptime=$(up)"; }
info() { echo "BOOTLUN-VM-INFO $*"; }
fail() {
    echo "BOOTLUN-VM-FAIL $1 uptime=$(up)"
    echo "--- guest dmesg (tail) ---"
    dmesg | tail -n 100
    echo "--- end of guest dmesg ---"
    poweroff -f
    sleep 60
}
# dd that fails the test with its message.
ddx() {
    step=$1; shift
    dd "$@" 2>/tmp/dd.err || { cat /tmp/dd.err; fail "$step"; }
}

mark init
while read m; do
    insmod /lib/modules/$m.ko || fail "insmod-$m"
done < /etc/modules.load
mark modules

n=0
while [ ! -e /sys/class/net/eth0 ]; do
    n=$((n+1)); [ $n -gt 150 ] && fail no-eth0
    usleep 200000
done
ip link set lo up
ip addr add $GUEST_IP/24 dev eth0 || fail ip-addr
ip link set eth0 up || fail ip-link-up
n=0
until ping -c 1 -W 1 $PORTAL_IP >/dev/null 2>&1; do
    n=$((n+1)); [ $n -gt 60 ] && fail ping-portal
done
mark network

# One-way CHAP, as an initramfs boot does it (dracut passes the same flags).
iscsistart -i $INITIATOR -t $TARGET -g 1 -a $PORTAL_IP -p $PORTAL_PORT -u $CHAP_USER -w $CHAP_SECRET || fail iscsistart
mark login

# The sd device of a LUN, from the SCSI address H:C:T:L of its device link.
dev_of_lun() {
    for d in /sys/block/sd*; do
        [ -e "$d/device" ] || continue
        a=$(basename "$(readlink "$d/device")")
        if [ "${a##*:}" = "$1" ]; then basename "$d"; return 0; fi
    done
    return 1
}
# Sets R (LUN 0, RAM), F (LUN 1, file), O (LUN 2, read-only file) and
# N (LUN 3, null) once all four disks are usable.
wait_disks() {
    n=0
    while :; do
        R=$(dev_of_lun 0); F=$(dev_of_lun 1); O=$(dev_of_lun 2); N=$(dev_of_lun 3)
        ok=1
        for d in "$R" "$F" "$O" "$N"; do
            if [ -z "$d" ] || [ ! -b "/dev/$d" ] || [ "$(cat /sys/block/$d/size)" = 0 ]; then ok=0; fi
        done
        [ $ok = 1 ] && return 0
        n=$((n+1)); [ $n -gt 300 ] && { ls -l /sys/block; fail "disks-$1"; }
        usleep 200000
    done
}
# Waits until no SCSI disk is left.
wait_no_disks() {
    n=0
    while ls /sys/block | grep -q '^sd'; do
        n=$((n+1)); [ $n -gt 300 ] && { ls -l /sys/block; fail "disks-gone-$1"; }
        usleep 200000
    done
}
wait_disks boot
mark disks

hexof() { [ -r "$1" ] && xxd -p "$1" | tr -d '\n'; }
for pair in "0 $R" "1 $F" "2 $O" "3 $N"; do
    set -- $pair
    L=$1; D=$2; S=/sys/block/$D; Q=$S/queue; V=$S/device
    echo "BOOTLUN-VM-DISK lun=$L dev=$D sectors=$(cat $S/size) lbs=$(cat $Q/logical_block_size) pbs=$(cat $Q/physical_block_size) ro=$(cat $S/ro)"
    info "lun=$L vendor='$(cat $V/vendor)' model='$(cat $V/model)' rev='$(cat $V/rev)' scsi_level=$(cat $V/scsi_level) type=$(cat $V/type)"
    [ -r $V/wwid ] && info "lun=$L wwid='$(cat $V/wwid)'"
    info "lun=$L queue: max_hw_sectors_kb=$(cat $Q/max_hw_sectors_kb) max_sectors_kb=$(cat $Q/max_sectors_kb) optimal_io_size=$(cat $Q/optimal_io_size) minimum_io_size=$(cat $Q/minimum_io_size) rotational=$(cat $Q/rotational) write_cache='$(cat $Q/write_cache)' discard_max_bytes=$(cat $Q/discard_max_bytes) write_same_max_bytes=$(cat $Q/write_same_max_bytes) write_zeroes_max_bytes=$(cat $Q/write_zeroes_max_bytes) fua=$(cat $Q/fua 2>/dev/null) nr_requests=$(cat $Q/nr_requests)"
    for sd in $V/scsi_disk/*; do
        info "lun=$L scsi_disk: cache_type='$(cat $sd/cache_type)' FUA=$(cat $sd/FUA) provisioning_mode=$(cat $sd/provisioning_mode) thin_provisioning=$(cat $sd/thin_provisioning) protection_type=$(cat $sd/protection_type) manage_start_stop=$(cat $sd/manage_start_stop 2>/dev/null) max_write_same_blocks=$(cat $sd/max_write_same_blocks) zeroing_mode=$(cat $sd/zeroing_mode 2>/dev/null)"
    done
    info "lun=$L queue_depth=$(cat $V/queue_depth) timeout=$(cat $V/timeout) state=$(cat $V/state)"
    info "lun=$L inquiry=$(hexof $V/inquiry)"
    for pg in vpd_pg0 vpd_pg80 vpd_pg83 vpd_pg89 vpd_pgb0 vpd_pgb1 vpd_pgb2; do
        [ -r $V/$pg ] && info "lun=$L $pg=$(hexof $V/$pg)"
    done
done
for s in /sys/class/iscsi_session/session*; do
    [ -d "$s" ] && info "session: targetname=$(cat $s/targetname) initiatorname=$(cat $s/initiatorname 2>/dev/null) state=$(cat $s/state) recovery_tmo=$(cat $s/recovery_tmo) first_burst=$(cat $s/first_burst_len) max_burst=$(cat $s/max_burst_len) initial_r2t=$(cat $s/initial_r2t) immediate_data=$(cat $s/immediate_data) tpgt=$(cat $s/tpgt)"
done
for c in /sys/class/iscsi_connection/connection*; do
    [ -d "$c" ] && info "connection: max_recv_dlength=$(cat $c/max_recv_dlength) max_xmit_dlength=$(cat $c/max_xmit_dlength) header_digest=$(cat $c/header_digest) data_digest=$(cat $c/data_digest) persistent_address=$(cat $c/persistent_address) persistent_port=$(cat $c/persistent_port)"
done
command -v lsscsi >/dev/null && lsscsi | sed 's/^/BOOTLUN-VM-INFO lsscsi: /'
mark identity

MIB=1048576
# 1. The pattern the host put on the file LUN.
ddx read-host-pattern if=/dev/$F of=/tmp/host.rd bs=$MIB skip=$((HOST_OFF / MIB)) count=1 iflag=direct
cmp /tmp/host.rd /data/host.bin || fail host-pattern-mismatch
mark read-host-pattern

# 2. The guest's pattern, O_DIRECT 1 MiB writes, read back O_DIRECT.
ddx write-guest-pattern if=/data/guest.bin of=/dev/$F bs=$MIB seek=$((GUEST_OFF / MIB)) oflag=direct conv=notrunc,fsync
echo 3 > /proc/sys/vm/drop_caches
ddx read-guest-pattern if=/dev/$F of=/tmp/guest.rd bs=$MIB skip=$((GUEST_OFF / MIB)) count=$((GUEST_LEN / MIB)) iflag=direct
cmp /tmp/guest.rd /data/guest.bin || fail guest-pattern-mismatch
info "guest pattern md5: written=$(md5sum < /data/guest.bin | cut -d' ' -f1) read-back=$(md5sum < /tmp/guest.rd | cut -d' ' -f1)"
mark guest-pattern

# 3. Nine sectors at an odd sector.
ddx write-small if=/data/small.bin of=/dev/$F bs=512 seek=$SMALL_SECTOR count=9 oflag=direct conv=notrunc,fsync
ddx read-small if=/dev/$F of=/tmp/small.rd bs=512 skip=$SMALL_SECTOR count=9 iflag=direct
cmp /tmp/small.rd /data/small.bin || fail small-mismatch
mark small-write

# 3b. The read-only LUN: write-protected for the kernel, readable, and a
# WRITE sent anyway (SG_IO) is refused by the target with DATA PROTECT.
[ "$(cat /sys/block/$O/ro)" = 1 ] || fail ro-lun-not-write-protected
ddx read-ro-lun if=/dev/$O of=/tmp/ro.rd bs=$MIB count=1 iflag=direct
cmp /tmp/ro.rd /data/host.bin || fail ro-lun-mismatch
if command -v sg_raw >/dev/null; then
    head -c 512 /data/small.bin > /tmp/s512
    sg_raw -R -s 512 -i /tmp/s512 /dev/$O 2a 00 00 00 00 00 00 00 01 00 > /tmp/ro.out 2>&1 && { cat /tmp/ro.out; fail ro-lun-write-accepted; }
    sed 's/^/BOOTLUN-VM-SG ro-lun WRITE(10): /' /tmp/ro.out
    grep -qiE 'data protect|write protected' /tmp/ro.out || { cat /tmp/ro.out; fail ro-lun-wrong-sense; }
fi
mark ro-lun

# 3c. The 3 TiB null LUN: beyond READ CAPACITY(10), 64-bit LBAs at its end.
NS=$(cat /sys/block/$N/size)
[ "$NS" = $((NULL_LUN_BYTES / 512)) ] || fail "null-lun-size-$NS"
ddx null-write-end if=/data/small.bin of=/dev/$N bs=512 seek=$((NS - 9)) count=9 oflag=direct conv=notrunc
ddx null-read-end if=/dev/$N of=/tmp/null.rd bs=512 skip=$((NS - 9)) count=9 iflag=direct
[ "$(wc -c < /tmp/null.rd)" = 4608 ] || fail null-lun-short-read
dd if=/dev/zero of=/tmp/zero.want bs=512 count=9 2>/dev/null
cmp /tmp/null.rd /tmp/zero.want || fail null-lun-not-zero
if dd if=/dev/$N of=/tmp/null.rd bs=512 skip=$NS count=1 iflag=direct 2>/dev/null && [ -s /tmp/null.rd ]; then
    fail null-lun-read-past-end
fi
mark null-lun

# 4. The last MiB of the RAM LUN.
RS=$(cat /sys/block/$R/size)
LAST=$((RS / 2048 - 1))
ddx write-ram-end if=/data/guest.bin of=/dev/$R bs=$MIB seek=$LAST count=1 oflag=direct conv=notrunc,fsync
ddx read-ram-end if=/dev/$R of=/tmp/end.rd bs=$MIB skip=$LAST count=1 iflag=direct
head -c $MIB /data/guest.bin > /tmp/end.want
cmp /tmp/end.rd /tmp/end.want || fail ram-end-mismatch
mark ram-end

# 5. Linux caps requests at the Optimal Transfer Length (VPD B0). Raise the
# cap to 1 MiB so each WRITE carries more than FirstBurstLength and the rest
# of its data goes through R2Ts; one 4 MiB O_DIRECT write becomes 4 of them.
echo 1024 > /sys/block/$F/queue/max_sectors_kb || fail raise-max-sectors
info "lun=1 max_sectors_kb raised to $(cat /sys/block/$F/queue/max_sectors_kb)"
ddx write-large if=/data/guest.bin of=/dev/$F bs=4M seek=$((LARGE_OFF / (4 * MIB))) count=1 oflag=direct conv=notrunc,fsync
ddx read-large if=/dev/$F of=/tmp/large.rd bs=4M skip=$((LARGE_OFF / (4 * MIB))) count=1 iflag=direct
cmp /tmp/large.rd /data/guest.bin || fail large-mismatch
mark large-io

# 6. Eight concurrent O_DIRECT writers, then eight concurrent readers.
pids=""
i=0
while [ $i -lt 8 ]; do
    dd if=/data/par.bin of=/dev/$F bs=32k skip=$((i * 16)) seek=$((PAR_OFF / 32768 + i * 16)) count=16 oflag=direct conv=notrunc 2>/tmp/par$i.err &
    pids="$pids $!"
    i=$((i+1))
done
for p in $pids; do wait $p || { cat /tmp/par*.err; fail concurrent-write; }; done
pids=""
i=0
while [ $i -lt 8 ]; do
    dd if=/dev/$F of=/tmp/par$i.rd bs=32k skip=$((PAR_OFF / 32768 + i * 16)) count=16 iflag=direct 2>/tmp/par$i.err &
    pids="$pids $!"
    i=$((i+1))
done
for p in $pids; do wait $p || { cat /tmp/par*.err; fail concurrent-read; }; done
cat /tmp/par0.rd /tmp/par1.rd /tmp/par2.rd /tmp/par3.rd /tmp/par4.rd /tmp/par5.rd /tmp/par6.rd /tmp/par7.rd > /tmp/par.rd
cmp /tmp/par.rd /data/par.bin || fail concurrent-mismatch
rm -f /tmp/par*.rd
mark concurrent-io

# 7. The same pattern through the page cache (writeback queues many
# requests at once), then read back after dropping the cache.
ddx write-buffered if=/data/par.bin of=/dev/$F bs=$MIB seek=$((BUFFERED_OFF / MIB)) conv=notrunc,fsync
echo 3 > /proc/sys/vm/drop_caches
ddx read-buffered if=/dev/$F of=/tmp/buf.rd bs=$MIB skip=$((BUFFERED_OFF / MIB)) count=$((PAR_LEN / MIB))
cmp /tmp/buf.rd /data/par.bin || fail buffered-mismatch
rm -f /tmp/buf.rd
mark buffered-io

# 8. SCSI commands from userspace (sg3-utils), if present.
if command -v sg_inq >/dev/null; then
    sg() { echo "BOOTLUN-VM-SG \$ $*"; "$@" 2>&1 | sed 's/^/BOOTLUN-VM-SG   /'; }
    sg sg_inq /dev/$F
    sg sg_vpd --page=sn /dev/$F
    sg sg_vpd --page=di /dev/$F
    sg sg_vpd --page=bl /dev/$F
    sg sg_vpd --page=lbpv /dev/$F
    sg sg_readcap --long /dev/$F
    sg sg_luns /dev/$F
    sg sg_opcodes /dev/$F
    sg sg_modes --all /dev/$F
    sg sg_requests /dev/$F
    sg sg_readcap --long /dev/$N
    sg_turs /dev/$F || fail sg-turs
    sg_verify --count=2048 --lba=0 /dev/$F || fail sg-verify
    sg_sync /dev/$F || fail sg-sync
    mark sg-utils
    # Task management through the kernel's error handler: LOGICAL UNIT RESET
    # and TARGET WARM RESET; I/O must carry on afterwards.
    sg_reset --device /dev/$F || fail lun-reset
    ddx read-after-lun-reset if=/dev/$F of=/tmp/host.rd bs=$MIB skip=$((HOST_OFF / MIB)) count=1 iflag=direct
    cmp /tmp/host.rd /data/host.bin || fail lun-reset-mismatch
    sg_reset --target /dev/$F || fail target-reset
    ddx read-after-target-reset if=/dev/$R of=/tmp/end.rd bs=$MIB skip=$LAST count=1 iflag=direct
    cmp /tmp/end.rd /tmp/end.want || fail target-reset-mismatch
    mark resets
fi

# 9. Rescans: REPORT LUNS and READ CAPACITY again.
echo '- - -' > /sys/class/scsi_host/host0/scan || fail host-rescan
echo 1 > /sys/block/$F/device/rescan || fail disk-rescan
[ "$(cat /sys/block/$F/size)" = "$((FILE_LUN_BYTES / 512))" ] || fail size-after-rescan
mark rescan

# 10. A file system on the RAM LUN, through the page cache.
mke2fs -q /dev/$R > /tmp/mkfs.log 2>&1 || { cat /tmp/mkfs.log; fail mkfs; }
mark mkfs
mount -t ext2 /dev/$R /mnt/t || fail mount
cp /data/guest.bin /mnt/t/guest.bin || fail fs-copy
i=0
while [ $i -lt 64 ]; do echo "bootlun file $i" > /mnt/t/f$i || fail fs-small-files; i=$((i+1)); done
sync
umount /mnt/t || fail umount
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/$R /mnt/t || fail remount
cmp /mnt/t/guest.bin /data/guest.bin || fail fs-content-mismatch
[ "$(cat /mnt/t/f63)" = "bootlun file 63" ] || fail fs-small-file-content
info "fs: $(df -k /mnt/t | tail -n 1)"
info "fs: $(ls /mnt/t | wc -l) entries"
umount /mnt/t || fail umount-ro
mark filesystem

blockdev --flushbufs /dev/$R || fail flush-ram
blockdev --flushbufs /dev/$F || fail flush-file
sync

# 11. open-iscsi's daemon and iscsiadm: SendTargets discovery, logout of the
# boot session, a fresh login through the node database.
mkdir -p /run/lock/iscsi /var/lib/iscsi
iscsid -f > /tmp/iscsid.log 2>&1 &
n=0
until grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; do
    n=$((n+1)); [ $n -gt 100 ] && { cat /tmp/iscsid.log; fail iscsid-start; }
    usleep 200000
done
iscsiadm -m session 2>&1 | sed 's/^/BOOTLUN-VM-ISCSIADM session: /'
iscsiadm -m discovery -t sendtargets -p $PORTAL_IP:$PORTAL_PORT > /tmp/disc.txt 2>&1 || { cat /tmp/disc.txt /tmp/iscsid.log; fail discovery; }
sed 's/^/BOOTLUN-VM-DISCOVERY /' /tmp/disc.txt
grep -qx "$PORTAL_IP:$PORTAL_PORT,1 $TARGET" /tmp/disc.txt || fail discovery-content
mark discovery
# iscsid takes the boot session over by logging in again (its own
# parameters); until that relogin is done it refuses a logout: retry.
logout_all() {
    n=0
    until iscsiadm -m session -u > /tmp/lo.txt 2>&1; do
        n=$((n+1)); [ $n -gt 30 ] && { cat /tmp/lo.txt /tmp/iscsid.log; fail "logout-$1"; }
        sleep 1
    done
    sed 's/^/BOOTLUN-VM-ISCSIADM /' /tmp/lo.txt
}
logout_all boot-session
wait_no_disks logout
mark logout
# A wrong secret is refused (bootlun logs it; the host checks), then the
# node record from discovery logs in with mutual CHAP (iscsid.conf).
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n node.session.auth.password -v not-the-right-secret || fail chap-setting
if iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT --login > /tmp/li.txt 2>&1; then
    cat /tmp/li.txt; fail wrong-chap-secret-accepted
fi
sed 's/^/BOOTLUN-VM-ISCSIADM wrong secret: /' /tmp/li.txt
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n node.session.auth.password -v $CHAP_SECRET || fail chap-setting
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT | grep -q "node.session.auth.username_in = $TARGET_CHAP_USER" || fail mutual-chap-setting
mark chap-refused
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT --login > /tmp/li.txt 2>&1 || { cat /tmp/li.txt /tmp/iscsid.log; fail relogin; }
sed 's/^/BOOTLUN-VM-ISCSIADM /' /tmp/li.txt
wait_disks relogin
info "after relogin: lun0=$R lun1=$F"
# What the first session wrote is still there, on both LUNs.
ddx reread-guest-pattern if=/dev/$F of=/tmp/guest.rd bs=$MIB skip=$((GUEST_OFF / MIB)) count=$((GUEST_LEN / MIB)) iflag=direct
cmp /tmp/guest.rd /data/guest.bin || fail relogin-guest-pattern-mismatch
mount -t ext2 -o ro /dev/$R /mnt/t || fail relogin-mount
cmp /mnt/t/guest.bin /data/guest.bin || fail relogin-fs-content-mismatch
umount /mnt/t || fail relogin-umount
mark relogin

# 12. Connection loss: the link goes down, a read and a write are issued
# into the void, the NOP-Out times out, and iscsid logs in again once the
# link is back; the SCSI layer then retries both on the new connection.
sess_ids() {
    for s in /sys/class/iscsi_session/session*; do
        echo "$(basename $s) state=$(cat $s/state)"
    done
}
info "before link loss: $(sess_ids)"
ip link set eth0 down || fail link-down
( dd if=/dev/$F of=/tmp/rec.rd bs=$MIB skip=$((GUEST_OFF / MIB)) count=$((GUEST_LEN / MIB)) iflag=direct 2>/tmp/rec.err; echo $? > /tmp/rec.rc ) &
( dd if=/data/par.bin of=/dev/$F bs=$MIB seek=$((RECOVERY_OFF / MIB)) oflag=direct conv=notrunc,fsync 2>/tmp/recw.err; echo $? > /tmp/recw.rc ) &
sleep 15
ip link set eth0 up || fail link-up
n=0
until [ -e /tmp/rec.rc ] && [ -e /tmp/recw.rc ]; do
    n=$((n+1)); [ $n -gt 600 ] && { cat /tmp/iscsid.log; fail recovery-io-hung; }
    usleep 200000
done
[ "$(cat /tmp/rec.rc)" = 0 ] || { cat /tmp/rec.err /tmp/iscsid.log; fail recovery-read; }
[ "$(cat /tmp/recw.rc)" = 0 ] || { cat /tmp/recw.err /tmp/iscsid.log; fail recovery-write; }
cmp /tmp/rec.rd /data/guest.bin || fail recovery-read-mismatch
ddx recovery-reread if=/dev/$F of=/tmp/rec.rd bs=$MIB skip=$((RECOVERY_OFF / MIB)) count=$((PAR_LEN / MIB)) iflag=direct
cmp /tmp/rec.rd /data/par.bin || fail recovery-write-mismatch
info "after recovery: $(sess_ids)"
mark recovery

# 13. CRC32C header and data digests, in a fresh session.
logout_all before-digests
wait_no_disks before-digests
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n 'node.conn[0].iscsi.HeaderDigest' -v CRC32C || fail digest-setting
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n 'node.conn[0].iscsi.DataDigest' -v CRC32C || fail digest-setting
# No NOP-Out pings in this session: a timed-out command is then aborted at
# once instead of first checking the connection (see 13b).
for k in noop_out_interval noop_out_timeout; do
    iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n "node.conn[0].timeo.$k" -v 0 || fail noop-setting
done
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT --login > /tmp/li.txt 2>&1 || { cat /tmp/li.txt /tmp/iscsid.log; fail digest-login; }
wait_disks digests
for c in /sys/class/iscsi_connection/connection*; do
    info "digest session: $(basename $c) header_digest=$(cat $c/header_digest) data_digest=$(cat $c/data_digest)"
    [ "$(cat $c/header_digest)" = 1 ] && [ "$(cat $c/data_digest)" = 1 ] || fail digests-not-negotiated
done
echo 1024 > /sys/block/$F/queue/max_sectors_kb || fail raise-max-sectors-digests
ddx digest-write if=/data/guest.bin of=/dev/$F bs=4M seek=$((DIGEST_OFF / (4 * MIB))) count=1 oflag=direct conv=notrunc,fsync
ddx digest-read if=/dev/$F of=/tmp/dig.rd bs=4M skip=$((DIGEST_OFF / (4 * MIB))) count=1 iflag=direct
cmp /tmp/dig.rd /data/guest.bin || fail digest-mismatch
ddx digest-read-host if=/dev/$F of=/tmp/host.rd bs=$MIB skip=$((HOST_OFF / MIB)) count=1 iflag=direct
cmp /tmp/host.rd /data/host.bin || fail digest-host-pattern-mismatch
mark digests

# 13b. A command that times out: the host freezes bootlun (SIGSTOP) when it
# sees the PAUSE marker, and thaws it when it sees RESUME. With a 2 s SCSI
# timeout and no NOP-Out pings, the kernel aborts the stuck WRITE (ABORT
# TASK, which waits up to abort_timeout = 15 s for its answer); RESUME is
# printed once the abort has been sent. Error handling must end with the
# data on the disk and the session usable.
echo 2 > /sys/block/$F/device/timeout || fail set-timeout
echo 1 > /sys/module/libiscsi/parameters/debug_libiscsi_eh
echo 7 > /proc/sys/dev/scsi/logging_level
dmesg -c > /dev/null
echo "BOOTLUN-VM-PAUSE-TARGET uptime=$(up)"
sleep 1
rm -f /tmp/frozen.rc
( dd if=/data/par.bin of=/dev/$F bs=$MIB seek=$((ABORT_OFF / MIB)) count=$((PAR_LEN / MIB)) oflag=direct conv=notrunc,fsync 2>/tmp/frozen.err; echo $? > /tmp/frozen.rc ) &
n=0
until dmesg | grep -q 'iscsi_eh_abort aborting'; do
    n=$((n+1)); [ $n -gt 100 ] && break
    usleep 200000
done
echo "BOOTLUN-VM-RESUME-TARGET uptime=$(up)"
n=0
until [ -e /tmp/frozen.rc ]; do
    n=$((n+1)); [ $n -gt 600 ] && fail write-while-frozen-hung
    usleep 200000
done
echo 30 > /sys/block/$F/device/timeout
echo 0 > /proc/sys/dev/scsi/logging_level
echo 0 > /sys/module/libiscsi/parameters/debug_libiscsi_eh
dmesg | sed 's/^/BOOTLUN-VM-EH /'
[ "$(cat /tmp/frozen.rc)" = 0 ] || { cat /tmp/frozen.err; fail write-while-frozen; }
ddx read-after-abort if=/dev/$F of=/tmp/abort.rd bs=$MIB skip=$((ABORT_OFF / MIB)) count=$((PAR_LEN / MIB)) iflag=direct
cmp /tmp/abort.rd /data/par.bin || fail abort-mismatch
info "after the frozen target: $(sess_ids)"
mark command-timeout

# 14. Two sessions at once (different ISIDs): each LUN shows up twice.
# The two sessions write the two halves of a pattern concurrently; each
# reads back the whole of it.
logout_all before-two-sessions
wait_no_disks before-two-sessions
for k in HeaderDigest DataDigest; do
    iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n "node.conn[0].iscsi.$k" -v None || fail digest-reset
done
for k in noop_out_interval noop_out_timeout; do
    iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n "node.conn[0].timeo.$k" -v 5 || fail noop-reset
done
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT -o update -n node.session.nr_sessions -v 2 || fail nr-sessions
iscsiadm -m node -T $TARGET -p $PORTAL_IP:$PORTAL_PORT --login > /tmp/li.txt 2>&1 || { cat /tmp/li.txt /tmp/iscsid.log; fail two-session-login; }
sed 's/^/BOOTLUN-VM-ISCSIADM /' /tmp/li.txt
# The LUN 1 disks of the two SCSI hosts (one host per session).
n=0
while :; do
    set -- $(for d in /sys/block/sd*; do
        [ -e "$d/device" ] || continue
        a=$(basename "$(readlink "$d/device")")
        [ "${a##*:}" = 1 ] && [ "$(cat $d/size)" != 0 ] && basename "$d"
    done)
    [ $# -ge 2 ] && break
    n=$((n+1)); [ $n -gt 300 ] && { ls -l /sys/block; iscsiadm -m session; fail two-session-disks; }
    usleep 200000
done
A=$1; B=$2
info "two sessions: $(iscsiadm -m session | tr '\n' ';') LUN 1 as $A and $B"
HALF=$((PAR_LEN / 2 / MIB))
( dd if=/data/par.bin of=/dev/$A bs=$MIB seek=$((TWO_OFF / MIB)) count=$HALF oflag=direct conv=notrunc,fsync 2>/tmp/two-a.err; echo $? > /tmp/two-a.rc ) &
( dd if=/data/par.bin of=/dev/$B bs=$MIB skip=$HALF seek=$((TWO_OFF / MIB + HALF)) count=$HALF oflag=direct conv=notrunc,fsync 2>/tmp/two-b.err; echo $? > /tmp/two-b.rc ) &
n=0
until [ -e /tmp/two-a.rc ] && [ -e /tmp/two-b.rc ]; do
    n=$((n+1)); [ $n -gt 600 ] && fail two-session-write-hung
    usleep 200000
done
[ "$(cat /tmp/two-a.rc)" = 0 ] && [ "$(cat /tmp/two-b.rc)" = 0 ] || { cat /tmp/two-*.err; fail two-session-write; }
for d in $A $B; do
    ddx two-session-read-$d if=/dev/$d of=/tmp/two.rd bs=$MIB skip=$((TWO_OFF / MIB)) count=$((PAR_LEN / MIB)) iflag=direct
    cmp /tmp/two.rd /data/par.bin || fail "two-session-mismatch-$d"
done
mark two-sessions

# 15. Clean logout: sd flushes the write-back cache (SYNCHRONIZE CACHE)
# while the disks go away, then the Logout exchange.
logout_all final
wait_no_disks final
sed 's/^/BOOTLUN-VM-ISCSID /' /tmp/iscsid.log
dmesg | grep -E 'sd [0-9]|scsi|iSCSI|iscsi|\[sd[a-z]\]|connection[0-9]|session[0-9]|EXT4-fs' | sed 's/^/BOOTLUN-VM-DMESG /'
dmesg | grep -iE 'error|fail|warn|timed out|reset|abort|sense' | grep -vE 'tsc: Fast TSC|MMCONFIG|Mode Sense:' | sed 's/^/BOOTLUN-VM-DMESG-ISSUE /'
mark logged-out

# 16. fio from the initiator, as users run it: perf/initiator/run.sh does
# its own discovery and login (CHAP and mutual CHAP), finds the RAM LUN by
# its identity, runs the read and write jobs with io_uring and libaio, and
# logs out. Its figures are bound by emulation; the host checks each job
# moved data.
iscsiadm -m node -o delete >/dev/null 2>&1
if env PATH=/bin:/sbin:/usr/bin CHAP_USER=$CHAP_USER CHAP_SECRET=$CHAP_SECRET \
    TARGET_CHAP_USER=$TARGET_CHAP_USER TARGET_CHAP_SECRET=$TARGET_CHAP_SECRET \
    RUNTIME=1 ALLOW_WRITE=1 /usr/bin/bash /perf/initiator/run.sh \
    $PORTAL_IP:$PORTAL_PORT $TARGET 0 >/tmp/fio.txt 2>&1; then
    sed 's/^/BOOTLUN-VM-FIO /' /tmp/fio.txt
else
    sed 's/^/BOOTLUN-VM-FIO /' /tmp/fio.txt
    fail fio
fi
wait_no_disks fio
mark fio
echo "BOOTLUN-VM-OK uptime=$(up)"
poweroff -f
sleep 60
