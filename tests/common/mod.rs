//! Shared harness for bootlun's integration tests.
//!
//! * [`Server`] starts `bootlun serve` (or, with `BOOTLUN_TEST_TARGET=tgt`,
//!   a private `tgtd` configured the same way, to prove a test's own logic
//!   against a known-good target), waits for the readiness line, keeps
//!   draining its output and stops exactly the process it started.
//! * [`run_tool`] runs an external program with a hard time limit.
//! * [`require_tool`] fails (or, with `BOOTLUN_SKIP_EXTERNAL=1`, skips) a
//!   test whose external tool is missing, naming the Debian package.
//! * [`TempDir`] gives every test its own scratch directory.
//! * [`IscsiConn`] is a minimal raw iSCSI initiator (login, SCSI commands,
//!   raw PDUs) for the protocol-level tests.
//!
//! Nothing here sleeps to synchronise: readiness and log assertions wait on
//! a condition variable fed by the output-draining threads, and every wait
//! is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Default target name of `bootlun serve`.
pub const DEFAULT_IQN: &str = "iqn.2026-11.org.bootlun:target";
/// How long a server may take to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{}-{:08x}", std::process::id(), n, nanos)
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A scratch directory unique to one test, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("bootlun-test-{tag}-{}", unique_suffix()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.set_len(size)
        .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
}

/// Deterministic pseudo-random bytes (xorshift64*), good enough for test data.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Parses `64M`, `1G`, `512K`, `4096` into bytes (binary units).
pub fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1u64 << 20),
        Some('G') => (&s[..s.len() - 1], 1u64 << 30),
        Some('T') => (&s[..s.len() - 1], 1u64 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("bad size {s:?}"))
        * mult
}

// ---------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// True when `BOOTLUN_SKIP_EXTERNAL=1`.
pub fn skip_external() -> bool {
    std::env::var("BOOTLUN_SKIP_EXTERNAL")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Checks that `bin` is installed. Missing: panics naming the Debian package,
/// unless `BOOTLUN_SKIP_EXTERNAL=1`, in which case it prints SKIPPED and
/// returns false (the caller then returns early).
pub fn require_tool(bin: &str, debian_package: &str) -> bool {
    if find_in_path(bin).is_some() {
        return true;
    }
    if skip_external() {
        eprintln!(
            "SKIPPED: `{bin}` not found (Debian package {debian_package}); BOOTLUN_SKIP_EXTERNAL=1"
        );
        println!("SKIPPED: `{bin}` not found (Debian package {debian_package})");
        false
    } else {
        panic!(
            "`{bin}` not found in PATH: install the Debian package `{debian_package}` \
             (apt-get install {debian_package}), or set BOOTLUN_SKIP_EXTERNAL=1 to skip"
        );
    }
}

/// Output of an external program run by [`run_tool`].
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub description: String,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the full output unless the program exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "{} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.description,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn drain_to_string<R: Read + Send + 'static>(r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut r = r;
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` until `deadline`; on overrun kills exactly that child
/// (SIGKILL) and returns None.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Bounded poll of the child's state; not used to order events.
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured. If it has not
/// exited within `limit`, it is killed and the test fails with its output.
pub fn run_tool(cmd: &mut Command, limit: Duration) -> ToolOutput {
    match try_run_tool(cmd, limit) {
        Ok(out) => out,
        Err(out) => panic!(
            "`{}` did not finish within {limit:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.description, out.stdout, out.stderr
        ),
    }
}

/// Like [`run_tool`], but an overrun is returned as `Err` (with the output
/// so far; the program has been killed) instead of failing the test.
pub fn try_run_tool(cmd: &mut Command, limit: Duration) -> Result<ToolOutput, ToolOutput> {
    let description = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{description}`: {e}"));
    let out = drain_to_string(child.stdout.take().unwrap());
    let err = drain_to_string(child.stderr.take().unwrap());
    let status = wait_with_deadline(&mut child, limit);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(ToolOutput {
            status,
            stdout,
            stderr,
            elapsed: start.elapsed(),
            description,
        }),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(ToolOutput {
                status: ExitStatus::from_raw(libc::SIGKILL),
                stdout,
                stderr,
                elapsed: start.elapsed(),
                description,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Captured output of a server
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

/// Lines a child wrote, shared with the draining threads.
#[derive(Clone, Default)]
pub struct LogBuf {
    inner: Arc<(Mutex<LogState>, Condvar)>,
}

impl LogBuf {
    fn attach<R: Read + Send + 'static>(&self, r: R, prefix: &'static str) {
        self.inner.0.lock().unwrap().open_streams += 1;
        let me = self.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        let (lock, cv) = &*me.inner;
                        lock.lock().unwrap().lines.push(format!("{prefix}{text}"));
                        cv.notify_all();
                    }
                }
            }
            let (lock, cv) = &*me.inner;
            lock.lock().unwrap().open_streams -= 1;
            cv.notify_all();
        });
    }

    /// All lines so far, newline-joined.
    pub fn text(&self) -> String {
        self.inner.0.lock().unwrap().lines.join("\n")
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().lines.clone()
    }

    /// Waits until some line satisfies `pred` (returns it), or all streams
    /// closed, or `limit` passed (returns None).
    pub fn wait_for(&self, limit: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        let mut checked = 0;
        loop {
            while checked < st.lines.len() {
                if pred(&st.lines[checked]) {
                    return Some(st.lines[checked].clone());
                }
                checked += 1;
            }
            if st.open_streams == 0 {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// Which implementation the tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Bootlun,
    /// `tgtd`, to prove a test harness against a known-good target.
    Tgt,
}

/// `BOOTLUN_TEST_TARGET=tgt` selects tgt; anything else (or unset) bootlun.
pub fn target_kind() -> TargetKind {
    match std::env::var("BOOTLUN_TEST_TARGET").as_deref() {
        Ok("tgt") => TargetKind::Tgt,
        _ => TargetKind::Bootlun,
    }
}

/// Path of the bootlun binary under test (overridable with `BOOTLUN_BIN`).
pub fn bootlun_bin() -> PathBuf {
    std::env::var_os("BOOTLUN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bootlun")))
}

