//! bootlun as PID 1 of the boot ramdisk.
//!
//! `bootlun init` calls, in order:
//!
//! 1. [`setup_system`]: the virtual file systems, the console, hostname,
//!    loopback, Ctrl-Alt-Del as a signal, and the signal handlers (before
//!    any thread exists, so every later thread inherits the blocked mask);
//! 2. [`coldplug`]: kernel modules for the devices present, plus file
//!    system modules;
//! 3. [`kernel_cmdline_settings`]: `bootlun.KEY=VALUE` words;
//! 4. [`wait_for_devices`]: until the disks named by the configuration
//!    exist (no udev here: identifiers come from `bootlun_engine::blkid`);
//! 5. starts the target and PXE sidecars, then hands over to
//!    [`supervise`], which reaps orphans, shows a status line, offers a
//!    rescue shell, and shuts down cleanly on a signal or the power button.
//!
//! `bootlun shutdown` is [`request_shutdown`].

mod coldplug;
mod input;
mod signals;
mod supervise;

pub use coldplug::{coldplug, coldplug_in, modaliases, Coldplug, ColdplugReport};
pub use input::{has_key, is_power_press, parse_events, InputEvent, KEY_POWER};
pub use supervise::{supervise, Action, SuperviseOpts};

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Mount points `setup_system` mounted itself, in mount order; shutdown
/// unmounts them last, in reverse.
static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Print one line on the console (stdout once [`setup_system`] has run).
pub(crate) fn say(msg: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "bootlun: {msg}");
    let _ = out.flush();
}

fn errno_str(e: &std::io::Error) -> String {
    e.to_string()
}

/// True when `path` is a mount point: it lives on another device than its
/// parent (the root counts as mounted).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(parent) {
        Ok(p) => p.dev() != m.dev() || p.ino() == m.ino(),
        Err(_) => false,
    }
}

fn mount_one(fstype: &str, target: &str, flags: libc::c_ulong, data: &str) -> Result<(), String> {
    let t = Path::new(target);
    if let Err(e) = std::fs::create_dir_all(t) {
        return Err(format!("{target}: {e}"));
    }
    if is_mount_point(t) {
        return Ok(());
    }
    let c = |s: &str| CString::new(s).map_err(|_| format!("{target}: NUL in mount argument"));
    let (src, tgt, ty, dat) = (c(fstype)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            dat.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Already mounted (a stacked attempt) is what we wanted anyway.
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Ok(());
        }
        return Err(format!("mount {fstype} on {target}: {}", errno_str(&e)));
    }
    if let Ok(mut m) = MOUNTED.lock() {
        m.push(t.to_path_buf());
    }
    Ok(())
}

/// Mount points mounted by [`setup_system`], in mount order.
pub fn mounted_by_init() -> Vec<PathBuf> {
    MOUNTED.lock().map(|m| m.clone()).unwrap_or_default()
}

/// An open fd that is not /dev/null (char device 1:3).
fn fd_is_usable(fd: i32) -> bool {
    // SAFETY: libc::stat is plain integers, for which all zeros is a valid
    // value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat struct into `st`, which is live and
    // exclusively borrowed for the call; a bad fd is an error return.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let is_chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    !(is_chr && libc::major(st.st_rdev) == 1 && libc::minor(st.st_rdev) == 3)
}

