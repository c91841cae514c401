#!/bin/sh
# /init of the OS disk's initramfs in tests/e2e (busybox ash).
#
# It does, in miniature, what dracut's iscsi module does on a real install:
#   netroot=iscsi:[user:pass@]server:[proto]:[port]:[lun]:target
#   rd.iscsi.initiator=IQN  rd.iscsi.param=NAME=VALUE
#   rd.iscsi.firmware=1     (log in to what the iBFT names: iscsistart -b)
#   ip=dhcp | ip=ibft       (network from DHCP, or from the iBFT)
#   root=UUID=...
# then proves the disk is the target's own: prints the marker the host put
# on the root file system, writes a fresh random string the host reads back
# after both machines are off, and powers off.
#
# Console lines for the host:
#   E2E-CMDLINE <cmdline>    E2E-STAGE <name> uptime=S
#   BOOT-OK <marker>         BOOT-WROTE <string>     E2E-UPGRADED <version>
#   BOOT-DONE                E2E-FAIL <step>
#
# A root file system holding /etc/e2e-upgrade (shell assignments BOOT_UUID=
# and VERSION=) asks this boot to "install a new kernel" on the boot
# partition, over iSCSI like a package manager would: a copy of the running
# kernel as vmlinuz-VERSION-new and a BLS entry for it with a higher version
# and `e2e.kernel=new` added to its options. The flag is removed afterwards.
export PATH=/bin:/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mkdir -p /proc /sys /dev /tmp /run /sysroot /bootfs /var/lock /var/run /etc/iscsi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

up() { cut -d' ' -f1 /proc/uptime; }
stage() { echo "E2E-STAGE $1 uptime=$(up)"; }
fail() {
    echo "E2E-FAIL $1 uptime=$(up)"
    echo "--- guest dmesg (tail) ---"
    dmesg | tail -n 80
    echo "--- end of guest dmesg ---"
    poweroff -f
    sleep 60
}
# Runs "$@" until it succeeds, at most $1 times, 250 ms apart.
retry() {
    tries=$1; shift
    n=0
    until "$@"; do
        n=$((n+1)); [ $n -ge $tries ] && return 1
        usleep 250000
    done
}

CMDLINE=$(cat /proc/cmdline)
echo "E2E-CMDLINE $CMDLINE"
stage init

netroot=
initiator=
firmware=0
ipmode=
root=
params=
# No globbing while the command line is split into words.
set -f
for a in $CMDLINE; do
    case "$a" in
        netroot=*) netroot=${a#netroot=} ;;
        rd.iscsi.initiator=*) initiator=${a#rd.iscsi.initiator=} ;;
        rd.iscsi.firmware|rd.iscsi.firmware=1) firmware=1 ;;
        rd.iscsi.param=*) params="$params -P ${a#rd.iscsi.param=}" ;;
        ip=*) ipmode=${a#ip=} ;;
        root=*) root=${a#root=} ;;
    esac
done
set +f
[ -n "$root" ] || fail no-root-argument
[ -n "$netroot" ] || [ $firmware = 1 ] || fail "no-netroot-nor-rd.iscsi.firmware"

while read m; do
    insmod /lib/modules/$m.ko || fail "insmod-$m"
done < /etc/modules.load
stage modules

# The first Ethernet interface (the machine has one NIC).
n=0
while :; do
    IFACE=
    for i in /sys/class/net/*; do
        b=${i##*/}
        [ "$b" = lo ] && continue
        IFACE=$b; break
    done
    [ -n "$IFACE" ] && break
    n=$((n+1)); [ $n -gt 200 ] && fail no-network-interface
    usleep 100000
done
ip link set lo up
ip link set "$IFACE" up || fail link-up

case "$ipmode" in
    dhcp|"")
        retry 3 udhcpc -i "$IFACE" -n -q -t 10 -T 2 -s /bin/udhcpc-script || fail dhcp
        ;;
    ibft)
        # The iBFT's NIC section: its address and mask, for the interface
        # with its MAC.
        E=/sys/firmware/ibft/ethernet0
        [ -r $E/ip-addr ] || fail no-ibft-nic
        mac=$(cat $E/mac)
        for i in /sys/class/net/*; do
            [ "$(cat $i/address)" = "$mac" ] && IFACE=${i##*/}
        done
        ifconfig "$IFACE" "$(cat $E/ip-addr)" netmask "$(cat $E/subnet-mask)" up || fail ibft-address
        ;;
    *) fail "unsupported-ip=$ipmode" ;;
