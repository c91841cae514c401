//! The user journey, proven in virtual machines (QEMU, TCG).
//!
//! An OS disk is built on the host: GPT, an ext4 boot partition with a
//! Debian kernel, a "dracut-style" initramfs (`init.sh`: busybox +
//! open-iscsi's `iscsistart`) and a BootLoaderSpec entry, and an ext4 root
//! partition with a random marker. A diskless initiator VM (SeaBIOS + the
//! iPXE virtio ROM) network-boots that disk from bootlun:
//!
//! 1. `--boot-method netroot`: DHCP, the iPXE menu and the kernel over
//!    HTTP, the initramfs logs in with the `netroot=` arguments, mounts the
//!    root partition over iSCSI and prints `BOOT-OK <marker>`. On this first
//!    boot it also "installs a new kernel" on the boot partition, over
//!    iSCSI (a copy of the kernel and a BLS entry with a higher version and
//!    `e2e.kernel=new`).
//! 2. Same target, still running: the next boot must offer and boot the
//!    new entry (`e2e.kernel=new` on the guest's `/proc/cmdline`).
//! 3. The target is stopped; the host reads the file the guest wrote last
//!    (`/e2e-written`, a random string the guest printed) from the image.
//! 4. `--boot-method ibft`: iPXE `sanhook`s the LUN, the kernel sees the
//!    iBFT, the initramfs logs in with `iscsistart -b`; checked the same way.
//!
//! Two tests, same journey:
//! * `journey_host_serve`: `bootlun serve` runs on the host inside the
//!   namespace, with the boot partition as a read-only loop device
//!   (`--boot-device /dev/loopN`); stopped with SIGTERM.
//! * `journey_target_vm`: the target is a second VM booting
//!   `bootlun image build`'s kernel and initramfs with bootlun as PID 1, the
//!   OS disk as its virtio disk; stopped with the ACPI power button, after
//!   which bootlun must flush and power off by itself.
//!
//! Both VMs share bridge `br0` in a network namespace the test creates and
//! deletes. Every stage is bounded; the consoles are printed on failure and
//! a table of stage times at the end (`--nocapture`).
//!
//! Needs root, `qemu-system-x86` (TCG), `ipxe-qemu`, `e2fsprogs`, `fdisk`,
//! `mount` (losetup), `iproute2`, and `apt-get download` access for
//! `linux-image-amd64`, `busybox-static` and `open-iscsi` (cached in
//! `$BOOTLUN_E2E_CACHE`, default `target/tmp/deb-cache`).
//! `BOOTLUN_E2E_ECHO=1` echoes the consoles live; `BOOTLUN_E2E_KEEP=DIR`
//! keeps the OS disk of a failed run in DIR.

use testkit as common;
use testkit::vm;

mod assets;
mod net;
mod report;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use assets::{OsDisk, Packages};
use net::LoopDev;
use report::Report;
use testkit::{NetNs as Lan, RaSender};
use vm::{Capture, DebCache, Spawned};

const IQN: &str = "iqn.2026-11.org.bootlun:e2e";
const SERVER_IP: &str = "192.168.200.1";
const SERVER_CIDR: &str = "192.168.200.1/24";
const IPXE_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
const TAP_INITIATOR: &str = "tapi";
const TAP_TARGET: &str = "tapt";
/// Serial number of the OS disk in the target VM (virtio-blk `serial=`).
const TARGET_DISK_SERIAL: &str = "e2e-osdisk";
/// One initiator boot, firmware to power-off, under TCG.
const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// The target VM's boot until bootlun listens.
const TARGET_BOOT_LIMIT: Duration = Duration::from_secs(300);
/// ACPI power button (or SIGTERM) until the target has exited.
const TARGET_OFF_LIMIT: Duration = Duration::from_secs(120);
/// `bootlun image build`.
const IMAGE_BUILD_LIMIT: Duration = Duration::from_secs(900);
/// `cargo build-static` from cold, on two cores.
const STATIC_BUILD_LIMIT: Duration = Duration::from_secs(1200);