/// LUN number of the first `--lun` of the binary run by [`Server::bootlun`]:
/// 0, except when a stand-in binary (`BOOTLUN_BIN`) fronting tgt is used
/// under `BOOTLUN_TEST_TARGET=tgt`, whose disks start at LUN 1.
/// `BOOTLUN_TEST_LUN_BASE` sets it explicitly (for such a stand-in used
/// without tgt mode).
pub fn bin_lun_base() -> u32 {
    if let Some(n) = std::env::var("BOOTLUN_TEST_LUN_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if target_kind() == TargetKind::Tgt && std::env::var_os("BOOTLUN_BIN").is_some() {
        1
    } else {
        0
    }
}

/// True when [`Server::bootlun`] runs something that follows bootlun's CLI
/// contract: the real binary, or a stand-in named by `BOOTLUN_BIN`. Tests of
/// bootlun-only behaviour (CLI, logs) print SKIPPED and return when false.
pub fn bootlun_cli_available() -> bool {
    if target_kind() == TargetKind::Tgt && std::env::var_os("BOOTLUN_BIN").is_none() {
        println!("SKIPPED: bootlun-only behaviour; with BOOTLUN_TEST_TARGET=tgt set BOOTLUN_BIN to a stand-in");
        return false;
    }
    true
}

/// A running target. Dropping it stops exactly the process it started:
/// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
pub struct Server {
    child: Option<Child>,
    pub kind: TargetKind,
    /// The bound address from the readiness line.
    pub addr: SocketAddr,
    pub iqn: String,
    /// LUN number of the first `--lun` (0 for bootlun, 1 for tgt whose LUN 0
    /// is its controller).
    pub lun_base: u32,
    pub log: LogBuf,
    tgt_control_port: Option<u16>,
    _scratch: Option<TempDir>,
}

/// Extracts `ADDR:PORT` from a line containing `listening on ADDR:PORT`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    let token = token.trim_end_matches(['.', ':']);
    token.parse().ok()
}