/// Put fds 0, 1 and 2 on /dev/console. The kernel opens the console for
/// init only if the initramfs has a /dev/console node; with devtmpfs
/// mounted it exists either way.
fn console_stdio() -> Result<(), String> {
    let path = CString::new("/dev/console").map_err(|e| e.to_string())?;
    // SAFETY: valid path; the fd is dup'ed onto 0-2 and closed if extra.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(format!(
            "/dev/console: {}",
            errno_str(&std::io::Error::last_os_error())
        ));
    }
    for t in 0..3 {
        if fd != t {
            // SAFETY: both fds valid.
            unsafe { libc::dup2(fd, t) };
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Prepare the machine for bootlun, as PID 1: mount /proc, /sys, /dev
/// (devtmpfs), /dev/pts, /dev/shm, /run and /tmp; put stdin/out/err on
/// /dev/console when the kernel could not; hostname `bootlun`; loopback up; Ctrl-Alt-Del becomes
/// SIGINT to us; install the signal handlers [`supervise`] waits on, with
/// those signals blocked in this thread so every thread started later
/// leaves them to the supervisor.
///
/// Call it first, before any thread starts. Mounts already there are
/// kept. Errors are collected: everything that can be done is done, and
/// the error lists what failed. Refuses to run when not PID 1 (it would
/// mount over the host's /tmp and rename it).
pub fn setup_system() -> Result<(), String> {
    if std::process::id() != 1 {
        return Err("not PID 1: system set-up is only done by the ramdisk's init".into());
    }
    let mut problems: Vec<String> = Vec::new();
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, libc::c_ulong, &str); 7] = [
        ("proc", "/proc", nosuid_nodev_noexec, ""),
        ("sysfs", "/sys", nosuid_nodev_noexec, ""),
        ("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=0620,ptmxmode=0666",
        ),
        (
            "tmpfs",
            "/dev/shm",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        (
            "tmpfs",
            "/tmp",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
    ];
    for (ty, target, flags, data) in mounts {
        if let Err(e) = mount_one(ty, target, flags, data) {
            problems.push(e);
        }
    }
    // The kernel opens /dev/console as fds 0-2 when the initramfs has that
    // node; otherwise init starts without them, and Rust's start-up code
    // puts /dev/null there (or aborts if that is missing too: the image
    // must have /dev/console and /dev/null). Either way, fix it here.
    if (0..3).any(|fd| !fd_is_usable(fd)) {
        if let Err(e) = console_stdio() {
            problems.push(e);
        }
    }
    // What a shell on the console expects to find in /dev.
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, link);
    }
    // The kernel gives init only HOME and TERM; children (the rescue
    // shell, mount helpers) need a PATH. Single-threaded here.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(b"bootlun".as_ptr() as *const libc::c_char, 7) } != 0 {
        problems.push(format!(
            "hostname: {}",
            errno_str(&std::io::Error::last_os_error())
        ));
    }
    if let Err(e) = bootlun_pxe::netlink::link_up("lo") {
        problems.push(e);
    }
    // Ctrl-Alt-Del: a SIGINT to PID 1 instead of an immediate reboot that
    // would lose whatever the LUNs still cache. (Refused inside a PID
    // namespace, where it does not matter.)
    // SAFETY: plain syscall.
    if unsafe { libc::reboot(libc::RB_DISABLE_CAD) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            problems.push(format!("Ctrl-Alt-Del: {}", errno_str(&e)));
        }
    }
    if let Err(e) = signals::install() {
        problems.push(e);
    }
    signals::block_in_this_thread();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `bootlun.KEY=VALUE` words of a kernel command line, as (KEY, VALUE);
/// `bootlun.KEY` alone means `true`. Quotes are taken as the kernel takes
/// them: double quotes group words (`bootlun.cmdline-default="ro quiet"`)
/// and are removed. Later words repeat keys; all are returned in order.
pub fn kernel_cmdline_settings(cmdline: &str) -> Vec<(String, String)> {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                started = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    words
        .into_iter()
        .filter_map(|w| {
            let rest = w.strip_prefix("bootlun.")?;
            let (k, v) = match rest.split_once('=') {
                Some((k, v)) => (k, v.to_string()),
                None => (rest, "true".to_string()),
            };
            (!k.is_empty()).then(|| (k.to_string(), v))
        })
        .collect()
}

