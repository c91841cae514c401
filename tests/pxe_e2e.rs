//! End to end with real firmware: `bootlun serve --pxe-interface` in a
//! private network namespace, QEMU (TCG) network-booting from it over a
//! tap on a bridge, a small Debian kernel and a busybox initramfs whose
//! /init prints the kernel command line to the serial console and powers
//! off. The test passes when the command line the guest booted with carries
//! the iSCSI root arguments the menu generated.
//!
//! Scenarios: SeaBIOS + iPXE ROM, OVMF + iPXE EFI ROM, OVMF's own PXE
//! (no ROM) chaining snponly.efi over TFTP (all `--boot-method netroot`);
//! OVMF + iPXE with `--boot-method ibft` (iPXE logs in to the target and
//! the kernel must see an iBFT); SeaBIOS + iPXE `sanboot` of a LUN whose
//! boot sector prints a marker; OVMF + iPXE with `--menu-user/--menu-password`,
//! the test typing the credentials into iPXE's login form.
//!
//! Needs root, `ip`, `qemu-system-x86_64`, the `ipxe-qemu`/`ipxe`/`ovmf`
//! packages and `apt-get download` access for `linux-image-amd64` and
//! `busybox-static` (cached in `$BOOTLUN_E2E_CACHE`, default
//! `$CARGO_TARGET_TMPDIR/pxe-e2e-cache`). Skips (passing, with a message)
//! when any is missing; `BOOTLUN_E2E=0` skips too. `BOOTLUN_E2E_ONLY=a,b`
//! runs only the named scenarios.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVER_IP: &str = "10.77.0.1";
const MARKER: &str = "BOOTLUN-CMDLINE:";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const GUEST_CMDLINE: &str = "console=ttyS0 tsc=reliable clocksource=tsc panic=-1 quiet";
const IPXE_ROM_BIOS: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
const IPXE_ROM_EFI: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
const IQN: &str = "iqn.2026-11.org.bootlun:e2e";

fn run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}{}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(p: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {p}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if std::env::var("BOOTLUN_E2E").as_deref() == Ok("0") {
        return Some("BOOTLUN_E2E=0".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (needs network namespaces and taps)".into());
    }
    for t in [
        "ip",
        "qemu-system-x86_64",
        "apt-get",
        "apt-cache",
        "dpkg-deb",
    ] {
        if !which(t) {
            return Some(format!("{t} not installed"));
        }
    }
    for f in [IPXE_ROM_BIOS, "/dev/net/tun"] {
        if !Path::new(f).exists() {
            return Some(format!("{f} missing"));
        }
    }
    None
}

// ---------------------------------------------------------------- assets

fn cache_dir() -> PathBuf {
    let d = std::env::var_os("BOOTLUN_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("pxe-e2e-cache"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `apt-get download` of `pkg` into the cache (once); returns the .deb.
fn fetch_deb(cache: &Path, pkg: &str) -> Result<PathBuf, String> {
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")
            })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let st = Command::new("apt-get")
        .args(["download", "-q", pkg])
        .current_dir(cache)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("apt-get download {pkg}: {e}"))?;
    if !st.success() {
        return Err(format!("apt-get download {pkg} failed"));
    }
    find().ok_or_else(|| {
        format!(
            "apt-get download {pkg}: no .deb appeared in {}",
            cache.display()
        )
    })
}

/// The real kernel package behind the `linux-image-amd64` metapackage.
fn kernel_package() -> Result<String, String> {
    let out = run(&["apt-cache", "depends", "linux-image-amd64"])?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
        .map(str::to_string)
        .ok_or_else(|| "apt-cache depends linux-image-amd64: no linux-image dependency".into())
}

/// Extract `deb` into `cache/<name>` once and return that directory.
fn extract(cache: &Path, deb: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = cache.join(name);
    let stamp = dir.join(".extracted");
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(&[
            "dpkg-deb",
            "-x",
            deb.to_str().unwrap(),
            dir.to_str().unwrap(),
        ])?;
        std::fs::write(&stamp, "").unwrap();
    }
    Ok(dir)
}