impl Server {
    /// Starts `bootlun serve --listen 127.0.0.1:0 --lun SPEC... EXTRA...`, or
    /// the tgt equivalent under `BOOTLUN_TEST_TARGET=tgt` (where `extra` may
    /// only carry `--target-name`; bootlun-only flags are ignored).
    pub fn start(luns: &[&str], extra: &[&str]) -> Server {
        match target_kind() {
            TargetKind::Bootlun => {
                let mut args: Vec<String> =
                    vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
                for l in luns {
                    args.push("--lun".into());
                    args.push(l.to_string());
                }
                args.extend(extra.iter().map(|s| s.to_string()));
                Server::bootlun(&args)
            }
            TargetKind::Tgt => Server::tgt(luns, extra),
        }
    }

    /// Runs the bootlun binary with exactly `args` (e.g. starting with
    /// `serve`) and waits for its `listening on ADDR:PORT` line.
    pub fn bootlun<S: AsRef<str>>(args: &[S]) -> Server {
        // Tests always listen on loopback; requiring it keeps other
        // services' "listening on" lines from being taken for the target's.
        Server::bootlun_on(args, |a| a.ip().is_loopback())
    }

    /// [`Server::bootlun`] for a portal whose address satisfies `portal`
    /// (tests inside their own network namespace).
    pub fn bootlun_on<S: AsRef<str>>(args: &[S], portal: impl Fn(&SocketAddr) -> bool) -> Server {
        Server::bootlun_env(args, portal, &[])
    }