/// The two journeys boot VMs on a 2-core machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    HostServe,
    TargetVm,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Netroot,
    Ibft,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Netroot => "netroot",
            Method::Ibft => "ibft",
        }
    }
}

/// What one initiator boot must show.
struct Expect {
    method: Method,
    /// The boot must run the kernel the first boot installed.
    new_kernel: bool,
    /// The guest finds the upgrade flag and installs the new kernel.
    upgrade: bool,
}

/// A running target: `serve` on the host, or the target VM.
enum Target {
    Host { serve: Spawned, _boot: LoopDev },
    Vm { qemu: Spawned, monitor: PathBuf },
}

impl Target {
    fn console(&self) -> &Capture {
        match self {
            Target::Host { serve, .. } => &serve.out,
            Target::Vm { qemu, .. } => &qemu.out,
        }
    }
}

fn echo() -> bool {
    std::env::var("BOOTLUN_E2E_ECHO").as_deref() == Ok("1")
}

/// The last `n` lines of a capture, for failure messages.
fn tail(c: &Capture, n: usize) -> String {
    let lines = c.lines();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|(t, l)| format!("[{:7.2}s] {l}", t.as_secs_f64()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// False (skip) when something is missing and `BOOTLUN_SKIP_EXTERNAL=1`;
/// panics naming the package otherwise.
fn prerequisites(mode: Mode) -> bool {
    if !testkit::require_root() {
        return false;
    }
    let mut tools = vec![
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("mke2fs", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("ldd", "libc-bin"),
    ];
    if mode == Mode::HostServe {
        tools.push(("losetup", "mount"));
    }
    for (bin, pkg) in tools {
        if !common::require_tool(bin, pkg) {
            return false;
        }
    }
    testkit::require_file(IPXE_ROM, "ipxe-qemu")
        && testkit::require_file("/dev/net/tun", "kmod (modprobe tun)")
}

/// The statically linked bootlun, built as the README tells users to
/// (`cargo build-static`), into this test's own target directory.
fn static_bootlun() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .ok_or("no target directory")?
                .to_path_buf();
            let t = Instant::now();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .arg("build-static")
                .arg("--target-dir")
                .arg(&target_dir);
            let r = common::run_tool(&mut cmd, STATIC_BUILD_LIMIT);
            if !r.success() {
                return Err(format!(
                    "cargo build-static failed ({}):\n{}",
                    r.status, r.stderr
                ));
            }
            let bin = target_dir.join("x86_64-unknown-linux-gnu/release/bootlun");
            eprintln!(
                "e2e: cargo build-static took {:.1}s",
                t.elapsed().as_secs_f64()
            );
            Ok(bin)
        })
        .clone()
}

struct Journey {
    mode: Mode,
    work: common::TempDir,
    disk: OsDisk,
    busybox: PathBuf,
    kernel_deb: PathBuf,
    lan: Lan,
    _ra: RaSender,
    report: Report,
    failures: Vec<String>,
    boots: usize,
}

impl Journey {
    fn new(mode: Mode) -> Journey {
        let t0 = Instant::now();
        let work = common::TempDir::new(match mode {
            Mode::HostServe => "e2e-host",
            Mode::TargetVm => "e2e-vm",
        });
        let cache = DebCache::open();
        let pkgs = Packages::fetch(&cache);
        let disk = assets::build_os_disk(work.path(), &pkgs);
        eprintln!(
            "e2e: OS disk {} (kernel {}, initramfs {} KiB) built in {:.1}s",
            disk.path.display(),
            disk.version,
            disk.initrd_bytes / 1024,
            t0.elapsed().as_secs_f64()
        );
        let ns = format!(
            "bootlun-e2e-{}-{}",
            if mode == Mode::HostServe { "h" } else { "v" },
            std::process::id()
        );
        let lan = match mode {
            Mode::HostServe => Lan::lan(&ns, Some(SERVER_CIDR), &[TAP_INITIATOR]),
            Mode::TargetVm => Lan::lan(&ns, None, &[TAP_INITIATOR, TAP_TARGET]),
        };
        let ra = RaSender::start(&lan.name);
        let mut report = Report::new();
        report.note("assets (OS disk, initramfs)", t0.elapsed());
        Journey {
            busybox: pkgs.busybox.join("bin/busybox"),
            mode,
            work,
            disk,
            kernel_deb: pkgs.kernel_deb,
            lan,
            _ra: ra,
            report,
            failures: Vec::new(),
            boots: 0,
        }
    }

