//! `bootlun-perf compare [--quick] [--loop] [--clients N]`: bootlun against
//! tgt and istgt on this machine, over loopback, on identical 1 GiB
//! /dev/shm file LUNs (with `--loop`, a loop device over each file: the
//! block-device path; with `--clients N`, N clients at once in every run).
//!
//! The peers are tuned the way their users would tune them (glibc malloc
//! thresholds raised for both, tgt's aio backing store and larger session
//! limits, istgt's sample config; see perf/README.md), every workload runs
//! against every target in alternating rounds (the order rotates, so no
//! target always runs first on a cold cache or last on a hot box), and the
//! median of the rounds is reported. Results go to `perf/RESULTS.md` and
//! `perf/results.svg`. A benchmark is not a test: whatever the ratios, the
//! harness exits 0; it exits non-zero only when it could not measure at all.
//!
//! It installs nothing: a missing tool is named with its Debian package.
//! It talks only to 127.0.0.1 and stops only the processes it started, by
//! PID.

mod profile;
mod recv;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LUN_BYTES: u64 = 1 << 30;
const GLIBC_TUNING: &str =
    "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864";
const BOOTLUN_IQN: &str = "iqn.2026-11.org.bootlun:target";
const TGT_IQN: &str = "iqn.2026-11.org.bootlun:perf-tgt";
const ISTGT_BASE: &str = "iqn.2026-11.org.bootlun.perf";

// Loopback ports of this harness; each is checked free before use.
const PORT_BOOTLUN: u16 = 13260;
const PORT_TGT: u16 = 13261;
const PORT_TGT_CONTROL: u16 = 23261;
const PORT_ISTGT: u16 = 13262;
const PORT_ISTGT_UC: u16 = 13263;
const PORT_NULL: u16 = 13264;
const PORT_SWEEP: u16 = 13265;
/// The `--cores` settings the core sweep runs: 1 and 2 reactors.
const SWEEP_CORES: [&str; 2] = ["0", "0,1"];
/// The `--poll` modes the core sweep runs.
const SWEEP_POLL: [&str; 3] = ["busy", "adaptive", "interrupt"];
/// Issue 9's bar for the default polling against `--poll interrupt`: lose
/// at most 5 % of the throughput, spend at most 10 % more CPU per GB.
const POLL_GOAL_THROUGHPUT: f64 = 0.95;
const POLL_GOAL_CPU: f64 = 1.10;
const PORT_IPERF: u16 = 13266;