esac
echo "E2E-NET $IFACE $(ip -4 -o addr show dev "$IFACE" | awk '{print $4}')"
stage network

if [ $firmware = 1 ]; then
    [ -d /sys/firmware/ibft/target0 ] || fail no-ibft-target
    echo "E2E-IBFT target=$(cat /sys/firmware/ibft/target0/target-name) ip=$(cat /sys/firmware/ibft/target0/ip-addr) initiator=$(cat /sys/firmware/ibft/initiator/initiator-name)"
    iscsistart -b $params || fail iscsistart-ibft
else
    # netroot=iscsi:[user:pass@]server:[proto]:[port]:[lun]:target; the
    # target name keeps its own colons.
    v=${netroot#iscsi:}
    [ "$v" != "$netroot" ] || fail "netroot-not-iscsi"
    user=
    pass=
    case "$v" in
        *@*) cred=${v%%@*}; v=${v#*@}; user=${cred%%:*}; pass=${cred#*:} ;;
    esac
    server=${v%%:*}; v=${v#*:}
    proto=${v%%:*}; v=${v#*:}
    port=${v%%:*}; v=${v#*:}
    lun=${v%%:*}; v=${v#*:}
    target=$v
    [ -n "$port" ] || port=3260
    [ -n "$lun" ] || lun=0
    [ -n "$initiator" ] || initiator=iqn.2026-11.org.bootlun.e2e:initiator
    [ -n "$server" ] && [ -n "$target" ] || fail "netroot-parse"
    echo "E2E-NETROOT server=$server proto=$proto port=$port lun=$lun target=$target initiator=$initiator"
    if [ -n "$user" ]; then
        iscsistart -i "$initiator" -t "$target" -g 1 -a "$server" -p "$port" -u "$user" -w "$pass" $params || fail iscsistart
    else
        iscsistart -i "$initiator" -t "$target" -g 1 -a "$server" -p "$port" $params || fail iscsistart
    fi
fi
stage login

# The root file system, by what root= names (the disk's partitions appear
# once the SCSI scan of the new session is done).
case "$root" in
    UUID=*|LABEL=*) ;;
    *) fail "root=$root-not-UUID-or-LABEL" ;;
esac
rootdev=
find_root() { rootdev=$(findfs "$root" 2>/dev/null) && [ -b "$rootdev" ]; }
retry 480 find_root || { cat /proc/partitions; fail "root-not-found-$root"; }
echo "E2E-ROOTDEV $rootdev"
stage disk

# dracut mounts root read-only and the real init remounts it; this init is
# the whole OS, so it mounts it read-write at once.
mount -t ext4 -o rw "$rootdev" /sysroot || fail mount-root
stage mounted
[ -r /sysroot/etc/e2e-marker ] || fail no-marker
echo "E2E-KERNEL $(uname -r)"
echo "BOOT-OK $(cat /sysroot/etc/e2e-marker)"

if [ -f /sysroot/etc/e2e-upgrade ]; then
    BOOT_UUID=
    VERSION=
    . /sysroot/etc/e2e-upgrade
    [ -n "$BOOT_UUID" ] && [ -n "$VERSION" ] || fail upgrade-flag
    bootdev=$(findfs "UUID=$BOOT_UUID") || fail boot-partition-not-found
    mount -t ext4 -o rw "$bootdev" /bootfs || fail mount-boot
    old=/bootfs/loader/entries/e2e-$VERSION.conf
    new=/bootfs/loader/entries/e2e-$VERSION-new.conf
    [ -r "$old" ] || fail "no-entry-$old"
    cp "/bootfs/vmlinuz-$VERSION" "/bootfs/vmlinuz-$VERSION-new" || fail copy-kernel
    sed -e "s|^title .*|title e2e $VERSION-new|" \
        -e "s|^version .*|version $VERSION-new|" \
        -e "s|^linux .*|linux /vmlinuz-$VERSION-new|" \
        -e '/^options /s/$/ e2e.kernel=new/' "$old" > "$new.tmp" || fail write-entry
    mv "$new.tmp" "$new" || fail rename-entry
    sync
    umount /bootfs || fail umount-boot
    rm -f /sysroot/etc/e2e-upgrade
    echo "E2E-UPGRADED $VERSION-new"
fi

w=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
[ ${#w} = 32 ] || fail random
echo "$w" > /sysroot/e2e-written || fail write
sync
echo "BOOT-WROTE $w"
umount /sysroot || fail umount-root
stage unmounted
echo "BOOT-DONE uptime=$(up)"
poweroff -f
sleep 60
