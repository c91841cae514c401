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
//! Needs root, `ip`, `qemu-system-x86_64`, the `ipxe-qemu`/`ovmf`
//! packages and `apt-get download` access for `linux-image-amd64` and
//! `busybox-static` (cached by `testkit::DebCache` in `$BOOTLUN_E2E_CACHE`,
//! default `target/tmp/deb-cache`). A missing one fails the test naming the
//! package, unless `BOOTLUN_SKIP_EXTERNAL=1`. `BOOTLUN_E2E_ONLY=a,b` runs
//! only the named scenarios.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Cpio, DebCache, NetNs, RaSender, Spawned};

const SERVER_IP: &str = "10.77.0.1";
const MARKER: &str = "BOOTLUN-CMDLINE:";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const GUEST_CMDLINE: &str = "console=ttyS0 tsc=reliable clocksource=tsc panic=-1 quiet";
const IPXE_ROM_BIOS: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
const IPXE_ROM_EFI: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
const IQN: &str = "iqn.2026-11.org.bootlun:e2e";

/// Root, the tools and the firmware files; missing ones fail the test
/// naming the package (or skip it under `BOOTLUN_SKIP_EXTERNAL=1`).
fn prerequisites() -> bool {
    if !testkit::require_root() {
        return false;
    }
    for (bin, pkg) in [
        ("ip", "iproute2"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        if !testkit::require_tool(bin, pkg) {
            return false;
        }
    }
    testkit::require_file(IPXE_ROM_BIOS, "ipxe-qemu")
        && testkit::require_file("/dev/net/tun", "kmod (modprobe tun)")
}

// ---------------------------------------------------------------- assets

/// The guest kernel (from the real package behind `linux-image-amd64`) and
/// a static busybox, from the shared Debian package cache.
fn kernel_and_busybox() -> (PathBuf, PathBuf) {
    let cache = DebCache::open();
    let kdir = cache.unpacked(&cache.kernel_deb());
    let vmlinuz = std::fs::read_dir(kdir.join("boot"))
        .unwrap_or_else(|e| panic!("{}: {e}", kdir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .unwrap_or_else(|| panic!("{}: no boot/vmlinuz-*", kdir.display()));
    let bdir = cache.unpacked(&cache.deb("busybox-static"));
    let busybox = bdir.join("bin/busybox");
    assert!(busybox.exists(), "busybox-static: no bin/busybox");
    (vmlinuz, busybox)
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
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.host_file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, init.as_bytes());
    c.finish()
}

/// Starts `cmd` with its output captured and stdin open (QEMU's serial
/// console); killed on drop.
fn spawn(cmd: &mut Command, what: &'static str) -> Spawned {
    let p = Spawned::interactive(what, cmd, Instant::now(), echo());
    eprintln!("pxe_e2e: started {what} (pid {:?})", p.pid());
    p
}

fn echo() -> bool {
    std::env::var("BOOTLUN_E2E_ECHO").as_deref() == Ok("1")
}

/// SIGTERM, then SIGKILL if the child is still there after 5 s.
fn stop(p: &mut Spawned) {
    p.stop(libc::SIGTERM, Duration::from_secs(5));
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

fn qemu(ns: &NetNs, sc: &Scenario, work: &Path) -> Command {
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

fn boot_one(ns: &NetNs, sc: &Scenario, work: &Path) -> Result<String, String> {
    let mut q = spawn(&mut qemu(ns, sc, work), "qemu");
    if sc.mode == Mode::Login {
        // iPXE's login form draws both labels and then reads keys; keys
        // typed earlier would go to the "Press Ctrl-B" prompt and be lost.
        // The form is drawn with cursor moves, no newline, so this waits on
        // the raw console output. Typed keys queue in the serial port until
        // iPXE reads them: Enter moves from the user name to the password
        // field, and submits from there.
        if !q.out.wait_raw(BOOT_TIMEOUT, |t| {
            t.contains("Username") && t.contains("Password")
        }) {
            return Err(format!(
                "{}: no login form on the console:\n{}",
                sc.name,
                q.out.raw_text()
            ));
        }
        q.type_text(&format!("{MENU_USER}\r{MENU_PASSWORD}\r"));
    }
    let line = if sc.mode == Mode::Sanboot {
        q.out.wait_for(BOOT_TIMEOUT, |l| l.contains(SANBOOT_MARKER))
    } else {
        q.out.wait_for(BOOT_TIMEOUT, |l| {
            l.contains(MARKER) && l.contains("console=ttyS0")
        })
    }
    .map(|(_, l)| l);
    stop(&mut q);
    let text = q.out.raw_text();
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
    if !prerequisites() {
        return;
    }
    let t0 = Instant::now();
    let (vmlinuz, busybox) = kernel_and_busybox();
    let work_dir = testkit::TempDir::new("pxe-e2e");
    let work = work_dir.path();
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
    let ns = NetNs::lan(
        &format!("bootlun-e2e-{}", std::process::id()),
        Some(&format!("{SERVER_IP}/24")),
        &["tap0"],
    );
    let _ra = RaSender::start(&ns.name);
    let start_server = |mode: Mode| -> Spawned {
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
        eprintln!("pxe_e2e: bootlun serve ({mode:?})");
        let server = spawn(&mut serve, "bootlun");
        if server
            .out
            .wait_for(testkit::READY_TIMEOUT, |l| l.contains("listening on"))
            .is_none()
        {
            panic!("bootlun serve did not start:\n{}", server.out.text());
        }
        server
    };
    let mut server: Option<(Mode, Spawned)> = None;
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
        if sc.uefi && !testkit::require_file(OVMF_CODE, "ovmf") {
            continue;
        }
        if !sc.rom.is_empty() && !testkit::require_file(sc.rom, "ipxe-qemu") {
            continue;
        }
        if server.as_ref().map(|(m, _)| *m) != Some(sc.mode) {
            if let Some((_, mut old)) = server.take() {
                stop(&mut old);
                log.push_str(&old.out.text());
            }
            server = Some((sc.mode, start_server(sc.mode)));
        }
        let t = Instant::now();
        let r = boot_one(&ns, sc, work);
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
            // iPXE asked without credentials first, then with them. The
            // server logs a request after answering it: wait on the log.
            if let Some((_, p)) = server.as_ref() {
                for want in ["\"GET /menu.ipxe\" 401", "\"GET /menu.ipxe\" 200"] {
                    if p.out
                        .wait_for(Duration::from_secs(10), |l| l.contains(want))
                        .is_none()
                    {
                        problems.push(format!("server log lacks {want}"));
                    }
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}: {cmdline}", sc.name, problems.join(", ")));
        }
    }
    if let Some((_, mut s)) = server.take() {
        stop(&mut s);
        log.push_str(&s.out.text());
    }
    drop(ns);
    eprintln!("pxe_e2e timings:");
    for (n, s) in &times {
        eprintln!("  {n:<20} {s:6.1}s");
    }
    eprintln!("  {:<20} {:6.1}s", "total", t0.elapsed().as_secs_f64());
    if !failures.is_empty() {
        let _ =
            std::io::stderr().write_all(format!("--- bootlun serve log ---\n{log}\n").as_bytes());
        panic!(
            "{} scenario(s) failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}
