//! PID 1's main loop once bootlun is serving: reap orphans, show a status
//! line, start a rescue shell on request, and shut down cleanly when asked
//! (signals, Ctrl-Alt-Del, the power button).

use super::input::PowerButtons;
use super::{mounted_by_init, say, signals};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the `shutdown` closure may take (stopping the target and
/// flushing LUNs) before power-off goes ahead anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(120);
/// How often /dev/input is looked at again for new devices.
const INPUT_RESCAN: Duration = Duration::from_secs(2);

/// What [`supervise`] needs from the caller.
pub struct SuperviseOpts {
    /// The status line (address, LUNs, sessions, throughput).
    pub status: Box<dyn Fn() -> String + Send>,
    /// Stop the target and flush every LUN. Runs once, on shutdown; a
    /// panic in it is caught.
    pub shutdown: Box<dyn FnOnce() + Send>,
    /// The rescue shell (busybox sh), if the image has one.
    pub shell: Option<PathBuf>,
    /// Interval of the status line.
    pub status_every: Duration,
}

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Power off (power button, Ctrl-Alt-Del, `poweroff`, `halt`,
    /// `bootlun shutdown`).
    PowerOff,
    /// Reboot (`reboot`, which busybox sends as SIGTERM).
    Reboot,
}

/// What a signal asks for, if anything.
fn signal_action(sig: libc::c_int) -> Option<(Action, &'static str)> {
    match sig {
        libc::SIGINT => Some((Action::PowerOff, "Ctrl-Alt-Del (SIGINT)")),
        libc::SIGUSR2 => Some((Action::PowerOff, "poweroff request (SIGUSR2)")),
        libc::SIGUSR1 => Some((Action::PowerOff, "halt request (SIGUSR1)")),
        libc::SIGPWR => Some((Action::PowerOff, "power failure signal (SIGPWR)")),
        libc::SIGTERM => Some((Action::Reboot, "reboot request (SIGTERM)")),
        _ => None,
    }
}

/// The terminal behind /dev/console, so the rescue shell gets a real
/// controlling tty (job control, Ctrl-C) rather than the console alias.
fn console_tty() -> Option<PathBuf> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").ok()?;
    // The last one listed is the one /dev/console writes to.
    let mut name = active.split_whitespace().last()?.to_string();
    if name == "tty0" {
        // tty0 is "the current virtual terminal".
        if let Ok(a) = std::fs::read_to_string("/sys/class/tty/tty0/active") {
            if let Some(n) = a.split_whitespace().next() {
                name = n.to_string();
            }
        }
    }
    let p = Path::new("/dev").join(name);
    p.exists().then_some(p)
}

/// The device number of an fd, if it is a character device.
fn chr_rdev(fd: i32) -> Option<libc::dev_t> {
    // SAFETY: libc::stat is plain integers, for which all zeros is a valid
    // value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat struct into `st`, which is live and
    // exclusively borrowed for the call; a bad fd is an error return.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return None;
    }
    Some(st.st_rdev)
}

/// The terminal the shell should own: the console's tty, but only when our
/// stdin is the console (or that tty); otherwise (stdin is a pipe, say)
/// the shell simply inherits our stdin/stdout.
fn shell_tty() -> Option<PathBuf> {
    let ours = chr_rdev(0)?;
    let tty = console_tty()?;
    let tty_rdev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&tty).ok()?.rdev()
    };
    (ours == libc::makedev(5, 1) || ours == tty_rdev).then_some(tty)
}

/// Reap every exited child; returns their PIDs.
fn reap() -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        out.push(pid);
    }
    out
}

fn uptime() -> String {
    let secs = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

struct Shell {
    pid: libc::pid_t,
}

/// Start the rescue shell in a new session with the console as its
/// controlling terminal.
fn start_shell(shell: &Path, tty: Option<&Path>) -> Result<Shell, String> {
    let mut cmd = std::process::Command::new(shell);
    // busybox decides which applet to run from argv[0]; as "sh" also when
    // the path is the busybox binary itself.
    if shell.file_name().is_some_and(|n| n == "busybox") {
        cmd.arg("sh");
    }
    cmd.env("PS1", "bootlun rescue# ")
        .env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "linux".into()),
        )
        .env("HOME", "/")
        .current_dir("/");
    let tty_c = tty.and_then(|t| std::ffi::CString::new(t.as_os_str().as_encoded_bytes()).ok());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The supervisor's thread may have signals blocked that the
            // shell and its children must receive.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::setsid();
            if let Some(t) = &tty_c {
                let fd = libc::open(t.as_ptr(), libc::O_RDWR);
                if fd >= 0 {
                    for i in 0..3 {
                        libc::dup2(fd, i);
                    }
                    if fd > 2 {
                        libc::close(fd);
                    }
                }
            }
            // Take the terminal even if another session (ours) has it;
            // failure only costs job control.
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", shell.display()))?;
    Ok(Shell {
        pid: child.id() as libc::pid_t,
    })
}