fn kernel_and_busybox() -> Result<(PathBuf, PathBuf), String> {
    let cache = cache_dir();
    let kpkg = kernel_package()?;
    let kdeb = fetch_deb(&cache, &kpkg)?;
    let kdir = extract(&cache, &kdeb, &kpkg)?;
    let vmlinuz = std::fs::read_dir(kdir.join("boot"))
        .map_err(|e| format!("{kpkg}: {e}"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .ok_or_else(|| format!("{kpkg}: no boot/vmlinuz-*"))?;
    let bdeb = fetch_deb(&cache, "busybox-static")?;
    let bdir = extract(&cache, &bdeb, "busybox-static")?;
    let busybox = bdir.join("bin/busybox");
    if !busybox.exists() {
        return Err("busybox-static: no bin/busybox".into());
    }
    Ok((vmlinuz, busybox))
}

/// A cpio "newc" archive writer (what the kernel unpacks as initramfs).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), b"");
        self.out
    }
}

fn initramfs(busybox: &Path) -> Vec<u8> {
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo \"{MARKER} $(/bin/busybox cat /proc/cmdline)\"\n\
         /bin/busybox poweroff -f\n"
    );
    let mut c = Cpio::new();
    for d in ["bin", "dev", "proc", "sys"] {
        c.entry(d, 0o040755, (0, 0), b"");
    }
    c.entry("dev/console", 0o020600, (5, 1), b"");
    c.entry(
        "bin/busybox",
        0o100755,
        (0, 0),
        &std::fs::read(busybox).unwrap(),
    );
    c.entry("bin/sh", 0o120777, (0, 0), b"busybox");
    c.entry("init", 0o100755, (0, 0), init.as_bytes());
    c.finish()
}

// ---------------------------------------------------------------- network