    fn fail(&mut self, msg: String) {
        eprintln!("e2e: FAILURE: {msg}");
        self.failures.push(msg);
    }

    // ------------------------------------------------------------ target

    fn start_target(&mut self, method: Method) -> Result<Target, String> {
        match self.mode {
            Mode::HostServe => self.start_host_serve(method),
            Mode::TargetVm => self.start_target_vm(method),
        }
    }

    fn start_host_serve(&mut self, method: Method) -> Result<Target, String> {
        // A fresh loop device per run: its page cache then holds nothing
        // from before the initiator's writes.
        let boot = LoopDev::attach(&self.disk.path, self.disk.boot_offset, self.disk.boot_bytes);
        let mut cmd = self.lan.command(env!("CARGO_BIN_EXE_bootlun"));
        cmd.arg("serve")
            .arg("--lun")
            .arg(&self.disk.path)
            .args(["--listen", &format!("{SERVER_IP}:3260")])
            .args(["--target-name", IQN])
            .args(["--pxe-interface", "br0"])
            .args(["--boot-device", &boot.dev, "--boot-path", "/"])
            .args(["--boot-method", method.name()])
            .args(["--menu-timeout", "0", "--log", "info"]);
        let t = Instant::now();
        let serve = Spawned::spawn("serve", &mut cmd, t, echo());
        if serve
            .out
            .wait_for(Duration::from_secs(30), |l| l.contains("listening on"))
            .is_none()
        {
            return Err(format!(
                "bootlun serve ({}) did not print `listening on` within 30 s:\n{}",
                method.name(),
                tail(&serve.out, 60)
            ));
        }
        self.report.note(
            &format!("target ({}) start to listening", method.name()),
            t.elapsed(),
        );
        Ok(Target::Host { serve, _boot: boot })
    }

    fn target_config(&self, method: Method) -> String {
        // Devices by identity, as on a real machine whose disk names move:
        // the LUN by the virtio serial number QEMU gives it, the boot
        // partition by its GPT name in one run and its file-system UUID in
        // the other (the ramdisk has no udev; bootlun resolves them).
        let lun = std::env::var("BOOTLUN_E2E_LUN")
            .unwrap_or_else(|_| format!("serial={TARGET_DISK_SERIAL}"));
        let boot = std::env::var("BOOTLUN_E2E_BOOT_DEVICE").unwrap_or_else(|_| match method {
            Method::Netroot => format!("PARTLABEL={}", assets::BOOT_PARTLABEL),
            Method::Ibft => format!("UUID={}", self.disk.boot_uuid),
        });
        format!(
            "# bootlun e2e target ({})\n\
             target-name = \"{IQN}\"\n\
             lun = [\"{lun}\"]\n\
             net-interface = \"eth0\"\n\
             net-address = \"{SERVER_CIDR}\"\n\
             pxe-interface = \"eth0\"\n\
             boot-device = \"{boot}\"\n\
             boot-path = \"/\"\n\
             boot-method = \"{}\"\n\
             menu-timeout = 0\n\
             poll = \"interrupt\"\n\
             buffers = 32\n",
            method.name(),
            method.name()
        )
    }