fn log(msg: impl AsRef<str>) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 86400)
        .unwrap_or(0);
    eprintln!(
        "[{:02}:{:02}:{:02}] {}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        msg.as_ref()
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// User and system CPU seconds of a whole process (all threads) so far.
fn cpu_times(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (ut, st) = parse_stat_times(&s)?;
    // SAFETY: sysconf takes no pointers.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((ut as f64 / tck, st as f64 / tck))
}

/// utime and stime (clock ticks) from a `/proc/PID/stat` line.
fn parse_stat_times(s: &str) -> Option<(u64, u64)> {
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. utime and stime are fields 14 and 15 of the line,
    // i.e. 12 and 13 after the state field.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

fn port_busy(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// Run a client to completion within `limit`, output (stdout + stderr) to
/// `out`; killed (by its PID) if it overruns.
/// User and system CPU seconds of every child reaped so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn run_bounded(cmd: &mut Command, out: &Path, limit: Duration) -> Result<String, String> {
    let mut texts = run_all_bounded(vec![(cmd, out.to_path_buf())], limit)?;
    Ok(texts.pop().unwrap_or_default())
}

/// Runs the commands side by side, each with its output in its file, and
/// returns each one's output (`\r` made `\n`) once all have exited. Any
/// still running after `limit` is killed (by its PID), and so is every
/// other, if one of them cannot be started.
fn run_all_bounded(
    cmds: Vec<(&mut Command, PathBuf)>,
    limit: Duration,
) -> Result<Vec<String>, String> {
    struct Running {
        child: Child,
        name: String,
        out: PathBuf,
        status: Option<std::process::ExitStatus>,
    }
    let mut runs: Vec<Running> = Vec::with_capacity(cmds.len());
    let kill_all = |runs: &mut Vec<Running>| {
        for r in runs.iter_mut().filter(|r| r.status.is_none()) {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    };
    for (cmd, out) in cmds {
        let started = File::create(&out)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|e| format!("{}: {e}", out.display()))
            .and_then(|(f, f2)| {
                cmd.stdin(Stdio::null())
                    .stdout(f)
                    .stderr(f2)
                    .spawn()
                    .map_err(|e| format!("{:?}: {e}", cmd.get_program()))
            });
        match started {
            Ok(child) => runs.push(Running {
                child,
                name: format!("{:?}", cmd.get_program()),
                out,
                status: None,
            }),
            Err(e) => {
                kill_all(&mut runs);
                return Err(e);
            }
        }
    }
    let start = Instant::now();
    while runs.iter().any(|r| r.status.is_none()) {
        if start.elapsed() > limit {
            kill_all(&mut runs);
            let name = runs
                .iter()
                .find(|r| r.status.is_none())
                .map(|r| r.name.clone());
            return Err(format!(
                "{} still running after {} s; killed",
                name.unwrap_or_default(),
                limit.as_secs()
            ));
        }
        for r in runs.iter_mut().filter(|r| r.status.is_none()) {
            match r.child.try_wait() {
                Ok(s) => r.status = s,
                Err(e) => {
                    let e = format!("{}: {e}", r.name);
                    kill_all(&mut runs);
                    return Err(e);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut texts = Vec::with_capacity(runs.len());
    for r in &runs {
        let mut text = String::new();
        let _ = File::open(&r.out).and_then(|mut f| f.read_to_string(&mut text));
        let text = text.replace('\r', "\n");
        match r.status {
            Some(s) if s.success() => texts.push(text),
            Some(s) => return Err(format!("{} {s}: {}", r.name, tail(&text, 8))),
            None => return Err(format!("{}: no exit status", r.name)),
        }
    }
    Ok(texts)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A target daemon this harness started.
struct Target {
    name: String,
    child: Child,
    port: u16,
    iqn: String,
    lun: u32,
    lun_store: Option<Backing>,
    /// tgtd ignores SIGTERM; nothing of ours needs flushing on tmpfs.
    kill_signal: i32,
}

impl Target {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    fn stop(&mut self) {
        if self.alive()
            && !signal_and_reap(&mut self.child, self.kill_signal, Duration::from_secs(10))
        {
            log(format!(
                "{} (pid {}) did not exit; killed",
                self.name,
                self.pid()
            ));
        }
        // After the daemon: a loop device in use would not detach.
        self.lun_store = None;
    }
}

/// Sends `sig` to our own child and reaps it. A child still running
/// after `within` is killed (SIGKILL) and reaped, and the answer is false.
fn signal_and_reap(child: &mut Child, sig: i32, within: Duration) -> bool {
    // SAFETY: kill(2) takes no pointers; the PID is our own child, not yet
    // reaped, so it cannot have been reused.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let start = Instant::now();
    while matches!(child.try_wait(), Ok(None)) && start.elapsed() < within {
        std::thread::sleep(Duration::from_millis(20));
    }
    let exited = !matches!(child.try_wait(), Ok(None));
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    exited
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `--loop`: every target's LUN is a loop device over its file.
static LOOP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn loop_devices() -> bool {
    LOOP.get().copied().unwrap_or(false)
}

/// A target's LUN: a /dev/shm file, and with `--loop` the loop device set
/// up over it. Dropping it detaches the device and removes the file.
struct Backing {
    file: PathBuf,
    dev: Option<String>,
}

impl Backing {
    /// What the target is told to export.
    fn path(&self) -> String {
        self.dev
            .clone()
            .unwrap_or_else(|| self.file.to_string_lossy().into_owned())
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Some(d) = &self.dev {
            let st = Command::new("losetup").args(["-d", d]).status();
            if !matches!(st, Ok(s) if s.success()) {
                log(format!("losetup -d {d} failed; detach it by hand"));
            }
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A fresh, fully allocated 1 GiB file at `path`, behind a loop device
/// with `--loop`.
fn make_lun(path: &Path) -> Result<Backing, String> {
    make_file(path)?;
    let mut b = Backing {
        file: path.to_path_buf(),
        dev: None,
    };
    if loop_devices() {
        // Direct I/O: the loop driver hands each request to the file as
        // one read or write, as a disk takes a request. Without it, it
        // copies page by page through a second page cache, and any
        // target that does not use O_DIRECT is served from that cache.
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(path)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup -f --show {}: {} (--loop needs root and loop devices)",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        b.dev = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    Ok(b)
}

fn make_file(path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let mut f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Write every byte, so that no target pays for first touching the
    // memory during a run. fallocate is not enough on tmpfs: it leaves
    // its pages to be cleared at first use, and a fault through a mapping
    // clears them where a write(2) of a whole page does not.
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..LUN_BYTES / chunk.len() as u64 {
        std::io::Write::write_all(&mut f, &chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn wait_until(
    what: &str,
    child: &mut Child,
    log_path: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut t = String::new();
            let _ = File::open(log_path).and_then(|mut f| f.read_to_string(&mut t));
            return Err(format!(
                "{what} exited ({st}) before it was ready: {}",
                tail(&t, 10)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} not ready within 30 s"))
}

struct Ctx {
    root: PathBuf,
    work: PathBuf,
    bootlun: PathBuf,
    tag: String,
}

fn start_bootlun(
    ctx: &Ctx,
    name: &str,
    port: u16,
    lun: &str,
    extra: &[&str],
) -> Result<Target, String> {
    if port_busy(port) {
        return Err(format!("port {port} is in use; stop what listens there"));
    }
    let (lun_store, lun) = if lun.starts_with('/') {
        let b = make_lun(Path::new(lun))?;
        let p = b.path();
        (Some(b), p)
    } else {
        (None, lun.to_string())
    };
    let logp = ctx.work.join(format!("{name}.log"));
    let f = File::create(&logp).map_err(|e| e.to_string())?;
    let mut child = Command::new(&ctx.bootlun)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lun",
            &lun,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("{}: {e}", ctx.bootlun.display()))?;
    let needle = format!("listening on 127.0.0.1:{port}");
    let lp = logp.clone();
    let r = wait_until(name, &mut child, &logp, || {
        std::fs::read_to_string(&lp).is_ok_and(|t| t.contains(&needle))
    });
    let mut t = Target {
        name: name.into(),
        child,
        port,
        iqn: BOOTLUN_IQN.into(),
        lun: 0,
        lun_store,
        kill_signal: libc::SIGTERM,
    };
    if let Err(e) = r {
        t.stop();
        return Err(e);
    }
    if let Ok(text) = std::fs::read_to_string(&logp) {
        if let Some(l) = text.lines().find(|l| l.contains("pinning")) {
            log(format!("{name}: {}", l.split("cli: ").last().unwrap_or(l)));
        }
    }
    Ok(t)
}

fn start_tgt(ctx: &Ctx) -> Result<Target, String> {
    for p in [PORT_TGT, PORT_TGT_CONTROL] {
        if port_busy(p) {
            return Err(format!("port {p} is in use; stop what listens there"));
        }
    }
    let store = make_lun(&PathBuf::from(format!("/dev/shm/{}-tgt.img", ctx.tag)))?;
    let lun_path = store.path();
    let logp = ctx.work.join("tgtd.log");
    let f = File::create(&logp).map_err(|e| e.to_string())?;
    let child = Command::new("tgtd")
        .args([
            "-f",
            "-C",
            &PORT_TGT_CONTROL.to_string(),
            "--iscsi",
            &format!("portal=127.0.0.1:{PORT_TGT}"),
        ])
        .env("GLIBC_TUNABLES", GLIBC_TUNING)
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("tgtd: {e}"))?;
    let ctl = PORT_TGT_CONTROL.to_string();
    let tgtadm = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("tgtadm")
            .args(["-C", &ctl, "--lld", "iscsi"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("tgtadm: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tgtadm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let mut t = Target {
        name: "tgt".into(),
        child,
        port: PORT_TGT,
        iqn: TGT_IQN.into(),
        lun: 1,
        lun_store: Some(store),
        kill_signal: libc::SIGKILL,
    };
    let r = wait_until("tgtd", &mut t.child, &logp, || {
        tgtadm(&["--mode", "sys", "--op", "show"]).is_ok()
    })
    .and_then(|()| {
        tgtadm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            "1",
            "--targetname",
            TGT_IQN,
        ])
    })
    .and_then(|()| {
        // Session limits before any login: tgt's defaults (8 KiB
        // segments, 64 KiB first burst) cost it about half.
        for (k, v) in [
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxXmitDataSegmentLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxBurstLength", "1048576"),
            ("MaxOutstandingR2T", "16"),
        ] {
            tgtadm(&[
                "--mode", "target", "--op", "update", "--tid", "1", "--name", k, "--value", v,
            ])?;
        }
        Ok(())
    })
    .and_then(|()| {
        tgtadm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--bstype",
            "aio",
            "--backing-store",
            &lun_path,
        ])
    })
    .and_then(|()| {
        tgtadm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            "1",
            "--initiator-address",
            "ALL",
        ])
    });
    if let Err(e) = r {
        t.stop();
        return Err(e);
    }
    Ok(t)
}

/// istgt's sample configuration (doc/istgt.conf) with our portal, no
/// authentication and one 1 GiB file LUN.
fn istgt_config(ctx: &Ctx, lun: &str) -> String {
    let w = ctx.work.display();
    format!(
        r#"[Global]
  NodeBase "{ISTGT_BASE}"
  PidFile {w}/istgt.pid
  AuthFile {w}/istgt-auth.conf
  MediaDirectory {w}
  LogFacility "local7"
  Timeout 30
  NopInInterval 20
  DiscoveryAuthMethod None
  MaxSessions 16
  MaxConnections 4
  MaxR2T 32
  MaxOutstandingR2T 16
  DefaultTime2Wait 2
  DefaultTime2Retain 60
  FirstBurstLength 262144
  MaxBurstLength 1048576
  MaxRecvDataSegmentLength 262144
  InitialR2T Yes
  ImmediateData Yes
  DataPDUInOrder Yes
  DataSequenceInOrder Yes
  ErrorRecoveryLevel 0
[UnitControl]
  AuthMethod None
  Portal UC1 127.0.0.1:{PORT_ISTGT_UC}
  Netmask 127.0.0.1
[PortalGroup1]
  Portal DA1 127.0.0.1:{PORT_ISTGT}
[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask 127.0.0.0/8
[LogicalUnit1]
  TargetName disk1
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod None
  UseDigest Auto
  UnitType Disk
  QueueDepth 32
  LUN0 Storage {} 1GB
"#,
        lun
    )
}

fn start_istgt(ctx: &Ctx) -> Result<Target, String> {
    for p in [PORT_ISTGT, PORT_ISTGT_UC] {
        if port_busy(p) {
            return Err(format!("port {p} is in use; stop what listens there"));
        }
    }
    let store = make_lun(&PathBuf::from(format!("/dev/shm/{}-istgt.img", ctx.tag)))?;
    let conf = ctx.work.join("istgt.conf");
    std::fs::write(&conf, istgt_config(ctx, &store.path())).map_err(|e| e.to_string())?;
    std::fs::write(ctx.work.join("istgt-auth.conf"), "").map_err(|e| e.to_string())?;
    let logp = ctx.work.join("istgt.log");
    let f = File::create(&logp).map_err(|e| e.to_string())?;
    // -D: stay in the foreground, so the PID we hold is the daemon's.
    let child = Command::new("istgt")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(ctx.work.join("istgt.pid"))
        .arg("-D")
        .env("GLIBC_TUNABLES", GLIBC_TUNING)
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("istgt: {e}"))?;
    let mut t = Target {
        name: "istgt".into(),
        child,
        port: PORT_ISTGT,
        iqn: format!("{ISTGT_BASE}:disk1"),
        lun: 0,
        lun_store: Some(store),
        kill_signal: libc::SIGTERM,
    };
    if let Err(e) = wait_until("istgt", &mut t.child, &logp, || port_busy(PORT_ISTGT)) {
        t.stop();
        return Err(e);
    }
    Ok(t)
}

#[derive(Clone, Copy)]
enum Tool {
    /// iscsi-perf: reads only; random or sequential.
    Perf { random: bool },
    /// qemu-img bench: sequential only.
    BenchWrite,
}

#[derive(Clone, Copy)]
struct Workload {
    key: &'static str,
    label: &'static str,
    tool: Tool,
    bs: u32,
    depth: u32,
    /// Headline metric: IOPS (small blocks) or MB/s.
    iops_metric: bool,
    /// The ratio to the best peer that issue 9 asks for, if it names one.
    ratio_target: Option<f64>,
}

/// Target CPU seconds per GB, as a share of the lowest peer's, that issue 9
/// asks for on every workload.
const CPU_RATIO_TARGET: f64 = 0.5;

/// Workloads picked with `--only`; unset means all of them.
static ONLY: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Clients per workload run (`--clients N`), side by side, each its own
/// initiator and session; unset means one.
static CLIENTS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn clients() -> u32 {
    CLIENTS.get().copied().unwrap_or(1)
}

fn selected(w: &Workload) -> bool {
    ONLY.get().is_none_or(|k| k.iter().any(|k| k == w.key))
}

fn selected_workloads() -> impl Iterator<Item = &'static Workload> {
    WORKLOADS.iter().filter(|w| selected(w))
}

const WORKLOADS: &[Workload] = &[
    Workload {
        key: "rr4k-d1",
        label: "4 KiB random read, depth 1 (iscsi-perf)",
        tool: Tool::Perf { random: true },
        bs: 4096,
        depth: 1,
        iops_metric: true,
        ratio_target: None,
    },
    Workload {
        key: "rr4k-d32",
        label: "4 KiB random read, depth 32 (iscsi-perf)",
        tool: Tool::Perf { random: true },
        bs: 4096,
        depth: 32,
        iops_metric: true,
        ratio_target: Some(2.0),
    },
    Workload {
        key: "sw4k-d32",
        label: "4 KiB seq write, depth 32 (qemu-img bench)",
        tool: Tool::BenchWrite,
        bs: 4096,
        depth: 32,
        iops_metric: true,
        ratio_target: Some(1.25),
    },
    Workload {
        key: "sw128k-d32",
        label: "128 KiB seq write, depth 32 (qemu-img bench)",
        tool: Tool::BenchWrite,
        bs: 131072,
        depth: 32,
        iops_metric: false,
        ratio_target: Some(1.25),
    },
    Workload {
        key: "sr128k-d32",
        label: "128 KiB seq read, depth 32 (iscsi-perf)",
        tool: Tool::Perf { random: false },
        bs: 131072,
        depth: 32,
        iops_metric: false,
        ratio_target: Some(1.25),
    },
    Workload {
        key: "sr1m-d8",
        label: "1 MiB seq read, depth 8 (iscsi-perf)",
        tool: Tool::Perf { random: false },
        bs: 1 << 20,
        depth: 8,
        iops_metric: false,
        ratio_target: None,
    },
];

#[derive(Clone, Copy, Debug)]
struct Sample {
    iops: f64,
    mbs: f64,
    /// Target CPU seconds per GB moved (10^9 bytes).
    cpu_per_gb: f64,
    /// Target CPU use during the run, in cores.
    cpu_cores: f64,
    /// The client's own CPU use during the run, in cores: near 1.0 means
    /// the single-threaded client, not the target, set the pace.
    client_cores: f64,
    /// Mean latency by Little's law (depth / IOPS), microseconds: neither
    /// client reports percentiles.
    lat_us: f64,
    /// The share of the target's CPU time spent in user space; the rest
    /// is the kernel's (system calls, TCP, io_uring, the page cache).
    user_share: f64,
}

struct Opts {
    seconds: u64,
    bench_bytes_4k: u64,
    bench_bytes_128k: u64,
}

fn run_workload(ctx: &Ctx, t: &Target, w: &Workload, o: &Opts) -> Result<Sample, String> {
    let n = clients();
    let outs: Vec<PathBuf> = (1..=n)
        .map(|i| ctx.work.join(format!("{}-{}-{i}.out", t.name, w.key)))
        .collect();
    // With several clients each is its own initiator (its own session),
    // and each writes its own part of the LUN.
    let initiator = |i: u32| format!("iqn.2026-11.org.bootlun:perf-client-{i}");
    let (user0, sys0) = cpu_times(t.pid()).ok_or("target process is gone")?;
    // The clients are the only children reaped during the run, so the
    // children's CPU time grows by exactly their share.
    let client0 = children_cpu_seconds();
    let start = Instant::now();
    let (ops, secs) = match w.tool {
        Tool::Perf { random } => {
            // -b counts logical blocks; every target here uses 512-byte
            // blocks for a file LUN, which the readcapacity check confirms.
            let blocks = w.bs / 512;
            let url = format!("iscsi://127.0.0.1:{}/{}/{}", t.port, t.iqn, t.lun);
            let mut cmds: Vec<Command> = (1..=n)
                .map(|i| {
                    let mut c = Command::new("iscsi-perf");
                    if n > 1 {
                        c.args(["-i", &initiator(i)]);
                    }
                    if random {
                        c.arg("-r");
                    }
                    c.args([
                        "-m",
                        &w.depth.to_string(),
                        "-b",
                        &blocks.to_string(),
                        "-t",
                        &o.seconds.to_string(),
                        &url,
                    ]);
                    c
                })
                .collect();
            let texts = run_all_bounded(
                cmds.iter_mut().zip(outs.iter().cloned()).collect(),
                Duration::from_secs(o.seconds + 60),
            )?;
            let mut iops = 0.0;
            for text in &texts {
                iops += text
                    .rsplit("iops average ")
                    .next()
                    .filter(|_| text.contains("iops average "))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| {
                        format!("iscsi-perf printed no 'iops average': {}", tail(text, 5))
                    })?;
            }
            let secs = start
                .elapsed()
                .as_secs_f64()
                .min(o.seconds as f64)
                .max(0.001);
            (iops * secs, secs)
        }
        Tool::BenchWrite => {
            let bytes = if w.bs <= 4096 {
                o.bench_bytes_4k
            } else {
                o.bench_bytes_128k
            };
            let count = (bytes / w.bs as u64).max(1);
            let mut cmds: Vec<Command> = (1..=n)
                .map(|i| {
                    let mut opts = format!(
                        "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun={}",
                        t.port, t.iqn, t.lun
                    );
                    if n > 1 {
                        opts.push_str(&format!(",initiator-name={}", initiator(i)));
                    }
                    // Client i starts at its own share of the LUN (bench
                    // wraps at the end), on a block boundary.
                    let offset =
                        (LUN_BYTES / n as u64 * (i - 1) as u64) / w.bs as u64 * w.bs as u64;
                    let mut c = Command::new("qemu-img");
                    c.args([
                        "bench",
                        "--image-opts",
                        "-w",
                        "-c",
                        &count.to_string(),
                        "-d",
                        &w.depth.to_string(),
                        "-o",
                        &offset.to_string(),
                    ])
                    .args([
                        "-s",
                        &w.bs.to_string(),
                        "-S",
                        &w.bs.to_string(),
                        &opts,
                    ]);
                    c
                })
                .collect();
            let texts = run_all_bounded(
                cmds.iter_mut().zip(outs.iter().cloned()).collect(),
                Duration::from_secs(300),
            )?;
            // Every client moved `count` blocks; the rate is over the
            // slowest one's run.
            let mut secs: f64 = 0.001;
            for text in &texts {
                let s: f64 = text
                    .split("Run completed in ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        format!("qemu-img bench printed no run time: {}", tail(text, 5))
                    })?;
                secs = secs.max(s);
            }
            ((count * n as u64) as f64, secs)
        }
    };
    let (user1, sys1) = cpu_times(t.pid()).ok_or("target process died during the run")?;
    let bytes = ops * w.bs as f64;
    let iops = ops / secs;
    // CPU is counted over the client's whole run (login included): the
    // target worked for all of it.
    let wall = start.elapsed().as_secs_f64().max(0.001);
    let user = user1 - user0;
    let cpu = user + (sys1 - sys0);
    Ok(Sample {
        iops,
        mbs: bytes / secs / 1e6,
        cpu_per_gb: if bytes > 0.0 {
            cpu / (bytes / 1e9)
        } else {
            f64::NAN
        },
        cpu_cores: cpu / wall,
        client_cores: (children_cpu_seconds() - client0) / wall,
        lat_us: (w.depth * clients()) as f64 / iops * 1e6,
        user_share: if cpu > 0.0 { user / cpu } else { f64::NAN },
    })
}

fn median(v: &mut [Sample]) -> Option<Sample> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    let m = v[v.len() / 2];
    let mut cpus: Vec<f64> = v.iter().map(|s| s.cpu_per_gb).collect();
    cpus.sort_by(f64::total_cmp);
    Some(Sample {
        cpu_per_gb: cpus[cpus.len() / 2],
        ..m
    })
}

/// What one iperf3 stream on loopback did: MB/s, and the CPU seconds
/// per GB its sender and its receiver spent (`None` when iperf3 did not
/// say): what moving bytes through a loopback socket costs the kernel
/// alone, for a program that does nothing else. The receiver's figure
/// bounds a target's writes from below. The sender's runs the receiver's
/// TCP input too (loopback does that on the sending core) and sends as
/// fast as the stream goes, so a target sending in larger batches can
/// spend less.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Iperf {
    mbs: f64,
    sender_s_gb: Option<f64>,
    receiver_s_gb: Option<f64>,
}

/// Parse the output of `iperf3 -c ... -f m -V`: the receiver's summary
/// line and the "CPU Utilization" line (per cent of one core over the
/// run, so per GB it is `pct / 100 * 1000 / MB/s`).
fn parse_iperf(text: &str) -> Option<Iperf> {
    let mbs = text
        .lines()
        .filter(|l| l.contains("receiver") && l.contains("Mbits/sec"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|x| *x == "Mbits/sec")?;
            f.get(i.checked_sub(1)?)?.parse::<f64>().ok()
        })?
        / 8.0;
    let cpu = text.lines().find(|l| l.starts_with("CPU Utilization:"));
    let pct = |key: &str| -> Option<f64> {
        let rest = cpu?.split(key).nth(1)?;
        let v: f64 = rest.split('%').next()?.trim().parse().ok()?;
        (mbs > 0.0).then(|| v / 100.0 * 1000.0 / mbs)
    };
    Some(Iperf {
        mbs,
        sender_s_gb: pct("local/sender"),
        receiver_s_gb: pct("remote/receiver"),
    })
}

fn iperf_ceiling(ctx: &Ctx, secs: u64) -> Result<Iperf, String> {
    if !which("iperf3") {
        return Err("iperf3 not installed (apt-get install iperf3)".into());
    }
    if port_busy(PORT_IPERF) {
        return Err(format!("port {PORT_IPERF} is in use"));
    }
    let logp = ctx.work.join("iperf3-server.log");
    let f = File::create(&logp).map_err(|e| e.to_string())?;
    let mut server = Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &PORT_IPERF.to_string()])
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    let r = wait_until("iperf3 -s", &mut server, &logp, || port_busy(PORT_IPERF)).and_then(|()| {
        let mut c = Command::new("iperf3");
        c.args([
            "-c",
            "127.0.0.1",
            "-p",
            &PORT_IPERF.to_string(),
            "-f",
            "m",
            "-t",
            &secs.to_string(),
            "-V",
        ]);
        // The readiness probe was a connection too; the server may still
        // be closing it, and answers "busy" meanwhile: retry a little.
        let out = ctx.work.join("iperf3.out");
        let limit = Duration::from_secs(secs + 30);
        let text = run_bounded(&mut c, &out, limit).or_else(|_| {
            std::thread::sleep(Duration::from_millis(300));
            run_bounded(&mut c, &out, limit)
        })?;
        parse_iperf(&text)
            .ok_or_else(|| format!("no receiver line from iperf3: {}", tail(&text, 4)))
    });
    // Our own child, by PID.
    let _ = server.kill();
    let _ = server.wait();
    r
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The ceiling line of a workload against bootlun's `null:` LUN, which
/// does no I/O: the most the client reaches, and what the target spends
/// on the protocol and the sockets alone, against the lowest peer's CPU
/// per GB on the real LUN (`least_peer`). When that ratio is already
/// above the CPU goal, no work on the I/O path can meet it.
fn null_ceiling(w: &Workload, s: &Sample, least_peer: f64) -> String {
    format!(
        "client ceiling, bootlun `null:` LUN, {}: {} IOPS, {} MB/s, client {} cores; target {} CPU s/GB ({}× the lowest peer's on the real LUN), {} % of it in user space",
        w.label,
        fmt_num(s.iops),
        fmt_num(s.mbs),
        fmt_num(s.client_cores),
        fmt_num(s.cpu_per_gb),
        fmt_num(s.cpu_per_gb / least_peer),
        pct(s.user_share)
    )
}

/// A share as whole per cent, "-" when unknown.
fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0}", x * 100.0)
    } else {
        "-".into()
    }
}