struct Supervisor {
    opts_status: Box<dyn Fn() -> String + Send>,
    shell_path: Option<PathBuf>,
    status_every: Duration,
    shell: Option<Shell>,
    console_open: bool,
    buttons: PowerButtons,
}

impl Supervisor {
    fn prompt(&self) {
        match &self.shell_path {
            Some(_) => say("press Enter for a rescue shell"),
            None => say("no rescue shell in this image (no busybox)"),
        }
    }

    fn status_line(&self) {
        let f = &self.opts_status;
        let text = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| "status unavailable".into());
        say(&format!("[{}] {text}", uptime()));
    }

    /// Console input while no shell runs: a line starts the shell.
    fn console_input(&mut self) {
        let mut buf = [0u8; 256];
        // SAFETY: valid buffer; fd 0 is the console.
        let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN))
        {
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                return;
            }
            // No console to read (EOF or error): stop asking it.
            self.console_open = false;
            return;
        }
        if n < 0 || !buf[..n as usize].contains(&b'\n') {
            return;
        }
        let Some(path) = self.shell_path.clone() else {
            say("no rescue shell in this image (no busybox)");
            return;
        };
        say("starting a rescue shell; status lines pause until it exits (`exit` to return, `bootlun shutdown` to power off)");
        match start_shell(&path, shell_tty().as_deref()) {
            Ok(s) => self.shell = Some(s),
            Err(e) => say(&format!("cannot start the rescue shell: {e}")),
        }
    }

    /// Wait for something to happen; returns the shutdown reason when
    /// asked to shut down.
    fn run(&mut self) -> (Action, String) {
        let mut next_status = Instant::now();
        let mut next_scan = Instant::now();
        self.prompt();
        loop {
            let now = Instant::now();
            if now >= next_scan {
                for name in self.buttons.rescan() {
                    say(&format!("power button: {name}"));
                }
                next_scan = now + INPUT_RESCAN;
            }
            if now >= next_status {
                if self.shell.is_none() {
                    self.status_line();
                }
                next_status = now + self.status_every;
            }
            let sigfd = signals::read_fd();
            let mut fds: Vec<libc::pollfd> = Vec::new();
            if sigfd >= 0 {
                fds.push(libc::pollfd {
                    fd: sigfd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let console = self.shell.is_none() && self.console_open;
            if console {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let buttons = self.buttons.fds();
            for &fd in &buttons {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let wake = next_status.min(next_scan);
            let ms = wake
                .saturating_duration_since(Instant::now())
                .as_millis()
                .clamp(1, 60_000) as libc::c_int;
            // Without the signal pipe (install failed), still reap and
            // look now and then.
            let ms = if sigfd < 0 { ms.min(500) } else { ms };
            // SAFETY: fds is a valid array of its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                continue; // EINTR
            }
            let mut ask: Option<(Action, String)> = None;
            for sig in signals::drain() {
                if sig == libc::SIGCHLD {
                    continue;
                }
                if let Some((a, why)) = signal_action(sig) {
                    ask.get_or_insert((a, why.to_string()));
                }
            }
            for pid in reap() {
                if self.shell.as_ref().is_some_and(|s| s.pid == pid) {
                    self.shell = None;
                    say("rescue shell exited");
                    self.prompt();
                    next_status = Instant::now();
                }
            }
            for p in &fds {
                if p.revents == 0 || p.fd == sigfd {
                    continue;
                }
                if p.fd == 0 && console {
                    if p.revents & libc::POLLNVAL != 0 {
                        self.console_open = false;
                    } else {
                        self.console_input();
                    }
                } else if buttons.contains(&p.fd) {
                    if let Some(name) = self.buttons.pressed(p.fd) {
                        ask.get_or_insert((Action::PowerOff, format!("power button ({name})")));
                    }
                }
            }
            if let Some(a) = ask {
                return a;
            }
        }
    }
}

/// Run the shutdown closure, bounded in time; a further shutdown request
/// (a second press) stops waiting.
fn run_shutdown(shutdown: Box<dyn FnOnce() + Send>) {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let spawned = std::thread::Builder::new()
        .name("shutdown".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(shutdown)).map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into())
            });
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        say(&format!("cannot run the shutdown steps: {e}"));
        return;
    }
    let start = Instant::now();
    let mut next_note = start + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(())) => {
                say("target stopped, LUNs flushed");
                return;
            }
            Ok(Err(p)) => {
                say(&format!(
                    "the shutdown steps failed ({p}); powering off anyway"
                ));
                return;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        reap();
        if signals::drain()
            .into_iter()
            .any(|s| signal_action(s).is_some())
        {
            say("second request: not waiting for the target any longer");
            return;
        }
        let waited = start.elapsed();
        if waited >= SHUTDOWN_GRACE {
            say(&format!(
                "the target did not stop within {} s; going ahead",
                SHUTDOWN_GRACE.as_secs()
            ));
            return;
        }
        if Instant::now() >= next_note {
            next_note += Duration::from_secs(10);
            say(&format!(
                "still stopping the target ({} s; press the power button again or Ctrl-Alt-Del to skip)",
                waited.as_secs()
            ));
        }
    }
}

