//! The PID-1 supervisor, run as PID 1 of new PID, mount, UTS and network
//! namespaces (`unshare --pid --fork --mount-proc --uts --net`): system
//! set-up, status lines, the rescue shell, orphan reaping, shutdown via
//! `bootlun shutdown`'s signal and via SIGINT (Ctrl-Alt-Del) with a
//! failing flush, and the ending in reboot(2) (which, in a PID namespace,
//! ends the namespace's init with SIGINT for a power-off).
//!
//! The helper is this test binary re-run with BOOTLUN_INIT_HELPER set.
//! Needs root and util-linux (unshare). The mount namespace is private, so
//! the helper's mounts and unmounts do not reach the host.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bootlun_image::init;

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers run inside the namespaces (ignored as tests of their own).

#[test]
#[ignore = "helper: run by the other tests as PID 1"]
fn pid1_helper() {
    if std::env::var("BOOTLUN_INIT_HELPER").as_deref() != Ok("pid1") {
        return;
    }
    let dir = PathBuf::from(std::env::var("BOOTLUN_TEST_DIR").unwrap());
    let r = init::setup_system();
    println!("SETUP-RESULT: {r:?}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    println!("HOSTNAME: {}", host.trim());
    let proc_ok = Path::new("/proc/self/stat").exists() && Path::new("/sys/class").exists();
    println!("VIRTUAL-FS: {proc_ok}");
    // Something to be unmounted at shutdown; only inside the namespaces
    // (as PID 1), never on the host.
    if std::process::id() == 1 {
        let mnt = dir.join("extra-mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (t, m) = (c("tmpfs"), c(mnt.to_str().unwrap()));
        // SAFETY: valid strings.
        let rc = unsafe { libc::mount(t.as_ptr(), m.as_ptr(), t.as_ptr(), 0, std::ptr::null()) };
        println!("EXTRA-MOUNT: {rc}");
    }
    let fail = std::env::var("BOOTLUN_TEST_FAIL_FLUSH").is_ok();
    let marker = dir.join("flushed");
    let n = std::sync::atomic::AtomicU32::new(0);
    init::supervise(init::SuperviseOpts {
        status: Box::new(move || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("STATUS-LINE {i}")
        }),
        shutdown: Box::new(move || {
            if fail {
                panic!("flush failed on purpose");
            }
            std::fs::write(&marker, "yes").unwrap();
        }),
        shell: Some("/bin/sh".into()),
        status_every: Duration::from_secs(1),
    })
}

#[test]
#[ignore = "helper: bootlun shutdown, run inside the namespace"]
fn shutdown_helper() {
    if std::env::var("BOOTLUN_INIT_HELPER").as_deref() != Ok("shutdown") {
        return;
    }
    let code = init::request_shutdown();
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        2
    });
}

// ---------------------------------------------------------------------------
// The tests.

fn skip_or_fail(why: &str) -> bool {
    if std::env::var("BOOTLUN_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipped: {why}");
        return true;
    }
    panic!("{why} (or set BOOTLUN_SKIP_EXTERNAL=1)");
}

fn preconditions() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return !skip_or_fail("needs root for PID namespaces");
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return !skip_or_fail("unshare not found: install the Debian package util-linux");
    }
    if !Path::new("/bin/sh").exists() {
        return !skip_or_fail("/bin/sh not found: install the Debian package dash");
    }
    true
}