fn headline(w: &Workload, s: &Sample) -> f64 {
    if w.iops_metric {
        s.iops
    } else {
        s.mbs
    }
}

type Table = BTreeMap<(String, &'static str), Sample>;

/// A row label of the core sweep.
fn sweep_label(reactors: usize, poll: &str) -> String {
    format!("{reactors} × {poll}")
}

/// The default polling (adaptive) against `--poll interrupt`, for each
/// reactor count and workload of the sweep: throughput ratio, CPU s/GB
/// ratio (each with issue 9's goal) and the ratio of CPU cores. CPU per GB
/// is what the goal is judged on: at depth 1 adaptive polling spins on
/// purpose, spending more of a core to move more.
fn polling_rows(sweep: &[(String, Vec<Option<Sample>>)], sweep_w: &[Workload]) -> Vec<String> {
    let row = |label: String| sweep.iter().find(|(l, _)| *l == label).map(|(_, r)| r);
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let mut out = Vec::new();
    for n in SWEEP_CORES.map(|c| c.split(',').count()) {
        let (Some(ad), Some(it)) = (
            row(sweep_label(n, "adaptive")),
            row(sweep_label(n, "interrupt")),
        ) else {
            continue;
        };
        for (w, (a, i)) in sweep_w.iter().zip(ad.iter().zip(it)) {
            let (Some(a), Some(i)) = (a, i) else {
                out.push(format!("| {n} | {} | FAIL | | | | |", w.key));
                continue;
            };
            let t = headline(w, a) / headline(w, i);
            let c = a.cpu_per_gb / i.cpu_per_gb;
            out.push(format!(
                "| {n} | {} | {} | {} | {} | {} | {} |",
                w.key,
                fmt_num(t),
                mark(t >= POLL_GOAL_THROUGHPUT),
                fmt_num(c),
                mark(c <= POLL_GOAL_CPU),
                fmt_num(a.cpu_cores / i.cpu_cores)
            ));
        }
    }
    out
}

/// The peers' (every target but bootlun) samples of a workload.
fn peer_samples<'a>(
    names: &'a [String],
    table: &'a Table,
    key: &'static str,
) -> impl Iterator<Item = &'a Sample> + 'a {
    names
        .iter()
        .filter(|n| *n != "bootlun")
        .filter_map(move |n| table.get(&(n.clone(), key)))
}