/// Stop every other process (we are PID 1: there is no one else to).
fn kill_everyone() {
    // SAFETY: kill(-1) signals every process but PID 1 itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        reap();
        // kill(-1, 0) cannot tell: it also reaches kernel threads, and
        // so never fails. Count the user processes instead.
        if user_processes() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    reap();
}

/// Processes other than this one and kernel threads (PF_KTHREAD in the
/// flags field of /proc/PID/stat).
fn user_processes() -> usize {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pid != 1)
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name may hold blanks and parentheses: fields
            // are counted from the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            // f[0] is the state (field 3), f[6] the flags (field 9).
            let zombie = f.first() == Some(&"Z");
            let flags = f.get(6).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            !zombie && flags & PF_KTHREAD == 0
        })
        .count()
}

/// Mount points of this mount namespace, in mount order.
fn mount_points() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes blanks as octal.
        .map(|m| {
            m.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .collect()
}

/// Unmount; `Ok(false)` when it was not a mount point (any longer).
fn umount(target: &str) -> Result<bool, String> {
    let Ok(c) = std::ffi::CString::new(target) else {
        return Ok(false);
    };
    // SAFETY: valid path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
        return Ok(false);
    }
    // Still busy: detach it, so that at least nothing new is written
    // through it; the data was synced before.
    // SAFETY: valid path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Err(format!("{target}: {e}; detached"));
    }
    Err(format!("{target}: {e}"))
}

/// Unmount everything but the root, newest first; what `setup_system`
/// mounted goes last (it is what the rest is mounted on).
fn unmount_all() {
    let ours = mounted_by_init();
    let mut points = mount_points();
    points.retain(|m| m != "/");
    let mut seen = std::collections::HashSet::new();
    let mut order: Vec<String> = points
        .into_iter()
        .rev()
        .filter(|m| !ours.iter().any(|o| o.as_os_str() == m.as_str()))
        .filter(|m| seen.insert(m.clone()))
        .collect();
    order.extend(ours.iter().rev().map(|p| p.to_string_lossy().into_owned()));
    for m in order {
        match umount(&m) {
            Ok(true) => say(&format!("unmounted {m}")),
            Ok(false) => {}
            Err(e) => say(&format!("unmount {e}")),
        }
    }
}

/// Sync, unmount, power off or reboot. When not PID 1 (a test, or
/// `bootlun init` run by hand) nothing system-wide is touched: sync and
/// exit.
fn finish(action: Action) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if std::process::id() != 1 {
        say(&format!(
            "not PID 1: exiting instead of {}",
            match action {
                Action::PowerOff => "powering off",
                Action::Reboot => "rebooting",
            }
        ));
        std::process::exit(0);
    }
    say("stopping the remaining processes");
    kill_everyone();
    // SAFETY: as above.
    unsafe { libc::sync() };
    unmount_all();
    // SAFETY: as above.
    unsafe { libc::sync() };
    let (cmd, what) = match action {
        Action::PowerOff => (libc::RB_POWER_OFF, "powering off"),
        Action::Reboot => (libc::RB_AUTOBOOT, "rebooting"),
    };
    say(what);
    // SAFETY: reboot(2) as PID 1; on success it does not return.
    unsafe { libc::reboot(cmd) };
    say(&format!(
        "{what} failed: {}; halted (it is safe to switch off)",
        std::io::Error::last_os_error()
    ));
    // PID 1 must not exit: that panics the kernel.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
        reap();
    }
}

/// PID 1's main loop, once serving: never returns. Reaps orphans, prints
/// the status line every `status_every`, starts the rescue shell when a
/// line is typed on the console, and on SIGINT (Ctrl-Alt-Del), SIGUSR1,
/// SIGUSR2, SIGPWR, SIGTERM or a power-button press runs `shutdown`, then
/// syncs, stops the other processes, unmounts and powers off (SIGTERM,
/// which busybox `reboot` sends: reboots).
pub fn supervise(opts: SuperviseOpts) -> ! {
    if let Err(e) = signals::install() {
        say(&format!(
            "signals: {e}; only the power button can shut down"
        ));
    }
    // This thread takes the signals; every other thread blocks them.
    signals::unblock_in_this_thread();
    let SuperviseOpts {
        status,
        shutdown,
        shell,
        status_every,
    } = opts;
    let mut sup = Supervisor {
        opts_status: status,
        shell_path: shell.filter(|p| p.exists()),
        status_every: status_every.max(Duration::from_secs(1)),
        shell: None,
        console_open: true,
        buttons: PowerButtons::new(Path::new("/dev/input")),
    };
    let (action, why) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sup.run())) {
        Ok(a) => a,
        Err(_) => (
            Action::PowerOff,
            "internal error in the supervisor".to_string(),
        ),
    };
    say(&format!(
        "shutting down: {why}; stopping the iSCSI target and flushing every LUN"
    ));
    if let Some(s) = &sup.shell {
        // SAFETY: signalling the shell's session.
        unsafe { libc::kill(-s.pid, libc::SIGHUP) };
    }
    run_shutdown(shutdown);
    finish(action)
}