    /// [`Server::bootlun_on`] with extra environment variables.
    pub fn bootlun_env<S: AsRef<str>>(
        args: &[S],
        portal: impl Fn(&SocketAddr) -> bool,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        let bin = bootlun_bin();
        let mut cmd = Command::new(&bin);
        cmd.envs(env.iter().copied());
        cmd.args(args.iter().map(|a| a.as_ref()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let description = describe(&cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{description}`: {e}"));
        let log = LogBuf::default();
        log.attach(child.stderr.take().unwrap(), "");
        log.attach(child.stdout.take().unwrap(), "[stdout] ");
        let iqn = args
            .iter()
            .map(|a| a.as_ref())
            .skip_while(|a| *a != "--target-name")
            .nth(1)
            .unwrap_or(DEFAULT_IQN)
            .to_string();
        let mut server = Server {
            child: Some(child),
            kind: TargetKind::Bootlun,
            addr: "127.0.0.1:0".parse().unwrap(),
            iqn,
            lun_base: bin_lun_base(),
            log,
            tgt_control_port: None,
            _scratch: None,
        };
        let line = server.log.wait_for(READY_TIMEOUT, |l| {
            parse_listening_line(l).is_some_and(|a| portal(&a))
        });
        match line {
            Some(line) => server.addr = parse_listening_line(&line).unwrap(),
            None => {
                // Collect the exit status (bounded; killed if still running).
                let mut child = server.child.take().unwrap();
                let status = wait_with_deadline(&mut child, Duration::from_secs(5))
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running after the wait; killed".into());
                let out = server.log.text();
                drop(server);
                panic!(
                    "`{description}` did not print `listening on ADDR:PORT` (waited up to {READY_TIMEOUT:?}; \
                     {status})\n--- captured output ---\n{out}"
                );
            }
        }
        assert_ne!(
            server.addr.port(),
            0,
            "readiness line reported port 0:\n{}",
            server.log.text()
        );
        server
    }

    /// A private tgtd on a free loopback port with its own control port,
    /// with one LUN per spec (ram:/null: become sparse files).
    fn tgt(luns: &[&str], extra: &[&str]) -> Server {
        let scratch = TempDir::new("tgt");
        let port = free_port();
        // Control port: the management socket is a unix socket named after
        // it, so any number unlikely to clash with a system tgtd works.
        // tgtadm accepts control ports up to 32767.
        let control = 10000
            + (std::process::id() % 15000) as u16
            + (COUNTER.fetch_add(1, Ordering::SeqCst) % 1000) as u16 * 7;
        let mut cmd = Command::new("tgtd");
        cmd.args([
            "-f",
            "-C",
            &control.to_string(),
            "--iscsi",
            &format!("portal=127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start tgtd (Debian package tgt)");
        let log = LogBuf::default();
        log.attach(child.stderr.take().unwrap(), "");
        log.attach(child.stdout.take().unwrap(), "[stdout] ");
        let iqn = extra
            .iter()
            .skip_while(|a| **a != "--target-name")
            .nth(1)
            .copied()
            .unwrap_or(DEFAULT_IQN)
            .to_string();
        let mut server = Server {
            child: Some(child),
            kind: TargetKind::Tgt,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            iqn: iqn.clone(),
            lun_base: 1,
            log,
            tgt_control_port: Some(control),
            _scratch: None,
        };
        // Wait (bounded) until the management channel answers.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = Command::new("tgtadm")
                .args([
                    "-C",
                    &control.to_string(),
                    "--lld",
                    "iscsi",
                    "--mode",
                    "sys",
                    "--op",
                    "show",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                panic!("tgtd did not come up:\n{}", server.log.text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        server.tgtadm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            "1",
            "--targetname",
            &iqn,
        ]);
        for (i, spec) in luns.iter().enumerate() {
            let (body, ro) = match spec.strip_suffix(",ro") {
                Some(b) => (b, true),
                None => (*spec, false),
            };
            let path = if let Some(sz) = body
                .strip_prefix("ram:")
                .or_else(|| body.strip_prefix("null:"))
            {
                let p = scratch.join(&format!("lun{i}.img"));
                sparse_file(&p, parse_size(sz));
                p.to_string_lossy().into_owned()
            } else {
                body.to_string()
            };
            let lun = (i + 1).to_string();
            server.tgtadm(&[
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                "1",
                "--lun",
                &lun,
                "--backing-store",
                &path,
            ]);
            if ro {
                server.tgtadm(&[
                    "--mode",
                    "logicalunit",
                    "--op",
                    "update",
                    "--tid",
                    "1",
                    "--lun",
                    &lun,
                    "--params",
                    "readonly=1",
                ]);
            }
        }
        server.tgtadm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            "1",
            "--initiator-address",
            "ALL",
        ]);
        server._scratch = Some(scratch);
        eprintln!(
            "harness: using tgtd on {} (control port {control})",
            server.addr
        );
        server
    }

    fn tgtadm(&self, args: &[&str]) {
        let control = self.tgt_control_port.unwrap().to_string();
        let mut cmd = Command::new("tgtadm");
        cmd.args(["-C", &control, "--lld", "iscsi"]).args(args);
        run_tool(&mut cmd, Duration::from_secs(30)).assert_success();
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// LUN number of the `i`-th `--lun`.
    pub fn lun(&self, i: u32) -> u32 {
        self.lun_base + i
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN` for the `i`-th `--lun`.
    pub fn url(&self, i: u32) -> String {
        format!("iscsi://{}/{}/{}", self.addr, self.iqn, self.lun(i))
    }

    /// `iscsi://127.0.0.1:PORT` (discovery).
    pub fn portal_url(&self) -> String {
        format!("iscsi://{}", self.addr)
    }

    /// Still running (not exited)?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Captured output so far.
    pub fn output(&self) -> String {
        self.log.text()
    }

    /// Sends `sig` to the child (only to its PID).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: plain kill(2) on the PID of a child we spawned and have
            // not yet reaped, so the PID cannot have been reused.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// Sends `sig` and waits (bounded) for the exit status. Panics with the
    /// captured output if the process does not exit in time (it is then
    /// killed).
    pub fn stop_with(&mut self, sig: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        // SAFETY: see `signal`.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        match wait_with_deadline(&mut child, STOP_TIMEOUT) {
            Some(st) => {
                // Let the draining threads see EOF so the log is complete.
                self.log.wait_for(Duration::from_secs(5), |_| false);
                st
            }
            None => panic!(
                "server (pid {}) did not exit within {STOP_TIMEOUT:?} of signal {sig}; killed\n--- captured output ---\n{}",
                child.id(),
                self.log.text()
            ),
        }
    }

    /// SIGTERM and wait for the exit status (tgtd, which ignores SIGTERM,
    /// gets SIGKILL).
    pub fn stop(&mut self) -> ExitStatus {
        let sig = if self.kind == TargetKind::Tgt {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        self.stop_with(sig)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                // tgtd ignores SIGTERM; it has nothing to flush here anyway.
                let sig = if self.kind == TargetKind::Tgt {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                };
                // SAFETY: see `signal`.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, sig);
                }
                // wait_with_deadline SIGKILLs on overrun.
                let _ = wait_with_deadline(&mut child, STOP_TIMEOUT);
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- captured server output ---\n{}\n--- end ---",
                self.log.text()
            );
        }
    }
}

/// A currently free loopback TCP port (for targets that cannot bind port 0
/// and report it, i.e. tgtd).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// iscsi-ls output
// ---------------------------------------------------------------------------

/// The size text `iscsi-ls -s` prints for a LUN of `bytes` with `block`-sized
/// blocks: it multiplies the *last* LBA by the block size and truncates to
/// k/M/G/T (so a 64 MiB LUN of 512-byte blocks prints `63M`).
pub fn iscsi_ls_size(bytes: u64, block: u64) -> String {
    let units = ["k", "M", "G", "T"];
    let mut v = (bytes - block) / 1024;
    let mut i = 0;
    while v >= 1024 && i < units.len() - 1 {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", units[i])
}

/// Parses `iscsi-ls -s` output into (targets, lun → (type, size)).
pub fn parse_iscsi_ls(out: &str) -> (Vec<String>, HashMap<u32, (String, Option<String>)>) {
    let mut targets = Vec::new();
    let mut luns = HashMap::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Target:") {
            targets.push(rest.split_whitespace().next().unwrap_or("").to_string());
        } else if let Some(rest) = line.strip_prefix("Lun:") {
            let mut parts = rest.split_whitespace();
            let Some(n) = parts.next().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ty = line
                .find("Type:")
                .map(|i| {
                    line[i + 5..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            let size = line.find("(Size:").map(|i| {
                line[i + 6..]
                    .trim_end_matches(')')
                    .trim_end_matches(')')
                    .to_string()
            });
            luns.insert(n, (ty, size));
        }
    }
    (targets, luns)
}

// ---------------------------------------------------------------------------
// Minimal raw iSCSI initiator
// ---------------------------------------------------------------------------

pub const OP_NOP_OUT: u8 = 0x00;
pub const OP_SCSI_CMD: u8 = 0x01;
pub const OP_LOGIN_REQ: u8 = 0x03;
pub const OP_LOGOUT_REQ: u8 = 0x06;
pub const OP_NOP_IN: u8 = 0x20;
pub const OP_SCSI_RSP: u8 = 0x21;
pub const OP_LOGIN_RSP: u8 = 0x23;
pub const OP_DATA_IN: u8 = 0x25;
pub const OP_LOGOUT_RSP: u8 = 0x26;
pub const OP_R2T: u8 = 0x31;
pub const OP_REJECT: u8 = 0x3f;

pub const BHS_LEN: usize = 48;

/// One received PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().unwrap())
    }
}

/// Why no PDU could be read.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed (EOF or reset).
    Closed(String),
    /// Nothing (complete) arrived within the read timeout.
    Timeout,
    Other(std::io::Error),
}