/// Names of the block devices the kernel has, for error messages.
fn present_block_devices() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("ram") && !n.starts_with("loop"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

/// The "still missing" hook of [`wait_for_devices_with`]: it is handed
/// the progress callback to report through.
pub type Again<'a> = dyn FnMut(&mut dyn FnMut(&str)) + 'a;

/// [`wait_for_devices`] with another resolver, poll interval and
/// "still missing" hook (tests). `again` runs every couple of seconds
/// while something is missing.
pub fn wait_for_devices_with(
    specs: &[String],
    timeout: Duration,
    say: &mut dyn FnMut(&str),
    resolve: &mut dyn FnMut(&str) -> Result<Option<PathBuf>, String>,
    interval: Duration,
    again: &mut Again<'_>,
) -> Result<Vec<PathBuf>, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut next_say = start + Duration::from_secs(3);
    let mut next_again = start + Duration::from_secs(2);
    let mut found: Vec<Option<PathBuf>> = vec![None; specs.len()];
    loop {
        for (i, s) in specs.iter().enumerate() {
            if found[i].is_none() {
                // A malformed or ambiguous spec will not get better by waiting.
                found[i] = resolve(s)?;
            }
        }
        let missing: Vec<&str> = specs
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(s, _)| s.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "{} did not appear within {} s (block devices present: {}); check the name or raise disk-timeout",
                missing.join(", "),
                timeout.as_secs(),
                present_block_devices()
            ));
        }
        if now >= next_again {
            again(say);
            next_again = Instant::now() + Duration::from_secs(2);
        }
        if now >= next_say {
            let left = deadline.saturating_duration_since(now).as_secs();
            say(&format!(
                "waiting for {} ({left} s left)",
                missing.join(", ")
            ));
            next_say = now + Duration::from_secs(3);
        }
        // Polling: without udev there is no event to wait on short of a
        // uevent netlink socket, which buys nothing for a once-per-boot wait.
        std::thread::sleep(interval.min(deadline.saturating_duration_since(now)));
    }
}

/// Wait (at most `timeout`) until every spec names a present device: a
/// path, `UUID=`, `PARTUUID=`, `LABEL=`, `PARTLABEL=` or `serial=`. Says
/// every few seconds on the console which ones are still missing; while
/// waiting, runs more [`coldplug`] rounds for devices that appeared late. Returns
/// the device paths in spec order; the error names the ones that never
/// appeared.
pub fn wait_for_devices(
    specs: &[String],
    timeout: Duration,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<PathBuf>, String> {
    wait_for_devices_with(
        specs,
        timeout,
        say,
        &mut |s| bootlun_engine::blkid::resolve(s),
        Duration::from_millis(250),
        // Devices behind buses that enumerate slowly (USB) appear after
        // coldplug finished: give them their drivers too.
        &mut |say| {
            let more = coldplug::coldplug_again();
            if !more.is_empty() {
                say(&format!("modules: loaded {}", more.join(" ")));
            }
        },
    )
}

/// Is PID 1 this program? Compares the executables, or failing that the
/// process name.
fn pid1_is_bootlun() -> bool {
    let exe1 = std::fs::read_link("/proc/1/exe").ok();
    let me = std::fs::read_link("/proc/self/exe").ok();
    if exe1.is_some() && exe1 == me {
        return true;
    }
    let named = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with("bootlun"))
    };
    if named(&exe1) {
        return true;
    }
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim().starts_with("bootlun"))
}