    /// `bootlun image build` for `method`; returns (kernel, initrd).
    fn build_image(&mut self, method: Method) -> Result<(PathBuf, PathBuf), String> {
        let conf = self.work.join(&format!("target-{}.toml", method.name()));
        std::fs::write(&conf, self.target_config(method)).map_err(|e| e.to_string())?;
        let out = self.work.join(&format!("image-{}", method.name()));
        let bin = static_bootlun()?;
        let t = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootlun"));
        cmd.args(["image", "build", "--kernel-deb"])
            .arg(&self.kernel_deb)
            .arg("--config")
            .arg(&conf)
            .arg("--out")
            .arg(&out)
            .arg("--bootlun-bin")
            .arg(&bin)
            .arg("--busybox")
            .arg(&self.busybox)
            // Both compressions the kernel must unpack, one per run.
            .args([
                "--compress",
                if method == Method::Ibft {
                    "gzip"
                } else {
                    "zstd"
                },
            ]);
        let r = common::run_tool(&mut cmd, IMAGE_BUILD_LIMIT);
        if !r.success() {
            return Err(format!(
                "{} failed ({}):\n{}\n{}",
                r.description, r.status, r.stdout, r.stderr
            ));
        }
        for want in ["bootlun    static", "busybox    yes"] {
            if !r.stderr.contains(want) && !r.stdout.contains(want) {
                return Err(format!(
                    "bootlun image build: the summary does not mention {want:?}:\n{}{}",
                    r.stdout, r.stderr
                ));
            }
        }
        self.report
            .note(&format!("image build ({})", method.name()), t.elapsed());
        let k = out.join("bootlun-kernel.bin");
        let i = out.join("bootlun-initrd.img");
        for f in [&k, &i] {
            if !f.is_file() {
                return Err(format!(
                    "bootlun image build: {} was not written",
                    f.display()
                ));
            }
        }
        Ok((k, i))
    }