/// Outcome of a SCSI command.
#[derive(Debug)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
}

/// Encodes `key=value\0` pairs.
pub fn text_keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Decodes `key=value\0` pairs.
pub fn parse_keys(data: &[u8]) -> HashMap<String, String> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn put_dsl(bhs: &mut [u8; BHS_LEN], len: usize) {
    assert!(len <= 0xff_ffff);
    bhs[5] = (len >> 16) as u8;
    bhs[6] = (len >> 8) as u8;
    bhs[7] = len as u8;
}

fn is_closed_kind(k: ErrorKind) -> bool {
    matches!(
        k,
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected
    )
}

/// A raw iSCSI connection (no digests, ERL 0, one connection per session).
pub struct IscsiConn {
    pub stream: TcpStream,
    pub itt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub tsih: u16,
    /// The target's declared MaxRecvDataSegmentLength (8192 if it declared none).
    pub target_mrdsl: u32,
    pub isid: [u8; 6],
    /// Keys the target sent during login.
    pub target_keys: HashMap<String, String>,
}

/// Default per-read timeout of [`IscsiConn`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl IscsiConn {
    pub fn connect(addr: SocketAddr) -> IscsiConn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let isid = [
            0x80,
            0x00,
            (pid >> 8) as u8,
            pid as u8,
            (n >> 8) as u8,
            n as u8,
        ];
        IscsiConn {
            stream,
            itt: 1,
            cmdsn: 1,
            exp_statsn: 0,
            tsih: 0,
            target_mrdsl: 8192,
            isid,
            target_keys: HashMap::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Writes one PDU (BHS + padded data segment; DataSegmentLength is set
    /// from `data` unless `keep_dsl`).
    pub fn send_raw(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(BHS_LEN + data.len() + 3);
        buf.extend_from_slice(bhs);
        buf.extend_from_slice(data);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
        self.stream.write_all(&buf)
    }

    pub fn send_pdu(&mut self, mut bhs: [u8; BHS_LEN], data: &[u8]) -> std::io::Result<()> {
        put_dsl(&mut bhs, data.len());
        self.send_raw(&bhs, data)
    }

    /// Reads one PDU (discarding AHS), honouring the read timeout.
    pub fn recv_pdu(&mut self) -> Result<Pdu, RecvError> {
        let mut bhs = [0u8; BHS_LEN];
        self.read_exact_classified(&mut bhs)?;
        let ahs = bhs[4] as usize * 4;
        let dsl = ((bhs[5] as usize) << 16) | ((bhs[6] as usize) << 8) | bhs[7] as usize;
        let padded = (dsl + 3) & !3;
        let mut rest = vec![0u8; ahs + padded];
        self.read_exact_classified(&mut rest)?;
        let data = rest[ahs..ahs + dsl].to_vec();
        Ok(Pdu { bhs, data })
    }

    fn read_exact_classified(&mut self, buf: &mut [u8]) -> Result<(), RecvError> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if is_closed_kind(e.kind()) => Err(RecvError::Closed(e.to_string())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(RecvError::Timeout)
            }
            Err(e) => Err(RecvError::Other(e)),
        }
    }

    fn login_bhs(&self, csg: u8, nsg: u8, transit: bool) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x40 | OP_LOGIN_REQ;
        b[1] = (if transit { 0x80 } else { 0 }) | (csg << 2) | nsg;
        b[8..14].copy_from_slice(&self.isid);
        b[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        b[16..20].copy_from_slice(&self.itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        b
    }

    fn login_exchange(&mut self, csg: u8, nsg: u8, keys: &[u8]) -> Result<Pdu, String> {
        let bhs = self.login_bhs(csg, nsg, true);
        self.send_pdu(bhs, keys)
            .map_err(|e| format!("sending login request: {e}"))?;
        let rsp = self
            .recv_pdu()
            .map_err(|e| format!("waiting for login response: {e:?}"))?;
        if rsp.opcode() != OP_LOGIN_RSP {
            return Err(format!(
                "expected Login Response, got opcode {:#04x}",
                rsp.opcode()
            ));
        }
        if rsp.bhs[36] != 0 {
            return Err(format!(
                "login rejected: status class {:#04x} detail {:#04x}",
                rsp.bhs[36], rsp.bhs[37]
            ));
        }
        self.exp_statsn = rsp.u32_at(24).wrapping_add(1);
        self.target_keys.extend(parse_keys(&rsp.data));
        Ok(rsp)
    }

    /// Logs in (security stage with AuthMethod=None, then operational stage)
    /// and returns once the target has moved to full feature phase.
    pub fn login(&mut self, initiator: &str, target: &str) -> Result<(), String> {
        // Security negotiation → operational.
        let keys = text_keys(&[
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", target),
            ("AuthMethod", "None"),
        ]);
        let mut rsp = self.login_exchange(0, 1, &keys)?;
        let mut rounds = 0;
        while rsp.bhs[1] & 0x80 == 0 || (rsp.bhs[1] & 0x03) != 1 && (rsp.bhs[1] & 0x03) != 3 {
            rounds += 1;
            if rounds > 4 {
                return Err("target never completed the security stage".into());
            }
            rsp = self.login_exchange(0, 1, &[])?;
        }
        if rsp.bhs[1] & 0x03 == 3 {
            return self.enter_ffp(&rsp);
        }
        // Operational negotiation → full feature phase.
        let keys = text_keys(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
        ]);
        let mut rsp = self.login_exchange(1, 3, &keys)?;
        let mut rounds = 0;
        while !(rsp.bhs[1] & 0x80 != 0 && rsp.bhs[1] & 0x03 == 3) {
            rounds += 1;
            if rounds > 4 {
                return Err(format!(
                    "target never moved to full feature phase; keys {:?}",
                    self.target_keys
                ));
            }
            rsp = self.login_exchange(1, 3, &[])?;
        }
        self.enter_ffp(&rsp)
    }

    fn enter_ffp(&mut self, rsp: &Pdu) -> Result<(), String> {
        // A new session's TSIH is assigned in the final response; every
        // request of this (leading) login carries 0.
        self.tsih = u16::from_be_bytes([rsp.bhs[14], rsp.bhs[15]]);
        // The first command carries the ExpCmdSN the target announced.
        self.cmdsn = rsp.u32_at(28);
        if let Some(v) = self.target_keys.get("MaxRecvDataSegmentLength") {
            self.target_mrdsl = v
                .parse()
                .map_err(|_| format!("bad MaxRecvDataSegmentLength {v:?}"))?;
        }
        self.itt = self.itt.wrapping_add(1);
        Ok(())
    }

    /// A SCSI Command BHS (simple task attribute) for `lun`.
    pub fn scsi_bhs(&self, lun: u32, cdb: &[u8], read_len: u32, write_len: u32) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b[0] = OP_SCSI_CMD;
        b[1] = 0x80
            | if read_len > 0 { 0x40 } else { 0 }
            | if write_len > 0 { 0x20 } else { 0 }
            | 0x01;
        // Single-level LUN, peripheral (LUN < 256) or flat addressing.
        if lun < 256 {
            b[9] = lun as u8;
        } else {
            b[8] = 0x40 | ((lun >> 8) as u8 & 0x3f);
            b[9] = lun as u8;
        }
        b[16..20].copy_from_slice(&self.itt.to_be_bytes());
        b[20..24].copy_from_slice(&read_len.max(write_len).to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        b
    }

    /// Runs a SCSI command without data-out and collects Data-In and status.
    pub fn scsi_command(
        &mut self,
        lun: u32,
        cdb: &[u8],
        read_len: u32,
    ) -> Result<ScsiResult, String> {
        let bhs = self.scsi_bhs(lun, cdb, read_len, 0);
        let itt = self.itt;
        self.send_pdu(bhs, &[])
            .map_err(|e| format!("sending SCSI command: {e}"))?;
        self.itt = self.itt.wrapping_add(1);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        let mut data = Vec::new();
        for _ in 0..10_000 {
            let pdu = self
                .recv_pdu()
                .map_err(|e| format!("waiting for SCSI response: {e:?}"))?;
            match pdu.opcode() {
                OP_DATA_IN => {
                    if pdu.u32_at(16) != itt {
                        return Err(format!("Data-In for unknown ITT {:#x}", pdu.u32_at(16)));
                    }
                    data.extend_from_slice(&pdu.data);
                    if pdu.bhs[1] & 0x01 != 0 {
                        self.exp_statsn = pdu.u32_at(24).wrapping_add(1);
                        return Ok(ScsiResult {
                            status: pdu.bhs[3],
                            data,
                            sense: Vec::new(),
                        });
                    }
                }
                OP_SCSI_RSP => {
                    self.exp_statsn = pdu.u32_at(24).wrapping_add(1);
                    if pdu.bhs[2] != 0 {
                        return Err(format!("iSCSI response code {:#04x}", pdu.bhs[2]));
                    }
                    let sense = if pdu.data.len() > 2 {
                        let n = u16::from_be_bytes([pdu.data[0], pdu.data[1]]) as usize;
                        pdu.data[2..(2 + n).min(pdu.data.len())].to_vec()
                    } else {
                        Vec::new()
                    };
                    return Ok(ScsiResult {
                        status: pdu.bhs[3],
                        data,
                        sense,
                    });
                }
                OP_NOP_IN => {
                    // Answer target pings so the session stays up.
                    let ttt = pdu.u32_at(20);
                    if ttt != 0xffff_ffff {
                        let mut b = [0u8; BHS_LEN];
                        b[0] = 0x40 | OP_NOP_OUT;
                        b[1] = 0x80;
                        b[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                        b[20..24].copy_from_slice(&ttt.to_be_bytes());
                        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
                        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
                        self.send_pdu(b, &pdu.data)
                            .map_err(|e| format!("NOP-Out: {e}"))?;
                    }
                }
                OP_REJECT => return Err("target sent Reject".into()),
                op => {
                    return Err(format!(
                        "unexpected opcode {op:#04x} while waiting for SCSI response"
                    ))
                }
            }
        }
        Err("too many PDUs for one command".into())
    }

    /// TEST UNIT READY, retried over unit attentions (bounded).
    pub fn test_unit_ready(&mut self, lun: u32) -> Result<(), String> {
        let mut last = None;
        for _ in 0..4 {
            let r = self.scsi_command(lun, &[0x00, 0, 0, 0, 0, 0], 0)?;
            if r.status == 0 {
                return Ok(());
            }
            last = Some(r);
        }
        Err(format!("TEST UNIT READY kept failing: {last:?}"))
    }

    /// Standard INQUIRY (36 bytes), retried over unit attentions (bounded).
    pub fn inquiry(&mut self, lun: u32) -> Result<Vec<u8>, String> {
        let mut last = None;
        for _ in 0..4 {
            let r = self.scsi_command(lun, &[0x12, 0, 0, 0, 36, 0], 36)?;
            if r.status == 0 {
                return Ok(r.data);
            }
            last = Some(r);
        }
        Err(format!("INQUIRY kept failing: {last:?}"))
    }

    /// READ CAPACITY (16): (number of blocks, block size).
    pub fn read_capacity16(&mut self, lun: u32) -> Result<(u64, u32), String> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        for _ in 0..4 {
            let r = self.scsi_command(lun, &cdb, 32)?;
            if r.status == 0 && r.data.len() >= 12 {
                let last = u64::from_be_bytes(r.data[0..8].try_into().unwrap());
                let bs = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
                return Ok((last + 1, bs));
            }
        }
        Err("READ CAPACITY(16) failed".into())
    }

    /// Logout (best effort, bounded by the read timeout).
    pub fn logout(&mut self) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x40 | OP_LOGOUT_REQ;
        b[1] = 0x80;
        b[16..20].copy_from_slice(&self.itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        if self.send_pdu(b, &[]).is_ok() {
            for _ in 0..8 {
                match self.recv_pdu() {
                    Ok(p) if p.opcode() == OP_LOGOUT_RSP => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// After sending something invalid: waits (bounded by `limit`) for the
    /// target to answer with a Reject PDU or close the connection. Returns a
    /// description of what happened, or Err if it hung or answered otherwise.
    pub fn expect_reject_or_close(&mut self, limit: Duration) -> Result<String, String> {
        self.set_read_timeout(limit);
        let start = Instant::now();
        loop {
            match self.recv_pdu() {
                Ok(p) if p.opcode() == OP_REJECT => {
                    return Ok(format!(
                        "Reject PDU (reason {:#04x}) after {:?}",
                        p.bhs[2],
                        start.elapsed()
                    ))
                }
                Ok(p) if p.opcode() == OP_NOP_IN && start.elapsed() < limit => continue,
                Ok(p) => {
                    return Err(format!(
                        "expected Reject or close, got opcode {:#04x} (bhs {:02x?})",
                        p.opcode(),
                        &p.bhs[..8]
                    ))
                }
                Err(RecvError::Closed(why)) => {
                    return Ok(format!(
                        "connection closed ({why}) after {:?}",
                        start.elapsed()
                    ))
                }
                Err(RecvError::Timeout) => {
                    return Err(format!(
                        "no Reject and no close within {limit:?}: the target hung"
                    ))
                }
                Err(RecvError::Other(e)) => {
                    return Ok(format!("connection error {e} after {:?}", start.elapsed()))
                }
            }
        }
    }
}

/// Initiator name used by the raw client.
pub fn initiator_name(tag: &str) -> String {
    format!("iqn.2026-11.org.bootlun:test-{tag}")
}