/// `bootlun shutdown`: ask PID 1 (bootlun) to stop the target, flush the
/// LUNs and power off. Exit status 2 when PID 1 is something else.
pub fn request_shutdown() -> std::process::ExitCode {
    if !pid1_is_bootlun() {
        eprintln!(
            "bootlun: PID 1 is not bootlun (this is not the bootlun ramdisk); to stop `bootlun serve`, send it SIGTERM"
        );
        return std::process::ExitCode::from(2);
    }
    // SAFETY: plain syscall.
    if unsafe { libc::kill(1, libc::SIGUSR2) } != 0 {
        eprintln!(
            "bootlun: cannot signal PID 1: {} (run as root)",
            std::io::Error::last_os_error()
        );
        return std::process::ExitCode::from(2);
    }
    eprintln!("bootlun: asked PID 1 to stop the target, flush every LUN and power off");
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn cmdline_words() {
        let c = "BOOT_IMAGE=/vmlinuz root=/dev/ram0 bootlun.lun=/dev/sda bootlun.cmdline-default=\"ro quiet\" \
                 quiet bootlun.verbose \"bootlun.menu-user=a b\" bootlun.x=a=b bootlun. bootlun.=3 bootlunx.y=1 \
                 bootlun.lun=UUID=12 bootlun.e= --  bootlun.after=1\n";
        assert_eq!(
            kernel_cmdline_settings(c),
            kv(&[
                ("lun", "/dev/sda"),
                ("cmdline-default", "ro quiet"),
                ("verbose", "true"),
                ("menu-user", "a b"),
                ("x", "a=b"),
                ("lun", "UUID=12"),
                ("e", ""),
                ("after", "1"),
            ])
        );
        assert!(kernel_cmdline_settings("").is_empty());
        // An unterminated quote runs to the end, like the kernel's parser.
        assert_eq!(
            kernel_cmdline_settings("bootlun.a=\"x y"),
            kv(&[("a", "x y")])
        );
        assert_eq!(
            kernel_cmdline_settings("bootlun.a=\"\" b"),
            kv(&[("a", "")])
        );
    }

    #[test]
    fn waits_until_every_device_appears() {
        let mut calls = 0u32;
        let mut said = Vec::new();
        let r = wait_for_devices_with(
            &["LABEL=a".into(), "/dev/b".into()],
            Duration::from_secs(60),
            &mut |m| said.push(m.to_string()),
            &mut |s| {
                calls += 1;
                // /dev/b shows up on the fifth look.
                Ok(match s {
                    "LABEL=a" => Some(PathBuf::from("/dev/a1")),
                    _ if calls >= 6 => Some(PathBuf::from("/dev/b")),
                    _ => None,
                })
            },
            Duration::from_millis(1),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(r, [PathBuf::from("/dev/a1"), PathBuf::from("/dev/b")]);
        // LABEL=a is resolved once and then not asked again.
        assert_eq!(calls, 6);

        let e = wait_for_devices_with(
            &["UUID=x".into(), "LABEL=y".into(), "LABEL=z".into()],
            Duration::from_millis(20),
            &mut |_| {},
            &mut |s| Ok((s == "LABEL=y").then(|| PathBuf::from("/dev/y"))),
            Duration::from_millis(1),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            e.starts_with("UUID=x, LABEL=z did not appear within 0 s (block devices present: "),
            "{e}"
        );
        let e = wait_for_devices_with(
            &["FOO=1".into()],
            Duration::from_secs(60),
            &mut |_| {},
            &mut |s| bootlun_engine::blkid::resolve(s),
            Duration::from_millis(1),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.contains("unknown key FOO"), "{e}");
    }

    #[test]
    fn late_devices_get_another_coldplug_round() {
        // The disk exists only once the extra round has loaded its driver.
        let loaded = std::cell::Cell::new(false);
        let mut said = Vec::new();
        let r = wait_for_devices_with(
            &["LABEL=usb".into()],
            Duration::from_secs(60),
            &mut |m| said.push(m.to_string()),
            &mut |_| Ok(loaded.get().then(|| PathBuf::from("/dev/sdb1"))),
            Duration::from_millis(10),
            &mut |say| {
                loaded.set(true);
                say("modules: loaded usb_storage");
            },
        )
        .unwrap();
        assert_eq!(r, [PathBuf::from("/dev/sdb1")]);
        assert_eq!(said, ["modules: loaded usb_storage"]);
    }

    #[test]
    fn setup_refuses_outside_pid1() {
        if std::process::id() != 1 {
            assert!(setup_system().unwrap_err().contains("not PID 1"));
        }
    }
}
