#!/usr/bin/env bash
# bootlun vs tgt on this machine, loopback only.
#
# Builds bootlun (release), serves a 1 GiB /dev/shm file from each target,
# runs the same benchmarks against both and prints a table with the ratio
# bootlun/tgt. A side that fails is reported as FAIL and the run goes on.
# Stops only the processes it started (by PID) and removes its /dev/shm files.
#
# Environment (all optional):
#   BOOTLUN_BIN        use this binary instead of building one
#   BOOTLUN_PORT       bootlun's iSCSI port             (3270)
#   TGT_PORT           tgtd's iSCSI port                (3271)
#   TGT_CONTROL_PORT   tgtd's management port (-C)      (23271; <= 32767)
#   SIZE_MIB           LUN size in MiB                  (1024)
#   BENCH_COUNT        requests per qemu-img bench run  (8192 = 1 GiB of 128 KiB)
#   DEPTH              queue depth                      (32)
#   PERF_SECONDS       iscsi-perf run time              (10)
#   BOOTLUN_ARGS       extra `bootlun serve` flags, e.g. "--cores 0,1 --poll busy"
#   ONLY               run one side only: bootlun | tgt
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
BOOTLUN_PORT=${BOOTLUN_PORT:-3270}
TGT_PORT=${TGT_PORT:-3271}
TGT_CONTROL_PORT=${TGT_CONTROL_PORT:-23271}
SIZE_MIB=${SIZE_MIB:-1024}
BENCH_COUNT=${BENCH_COUNT:-8192}
DEPTH=${DEPTH:-32}
PERF_SECONDS=${PERF_SECONDS:-10}
BOOTLUN_ARGS=${BOOTLUN_ARGS:-}
ONLY=${ONLY:-}
BOOTLUN_IQN=iqn.2026-11.org.bootlun:target
TGT_IQN=iqn.2026-11.org.bootlun:perf-tgt

