#!/usr/bin/env bash
# fio from a Linux initiator, as users run it: log in with open-iscsi, find
# the new disk by its WWN, run the fio jobs with io_uring and libaio, log
# out, print one table.
#
#   perf/initiator/run.sh PORTAL IQN [LUN]
#   perf/initiator/run.sh 192.168.200.1:3260 iqn.2026-11.org.bootlun:target
#
# PORTAL is ADDRESS[:PORT] (port 3260 if omitted). The write jobs overwrite
# the LUN, so they run only with ALLOW_WRITE=1. Environment: RUNTIME
# (seconds per job, 10), ENGINES ("io_uring libaio"), ALLOW_WRITE (0);
# CHAP_USER and CHAP_SECRET when the target asks for CHAP (`serve --chap`),
# plus TARGET_CHAP_USER and TARGET_CHAP_SECRET for mutual CHAP.
#
# Needs root, open-iscsi (iscsiadm and the iscsi_tcp module), fio,
# libiscsi-bin (iscsi-inq, to read the LUN's identity before login) and jq.
set -euo pipefail

usage() { echo "usage: $0 PORTAL IQN [LUN]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
portal=$1
iqn=$2
lun=${3:-0}
[[ $portal == *:* ]] || portal="$portal:3260"
RUNTIME=${RUNTIME:-10}
ENGINES=${ENGINES:-io_uring libaio}
ALLOW_WRITE=${ALLOW_WRITE:-0}
CHAP_USER=${CHAP_USER:-}
CHAP_SECRET=${CHAP_SECRET:-}
TARGET_CHAP_USER=${TARGET_CHAP_USER:-}
TARGET_CHAP_SECRET=${TARGET_CHAP_SECRET:-}
if [[ -n $CHAP_USER && -z $CHAP_SECRET ]] || [[ -z $CHAP_USER && -n $CHAP_SECRET ]]; then
    echo "set both CHAP_USER and CHAP_SECRET, or neither" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"

need() { # BIN PACKAGE
    command -v "$1" >/dev/null 2>&1 || { echo "$1 not found: apt-get install $2" >&2; exit 1; }
}
need iscsiadm open-iscsi
need fio fio
need iscsi-inq libiscsi-bin
need jq jq
[[ $(id -u) -eq 0 ]] || { echo "run as root (iscsiadm logs in a kernel session)" >&2; exit 1; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The LUN's identity from VPD page 83h, read over libiscsi before the
# kernel sees the disk. iscsi-inq prints binary designators (NAA) as C
# strings, cut at the first zero byte, so the ASCII T10 vendor designator
# is the one we can read whole; after login the kernel exposes the same
# page as /sys/block/sdX/device/vpd_pg83 (and the disk's WWN, chosen from
# it, as device/wwid). Matching on the identity, not on "the newest sdX",
# cannot pick a local disk or another session's LUN.
url="iscsi://$portal/$iqn/$lun"
shown_url=$url
if [[ -n $CHAP_USER ]]; then
    # libiscsi takes CHAP credentials in the URL: iscsi://USER%SECRET@...
    url="iscsi://$CHAP_USER%$CHAP_SECRET@$portal/$iqn/$lun"
    shown_url="iscsi://$CHAP_USER%<secret>@$portal/$iqn/$lun"
fi
t10=$(timeout 30 iscsi-inq -e 1 -c 131 "$url" 2>/dev/null |
    awk '/^Designator Type:\(1\)/ { t = 1; next } t && /^Designator:\[/ {
        sub(/^Designator:\[/, ""); sub(/\]$/, ""); print; exit }')
if [[ -z $t10 ]]; then
    echo "$shown_url: no T10 vendor designator in VPD page 83h (iscsi-inq -e 1 -c 131 $shown_url)" >&2
    exit 1
fi
log "LUN $lun of $iqn at $portal identifies as '$t10'"

work=$(mktemp -d /tmp/bootlun-fio.XXXXXX)
logged_in=0
cleanup() {
    if ((logged_in)); then
        log "logging out"
        iscsiadm -m node -T "$iqn" -p "$portal" --logout >/dev/null 2>&1 || true
        iscsiadm -m node -T "$iqn" -p "$portal" -o delete >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "discovery and login"
if [[ -n $CHAP_USER ]]; then
    # The discovery session logs in with CHAP too.
    timeout 60 iscsiadm -m discoverydb -t sendtargets -p "$portal" -o new >/dev/null
    for kv in authmethod=CHAP username="$CHAP_USER" password="$CHAP_SECRET"; do
        timeout 60 iscsiadm -m discoverydb -t sendtargets -p "$portal" -o update \
            -n "discovery.sendtargets.auth.${kv%%=*}" -v "${kv#*=}" >/dev/null
    done
    timeout 60 iscsiadm -m discoverydb -t sendtargets -p "$portal" --discover >/dev/null
    auth=(authmethod=CHAP username="$CHAP_USER" password="$CHAP_SECRET")
    if [[ -n $TARGET_CHAP_USER ]]; then
        auth+=(username_in="$TARGET_CHAP_USER" password_in="$TARGET_CHAP_SECRET")
    fi
    for kv in "${auth[@]}"; do
        timeout 60 iscsiadm -m node -T "$iqn" -p "$portal" -o update \
            -n "node.session.auth.${kv%%=*}" -v "${kv#*=}" >/dev/null
    done
else
    timeout 60 iscsiadm -m discovery -t sendtargets -p "$portal" >/dev/null
fi
timeout 60 iscsiadm -m node -T "$iqn" -p "$portal" --login >/dev/null
logged_in=1

dev=""
for ((i = 0; i < 300; i++)); do # up to 30 s for the SCSI scan
    for p in /sys/block/sd*/device/vpd_pg83; do
        [[ -r $p ]] || continue
        # The page is binary: drop its zero bytes before matching.
        page=$(tr -d '\000' <"$p")
        if [[ $page == *"$t10"* ]]; then
            dev=/dev/$(basename "$(dirname "$(dirname "$p")")")
            break 2
        fi
    done
    sleep 0.1
done
[[ -n $dev ]] || { echo "no /sys/block/sd*/device/vpd_pg83 holds '$t10' 30 s after login" >&2; exit 1; }
[[ -b $dev ]] || { echo "$dev is not a block device" >&2; exit 1; }
log "disk is $dev, WWN $(cat "/sys/block/${dev#/dev/}/device/wwid" 2>/dev/null || echo unknown)"

files=("$here/read.fio")
if [[ $ALLOW_WRITE == 1 ]]; then
    files+=("$here/write.fio")
else
    log "write jobs skipped (they overwrite the LUN; set ALLOW_WRITE=1)"
fi
for engine in $ENGINES; do
    for f in "${files[@]}"; do
        out="$work/$engine-$(basename "$f" .fio).json"
        log "fio $(basename "$f") with ioengine=$engine, ${RUNTIME}s per job"
        DEV=$dev ENGINE=$engine RUNTIME=$RUNTIME \
            timeout $((RUNTIME * 20 + 120)) fio --output-format=json --output="$out" "$f"
    done
done

# One table from every JSON: per job the direction that moved data.
printf '%-20s %-9s %10s %10s %10s %10s\n' job engine IOPS MB/s "p50 us" "p99 us"
for engine in $ENGINES; do
    for j in "$work/$engine"-*.json; do
        jq -r --arg e "$engine" '.jobs[] |
            (if .read.io_bytes > 0 then .read else .write end) as $d |
            [.jobname, $e, ($d.iops | floor),
             (($d.bw_bytes / 1000000) * 10 | floor / 10),
             (($d.clat_ns.percentile["50.000000"] // 0) / 1000 | floor),
             (($d.clat_ns.percentile["99.000000"] // 0) / 1000 | floor)] | @tsv' "$j" |
            while IFS=$'\t' read -r name e iops mbs p50 p99; do
                printf '%-20s %-9s %10s %10s %10s %10s\n' "$name" "$e" "$iops" "$mbs" "$p50" "$p99"
            done
    done
done