/// The lowest CPU s/GB any peer spent on a workload, NaN without a peer
/// sample.
fn least_peer_cpu(names: &[String], table: &Table, key: &'static str) -> f64 {
    peer_samples(names, table, key)
        .map(|x| x.cpu_per_gb)
        .fold(f64::NAN, f64::min)
}

fn report(
    names: &[String],
    table: &Table,
    notes: &[String],
    ceilings: &[String],
    sweep: &[(String, Vec<Option<Sample>>)],
    sweep_w: &[Workload],
    clients: u32,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# bootlun vs tuned peers\n");
    for n in notes {
        let _ = writeln!(s, "{n}  ");
    }
    // Issue 9 sets its goals for one client per target.
    let goals = clients == 1;
    let _ = writeln!(
        s,
        "\nHeadline per workload (median of the rounds); `ratio` is bootlun / best peer (higher is better; for CPU s/GB lower is better, so the ratio there is bootlun / lowest peer). {}\n",
        if goals {
            "`goal` is what issue 9 asks for (✓ met, ✗ missed, – none set)."
        } else {
            "Issue 9 sets its goals for one client, so none are marked here."
        }
    );
    let _ = write!(s, "| workload | unit |");
    for n in names {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(
        s,
        "{}",
        if goals {
            " ratio | goal | CPU s/GB ratio | goal |"
        } else {
            " ratio | CPU s/GB ratio |"
        }
    );
    let _ = write!(s, "|---|---|");
    for _ in names {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(
        s,
        "{}",
        if goals {
            "---:|---|---:|---|"
        } else {
            "---:|---:|"
        }
    );
    for w in selected_workloads() {
        let unit = if w.iops_metric { "IOPS" } else { "MB/s" };
        let _ = write!(s, "| {} | {unit} |", w.label);
        for n in names {
            let v = table
                .get(&(n.clone(), w.key))
                .map(|x| fmt_num(headline(w, x)));
            let _ = write!(s, " {} |", v.unwrap_or_else(|| "FAIL".into()));
        }
        let b = table.get(&("bootlun".to_string(), w.key));
        let best = peer_samples(names, table, w.key)
            .map(|x| headline(w, x))
            .fold(f64::NAN, f64::max);
        let least_cpu = least_peer_cpu(names, table, w.key);
        let r = b.map(|b| headline(w, b) / best).unwrap_or(f64::NAN);
        let rc = b.map(|b| b.cpu_per_gb / least_cpu).unwrap_or(f64::NAN);
        // A missing sample (NaN) compares false either way: missed.
        let goal = |v: f64, want: Option<f64>, at_least: bool| match want {
            None => "–".to_string(),
            Some(t) => {
                let (sign, met) = if at_least {
                    ("≥", v >= t)
                } else {
                    ("≤", v <= t)
                };
                format!("{sign} {t} {}", if met { "✓" } else { "✗" })
            }
        };
        if goals {
            let _ = writeln!(
                s,
                " {} | {} | {} | {} |",
                fmt_num(r),
                goal(r, w.ratio_target, true),
                fmt_num(rc),
                goal(rc, Some(CPU_RATIO_TARGET), false)
            );
        } else {
            let _ = writeln!(s, " {} | {} |", fmt_num(r), fmt_num(rc));
        }
    }
    if goals {
        let _ = writeln!(s, "\nDetail: MB/s, IOPS, mean latency (µs, depth / IOPS: neither iscsi-perf nor qemu-img bench reports percentiles), target CPU seconds per GB and target CPU in cores while the client ran, the per cent of the target's CPU spent in user space (the rest is the kernel's: system calls, TCP, io_uring, page cache), and the client's own CPU in cores (each client is single-threaded: near 1.0, the client set the pace).\n");
    } else {
        let _ = writeln!(s, "\nDetail: MB/s and IOPS of the {n} clients together, mean latency (µs, {n} × depth / IOPS: neither iscsi-perf nor qemu-img bench reports percentiles), target CPU seconds per GB and target CPU in cores while the clients ran, the per cent of the target's CPU spent in user space, and the clients' CPU in cores, summed (each client is one thread).\n", n = clients);
    }
    let _ = writeln!(
        s,
        "| workload | target | MB/s | IOPS | mean lat µs | CPU s/GB | CPU cores | user % | client cores |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for w in selected_workloads() {
        for n in names {
            if let Some(x) = table.get(&(n.clone(), w.key)) {
                let _ = writeln!(
                    s,
                    "| {} | {n} | {} | {} | {} | {} | {} | {} | {} |",
                    w.key,
                    fmt_num(x.mbs),
                    fmt_num(x.iops),
                    fmt_num(x.lat_us),
                    fmt_num(x.cpu_per_gb),
                    fmt_num(x.cpu_cores),
                    pct(x.user_share),
                    fmt_num(x.client_cores)
                );
            } else {
                let _ = writeln!(s, "| {} | {n} | FAIL | | | | | | |", w.key);
            }
        }
    }
    if !ceilings.is_empty() {
        let _ = writeln!(s, "\n## Ceilings (same run)\n");
        for c in ceilings {
            let _ = writeln!(s, "- {c}");
        }
    }
    if !sweep.is_empty() {
        let _ = writeln!(
            s,
            "\n## Core sweep (bootlun, file LUN; median of the rounds, in rotating order)\n"
        );
        let _ = write!(s, "| reactors × poll |");
        for w in sweep_w {
            let _ = write!(s, " {} | CPU cores | CPU s/GB |", w.key);
        }
        let _ = writeln!(s);
        let _ = write!(s, "|---|");
        for _ in sweep_w {
            let _ = write!(s, "---:|---:|---:|");
        }
        let _ = writeln!(s);
        for (label, row) in sweep {
            let _ = write!(s, "| {label} |");
            for (w, x) in sweep_w.iter().zip(row) {
                match x {
                    Some(x) => {
                        let unit = if w.iops_metric { "IOPS" } else { "MB/s" };
                        let _ = write!(
                            s,
                            " {} {unit} | {} | {} |",
                            fmt_num(headline(w, x)),
                            fmt_num(x.cpu_cores),
                            fmt_num(x.cpu_per_gb)
                        );
                    }
                    None => {
                        let _ = write!(s, " FAIL | | |");
                    }
                }
            }
            let _ = writeln!(s);
        }
        let rows = polling_rows(sweep, sweep_w);
        if !rows.is_empty() {
            let _ = writeln!(
                s,
                "\nThe default `--poll adaptive` against `--poll interrupt` (adaptive / interrupt, medians of the rounds; the default runs a reactor on every core). Issue 9: lose at most 5 % of the throughput (≥ {POLL_GOAL_THROUGHPUT:.2}) and spend at most 10 % more CPU (≤ {POLL_GOAL_CPU:.2}), judged per GB moved; the ratio of CPU cores is shown too, since at depth 1 adaptive polling spins on purpose to move more.\n"
            );
            let _ = writeln!(
                s,
                "| reactors | workload | throughput ratio | goal | CPU s/GB ratio | goal | CPU cores ratio |"
            );
            let _ = writeln!(s, "|---:|---|---:|---|---:|---|---:|");
            for r in rows {
                let _ = writeln!(s, "{r}");
            }
        }
    }
    s
}

/// `perf/RESULTS*.md` and `perf/results*.svg` of a run: `-loop` for loop
/// devices, `-clientsN` for N clients at once.
fn result_names(on_loop: bool, clients: u32) -> (String, String) {
    let mut suffix = String::new();
    if on_loop {
        suffix.push_str("-loop");
    }
    if clients > 1 {
        suffix.push_str(&format!("-clients{clients}"));
    }
    (
        format!("RESULTS{suffix}.md"),
        format!("results{suffix}.svg"),
    )
}

/// Bars per workload, each target's headline relative to the best of the
/// workload (units differ between workloads, ratios do not).
fn svg(names: &[String], table: &Table) -> String {
    const COLORS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];
    let groups = WORKLOADS.len();
    let bar = 22.0;
    let gap = 26.0;
    let gw = bar * names.len() as f64 + gap;
    let left = 60.0;
    let top = 40.0;
    let h = 240.0;
    let width = left + gw * groups as f64 + 20.0;
    let height = top + h + 90.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14">Throughput relative to the best target per workload (1.0 = best)</text>"#
    );
    for i in 0..=4 {
        let y = top + h - h * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            width - 10.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{:.2}</text>"#,
            left - 6.0,
            y + 4.0,
            i as f64 / 4.0
        );
    }
    for (g, w) in WORKLOADS.iter().enumerate() {
        let best = names
            .iter()
            .filter_map(|n| table.get(&(n.clone(), w.key)))
            .map(|x| headline(w, x))
            .fold(0.0, f64::max);
        let x0 = left + gap / 2.0 + g as f64 * gw;
        for (i, n) in names.iter().enumerate() {
            let v = table
                .get(&(n.clone(), w.key))
                .map(|x| headline(w, x))
                .unwrap_or(0.0);
            let frac = if best > 0.0 { v / best } else { 0.0 };
            let bh = h * frac;
            let x = x0 + i as f64 * bar;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{n} {}: {}</title></rect>"#,
                top + h - bh,
                bar - 3.0,
                COLORS[i % COLORS.len()],
                w.key,
                fmt_num(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + bar * names.len() as f64 / 2.0,
            top + h + 16.0,
            w.key
        );
    }
    for (i, n) in names.iter().enumerate() {
        let x = left + i as f64 * 110.0;
        let y = top + h + 40.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.0}" y="{:.0}" width="12" height="12" fill="{}"/>"#,
            y - 10.0,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(s, r#"<text x="{:.0}" y="{y:.0}">{n}</text>"#, x + 16.0);
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn usage() -> ! {
    eprintln!(
        "usage: bootlun-perf recv   (direct vs multishot receive, writes perf/RECEIVE.md)\n       bootlun-perf compare [--quick] [--no-sweep] [--loop] [--clients N] [--only KEYS] [--bootlun-args \"FLAGS\"]\n\
         \n  --quick         1 round, short runs (under 3 minutes)\
         \n  --no-sweep      skip the bootlun reactors x poll sweep\
         \n  --loop          each LUN is a loop device over its /dev/shm file (the block-device\
         \n                  path; needs root); writes perf/RESULTS-loop.md and perf/results-loop.svg\
         \n  --clients N     N clients side by side in every run (1-8; default 1), each its own\
         \n                  initiator and session at the workload's depth; writes\
         \n                  perf/RESULTS-clientsN.md (RESULTS-loop-clientsN.md with --loop)\
         \n  --only KEYS     run only these workloads (comma-separated, e.g. sw128k-d32,sw4k-d32);\
         \n                  skips ceilings and sweep, prints the table, leaves perf/RESULTS.md alone\
         \n  --bootlun-args  extra `bootlun serve` flags for the comparison\
         \n\n       bootlun-perf profile [--targets bootlun,null,tgt,istgt] [--bootlun-args \"FLAGS\"] [KEYS]\
         \n                  system-wide perf record while each workload (default: all) runs against\
         \n                  each target; who spent the CPU and on what; writes perf/PROFILE.md\
         \n\nenvironment: BOOTLUN_BIN (use this binary instead of building one), ROUNDS, SECONDS"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("recv") {
        let rounds = env_num("ROUNDS", 3) as usize;
        let secs = env_num("SECONDS", 3) as f64;
        match recv::main(rounds.max(1), secs) {
            Ok(table) => {
                let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                let md = format!(
                    "# Receive paths: direct vs multishot with a provided-buffer ring\n\n\
                     Written by `cargo run --release -p bootlun-perf -- recv` ({rounds} alternating \
                     round(s) of {secs} s, median shown; loopback, sender pinned to core 1, \
                     receiver to core 0). See `perf/src/recv.rs` for what each mode does.\n\n{table}"
                );
                if let Err(e) = std::fs::write(root.join("RECEIVE.md"), md) {
                    log(format!("perf/RECEIVE.md: {e}"));
                    std::process::exit(1);
                }
                log("wrote perf/RECEIVE.md");
            }
            Err(e) => {
                log(format!("FAILED: {e}"));
                std::process::exit(1);
            }
        }
        return;
    }
    if args.first().map(String::as_str) == Some("profile") {
        let mut targets: Vec<&str> = profile::TARGETS.to_vec();
        let mut extra = String::new();
        let mut keys = Vec::new();
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--targets" => {
                    targets = it
                        .next()
                        .unwrap_or_else(|| usage())
                        .split(',')
                        .map(|t| {
                            let t = t.trim();
                            profile::TARGETS
                                .into_iter()
                                .find(|x| *x == t)
                                .unwrap_or_else(|| {
                                    eprintln!(
                                        "--targets {t}: no such target; choose from {}",
                                        profile::TARGETS.join(", ")
                                    );
                                    std::process::exit(2)
                                })
                        })
                        .collect()
                }
                "--bootlun-args" => extra = it.next().cloned().unwrap_or_else(|| usage()),
                k if !k.starts_with('-') => keys.extend(workloads_named(k)),
                _ => usage(),
            }
        }
        if keys.is_empty() {
            keys = WORKLOADS.iter().collect();
        }
        if let Err(e) = profile(&keys, &targets, &extra) {
            log(format!("FAILED: {e}"));
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) != Some("compare") {
        usage();
    }
    let mut quick = false;
    let mut sweep_on = true;
    let mut extra_args = String::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-sweep" => sweep_on = false,
            "--loop" => {
                let _ = LOOP.set(true);
            }
            "--clients" => {
                let n = it
                    .next()
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|n| (1..=8).contains(n))
                    .unwrap_or_else(|| {
                        eprintln!("--clients takes a number from 1 to 8");
                        std::process::exit(2)
                    });
                let _ = CLIENTS.set(n);
            }
            "--bootlun-args" => extra_args = it.next().cloned().unwrap_or_else(|| usage()),
            "--only" => {
                let keys = workloads_named(it.next().unwrap_or_else(|| usage()));
                let _ = ONLY.set(keys.iter().map(|w| w.key.to_string()).collect());
            }
            _ => usage(),
        }
    }
    match compare(quick, sweep_on, &extra_args) {
        Ok(()) => {}
        Err(e) => {
            log(format!("FAILED: {e}"));
            std::process::exit(1);
        }
    }
}