tag="bootlun-perf-$$"
shm_bootlun="/dev/shm/$tag-bootlun.img"
shm_tgt="/dev/shm/$tag-tgt.img"
workdir="$(mktemp -d "/tmp/$tag.XXXXXX")"
bootlun_pid=""
tgtd_pid=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { printf '[%s] FAILED: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_pid() { # PID NAME SIGNAL
    local pid=$1 name=$2 sig=$3 i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    log "stopping $name (pid $pid, SIG$sig)"
    kill "-$sig" "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    log "$name did not exit; SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    stop_pid "$bootlun_pid" bootlun TERM
    # tgtd ignores SIGTERM; nothing of ours needs flushing on /dev/shm.
    stop_pid "$tgtd_pid" tgtd KILL
    rm -f "$shm_bootlun" "$shm_tgt"
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { # BIN PACKAGE
    command -v "$1" >/dev/null 2>&1 || { fail "$1 not found: apt-get install $2"; exit 1; }
}
need qemu-img qemu-utils
need iscsi-perf libiscsi-bin
need iscsi-readcapacity16 libiscsi-bin
need tgtd tgt
need tgtadm tgt

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

make_lun() { # PATH
    rm -f "$1"
    fallocate -l "${SIZE_MIB}M" "$1" 2>/dev/null || truncate -s "${SIZE_MIB}M" "$1"
}

declare -A RES=()
bootlun_ok=0
tgt_ok=0

# --- bootlun -----------------------------------------------------------------
start_bootlun() {
    local bin=${BOOTLUN_BIN:-}
    if [[ -z $bin ]]; then
        log "building bootlun (cargo build --release --bin bootlun)"
        if ! (cd "$root" && cargo build --release --bin bootlun >&2); then
            fail "bootlun build"
            return 1
        fi
        local tdir=${CARGO_TARGET_DIR:-target}
        [[ $tdir == /* ]] || tdir="$root/$tdir"
        bin="$tdir/release/bootlun"
    fi
    if port_busy "$BOOTLUN_PORT"; then
        fail "port $BOOTLUN_PORT is already in use (set BOOTLUN_PORT)"
        return 1
    fi
    log "creating $shm_bootlun (${SIZE_MIB} MiB)"
    make_lun "$shm_bootlun"
    log "starting $bin serve --listen 127.0.0.1:$BOOTLUN_PORT --lun $shm_bootlun $BOOTLUN_ARGS"
    # shellcheck disable=SC2086
    "$bin" serve --listen "127.0.0.1:$BOOTLUN_PORT" --lun "$shm_bootlun" $BOOTLUN_ARGS \
        </dev/null >"$workdir/bootlun.log" 2>&1 &
    bootlun_pid=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if grep -q "listening on 127.0.0.1:$BOOTLUN_PORT" "$workdir/bootlun.log"; then
            log "bootlun ready (pid $bootlun_pid)"
            return 0
        fi
        if ! kill -0 "$bootlun_pid" 2>/dev/null; then
            wait "$bootlun_pid"
            fail "bootlun exited with status $? before it was ready:"
            sed 's/^/    /' "$workdir/bootlun.log" >&2
            bootlun_pid=""
            return 1
        fi
        sleep 0.1
    done
    fail "bootlun printed no 'listening on 127.0.0.1:$BOOTLUN_PORT' within 30 s:"
    sed 's/^/    /' "$workdir/bootlun.log" >&2
    return 1
}

# --- tgt ---------------------------------------------------------------------
tgtadm_() { tgtadm -C "$TGT_CONTROL_PORT" --lld iscsi "$@"; }

start_tgt() {
    if port_busy "$TGT_PORT"; then
        fail "port $TGT_PORT is already in use (set TGT_PORT)"
        return 1
    fi
    if tgtadm_ --mode sys --op show >/dev/null 2>&1; then
        fail "a tgtd already answers on control port $TGT_CONTROL_PORT (set TGT_CONTROL_PORT)"
        return 1
    fi
    log "creating $shm_tgt (${SIZE_MIB} MiB)"
    make_lun "$shm_tgt"
    log "starting tgtd -f -C $TGT_CONTROL_PORT --iscsi portal=127.0.0.1:$TGT_PORT (default session parameters)"
    tgtd -f -C "$TGT_CONTROL_PORT" --iscsi "portal=127.0.0.1:$TGT_PORT" </dev/null >"$workdir/tgtd.log" 2>&1 &
    tgtd_pid=$!
    local i
    for ((i = 0; i < 300; i++)); do
        tgtadm_ --mode sys --op show >/dev/null 2>&1 && break
        if ! kill -0 "$tgtd_pid" 2>/dev/null; then
            fail "tgtd exited:"
            sed 's/^/    /' "$workdir/tgtd.log" >&2
            tgtd_pid=""
            return 1
        fi
        sleep 0.1
    done
    tgtadm_ --mode target --op new --tid 1 --targetname "$TGT_IQN" &&
        tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$shm_tgt" &&
        tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL || {
        fail "configuring tgtd"
        return 1
    }
    log "tgtd ready (pid $tgtd_pid)"
}

# --- benchmarks --------------------------------------------------------------
# Each stores a number in RES[side,test] or leaves FAIL.
qemu_bench() { # SIDE PORT IQN LUN TEST(write|read)
    local side=$1 port=$2 iqn=$3 lun=$4 test=$5 wflag=() out secs
    [[ $test == write ]] && wflag=(-w)
    local opts="driver=iscsi,transport=tcp,portal=127.0.0.1:$port,target=$iqn,lun=$lun"
    log "$side: qemu-img bench 128 KiB sequential $test, $BENCH_COUNT requests, depth $DEPTH ..."
    out=$(timeout 300 qemu-img bench --image-opts "${wflag[@]}" -c "$BENCH_COUNT" -d "$DEPTH" \
        -s 131072 -S 131072 "$opts" 2>&1)
    local rc=$?
    secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
    if [[ $rc -ne 0 || -z $secs ]]; then
        fail "$side: qemu-img bench $test (exit $rc):"
        sed 's/^/    /' <<<"$out" >&2
        RES[$side,seq$test]=FAIL
        return
    fi
    RES[$side,seq$test]=$(awk -v c="$BENCH_COUNT" -v s="$secs" 'BEGIN { printf "%.1f", c * 131072 / 1048576 / s }')
    log "$side: sequential $test ${RES[$side,seq$test]} MiB/s ($secs s)"
}

iscsi_perf() { # SIDE PORT IQN LUN
    local side=$1 port=$2 iqn=$3 lun=$4 url bs blocks out iops
    url="iscsi://127.0.0.1:$port/$iqn/$lun"
    bs=$(timeout 30 iscsi-readcapacity16 "$url" 2>/dev/null | sed -n 's/^LOGICAL BLOCK LENGTH IN BYTES:\([0-9]*\).*/\1/p')
    if [[ -z $bs || $bs -eq 0 ]]; then
        fail "$side: iscsi-readcapacity16 $url gave no block size"
        RES[$side,randread]=FAIL
        return
    fi
    blocks=$((4096 / bs))
    ((blocks > 0)) || blocks=1
    log "$side: iscsi-perf 4 KiB random read (-b $blocks × $bs B), depth $DEPTH, ${PERF_SECONDS}s ..."
    # Its live per-second progress goes to stderr.
    timeout $((PERF_SECONDS + 60)) iscsi-perf -r -m "$DEPTH" -b "$blocks" -t "$PERF_SECONDS" "$url" 2>&1 |
        tee "$workdir/iscsi-perf-$side.log" >&2
    local rc=${PIPESTATUS[0]}
    echo >&2
    out=$(tr '\r' '\n' <"$workdir/iscsi-perf-$side.log")
    iops=$(grep -o 'iops average [0-9]*' <<<"$out" | tail -n1 | awk '{print $3}')
    if [[ $rc -ne 0 || -z $iops ]]; then
        fail "$side: iscsi-perf (exit $rc):"
        tail -n 20 <<<"$out" | sed 's/^/    /' >&2
        RES[$side,randread]=FAIL
        return
    fi
    RES[$side,randread]=$iops
    log "$side: random read $iops IOPS"
}

run_side() { # SIDE PORT IQN LUN
    qemu_bench "$1" "$2" "$3" "$4" write
    qemu_bench "$1" "$2" "$3" "$4" read
    iscsi_perf "$1" "$2" "$3" "$4"
}

log "bootlun vs tgt: ${SIZE_MIB} MiB LUNs in /dev/shm, depth $DEPTH, loopback"
if [[ $ONLY != tgt ]]; then
    if start_bootlun; then
        bootlun_ok=1
        run_side bootlun "$BOOTLUN_PORT" "$BOOTLUN_IQN" 0
        if ! kill -0 "$bootlun_pid" 2>/dev/null; then
            fail "bootlun died during the benchmarks:"
            tail -n 20 "$workdir/bootlun.log" | sed 's/^/    /' >&2
        fi
        stop_pid "$bootlun_pid" bootlun TERM
        bootlun_pid=""
        rm -f "$shm_bootlun"
    else
        fail "bootlun side skipped"
        RES[bootlun,seqwrite]=FAIL RES[bootlun,seqread]=FAIL RES[bootlun,randread]=FAIL
    fi
fi
if [[ $ONLY != bootlun ]]; then
    if start_tgt; then
        tgt_ok=1
        run_side tgt "$TGT_PORT" "$TGT_IQN" 1
        stop_pid "$tgtd_pid" tgtd KILL
        tgtd_pid=""
        rm -f "$shm_tgt"
    else
        fail "tgt side skipped"
        RES[tgt,seqwrite]=FAIL RES[tgt,seqread]=FAIL RES[tgt,randread]=FAIL
    fi
fi

# --- report ------------------------------------------------------------------
ratio() {
    local a=$1 b=$2
    if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && awk -v b="$b" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }'
    else
        echo "-"
    fi
}
report() {
    printf '\n%-36s %12s %12s %12s\n' "benchmark (depth $DEPTH)" bootlun tgt bootlun/tgt
    printf '%-36s %12s %12s %12s\n' "------------------------------------" ------------ ------------ ------------
    local t label b g
    for t in seqwrite seqread randread; do
        case $t in
            seqwrite) label="qemu-img bench 128K seq write MiB/s" ;;
            seqread) label="qemu-img bench 128K seq read MiB/s" ;;
            randread) label="iscsi-perf 4K random read IOPS" ;;
        esac
        b=${RES[bootlun,$t]:-n/a}
        g=${RES[tgt,$t]:-n/a}
        printf '%-36s %12s %12s %12s\n' "$label" "$b" "$g" "$(ratio "$b" "$g")"
    done
    printf '\n%s; %s MiB LUNs on /dev/shm; qemu-img %s; tgt %s\n' \
        "$(nproc) cores" "$SIZE_MIB" "$(qemu-img --version | head -n1 | awk '{print $3}')" \
        "$(tgtd -V 2>/dev/null | head -n1 | awk '{print $NF}')"
}
mkdir -p "$root/perf/results" 2>/dev/null &&
    report | tee "$root/perf/results/vs-tgt-$(date -u +%Y%m%dT%H%M%SZ).txt" || report

((bootlun_ok || tgt_ok)) || exit 1
exit 0