struct Pid1 {
    child: Child,
    helper_pid: Option<i32>,
    stdin: std::process::ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
    dir: PathBuf,
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        // Killing the namespace's init ends every process in it.
        if let Some(p) = self.helper_pid {
            // SAFETY: a process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn test_dir(tag: &str) -> PathBuf {
    // Not under /tmp: the helper mounts a tmpfs there.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("init-pid1-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(tag: &str, in_namespaces: bool, extra_env: &[(&str, &str)]) -> Pid1 {
    let dir = test_dir(tag);
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if in_namespaces {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--mount-proc", "--uts", "--net", "--"])
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args([
        "--exact",
        "pid1_helper",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("BOOTLUN_INIT_HELPER", "pid1")
    .env("BOOTLUN_TEST_DIR", &dir)
    .env("BOOTLUN_TEST_EXE", &exe)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    let stdin = child.stdin.take().unwrap();
    let mut p = Pid1 {
        helper_pid: None,
        child,
        stdin,
        lines: rx,
        seen: Vec::new(),
        dir,
    };
    if in_namespaces {
        // unshare --fork: the helper is unshare's only child.
        let pid = p.child.id();
        let deadline = Instant::now() + WAIT;
        while p.helper_pid.is_none() && Instant::now() < deadline {
            p.helper_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            if p.helper_pid.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(p.helper_pid.is_some(), "unshare started no child");
    } else {
        p.helper_pid = Some(p.child.id() as i32);
    }
    p
}

impl Pid1 {
    /// Wait (bounded) for a line containing `pat`; returns it from `pat` on.
    fn expect(&mut self, pat: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    // The test harness may print "test x ... " first.
                    if let Some(i) = l.find(pat) {
                        return l[i..].to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {pat:?} within {WAIT:?}; output:\n{}",
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "output ended without {pat:?}; output:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.stdin.write_all(text.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Wait (bounded) for the process to end; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            // Keep reading output so the pipes never fill.
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(l);
                }
                self.helper_pid = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {WAIT:?}; output:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn saw(&self, pat: &str) -> bool {
        self.seen.iter().any(|l| l.contains(pat))
    }
}

#[test]
fn pid1_shell_reaping_and_poweroff() {
    if !preconditions() {
        return;
    }
    let mut p = spawn("main", true, &[]);
    assert_eq!(p.expect("SETUP-RESULT"), "SETUP-RESULT: Ok(())");
    assert_eq!(p.expect("HOSTNAME"), "HOSTNAME: bootlun");
    assert_eq!(p.expect("VIRTUAL-FS"), "VIRTUAL-FS: true");
    assert_eq!(p.expect("EXTRA-MOUNT"), "EXTRA-MOUNT: 0");
    p.expect("press Enter for a rescue shell");
    p.expect("STATUS-LINE 0");
    p.expect("STATUS-LINE 1");

    // Enter: a shell, reading the same console.
    p.send("\n");
    p.expect("starting a rescue shell");
    // An orphan: its parent exits at once, so it is re-parented to PID 1,
    // which must reap it when it exits (else it stays a zombie in /proc).
    p.send(concat!(
        "echo SHELL-PID-$$\n",
        "sh -c 'sh -c \"echo \\$\\$ > /run/orphan; exit 0\" & exit 0'\n",
        // Bounded polls for a condition, not timing assumptions.
        "i=0; while [ ! -s /run/orphan ] && [ $i -lt 400 ]; do i=$((i+1)); sleep 0.05; done\n",
        "o=$(cat /run/orphan); i=0\n",
        "while [ -e /proc/$o ] && [ $i -lt 400 ]; do i=$((i+1)); sleep 0.05; done\n",
        "if [ -e /proc/$o ]; then echo ORPHAN-NOT-REAPED $(cat /proc/$o/status | grep State); else echo ORPHAN-REAPED; fi\n",
    ));
    let pid_line = p.expect("SHELL-PID-");
    assert_ne!(pid_line, "SHELL-PID-1", "the shell is a child, not PID 1");
    let r = p.expect("ORPHAN-");
    assert_eq!(r, "ORPHAN-REAPED");
    p.send("exit\n");
    p.expect("rescue shell exited");
    // Status lines pause while the shell runs (same pipe, so in order).
    let start = p
        .seen
        .iter()
        .rposition(|l| l.contains("starting a rescue shell"))
        .unwrap();
    assert!(
        !p.seen[start..].iter().any(|l| l.contains("STATUS-LINE")),
        "status line while the shell ran:\n{}",
        p.seen[start..].join("\n")
    );
    p.expect("press Enter for a rescue shell");
    p.expect("STATUS-LINE");

    // `bootlun shutdown` from a second shell: SIGUSR2 to PID 1. The test
    // binary is PID 1's own executable: its path may be hidden by the
    // file systems PID 1 mounted (a checkout under /tmp is).
    p.send("\n");
    p.expect("starting a rescue shell");
    p.send("BOOTLUN_INIT_HELPER=shutdown /proc/1/exe --exact shutdown_helper --include-ignored --nocapture --test-threads=1 >/dev/null; echo SHUTDOWN-RC=$?\n");
    p.expect("shutting down: poweroff request (SIGUSR2)");
    p.expect("target stopped, LUNs flushed");
    p.expect("stopping the remaining processes");
    let mnt = p.dir.join("extra-mnt");
    p.expect(&format!("unmounted {}", mnt.display()));
    p.expect("powering off");
    let status = p.wait_exit();
    assert!(p.dir.join("flushed").exists(), "shutdown closure ran");
    // (stderr, so not ordered with the lines above)
    assert!(p.saw("asked PID 1 to stop the target, flush every LUN and power off"));
    // reboot(RB_POWER_OFF) in a PID namespace ends its init with SIGINT;
    // unshare passes that on.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT),
        "{status:?}; output:\n{}",
        p.seen.join("\n")
    );
    assert!(!p.saw("failed"), "{}", p.seen.join("\n"));
}

#[test]
fn pid1_ctrl_alt_del_with_a_failing_flush_still_powers_off() {
    if !preconditions() {
        return;
    }
    let mut p = spawn("cad", true, &[("BOOTLUN_TEST_FAIL_FLUSH", "1")]);
    p.expect("press Enter for a rescue shell");
    // What the kernel sends PID 1 on Ctrl-Alt-Del once CAD is disabled.
    // SAFETY: kill(2) on a process this test started.
    let sent = unsafe { libc::kill(p.helper_pid.unwrap(), libc::SIGINT) };
    assert_eq!(sent, 0);
    p.expect("shutting down: Ctrl-Alt-Del (SIGINT)");
    p.expect("the shutdown steps failed (flush failed on purpose); powering off anyway");
    p.expect("powering off");
    let status = p.wait_exit();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT),
        "{status:?}"
    );
}

#[test]
fn not_pid1_exits_instead_of_powering_off() {
    if !preconditions() {
        return;
    }
    let mut p = spawn("notpid1", false, &[]);
    let r = p.expect("SETUP-RESULT");
    assert!(r.contains("not PID 1"), "{r}");
    p.expect("press Enter for a rescue shell");
    p.expect("STATUS-LINE 0");
    // busybox `reboot` sends SIGTERM.
    // SAFETY: kill(2) on a process this test started.
    let sent = unsafe { libc::kill(p.helper_pid.unwrap(), libc::SIGTERM) };
    assert_eq!(sent, 0);
    p.expect("shutting down: reboot request (SIGTERM)");
    p.expect("target stopped, LUNs flushed");
    p.expect("not PID 1: exiting instead of rebooting");
    let status = p.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(p.dir.join("flushed").exists());
    // It touched nothing system-wide.
    assert!(!p.saw("unmounted"));
}

#[test]
fn bootlun_shutdown_refuses_when_pid1_is_something_else() {
    // This test process is not PID 1 and PID 1 of the test machine is not
    // this binary.
    assert_eq!(init::request_shutdown(), std::process::ExitCode::from(2));
}