/// The workloads of a comma-separated list of keys; an unknown key ends
/// the program with the list to choose from.
fn workloads_named(list: &str) -> Vec<&'static Workload> {
    list.split(',')
        .map(|k| {
            let k = k.trim();
            WORKLOADS.iter().find(|w| w.key == k).unwrap_or_else(|| {
                let all: Vec<&str> = WORKLOADS.iter().map(|w| w.key).collect();
                eprintln!("{k}: no such workload; choose from {}", all.join(", "));
                std::process::exit(2)
            })
        })
        .collect()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn compare(quick: bool, sweep_on: bool, extra: &str) -> Result<(), String> {
    let (ctx, stop) = setup()?;
    let r = compare_in(&ctx, quick, sweep_on, extra, &stop);
    let _ = std::fs::remove_dir_all(&ctx.work);
    r
}

/// `profile`: writes perf/PROFILE.md.
fn profile(keys: &[&'static Workload], targets: &[&str], extra: &str) -> Result<(), String> {
    if !which("perf") {
        return Err("missing: perf (apt-get install linux-perf)".into());
    }
    let (ctx, stop) = setup()?;
    let started = Instant::now();
    let r = profile::profile_in(&ctx, keys, targets, extra, &stop);
    let _ = std::fs::remove_dir_all(&ctx.work);
    let body = r?;
    let keys: Vec<&str> = keys.iter().map(|w| w.key).collect();
    let md = format!(
        "# Where the CPU goes\n\nWritten by `cargo run --release -p bootlun-perf -- profile --targets {} {}`{} on {} cores, loopback, in {} s: a system-wide `perf record -a -F 1999` while the client of each workload runs ({} s per iscsi-perf run), sorted by thread into who spent the samples (target, client, idle) and by function into what on. Shares are of all samples on both cores, so the rows of a table add up to 100.\n{body}",
        targets.join(","),
        keys.join(","),
        if extra.is_empty() { String::new() } else { format!(" with `--bootlun-args \"{extra}\"`") },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        started.elapsed().as_secs(),
        env_num("SECONDS", 5)
    );
    println!("{md}");
    std::fs::write(ctx.root.join("perf/PROFILE.md"), md)
        .map_err(|e| format!("perf/PROFILE.md: {e}"))?;
    log("wrote perf/PROFILE.md");
    Ok(())
}

/// What `compare` and `profile` share: the client tools, a stop flag
/// raised by SIGINT and SIGTERM, the bootlun binary and a work directory.
fn setup() -> Result<(Ctx, Arc<AtomicBool>), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no workspace root")?;
    // Client tools are required; a missing peer only loses its column.
    let mut missing = Vec::new();
    for (bin, pkg) in [
        ("qemu-img", "qemu-utils qemu-block-extra"),
        ("iscsi-perf", "libiscsi-bin"),
    ] {
        if !which(bin) {
            missing.push(format!("{bin} (apt-get install {pkg})"));
        }
    }
    if loop_devices() && !which("losetup") {
        missing.push("losetup (apt-get install mount)".to_string());
    }
    if !missing.is_empty() {
        return Err(format!("missing: {}", missing.join(", ")));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }

    let bootlun = match std::env::var_os("BOOTLUN_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            log("building bootlun (cargo build --release --bin bootlun)");
            let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["build", "--release", "--bin", "bootlun"])
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cargo: {e}"))?;
            if !st.success() {
                return Err("cargo build --release --bin bootlun failed".into());
            }
            let tdir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|p| if p.is_absolute() { p } else { root.join(p) })
                .unwrap_or_else(|| root.join("target"));
            tdir.join("release/bootlun")
        }
    };
    let tag = format!("bootlun-perf-{}", std::process::id());
    let work = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let ctx = Ctx {
        root,
        work,
        bootlun,
        tag,
    };
    Ok((ctx, stop))
}