    fn start_target_vm(&mut self, method: Method) -> Result<Target, String> {
        let (kernel, initrd) = self.build_image(method)?;
        let monitor = self.work.join(&format!("monitor-{}.sock", method.name()));
        let mut cmd = self.lan.command("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "1",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 tsc=reliable clocksource=tsc"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=os,cache=writeback",
            self.disk.path.display()
        ))
        .arg("-device")
        .arg(format!(
            "virtio-blk-pci,drive=os,serial={TARGET_DISK_SERIAL}"
        ))
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={TAP_TARGET},script=no,downscript=no"),
        ])
        .args([
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:e2:00:01,romfile=",
        ])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()));
        let t = Instant::now();
        let qemu = Spawned::spawn("target", &mut cmd, t, echo());
        if qemu
            .out
            .wait_for(TARGET_BOOT_LIMIT, |l| l.contains("listening on"))
            .is_none()
        {
            return Err(format!(
                "target VM ({}) did not print `listening on` within {TARGET_BOOT_LIMIT:?}; console:\n{}",
                method.name(),
                tail(&qemu.out, 120)
            ));
        }
        self.report.note(
            &format!("target VM ({}) boot to listening", method.name()),
            t.elapsed(),
        );
        Ok(Target::Vm { qemu, monitor })
    }

    /// Stops the target the way its user would: SIGTERM for `serve`, the
    /// ACPI power button for the VM. It must exit by itself, in time.
    fn stop_target(&mut self, target: Target, method: Method) -> Result<(), String> {
        let t = Instant::now();
        match target {
            Target::Host { mut serve, _boot } => {
                let st = serve.stop(libc::SIGTERM, TARGET_OFF_LIMIT);
                self.report.note(
                    &format!("target ({}) SIGTERM to exit", method.name()),
                    t.elapsed(),
                );
                match st {
                    Some(s) if s.success() => Ok(()),
                    other => Err(format!(
                        "bootlun serve ({}) after SIGTERM: {other:?} (want exit 0 within {TARGET_OFF_LIMIT:?}):\n{}",
                        method.name(),
                        tail(&serve.out, 40)
                    )),
                }
            }
            Target::Vm { mut qemu, monitor } => {
                let sent = UnixStream::connect(&monitor)
                    .and_then(|mut s| s.write_all(b"system_powerdown\n").map(|_| s));
                let sock = match sent {
                    Ok(s) => s,
                    Err(e) => {
                        return Err(format!(
                            "QEMU monitor {}: {e}; target console:\n{}",
                            monitor.display(),
                            tail(&qemu.out, 40)
                        ))
                    }
                };
                let st = qemu.wait(TARGET_OFF_LIMIT);
                drop(sock);
                self.report.note(
                    &format!("target VM ({}) power button to QEMU exit", method.name()),
                    t.elapsed(),
                );
                match st {
                    Some(s) if s.success() => Ok(()),
                    Some(s) => Err(format!(
                        "target VM ({}): QEMU exited with {s} after the ACPI power button; console:\n{}",
                        method.name(),
                        tail(&qemu.out, 60)
                    )),
                    None => Err(format!(
                        "target VM ({}) did not power off within {TARGET_OFF_LIMIT:?} of the ACPI power button (killed); console:\n{}",
                        method.name(),
                        tail(&qemu.out, 60)
                    )),
                }
            }
        }
    }

    // --------------------------------------------------------- initiator

    /// One PXE boot of the initiator: what the guest wrote to
    /// `/e2e-written` (also when another check failed), and the failure.
    fn boot_initiator(
        &mut self,
        target: &Target,
        exp: &Expect,
    ) -> (Option<String>, Result<(), String>) {
        let mut wrote = None;
        let r = self.boot_checked(target, exp, &mut wrote);
        (wrote, r)
    }

    fn boot_checked(
        &mut self,
        target: &Target,
        exp: &Expect,
        wrote_out: &mut Option<String>,
    ) -> Result<(), String> {
        self.boots += 1;
        let label = format!(
            "boot {} ({}{})",
            self.boots,
            exp.method.name(),
            if exp.new_kernel { ", new kernel" } else { "" }
        );
        let mut cmd = self.lan.command("qemu-system-x86_64");
        cmd.args([
            "-accel", "tcg", "-m", "512", "-smp", "1", "-nographic", "-nodefaults", "-serial",
            "stdio", "-no-reboot", "-boot", "n",
        ])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={TAP_INITIATOR},script=no,downscript=no"),
        ])
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,disable-legacy=on,netdev=n0,mac=52:54:00:e2:00:02,romfile={IPXE_ROM},bootindex=1"
        ));
        let t = Instant::now();
        let mut qemu = Spawned::spawn("initiator", &mut cmd, t, echo());
        let end = qemu.out.wait_for(BOOT_LIMIT, |l| {
            l.contains("BOOT-DONE") || l.contains("E2E-FAIL")
        });
        // The guest powers off by itself after BOOT-DONE.
        let exited = match &end {
            Some((_, l)) if l.contains("BOOT-DONE") => qemu.wait(Duration::from_secs(60)),
            _ => qemu.stop(libc::SIGKILL, Duration::from_secs(10)).and(None),
        };
        let off = t.elapsed();
        self.report.boot(&label, &qemu.out, exited.map(|_| off));
        let console = qemu.out.text();
        let fail = |why: String| -> String {
            format!(
                "{label}: {why}\n--- initiator console (tail) ---\n{}\n--- target log (tail) ---\n{}",
                tail(&qemu.out, 150),
                tail(target.console(), 60)
            )
        };
        match &end {
            None => return Err(fail(format!("no BOOT-DONE within {BOOT_LIMIT:?}"))),
            Some((_, l)) if l.contains("E2E-FAIL") => {
                return Err(fail(format!("the guest's /init failed: {l}")))
            }
            _ => {}
        }
        if exited.is_none() {
            return Err(fail("QEMU did not exit within 60 s of BOOT-DONE".into()));
        }
        let field = |prefix: &str| -> Option<String> {
            console.lines().find_map(|l| {
                l.find(prefix)
                    .map(|i| l[i + prefix.len()..].trim().to_string())
            })
        };
        let mut problems = Vec::new();
        match field("BOOT-OK ") {
            Some(m) if m == self.disk.marker => {}
            Some(m) => problems.push(format!(
                "BOOT-OK shows marker {m:?}, the OS disk holds {:?}",
                self.disk.marker
            )),
            None => problems.push("no BOOT-OK line".into()),
        }
        let cmdline = field("E2E-CMDLINE ").unwrap_or_default();
        let mut want = vec![format!("root=UUID={}", self.disk.root_uuid)];
        let mut unwanted = Vec::new();
        match exp.method {
            Method::Netroot => {
                want.push(format!("netroot=iscsi:{SERVER_IP}::::{IQN}"));
                want.push("ip=dhcp".into());
                want.push("rd.iscsi.initiator=".into());
                unwanted.push("rd.iscsi.firmware".to_string());
            }
            Method::Ibft => {
                want.push("rd.iscsi.firmware=1".into());
                unwanted.push("netroot=".to_string());
                match field("E2E-IBFT ") {
                    Some(i) if i.contains(&format!("target={IQN}")) => {}
                    other => problems.push(format!("iBFT does not name target {IQN}: {other:?}")),
                }
            }
        }
        if exp.new_kernel {
            want.push("e2e.kernel=new".into());
            let k = format!("/boot/vmlinuz-{}-new", self.disk.version);
            if !console.contains(&k) {
                problems.push(format!("iPXE did not fetch {k}"));
            }
        } else {
            unwanted.push("e2e.kernel=new".into());
        }
        for w in &want {
            if !cmdline
                .split_whitespace()
                .any(|a| a.starts_with(w.as_str()))
            {
                problems.push(format!("kernel command line lacks {w}"));
            }
        }
        for u in &unwanted {
            if cmdline
                .split_whitespace()
                .any(|a| a.starts_with(u.as_str()))
            {
                problems.push(format!("kernel command line has {u}"));
            }
        }
        if exp.upgrade && field("E2E-UPGRADED ").is_none() {
            problems.push("the guest did not install the new kernel (no E2E-UPGRADED)".into());
        }
        let wrote = field("BOOT-WROTE ");
        if wrote.is_none() {
            problems.push("no BOOT-WROTE line".into());
        }
        wrote_out.clone_from(&wrote);
        if !problems.is_empty() {
            return Err(fail(format!("{}; cmdline: {cmdline}", problems.join("; "))));
        }
        eprintln!(
            "e2e: {label}: BOOT-OK in {:.1}s, cmdline: {cmdline}",
            off.as_secs_f64()
        );
        Ok(())
    }

    // ------------------------------------------------------------ checks

    /// With every machine off: what the last boot wrote is on the image.
    fn check_written(&mut self, want: &str, what: &str) {
        match self.disk.read_file(true, "/e2e-written", self.work.path()) {
            Ok(s) if s.trim() == want => {
                eprintln!("e2e: {what}: /e2e-written on the host's image = {want}")
            }
            Ok(s) => self.fail(format!(
                "{what}: /e2e-written holds {:?}, the guest wrote {want:?}",
                s.trim()
            )),
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    fn check_upgrade_persisted(&mut self) {
        let entry = format!("/loader/entries/e2e-{}-new.conf", self.disk.version);
        match self.disk.read_file(false, &entry, self.work.path()) {
            Ok(s) if s.contains("e2e.kernel=new") => {}
            Ok(s) => self.fail(format!("{entry} on the image lacks e2e.kernel=new: {s:?}")),
            Err(e) => self.fail(format!("the installed kernel's entry: {e}")),
        }
        if self
            .disk
            .read_file(true, "/etc/e2e-upgrade", self.work.path())
            .is_ok()
        {
            self.fail(
                "/etc/e2e-upgrade is still on the image: the guest's removal was lost".into(),
            );
        }
    }

    // ----------------------------------------------------------- journey

    fn run(&mut self) {
        // Run A: netroot, with a kernel upgrade between two boots of the
        // same running target.
        match self.start_target(Method::Netroot) {
            Err(e) => self.fail(e),
            Ok(target) => {
                let mut last = None;
                let (w, r) = self.boot_initiator(
                    &target,
                    &Expect {
                        method: Method::Netroot,
                        new_kernel: false,
                        upgrade: true,
                    },
                );
                last = w.or(last);
                let first_ok = r.is_ok();
                if let Err(e) = r {
                    self.fail(e);
                }
                if first_ok {
                    let (w, r) = self.boot_initiator(
                        &target,
                        &Expect {
                            method: Method::Netroot,
                            new_kernel: true,
                            upgrade: false,
                        },
                    );
                    last = w.or(last);
                    if let Err(e) = r {
                        self.fail(e);
                    }
                }
                match self.stop_target(target, Method::Netroot) {
                    Err(e) => self.fail(e),
                    Ok(()) => {
                        if let Some(w) = last {
                            self.check_written(&w, "netroot run");
                        }
                        if first_ok {
                            self.check_upgrade_persisted();
                        }
                    }
                }
            }
        }
        // Run B: iBFT.
        match self.start_target(Method::Ibft) {
            Err(e) => self.fail(e),
            Ok(target) => {
                // Run A's upgrade made the new kernel the default, unless it
                // failed; then the old one boots.
                let new_kernel = self
                    .disk
                    .read_file(
                        false,
                        &format!("/loader/entries/e2e-{}-new.conf", self.disk.version),
                        self.work.path(),
                    )
                    .is_ok();
                let (w, r) = self.boot_initiator(
                    &target,
                    &Expect {
                        method: Method::Ibft,
                        new_kernel,
                        upgrade: false,
                    },
                );
                if let Err(e) = r {
                    self.fail(e);
                }
                match self.stop_target(target, Method::Ibft) {
                    Err(e) => self.fail(e),
                    Ok(()) => {
                        if let Some(w) = w {
                            self.check_written(&w, "ibft run");
                        }
                    }
                }
            }
        }
    }

    fn finish(self) {
        self.report.print(match self.mode {
            Mode::HostServe => "e2e journey, bootlun serve on the host",
            Mode::TargetVm => "e2e journey, target VM (bootlun as PID 1)",
        });
        let Journey {
            failures,
            lan,
            disk,
            ..
        } = self;
        drop(lan);
        // BOOTLUN_E2E_KEEP=DIR: keep the OS disk of a failed run to inspect.
        if let (false, Some(keep)) = (failures.is_empty(), std::env::var_os("BOOTLUN_E2E_KEEP")) {
            let dest = Path::new(&keep).join("osdisk.img");
            match std::fs::copy(&disk.path, &dest) {
                Ok(_) => eprintln!("e2e: OS disk kept as {}", dest.display()),
                Err(e) => eprintln!("e2e: cannot keep the OS disk in {}: {e}", dest.display()),
            }
        }
        if !failures.is_empty() {
            panic!(
                "{} failure(s):\n\n{}",
                failures.len(),
                failures.join("\n\n")
            );
        }
    }
}

/// True when the `bootlun` under test has `image build` (the target VM's
/// image) wired into its command line.
fn image_build_available() -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_bootlun"))
        .args(["image", "build", "--help"])
        .output()
        .map_err(|e| format!("bootlun: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && text.contains("--kernel-deb") {
        Ok(())
    } else {
        Err(format!(
            "`bootlun image build --help` does not offer --kernel-deb ({}): the target VM needs `bootlun image build`{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ))
    }
}

#[test]
fn journey_host_serve() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prerequisites(Mode::HostServe) {
        return;
    }
    let mut j = Journey::new(Mode::HostServe);
    j.run();
    j.finish();
}

#[test]
fn journey_target_vm() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prerequisites(Mode::TargetVm) {
        return;
    }
    if let Err(e) = image_build_available() {
        panic!("{e}");
    }
    let mut j = Journey::new(Mode::TargetVm);
    j.run();
    j.finish();
}
