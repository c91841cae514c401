//! The server under test: `bootlun serve` or a private tgtd.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::*;

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
        .unwrap_or_else(|| {
            // Cargo builds the binary before any integration test runs;
            // it sits next to the test's `deps` directory.
            let exe = std::env::current_exe().expect("current_exe");
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "deps"))
                .and_then(Path::parent)
                .map(|profile| profile.join("bootlun"))
                .unwrap_or_else(|| target_dir().join("release").join("bootlun"))
        })
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

/// LUN number to (type, size if listed), as `iscsi-ls -s` prints them.
pub type LunListing = HashMap<u32, (String, Option<String>)>;

/// Parses `iscsi-ls -s` output into (targets, lun → (type, size)).
pub fn parse_iscsi_ls(out: &str) -> (Vec<String>, LunListing) {
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