/// A network namespace with bridge `br0` (10.77.0.1/24) and tap `tap0`
/// enslaved to it; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("bootlun-e2e-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        let n = ns.name.clone();
        let ip = |args: &[&str]| -> Result<String, String> {
            let mut v = vec!["ip", "-n", n.as_str()];
            v.extend_from_slice(args);
            run(&v)
        };
        // No DAD: the bridge's link-local address is usable at once (RA).
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
        ]);
        ip(&["link", "set", "lo", "up"])?;
        ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        run(&[
            "ip", "netns", "exec", &ns.name, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap",
        ])?;
        ip(&["link", "set", "tap0", "master", "br0"])?;
        ip(&["link", "set", "tap0", "up"])?;
        Ok(ns)
    }

    fn exec(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// Sends IPv6 router advertisements (router lifetime 0, no prefixes) on
/// br0 every 500 ms, so iPXE ends its IPv6 autoconfiguration at once
/// instead of waiting ~13 s for a router. Best effort.
struct RaSender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RaSender {
    fn start(ns: &str) -> RaSender {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = format!("/run/netns/{ns}");
        let thread = std::thread::spawn(move || {
            // This thread alone moves into the namespace.
            let Ok(f) = std::fs::File::open(&path) else {
                return;
            };
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscalls on valid descriptors and buffers.
            unsafe {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return;
                }
                let s = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
                if s < 0 {
                    return;
                }
                let dev = b"br0\0";
                libc::setsockopt(
                    s,
                    libc::SOL_SOCKET,
                    libc::SO_BINDTODEVICE,
                    dev.as_ptr().cast(),
                    4,
                );
                let hops: libc::c_int = 255;
                let hp = (&hops as *const libc::c_int).cast();
                let hl = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                libc::setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, hp, hl);
                libc::setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, hp, hl);
                let idx = libc::if_nametoindex(dev.as_ptr().cast()) as libc::c_int;
                libc::setsockopt(
                    s,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_IF,
                    (&idx as *const libc::c_int).cast(),
                    hl,
                );
                // Type 134, code 0, checksum (kernel), hop limit, flags,
                // router lifetime 0, reachable 0, retrans 0.
                let ra = [134u8, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let mut dst: libc::sockaddr_in6 = std::mem::zeroed();
                dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                dst.sin6_addr.s6_addr = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                dst.sin6_scope_id = idx as u32;
                while !stop2.load(Ordering::SeqCst) {
                    libc::sendto(
                        s,
                        ra.as_ptr().cast(),
                        ra.len(),
                        0,
                        (&dst as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                libc::close(s);
            }
        });
        RaSender {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RaSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- processes

/// A child whose output is collected by a thread; killed on drop.
struct Proc {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        eprintln!("pxe_e2e: started {what} (pid {})", child.id());
        let out = Arc::new(Mutex::new(Vec::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                // Chunks, not lines: firmware menus draw without newlines.
                let mut r = r;
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Proc { child, out }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Type on the child's stdin (QEMU's serial console).
    fn type_text(&mut self, s: &str) {
        if let Some(i) = self.child.stdin.as_mut() {
            let _ = i.write_all(s.as_bytes());
            let _ = i.flush();
        }
    }

    /// Wait until a line satisfies `f`, the process exits, or `limit`.
    fn wait_line(&mut self, limit: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        let t = Instant::now();
        loop {
            if let Some(l) = self.text().lines().find(|l| f(l)) {
                return Some(l.to_string());
            }
            if t.elapsed() > limit {
                return None;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return self.text().lines().find(|l| f(l)).map(str::to_string);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- scenarios

/// What the server offers and what the guest must show.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Kernel with dracut `netroot=iscsi:` arguments.
    Netroot,
    /// iPXE sanhooks the LUN (iSCSI login to bootlun), publishes an iBFT,
    /// then boots the kernel with `rd.iscsi.firmware=1`.
    Ibft,
    /// iPXE sanboots the LUN, whose boot sector prints a marker.
    Sanboot,
    /// Netroot behind `--menu-user/--menu-password`: the test types the
    /// credentials into iPXE's login form on the serial console.
    Login,
}

struct Scenario {
    name: &'static str,
    /// `romfile=` value; empty = the firmware's own PXE.
    rom: &'static str,
    uefi: bool,
    mode: Mode,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "bios-ipxe-rom",
        rom: IPXE_ROM_BIOS,
        uefi: false,
        mode: Mode::Netroot,
    },
    Scenario {
        name: "uefi-ipxe-rom",
        rom: IPXE_ROM_EFI,
        uefi: true,
        mode: Mode::Netroot,
    },
    Scenario {
        name: "uefi-pxe-snponly",
        rom: "",
        uefi: true,
        mode: Mode::Netroot,
    },
    Scenario {
        name: "uefi-ipxe-ibft",
        rom: IPXE_ROM_EFI,
        uefi: true,
        mode: Mode::Ibft,
    },
    Scenario {
        name: "bios-ipxe-sanboot",
        rom: IPXE_ROM_BIOS,
        uefi: false,
        mode: Mode::Sanboot,
    },
    Scenario {
        name: "uefi-ipxe-login",
        rom: IPXE_ROM_EFI,
        uefi: true,
        mode: Mode::Login,
    },
];

const MENU_USER: &str = "admin";
const MENU_PASSWORD: &str = "s3cret";
const SANBOOT_MARKER: &str = "BOOTLUN-SANBOOT-OK";

/// The MBR of a disk whose boot code prints [`SANBOOT_MARKER`] on COM1
/// and halts.
fn sanboot_disk() -> Vec<u8> {
    let mut code: Vec<u8> = vec![
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, 0x17, 0x7C, // mov si, 0x7c17 (message)
        0xFC, // cld
        0xAC, // next: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp next
        0xFA, // done: cli
        0xF4, // hlt
        0xEB, 0xFC, // jmp done
    ];
    assert_eq!(code.len(), 0x17);
    code.extend_from_slice(format!("\r\n{SANBOOT_MARKER}\r\n\0").as_bytes());
    let mut mbr = vec![0u8; 512];
    mbr[..code.len()].copy_from_slice(&code);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn qemu(ns: &Netns, sc: &Scenario, work: &Path) -> Command {
    let mut c = ns.exec("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
    ]);
    c.args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    c.args(["-device", &format!("virtio-net-pci,disable-legacy=on,netdev=n0,mac=52:54:00:77:00:02,romfile={},bootindex=1", sc.rom)]);
    if sc.uefi {
        let vars = work.join(format!("OVMF_VARS.{}.fd", sc.name));
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        c.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        ]);
        c.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    } else {
        c.args(["-boot", "n"]);
    }
    c
}

fn boot_one(ns: &Netns, sc: &Scenario, work: &Path) -> Result<String, String> {
    let mut q = Proc::spawn(qemu(ns, sc, work), &format!("qemu ({})", sc.name));
    if sc.mode == Mode::Login {
        // iPXE's login form: Enter moves from the user name to the
        // password field, and submits from there.
        if q.wait_line(BOOT_TIMEOUT, |l| l.contains("Username"))
            .is_none()
        {
            return Err(format!(
                "{}: no login form on the console:\n{}",
                sc.name,
                q.text()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
        for chunk in [MENU_USER, "\r", MENU_PASSWORD, "\r"] {
            q.type_text(chunk);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let line = if sc.mode == Mode::Sanboot {
        q.wait_line(BOOT_TIMEOUT, |l| l.contains(SANBOOT_MARKER))
    } else {
        q.wait_line(BOOT_TIMEOUT, |l| {
            l.contains(MARKER) && l.contains("console=ttyS0")
        })
    };
    let text = q.text();
    q.stop();
    match line {
        Some(_) if sc.mode == Mode::Sanboot => {
            Ok(format!("(boot sector of LUN 0 printed {SANBOOT_MARKER})"))
        }
        Some(l) if sc.mode == Mode::Ibft && !text.contains("ACPI: iBFT") => Err(format!(
            "{}: booted, but the kernel saw no iBFT ACPI table: {}",
            sc.name,
            l.trim()
        )),
        Some(l) => Ok(l[l.find(MARKER).unwrap() + MARKER.len()..]
            .trim()
            .to_string()),
        None => {
            let tail: String = text
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(format!(
                "{}: no `{MARKER}` line within {BOOT_TIMEOUT:?}; serial tail:\n{tail}",
                sc.name
            ))
        }
    }
}

#[test]
fn pxe_boot_with_real_firmware() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("pxe_e2e skipped: {why}");
        return;
    }
    let t0 = Instant::now();
    let (vmlinuz, busybox) = match kernel_and_busybox() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pxe_e2e skipped: test kernel/busybox unavailable: {e}");
            return;
        }
    };
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pxe-e2e.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let boot = work.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::copy(&vmlinuz, boot.join("vmlinuz-e2e")).unwrap();
    std::fs::write(boot.join("initrd.img-e2e"), initramfs(&busybox)).unwrap();
    eprintln!(
        "pxe_e2e: assets ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let disk = work.join("sanboot.img");
    std::fs::write(&disk, sanboot_disk()).unwrap();
    // Sparse 32 MiB: iPXE's INT 13 emulation guesses 255 heads x 63
    // sectors and cannot address a disk smaller than one such cylinder.
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let ns = Netns::create().expect("network namespace");
    let _ra = RaSender::start(&ns.name);
    let start_server = |mode: Mode| -> Proc {
        let mut serve = ns.exec(env!("CARGO_BIN_EXE_bootlun"));
        serve.arg("serve");
        match mode {
            Mode::Sanboot => {
                serve.args(["--lun", disk.to_str().unwrap(), "--boot-method", "sanboot"])
            }
            Mode::Ibft => serve.args(["--lun", "ram:64M", "--boot-method", "ibft"]),
            Mode::Netroot => serve.args(["--lun", "ram:64M"]),
            Mode::Login => serve.args([
                "--lun",
                "ram:64M",
                "--menu-user",
                MENU_USER,
                "--menu-password",
                MENU_PASSWORD,
            ]),
        };
        serve
            .args([
                "--listen",
                &format!("{SERVER_IP}:3260"),
                "--target-name",
                IQN,
            ])
            .args([
                "--pxe-interface",
                "br0",
                "--boot-dir",
                boot.to_str().unwrap(),
            ])
            .args(["--cmdline-default", GUEST_CMDLINE, "--menu-timeout", "0"])
            .env("RUST_LOG", "info");
        let mut server = Proc::spawn(serve, &format!("bootlun serve ({mode:?})"));
        if server
            .wait_line(Duration::from_secs(30), |l| l.contains("listening on"))
            .is_none()
        {
            panic!("bootlun serve did not start:\n{}", server.text());
        }
        server
    };
    let mut server: Option<(Mode, Proc)> = None;
    let mut log = String::new();

    let only = std::env::var("BOOTLUN_E2E_ONLY").ok();
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for sc in SCENARIOS {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|o| o == sc.name))
        {
            continue;
        }
        if sc.uefi && !Path::new(OVMF_CODE).exists() {
            eprintln!("pxe_e2e: {}: skipped, {OVMF_CODE} missing", sc.name);
            continue;
        }
        if !sc.rom.is_empty() && !Path::new(sc.rom).exists() {
            eprintln!("pxe_e2e: {}: skipped, {} missing", sc.name, sc.rom);
            continue;
        }
        if server.as_ref().map(|(m, _)| *m) != Some(sc.mode) {
            if let Some((_, mut old)) = server.take() {
                old.stop();
                log.push_str(&old.text());
            }
            server = Some((sc.mode, start_server(sc.mode)));
        }
        let t = Instant::now();
        let r = boot_one(&ns, sc, &work);
        let secs = t.elapsed().as_secs_f64();
        times.push((sc.name, secs));
        let cmdline = match r {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        eprintln!("pxe_e2e: {}: booted in {secs:.1}s: {cmdline}", sc.name);
        let mut problems = Vec::new();
        let (want, unwanted): (Vec<String>, Vec<&str>) = match sc.mode {
            Mode::Netroot | Mode::Login => (
                vec![
                    format!("netroot=iscsi:{SERVER_IP}::::{IQN}"),
                    "initrd=initrd.img-e2e".into(),
                    "ip=dhcp".into(),
                    "rd.iscsi.initiator=".into(),
                    "tsc=reliable".into(),
                ],
                vec!["rd.iscsi.firmware=1"],
            ),
            Mode::Ibft => (
                vec![
                    "rd.iscsi.firmware=1".into(),
                    "initrd=initrd.img-e2e".into(),
                    "tsc=reliable".into(),
                ],
                vec!["netroot="],
            ),
            Mode::Sanboot => (vec![], vec![]),
        };
        for w in &want {
            if !cmdline.contains(w.as_str()) {
                problems.push(format!("missing {w}"));
            }
        }
        for u in unwanted {
            if cmdline.contains(u) {
                problems.push(format!("unexpected {u}"));
            }
        }
        if cmdline.split_whitespace().any(|a| a == "quiet") {
            problems.push("`quiet` was not stripped".into());
        }
        if sc.mode == Mode::Login {
            // iPXE asked without credentials first, then with them.
            let log = server.as_ref().map(|(_, p)| p.text()).unwrap_or_default();
            for want in ["\"GET /menu.ipxe\" 401", "\"GET /menu.ipxe\" 200"] {
                if !log.contains(want) {
                    problems.push(format!("server log lacks {want}"));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}: {cmdline}", sc.name, problems.join(", ")));
        }
    }
    if let Some((_, mut s)) = server.take() {
        s.stop();
        log.push_str(&s.text());
    }
    drop(ns);
    eprintln!("pxe_e2e timings:");
    for (n, s) in &times {
        eprintln!("  {n:<20} {s:6.1}s");
    }
    eprintln!("  {:<20} {:6.1}s", "total", t0.elapsed().as_secs_f64());
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        let _ =
            std::io::stderr().write_all(format!("--- bootlun serve log ---\n{log}\n").as_bytes());
        panic!(
            "{} scenario(s) failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}