fn compare_in(
    ctx: &Ctx,
    quick: bool,
    sweep_on: bool,
    extra: &str,
    stop: &AtomicBool,
) -> Result<(), String> {
    let rounds = env_num("ROUNDS", if quick { 1 } else { 3 }) as usize;
    let o = Opts {
        seconds: env_num("SECONDS", if quick { 2 } else { 8 }),
        bench_bytes_4k: if quick { 256 << 20 } else { 2 << 30 },
        bench_bytes_128k: if quick { 2 << 30 } else { 16 << 30 },
    };
    let load_start = loadavg();
    let started = Instant::now();
    log(format!(
        "compare: {rounds} round(s), {} s per iscsi-perf run, load average {load_start}",
        o.seconds
    ));
    let extra: Vec<&str> = extra.split_whitespace().collect();

    let mut targets: Vec<Target> = Vec::new();
    let mut notes = Vec::new();
    let bl_lun = format!("/dev/shm/{}-bootlun.img", ctx.tag);
    match start_bootlun(ctx, "bootlun", PORT_BOOTLUN, &bl_lun, &extra) {
        Ok(t) => targets.push(t),
        Err(e) => return Err(format!("bootlun: {e}")),
    }
    if which("tgtd") && which("tgtadm") {
        match start_tgt(ctx) {
            Ok(t) => targets.push(t),
            Err(e) => log(format!("tgt skipped: {e}")),
        }
    } else {
        log("tgt skipped: tgtd not installed (apt-get install tgt)");
        notes.push("tgt: not installed (apt-get install tgt)".to_string());
    }
    if which("istgt") {
        match start_istgt(ctx) {
            Ok(t) => targets.push(t),
            Err(e) => log(format!("istgt skipped: {e}")),
        }
    } else {
        log("istgt skipped: not installed (apt-get install istgt)");
        notes.push("istgt: not installed (apt-get install istgt)".to_string());
    }
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();

    let mut samples: BTreeMap<(String, &'static str), Vec<Sample>> = BTreeMap::new();
    'rounds: for round in 0..rounds {
        let n = targets.len();
        for k in 0..n {
            // Rotate the order each round.
            let t = &mut targets[(k + round) % n];
            for w in selected_workloads() {
                if stop.load(Ordering::Relaxed) {
                    log("interrupted");
                    break 'rounds;
                }
                if !t.alive() {
                    log(format!("{} is gone; its remaining cells are FAIL", t.name));
                    break;
                }
                let la = loadavg();
                match run_workload(ctx, t, w, &o) {
                    Ok(s) => {
                        log(format!(
                            "round {}/{rounds} {:<7} {:<11} {:>9} IOPS {:>8} MB/s {:>6} CPU s/GB  (load {la})",
                            round + 1,
                            t.name,
                            w.key,
                            fmt_num(s.iops),
                            fmt_num(s.mbs),
                            fmt_num(s.cpu_per_gb)
                        ));
                        samples.entry((t.name.clone(), w.key)).or_default().push(s);
                    }
                    Err(e) => log(format!(
                        "round {} {} {}: FAILED: {e}",
                        round + 1,
                        t.name,
                        w.key
                    )),
                }
            }
        }
    }
    for t in &mut targets {
        t.stop();
    }
    drop(targets);
    if stop.load(Ordering::Relaxed) {
        return Err(format!(
            "interrupted: perf/{} left as it was",
            result_names(loop_devices(), clients()).0
        ));
    }
    let mut table = Table::new();
    for (k, mut v) in samples {
        if let Some(m) = median(&mut v) {
            table.insert(k, m);
        }
    }

    // Ceilings: the network path alone, and the client against a target
    // that does no I/O.
    let mut ceilings = Vec::new();
    let only = ONLY.get().is_some();
    if only {
        let md = report(&names, &table, &[], &[], &[], &[], clients());
        println!("{md}");
        log(format!(
            "--only: perf/{} left as it was",
            result_names(loop_devices(), clients()).0
        ));
        return Ok(());
    }
    match iperf_ceiling(ctx, if quick { 2 } else { 5 }) {
        Ok(ip) => {
            let cpu = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
            ceilings.push(format!(
                "iperf3, one TCP stream on loopback: {} MB/s; CPU s/GB of a bare sender {}, of a bare receiver {}",
                fmt_num(ip.mbs),
                cpu(ip.sender_s_gb),
                cpu(ip.receiver_s_gb)
            ))
        }
        Err(e) => ceilings.push(format!("iperf3: {e}")),
    }
    if !stop.load(Ordering::Relaxed) {
        match start_bootlun(ctx, "bootlun-null", PORT_NULL, "null:1G", &extra) {
            Ok(t) => {
                for w in selected_workloads() {
                    match run_workload(ctx, &t, w, &o) {
                        Ok(s) => ceilings.push(null_ceiling(
                            w,
                            &s,
                            least_peer_cpu(&names, &table, w.key),
                        )),
                        Err(e) => ceilings.push(format!("null: LUN {}: FAILED {e}", w.key)),
                    }
                }
            }
            Err(e) => ceilings.push(format!("bootlun null: LUN: {e}")),
        }
    }
    for c in &ceilings {
        log(c);
    }

    // Core sweep: reactors × poll mode, in rounds whose order rotates
    // like the comparison's; each cell is the median of its rounds.
    // Depth 1, where adaptive polling should spin; depth 32 and large
    // reads, where it should not.
    let sweep_w = [WORKLOADS[0], WORKLOADS[1], WORKLOADS[4]];
    let mut sweep = Vec::new();
    if sweep_on {
        let lun = format!("/dev/shm/{}-sweep.img", ctx.tag);
        let configs: Vec<(&str, &str)> = SWEEP_CORES
            .into_iter()
            .flat_map(|c| SWEEP_POLL.into_iter().map(move |p| (c, p)))
            .collect();
        let label = |(cores, poll): (&str, &str)| sweep_label(cores.split(',').count(), poll);
        let mut cells: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); sweep_w.len()]; configs.len()];
        'sweep: for round in 0..rounds {
            for k in 0..configs.len() {
                let i = (k + round) % configs.len();
                let (cores, poll) = configs[i];
                if stop.load(Ordering::Relaxed) {
                    break 'sweep;
                }
                let name = label(configs[i]);
                match start_bootlun(
                    ctx,
                    "bootlun-sweep",
                    PORT_SWEEP,
                    &lun,
                    &["--cores", cores, "--poll", poll],
                ) {
                    Ok(t) => {
                        for (j, w) in sweep_w.iter().enumerate() {
                            match run_workload(ctx, &t, w, &o) {
                                Ok(s) => {
                                    log(format!(
                                        "sweep {}/{rounds} {name:<16} {:<11} {:>9} IOPS {:>8} MB/s {:>5} cores (load {})",
                                        round + 1,
                                        w.key,
                                        fmt_num(s.iops),
                                        fmt_num(s.mbs),
                                        fmt_num(s.cpu_cores),
                                        loadavg()
                                    ));
                                    cells[i][j].push(s);
                                }
                                Err(e) => log(format!("sweep {name} {}: FAILED {e}", w.key)),
                            }
                        }
                    }
                    Err(e) => log(format!("sweep {name}: {e}")),
                }
            }
        }
        for (c, row) in configs.into_iter().zip(cells) {
            sweep.push((
                label(c),
                row.into_iter().map(|mut v| median(&mut v)).collect(),
            ));
        }
    }

    notes.insert(
        0,
        format!(
            "Run `compare{}{}{}{}` on {} cores, loopback, {} per target; {rounds} round(s) in rotating order, {} s per iscsi-perf run; load average {load_start} at start, {} at end; took {} s.",
            if quick { " --quick" } else { "" },
            if sweep_on { "" } else { " --no-sweep" },
            if loop_devices() { " --loop" } else { "" },
            if clients() > 1 {
                format!(" --clients {}", clients())
            } else {
                String::new()
            },
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            if loop_devices() {
                "a loop device over a 1 GiB /dev/shm file"
            } else {
                "1 GiB /dev/shm file"
            },
            o.seconds,
            loadavg(),
            started.elapsed().as_secs()
        ),
    );
    if clients() > 1 {
        notes.insert(
            1,
            format!(
                "{n} clients side by side in every run, each its own initiator (`iqn.2026-11.org.bootlun:perf-client-N`) and session at the workload's depth; IOPS and MB/s are their sum (qemu-img bench: every client writes the same amount from its own 1/{n} of the LUN, timed by the slowest).",
                n = clients()
            ),
        );
    }
    notes.insert(
        if clients() > 1 { 2 } else { 1 },
        format!(
            "Peers tuned: GLIBC_TUNABLES={GLIBC_TUNING}; tgt --bstype aio, MaxRecv/MaxXmitDataSegmentLength 262144, FirstBurstLength 262144, MaxBurstLength 1048576, MaxOutstandingR2T 16, LUN 1; istgt sample config with the same limits. bootlun flags: `{}`.",
            if extra.is_empty() { "(defaults)".to_string() } else { extra.join(" ") }
        ),
    );
    if stop.load(Ordering::Relaxed) {
        return Err(format!(
            "interrupted: perf/{} left as it was",
            result_names(loop_devices(), clients()).0
        ));
    }
    let md = report(
        &names,
        &table,
        &notes,
        &ceilings,
        &sweep,
        &sweep_w,
        clients(),
    );
    println!("{md}");
    let perf_dir = ctx.root.join("perf");
    let (md_name, svg_name) = result_names(loop_devices(), clients());
    std::fs::write(perf_dir.join(&md_name), &md).map_err(|e| format!("perf/{md_name}: {e}"))?;
    std::fs::write(perf_dir.join(&svg_name), svg(&names, &table))
        .map_err(|e| format!("perf/{svg_name}: {e}"))?;
    log(format!("wrote perf/{md_name} and perf/{svg_name}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(iops: f64, cpu_per_gb: f64) -> Sample {
        Sample {
            iops,
            mbs: iops * 4096.0 / 1e6,
            cpu_per_gb,
            cpu_cores: 1.0,
            client_cores: 1.0,
            lat_us: 1.0,
            user_share: 0.1,
        }
    }

    /// The sweep's polling table compares adaptive with interrupt for each
    /// reactor count and marks issue 9's bars; a failed cell says FAIL.
    #[test]
    fn polling_rows_mark_adaptive_against_interrupt() {
        let w = [WORKLOADS[0], WORKLOADS[1], WORKLOADS[4]];
        let more = |iops, cpu, cores| Sample {
            cpu_cores: cores,
            ..sample(iops, cpu)
        };
        let sweep = vec![
            (sweep_label(1, "busy"), vec![None, None, None]),
            // Depth 1: 2.4x the IOPS for 0.9x the CPU per GB (2.2x the
            // cores); depth 32: 0.94x (missed) at 1.0x; reads: no sample.
            (
                sweep_label(1, "adaptive"),
                vec![
                    Some(more(24.0, 9.0, 0.88)),
                    Some(more(94.0, 1.0, 0.7)),
                    None,
                ],
            ),
            (
                sweep_label(1, "interrupt"),
                vec![
                    Some(more(10.0, 10.0, 0.4)),
                    Some(more(100.0, 1.0, 0.7)),
                    Some(more(100.0, 0.3, 1.0)),
                ],
            ),
            // Two reactors: no interrupt row, so no comparison.
            (sweep_label(2, "adaptive"), vec![None, None, None]),
        ];
        assert_eq!(
            polling_rows(&sweep, &w),
            [
                "| 1 | rr4k-d1 | 2.40 | ✓ | 0.90 | ✓ | 2.20 |",
                "| 1 | rr4k-d32 | 0.94 | ✗ | 1.00 | ✓ | 1.00 |",
                "| 1 | sr128k-d32 | FAIL | | | | |",
            ]
        );
        let md = report(&[], &Table::new(), &[], &[], &sweep, &w, 1);
        assert!(
            md.contains("| 1 × adaptive | 24.0 IOPS | 0.88 | 9.00 |"),
            "{md}"
        );
        assert!(
            md.contains("spend at most 10 % more CPU (≤ 1.10), judged per GB moved"),
            "{md}"
        );
        assert!(md.ends_with("| 1 | sr128k-d32 | FAIL | | | | |\n"), "{md}");
    }

    /// utime and stime are found after the command name, whatever it
    /// holds; a line cut short gives nothing.
    #[test]
    fn stat_lines_give_user_and_system_ticks() {
        let line = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    731 2195 0 0 20 0 3 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_times(line), Some((731, 2195)));
        assert_eq!(parse_stat_times("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_times("no parenthesis"), None);
    }

    /// The detail table shows the target's user-space share, and a
    /// `null:` ceiling line compares its CPU per GB with the lowest peer's
    /// on the real LUN.
    #[test]
    fn detail_rows_and_null_ceilings_show_where_the_cpu_went() {
        let names = vec![
            "bootlun".to_string(),
            "tgt".to_string(),
            "istgt".to_string(),
        ];
        let mut table = Table::new();
        table.insert(("bootlun".into(), "sw4k-d32"), sample(130.0, 2.0));
        table.insert(("tgt".into(), "sw4k-d32"), sample(100.0, 3.2));
        table.insert(("istgt".into(), "sw4k-d32"), sample(90.0, 4.0));
        let md = report(&names, &table, &[], &[], &[], &[], 1);
        assert!(
            md.lines().any(
                |l| l == "| sw4k-d32 | bootlun | 0.53 | 130 | 1.00 | 2.00 | 1.00 | 10 | 1.00 |"
            ),
            "{md}"
        );
        let least = least_peer_cpu(&names, &table, "sw4k-d32");
        assert_eq!(least, 3.2);
        assert!(least_peer_cpu(&names, &table, "sr1m-d8").is_nan());
        let w = WORKLOADS.iter().find(|w| w.key == "sw4k-d32").unwrap();
        let line = null_ceiling(w, &sample(150.0, 1.6), least);
        assert!(
            line.ends_with("target 1.60 CPU s/GB (0.50× the lowest peer's on the real LUN), 10 % of it in user space"),
            "{line}"
        );
    }

    /// The headline row says whether each ratio meets the issue's goal.
    #[test]
    fn iperf_output_gives_mb_per_s_and_cpu_per_gb() {
        let text = "\
[  5]   0.00-3.00   sec  11.4 GBytes  32707 Mbits/sec   69             sender
[  5]   0.00-3.00   sec  11.4 GBytes  32706 Mbits/sec                  receiver
CPU Utilization: local/sender 97.2% (0.4%u/96.8%s), remote/receiver 44.5% (1.5%u/43.0%s)
";
        let ip = parse_iperf(text).unwrap();
        assert!((ip.mbs - 4088.25).abs() < 1e-9);
        assert!((ip.sender_s_gb.unwrap() - 0.972 * 1000.0 / 4088.25).abs() < 1e-9);
        assert!((ip.receiver_s_gb.unwrap() - 0.445 * 1000.0 / 4088.25).abs() < 1e-9);
        // Without -V there is no CPU line; a run with no summary is no result.
        let ip = parse_iperf(text.lines().take(2).collect::<Vec<_>>().join("\n").as_str()).unwrap();
        assert_eq!((ip.sender_s_gb, ip.receiver_s_gb), (None, None));
        assert_eq!(parse_iperf("iperf3: error - the server is busy"), None);
    }

    #[test]
    fn headline_rows_mark_the_goals_met_and_missed() {
        let names = vec!["bootlun".to_string(), "tgt".to_string()];
        let mut table = Table::new();
        // rr4k-d32: 1.9x (goal 2.0, missed) at 0.4x the CPU (met).
        table.insert(("bootlun".into(), "rr4k-d32"), sample(190.0, 0.4));
        table.insert(("tgt".into(), "rr4k-d32"), sample(100.0, 1.0));
        // sw4k-d32: 1.3x (goal 1.25, met) at 0.6x the CPU (missed).
        table.insert(("bootlun".into(), "sw4k-d32"), sample(130.0, 0.6));
        table.insert(("tgt".into(), "sw4k-d32"), sample(100.0, 1.0));
        let md = report(&names, &table, &[], &[], &[], &[], 1);
        let row = |label: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {label}")))
                .unwrap_or_else(|| panic!("no row {label}:\n{md}"))
                .to_string()
        };
        let rr = row("4 KiB random read, depth 32");
        assert!(rr.contains("| 1.90 | ≥ 2 ✗ | 0.40 | ≤ 0.5 ✓ |"), "{rr}");
        let sw = row("4 KiB seq write, depth 32");
        assert!(sw.contains("| 1.30 | ≥ 1.25 ✓ | 0.60 | ≤ 0.5 ✗ |"), "{sw}");
        // No goal for the ratio at depth 1; no sample: the goal is missed.
        let d1 = row("4 KiB random read, depth 1");
        assert!(d1.contains("| - | – | - | ≤ 0.5 ✗ |"), "{d1}");
    }

    /// With several clients at once the table has no goal columns (issue
    /// 9 sets them for one client), and the run writes files of its own.
    #[test]
    fn runs_with_several_clients_mark_no_goals_and_keep_their_own_files() {
        let names = vec!["bootlun".to_string(), "tgt".to_string()];
        let mut table = Table::new();
        table.insert(("bootlun".into(), "rr4k-d32"), sample(300.0, 0.3));
        table.insert(("tgt".into(), "rr4k-d32"), sample(100.0, 1.0));
        let md = report(&names, &table, &[], &[], &[], &[], 2);
        let rr = md
            .lines()
            .find(|l| l.starts_with("| 4 KiB random read, depth 32"))
            .unwrap_or_else(|| panic!("no row:\n{md}"));
        assert!(rr.ends_with("| 3.00 | 0.30 |"), "{rr}");
        assert!(!md.contains('✓') && !md.contains('✗'), "{md}");
        assert!(md.contains("of the 2 clients together"), "{md}");
        assert_eq!(
            result_names(false, 1),
            ("RESULTS.md".into(), "results.svg".into())
        );
        assert_eq!(
            result_names(true, 1),
            ("RESULTS-loop.md".into(), "results-loop.svg".into())
        );
        assert_eq!(
            result_names(false, 2),
            ("RESULTS-clients2.md".into(), "results-clients2.svg".into())
        );
        assert_eq!(
            result_names(true, 3),
            (
                "RESULTS-loop-clients3.md".into(),
                "results-loop-clients3.svg".into()
            )
        );
    }

    /// Clients run side by side: every output comes back (with `\r` made
    /// `\n`), a failing one fails the run, and one that outlives the limit
    /// is killed rather than waited for.
    #[test]
    fn clients_run_side_by_side_and_none_outlives_its_limit() {
        let dir = std::env::temp_dir().join(format!("bootlun-perf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        // Two shell scripts side by side, outputs in `dir`.
        let pair = |a: &str, b: &str, limit: Duration| {
            run_all_bounded(
                vec![
                    (&mut sh(a), dir.join("a.out")),
                    (&mut sh(b), dir.join("b.out")),
                ],
                limit,
            )
        };
        let texts = pair("printf 'one\\rtwo'", "echo three", Duration::from_secs(60)).unwrap();
        assert_eq!(texts, vec!["one\ntwo".to_string(), "three\n".to_string()]);

        let e = pair("true", "echo no >&2; exit 3", Duration::from_secs(60)).unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("no"), "{e}");

        // `exec` makes the shell the sleeper, so the kill reaches it.
        let e = pair("true", "exec sleep 600", Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("still running after 0 s; killed"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
