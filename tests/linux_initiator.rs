//! The Linux kernel's iSCSI initiator against bootlun, in a QEMU guest.
//!
//! A Debian bookworm kernel (`linux-image-amd64`) boots under TCG from an
//! initramfs built here: busybox, open-iscsi (`iscsistart`, `iscsid`,
//! `iscsiadm`), a few sg3-utils and the kernel modules for virtio-net,
//! iscsi_tcp, sd and ext4. bootlun runs in a private network namespace and
//! shares a tap device with QEMU; it exports a RAM LUN, a file LUN, a
//! read-only file LUN and a 3 TiB null LUN.
//!
//! The guest (`tests/vm/init.sh`) logs in with `iscsistart` the way an
//! initramfs boot does, checks what the kernel made of each LUN, reads a
//! pattern the host put on the file LUN, writes its own with O_DIRECT
//! (single, R2T-sized, concurrent) and through the page cache, sends SCSI
//! commands and resets with sg3-utils, makes and mounts an ext2 file
//! system, then hands the session to `iscsid`: SendTargets discovery,
//! logout, login, recovery from a link loss with I/O in flight, a session
//! with CRC32C digests, and a final logout. The host then stops bootlun
//! with SIGTERM and checks every byte the guest wrote in the backing files.
//!
//! Needs root (network namespace, tap), `qemu-system-x86_64`, `apt-get`
//! access to Debian bookworm and `dpkg-deb`. Debian packages are cached in
//! `$BOOTLUN_E2E_CACHE`, by default the cache `tests/pxe_e2e.rs` uses
//! (`pxe-e2e-cache` in Cargo's target tmp dir).
//!
//! `BOOTLUN_VM_LOG` sets bootlun's `--log` (default `debug`);
//! `BOOTLUN_VM_ECHO=1` echoes the serial console and bootlun's log live;

use testkit as common;
use testkit::vm;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vm::{Capture, Cpio, DebCache, Modules, NetNs, Spawned};

const TARGET_IQN: &str = "iqn.2026-11.org.bootlun:target";
const INITIATOR_IQN: &str = "iqn.2026-11.org.bootlun:vmtest";
/// CHAP: the initiator's credentials (every login, discovery included) and
/// the target's, which the initiator checks once iscsid runs (mutual CHAP).
const CHAP_USER: &str = "vmtest-initiator";
const CHAP_SECRET: &str = "vm-initiator-secret-1";
const TARGET_CHAP_USER: &str = "bootlun-vm-target";
const TARGET_CHAP_SECRET: &str = "vm-target-secret-22";
const HOST_IP: &str = "10.78.0.1";
const GUEST_IP: &str = "10.78.0.2";
const PORT: u16 = 3260;

const RAM_LUN_BYTES: u64 = 256 << 20;
const FILE_LUN_BYTES: u64 = 64 << 20;
/// LUN 2: a read-only file LUN holding the host pattern at offset 0.
const RO_LUN_BYTES: u64 = 16 << 20;
/// LUN 3: a null LUN beyond what READ CAPACITY(10) can express.
const NULL_LUN_BYTES: u64 = 3 << 40;
/// Where the host puts a 1 MiB pattern for the guest to read (file LUN).
const HOST_OFF: u64 = 8 << 20;
const HOST_LEN: usize = 1 << 20;
/// Where the guest writes its 4 MiB pattern (file LUN).
const GUEST_OFF: u64 = 16 << 20;
const GUEST_LEN: usize = 4 << 20;
/// Where the guest writes the same 4 MiB pattern as one 4 MiB O_DIRECT
/// write, with the request size cap raised to 1 MiB so each command
/// carries more than FirstBurstLength and needs an R2T (file LUN).
const LARGE_OFF: u64 = 24 << 20;
/// Where 8 concurrent O_DIRECT writers put a second 4 MiB pattern (file LUN).
const PAR_OFF: u64 = 32 << 20;
/// Where the second pattern goes again through the page cache (file LUN).
const BUFFERED_OFF: u64 = 40 << 20;
const PAR_LEN: usize = 4 << 20;
/// Where the second pattern is written while the link is down (file LUN).
const RECOVERY_OFF: u64 = 48 << 20;
/// Where the guest pattern is written in a session with CRC32C digests.
const DIGEST_OFF: u64 = 52 << 20;
/// Where two concurrent sessions write the halves of the second pattern.
const TWO_OFF: u64 = 56 << 20;
/// Where the guest writes the second pattern while bootlun is frozen, so
/// that the kernel times the command out and aborts it (file LUN).
const ABORT_OFF: u64 = 60 << 20;
/// The longest bootlun stays frozen (SIGSTOP) for that; the guest asks for
/// the thaw once the kernel has sent its abort.
const MAX_FREEZE: Duration = Duration::from_secs(20);
/// A 9-sector write at an odd sector (file LUN).
const SMALL_SECTOR: u64 = 12_345;
const SMALL_LEN: usize = 9 * 512;

/// Whole budget for the guest: boot, login, I/O, power-off.
const GUEST_LIMIT: Duration = Duration::from_secs(300);

/// Modules the guest loads (their dependencies are added).
const WANTED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "crc32c_generic",
    "libcrc32c",
    "scsi_mod",
    "sd_mod",
    "scsi_transport_iscsi",
    "libiscsi",
    "libiscsi_tcp",
    "iscsi_tcp",
    "ext4",
];

/// The guest's /init (busybox ash); its settings come from /etc/vmtest.conf.
const INIT: &str = include_str!("vm/init.sh");

/// sg3-utils programs copied into the guest.
/// Host programs perf/initiator/run.sh needs besides busybox and iscsiadm.
const FIO_TOOLS: &[&str] = &["bash", "fio", "jq", "iscsi-inq"];

/// The host's `name` on PATH; panics naming the package when missing.
fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not found on PATH (see .ci/packages.txt)"))
}

const SG_TOOLS: &[&str] = &[
    "sg_inq",
    "sg_vpd",
    "sg_readcap",
    "sg_luns",
    "sg_opcodes",
    "sg_modes",
    "sg_turs",
    "sg_sync",
    "sg_reset",
    "sg_raw",
    "sg_verify",
    "sg_requests",
];

/// The data the guest reads and writes (also kept on the host to verify).
struct Patterns {
    host: Vec<u8>,
    guest: Vec<u8>,
    small: Vec<u8>,
    par: Vec<u8>,
}

struct Phases {
    start: Instant,
    last: Instant,
    rows: Vec<(String, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
            rows: Vec::new(),
        }
    }
    fn done(&mut self, name: &str) {
        let now = Instant::now();
        let d = now - self.last;
        eprintln!("phase {name}: {:.2}s", d.as_secs_f64());
        self.rows.push((name.to_string(), d));
        self.last = now;
    }
    fn report(&self) {
        eprintln!("--- phase timings ---");
        for (n, d) in &self.rows {
            eprintln!("  {n:<28} {:8.2}s", d.as_secs_f64());
        }
        eprintln!(
            "  {:<28} {:8.2}s",
            "total",
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| v == "1").unwrap_or(false)
}

/// Downloads and unpacks every package the guest needs (into the cache);
/// returns the unpacked kernel package.
fn fetch_packages(cache: &DebCache) -> PathBuf {
    let kernel = cache.unpacked(&cache.kernel_deb());
    cache.unpacked(&cache.deb("busybox-static"));
    for (pkg, lib_prefixes) in [
        ("open-iscsi", &["libopeniscsiusr", "libisns"][..]),
        ("sg3-utils", &["libsgutils"][..]),
    ] {
        let deb = cache.deb(pkg);
        cache.unpacked(&deb);
        for prefix in lib_prefixes {
            for dep in cache.depends_named(&deb, prefix) {
                cache.unpacked(&cache.deb(&dep));
            }
        }
    }
    kernel
}

/// Builds the initramfs: busybox, iscsistart and its libraries, modules,
/// the patterns and /init.
fn build_initramfs(
    cache: &DebCache,
    kernel_tree: &Path,
    patterns: &Patterns,
) -> (Vec<u8>, Vec<String>) {
    let busybox = cache.unpacked(&cache.deb("busybox-static"));
    let iscsi_deb = cache.deb("open-iscsi");
    let iscsi = cache.unpacked(&iscsi_deb);
    let mut iscsi_lib_dirs = Vec::new();
    let mut iscsi_libs = cache.depends_named(&iscsi_deb, "libopeniscsiusr");
    iscsi_libs.extend(cache.depends_named(&iscsi_deb, "libisns"));
    for dep in iscsi_libs {
        let t = cache.unpacked(&cache.deb(&dep));
        iscsi_lib_dirs.push(t.join("usr/lib/x86_64-linux-gnu"));
        iscsi_lib_dirs.push(t.join("lib/x86_64-linux-gnu"));
    }
    let sg_deb = cache.deb("sg3-utils");
    let sg = cache.unpacked(&sg_deb);
    let mut sg_lib_dirs = Vec::new();
    for dep in cache.depends_named(&sg_deb, "libsgutils") {
        let t = cache.unpacked(&cache.deb(&dep));
        sg_lib_dirs.push(t.join("usr/lib/x86_64-linux-gnu"));
        sg_lib_dirs.push(t.join("lib/x86_64-linux-gnu"));
    }

    let mods = Modules::index(kernel_tree);
    let order = mods.closure(WANTED_MODULES);

    let mut c = Cpio::new();
    for d in [
        "dev", "proc", "sys", "tmp", "run", "mnt", "etc", "sbin", "var", "root",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.host_file("bin/busybox", 0o755, &busybox.join("bin/busybox"));
    let applets = vm::run_ok(
        Command::new(busybox.join("bin/busybox")).arg("--list"),
        Duration::from_secs(30),
    );
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        c.symlink(&format!("bin/{a}"), "busybox");
    }

    // Programs with the shared libraries `ldd` names for them; /init sets
    // LD_LIBRARY_PATH to /lib/x86_64-linux-gnu, /lib64 holds ld.so.
    let program = |c: &mut Cpio, guest: &str, host: &Path, lib_dirs: &[PathBuf]| {
        c.host_file(guest, 0o755, host);
        for (g, h) in vm::shared_libs(host, lib_dirs) {
            if !c.has(&g) {
                c.host_file(&g, 0o755, &h);
            }
        }
    };
    for p in ["iscsistart", "iscsid", "iscsiadm"] {
        program(
            &mut c,
            &format!("sbin/{p}"),
            &iscsi.join("sbin").join(p),
            &iscsi_lib_dirs,
        );
    }
    // The package's iscsid.conf, without systemd socket activation (iscsid
    // is started by /init).
    let conf = std::fs::read_to_string(iscsi.join("etc/iscsi/iscsid.conf")).expect("iscsid.conf");
    let conf: String = conf
        .lines()
        .map(|l| {
            if l.starts_with("iscsid.startup") {
                "iscsid.startup = /bin/true"
            } else {
                l
            }
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    // Later lines win: CHAP for discovery, and mutual CHAP for every node
    // record discovery creates. (iscsistart gets its credentials as flags.)
    let conf = format!(
        "{conf}discovery.sendtargets.auth.authmethod = CHAP\n\
         discovery.sendtargets.auth.username = {CHAP_USER}\n\
         discovery.sendtargets.auth.password = {CHAP_SECRET}\n\
         node.session.auth.authmethod = CHAP\n\
         node.session.auth.username = {CHAP_USER}\n\
         node.session.auth.password = {CHAP_SECRET}\n\
         node.session.auth.username_in = {TARGET_CHAP_USER}\n\
         node.session.auth.password_in = {TARGET_CHAP_SECRET}\n"
    );
    c.file("etc/iscsi/iscsid.conf", 0o644, conf.as_bytes());
    for tool in SG_TOOLS {
        program(
            &mut c,
            &format!("bin/{tool}"),
            &sg.join("usr/bin").join(tool),
            &sg_lib_dirs,
        );
    }

    // perf/initiator/run.sh as users run it, with the host's bash, fio,
    // jq and iscsi-inq (the host is Debian too; their libraries come along).
    for tool in FIO_TOOLS {
        let host = which(tool);
        program(&mut c, &format!("usr/bin/{tool}"), &host, &[]);
    }
    let initiator_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/initiator");
    for f in ["run.sh", "read.fio", "write.fio"] {
        c.host_file(
            &format!("perf/initiator/{f}"),
            0o755,
            &initiator_dir.join(f),
        );
    }

    for m in &order {
        c.file(&format!("lib/modules/{m}.ko"), 0o644, &mods.bytes(m));
    }
    let mut load = order.join("\n");
    load.push('\n');
    c.file("etc/modules.load", 0o644, load.as_bytes());

    let conf = format!(
        "INITIATOR={INITIATOR_IQN}\nTARGET={TARGET_IQN}\nPORTAL_IP={HOST_IP}\nPORTAL_PORT={PORT}\n\
         GUEST_IP={GUEST_IP}\nHOST_OFF={HOST_OFF}\nGUEST_OFF={GUEST_OFF}\nGUEST_LEN={GUEST_LEN}\n\
         SMALL_SECTOR={SMALL_SECTOR}\nLARGE_OFF={LARGE_OFF}\nPAR_OFF={PAR_OFF}\n\
         BUFFERED_OFF={BUFFERED_OFF}\nPAR_LEN={PAR_LEN}\nFILE_LUN_BYTES={FILE_LUN_BYTES}\n\
         RECOVERY_OFF={RECOVERY_OFF}\nDIGEST_OFF={DIGEST_OFF}\nNULL_LUN_BYTES={NULL_LUN_BYTES}\nTWO_OFF={TWO_OFF}\nABORT_OFF={ABORT_OFF}\n\
         CHAP_USER={CHAP_USER}\nCHAP_SECRET={CHAP_SECRET}\nTARGET_CHAP_USER={TARGET_CHAP_USER}\n\
         TARGET_CHAP_SECRET={TARGET_CHAP_SECRET}\n"
    );
    c.file("etc/vmtest.conf", 0o644, conf.as_bytes());
    // iscsid only serves peers whose uid has a name.
    c.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    c.file("etc/group", 0o644, b"root:x:0:\n");
    c.file(
        "etc/iscsi/initiatorname.iscsi",
        0o644,
        format!("InitiatorName={INITIATOR_IQN}\n").as_bytes(),
    );
    c.file("data/host.bin", 0o644, &patterns.host);
    c.file("data/guest.bin", 0o644, &patterns.guest);
    c.file("data/small.bin", 0o644, &patterns.small);
    c.file("data/par.bin", 0o644, &patterns.par);
    c.file("init", 0o755, INIT.as_bytes());
    (c.finish(), order)
}

/// Logins (by the ISID the capture saw on their TCP port) that completed
/// while an older connection with the same ISID was still open in bootlun:
/// the old session should have been reinstated (closed) first.
fn not_reinstated(log: &str, logins: &[vm::LoginSeen]) -> Vec<String> {
    let login_of = |port: &str| -> Option<&vm::LoginSeen> {
        let port: u16 = port.rsplit(':').next()?.parse().ok()?;
        logins.iter().find(|l| l.port == port)
    };
    let peer_of = |l: &str| -> Option<String> {
        let rest = &l[l.find("connection ")? + "connection ".len()..];
        Some(rest.split([' ', ':']).take(2).collect::<Vec<_>>().join(":"))
    };
    let marker = format!("login complete (Normal session, initiator {INITIATOR_IQN}");
    let mut open: Vec<(String, String)> = Vec::new(); // (peer, ISID)
    let mut problems = Vec::new();
    for l in log.lines() {
        if l.contains(&marker) {
            let Some(p) = peer_of(l) else { continue };
            let Some(seen) = login_of(&p) else { continue };
            let isid = seen.isid_hex();
            for (q, _) in open.iter().filter(|(_, i)| *i == isid) {
                problems.push(format!(
                    "login of {p} (ISID {isid}, TSIH {}) completed while {q}, a connection with the same ISID, was still open",
                    seen.tsih
                ));
            }
            open.push((p, isid));
        } else if l.contains("closing: ") {
            if let Some(p) = peer_of(l) {
                open.retain(|(q, _)| *q != p);
            }
        }
    }
    problems
}

/// Normal-session connections of the guest that outlived it: the guest
/// logs out of every session it keeps, and a session it abandons (link
/// loss) is reinstated by its next login with the same ISID, which must
/// close the old connection (RFC 7143 6.3.5). So every connection of the
/// guest should be closed by a logout or by the peer before bootlun is
/// stopped. Each straggler is listed with the logins that followed it.
fn stale_connections(log: &str) -> Vec<String> {
    let peer_of = |l: &str| -> Option<String> {
        let rest = &l[l.find("connection ")? + "connection ".len()..];
        Some(rest.split([' ', ':']).take(2).collect::<Vec<_>>().join(":"))
    };
    let marker = format!("login complete (Normal session, initiator {INITIATOR_IQN}");
    // (peer, login line, later logins, closed by the guest's side)
    let mut conns: Vec<(String, String, Vec<String>, bool)> = Vec::new();
    for l in log.lines() {
        if l.contains(&marker) {
            let Some(p) = peer_of(l) else { continue };
            for c in conns.iter_mut().filter(|c| !c.3) {
                c.2.push(p.clone());
            }
            conns.push((p, l.to_string(), Vec::new(), false));
        } else if l.contains("closing: ") && !l.contains("target shutting down") {
            if let Some(p) = peer_of(l) {
                for c in conns.iter_mut().filter(|c| c.0 == p) {
                    c.3 = true;
                }
            }
        }
    }
    conns
        .into_iter()
        .filter(|c| !c.3)
        .map(|(p, login, later, _)| {
            format!("{p} was still open when bootlun stopped; later logins of the guest: {later:?}; its login: {login}")
        })
        .collect()
}

/// First differing offset of two equal-length buffers, for messages.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Lines of `text` starting with `prefix`, prefix removed.
fn tagged<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.find(prefix).map(|i| l[i + prefix.len()..].trim()))
        .collect()
}

fn kv(s: &str) -> BTreeMap<String, String> {
    s.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn linux_kernel_initiator_in_a_vm() {
    if !testkit::require_root() || !testkit::require_file("/dev/net/tun", "kmod (modprobe tun)") {
        return;
    }
    for (bin, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("ldd", "libc-bin"),
        ("bash", "bash"),
        ("fio", "fio"),
        ("jq", "jq"),
        ("iscsi-inq", "libiscsi-bin"),
    ] {
        if !common::require_tool(bin, pkg) {
            return;
        }
    }
    let echo = env_flag("BOOTLUN_VM_ECHO");
    let log_level = std::env::var("BOOTLUN_VM_LOG").unwrap_or_else(|_| "debug".into());
    let mut phases = Phases::new();

    // --- Guest kernel, userspace and initramfs -------------------------
    let cache = DebCache::open();
    // Downloading needs the Debian archive: without it (and with
    // BOOTLUN_SKIP_EXTERNAL=1) the test is skipped.
    let fetched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch_packages(&cache)));
    let kernel_tree = match fetched {
        Ok(t) => t,
        Err(e) if common::skip_external() => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!("SKIPPED: cannot fetch the guest's Debian packages: {why}");
            return;
        }
        Err(e) => std::panic::resume_unwind(e),
    };
    let vmlinuz = std::fs::read_dir(kernel_tree.join("boot"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("no vmlinuz in the kernel package");
    phases.done("fetch+unpack packages");

    let pat = Patterns {
        host: common::pseudo_random_bytes(HOST_LEN, 0xb007_1a17),
        guest: common::pseudo_random_bytes(GUEST_LEN, 0x9e57_0001),
        small: common::pseudo_random_bytes(SMALL_LEN, 0x5a11_0009),
        par: common::pseudo_random_bytes(PAR_LEN, 0x9a4a_11e1),
    };
    let (initrd, modules) = build_initramfs(&cache, &kernel_tree, &pat);
    let scratch = common::TempDir::new("linux-initiator");
    let initrd_path = scratch.join("initrd.cpio");
    std::fs::write(&initrd_path, &initrd).unwrap();
    eprintln!(
        "kernel {} ; initramfs {} KiB ; modules: {}",
        vmlinuz.display(),
        initrd.len() / 1024,
        modules.join(" ")
    );
    phases.done("build initramfs");

    // --- The file LUN, with a pattern for the guest to find ------------
    let backing = scratch.join("file-lun.img");
    let secrets = scratch.join("secrets.toml");
    std::fs::write(
        &secrets,
        format!(
            "chap = \"{CHAP_USER}:{CHAP_SECRET}\"\nmutual-chap = \"{TARGET_CHAP_USER}:{TARGET_CHAP_SECRET}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    {
        let f = File::create(&backing).unwrap();
        f.set_len(FILE_LUN_BYTES).unwrap();
        let mut f = f;
        f.seek(SeekFrom::Start(HOST_OFF)).unwrap();
        f.write_all(&pat.host).unwrap();
        f.sync_all().unwrap();
    }
    let ro_backing = scratch.join("ro-lun.img");
    let mut ro_image = pat.host.clone();
    ro_image.resize(RO_LUN_BYTES as usize, 0);
    std::fs::write(&ro_backing, &ro_image).unwrap();

    // --- Namespace, bootlun, QEMU ---------------------------------------
    let pid = std::process::id();
    let tap = format!("bltap{}", pid % 100_000);
    let ns = NetNs::with_tap(&format!("bl-vm-{pid}"), &tap, &format!("{HOST_IP}/24"));
    let sniffer = match vm::LoginSniffer::start(&ns.name, &tap, PORT) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: no capture of Login Requests ({e}); session checks use bootlun's log only");
            None
        }
    };
    let origin = Instant::now();
    let listen = format!("{HOST_IP}:{PORT}");
    let mut bootlun = Spawned::spawn(
        "bootlun",
        ns.command(common::bootlun_bin())
            .args([
                "serve",
                "--listen",
                &listen,
                "--lun",
                &format!("ram:{}M", RAM_LUN_BYTES >> 20),
            ])
            .arg("--lun")
            .arg(&backing)
            .arg("--lun")
            .arg(format!("{},ro", ro_backing.display()))
            .args(["--lun", &format!("null:{}T", NULL_LUN_BYTES >> 40)])
            .arg("--secrets")
            .arg(&secrets)
            .args(["--log", &log_level]),
        origin,
        echo,
    );
    let ready = bootlun.out.wait_for(common::READY_TIMEOUT, |l| {
        l.contains(&format!("listening on {listen}"))
    });
    assert!(
        ready.is_some(),
        "bootlun did not report `listening on {listen}`:\n{}",
        bootlun.out.text()
    );
    phases.done("namespace + bootlun ready");

    let append = "console=ttyS0 tsc=reliable clocksource=tsc panic=-1 quiet";
    let qemu_bin = Path::new("qemu-system-x86_64");
    let mut qemu = Spawned::spawn(
        "serial",
        ns.command(qemu_bin)
            .args([
                "-accel",
                "tcg",
                "-m",
                "1024",
                "-smp",
                "1",
                "-nographic",
                "-nodefaults",
            ])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&vmlinuz)
            .arg("-initrd")
            .arg(&initrd_path)
            .args(["-append", append])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            ])
            .args(["-device", "virtio-net-pci,netdev=n0"]),
        Instant::now(),
        echo,
    );
    let serial: Capture = qemu.out.clone();
    let guest_start = Instant::now();
    // The guest asks once for bootlun to be frozen (to make a command time
    // out); everything else is its verdict.
    let mut froze = false;
    let verdict = loop {
        let left = GUEST_LIMIT.saturating_sub(guest_start.elapsed());
        let got = serial.wait_for(left, |l| {
            l.contains("BOOTLUN-VM-OK")
                || l.contains("BOOTLUN-VM-FAIL")
                || (!froze && l.contains("BOOTLUN-VM-PAUSE-TARGET"))
        });
        match got {
            Some((_, l)) if l.contains("BOOTLUN-VM-PAUSE-TARGET") => {
                bootlun.signal(libc::SIGSTOP);
                let t = Instant::now();
                let resume =
                    serial.wait_for(MAX_FREEZE, |l| l.contains("BOOTLUN-VM-RESUME-TARGET"));
                bootlun.signal(libc::SIGCONT);
                eprintln!(
                    "bootlun was frozen (SIGSTOP) for {:.1}s at the guest's request{}",
                    t.elapsed().as_secs_f64(),
                    if resume.is_some() {
                        ""
                    } else {
                        " (no RESUME from the guest; thawed at the limit)"
                    }
                );
                froze = true;
            }
            other => break other,
        }
    };
    let guest_elapsed = guest_start.elapsed();
    let fail_report = |why: &str,
                       qemu_status: String,
                       serial: &Capture,
                       bootlun: &Spawned|
     -> String {
        format!(
            "{why} (after {:.1}s; QEMU {qemu_status})\n--- serial console ---\n{}\n--- bootlun log (last 200 lines) ---\n{}",
            guest_elapsed.as_secs_f64(),
            serial.text(),
            {
                let t = bootlun.out.text();
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(200)..].join("\n")
            }
        )
    };
    match &verdict {
        Some((_, l)) if l.contains("BOOTLUN-VM-OK") => {}
        Some((_, l)) => {
            let st = qemu.wait(Duration::from_secs(30));
            panic!(
                "{}",
                fail_report(
                    &format!("guest reported failure: {l}"),
                    format!("{st:?}"),
                    &serial,
                    &bootlun
                )
            );
        }
        None => {
            let st = qemu.stop(libc::SIGKILL, Duration::from_secs(10));
            panic!(
                "{}",
                fail_report(
                    &format!("no verdict from the guest within {GUEST_LIMIT:?}"),
                    format!("{st:?}"),
                    &serial,
                    &bootlun
                )
            );
        }
    }
    // The guest powers off by itself (bounded).
    let qemu_status = qemu.wait(Duration::from_secs(60));
    assert!(
        qemu_status.is_some(),
        "{}",
        fail_report(
            "QEMU did not exit after the guest's power-off",
            "killed".into(),
            &serial,
            &bootlun
        )
    );
    phases.done("guest (boot..poweroff)");
    let serial_text = serial.text();

    // Guest-side step timings (from its uptime) and host-side arrival times.
    eprintln!("--- guest steps (host time since QEMU start / guest uptime) ---");
    for (t, l) in serial.lines() {
        // The first line may follow the firmware's terminal escapes.
        for tag in ["BOOTLUN-VM-STEP ", "BOOTLUN-VM-OK "] {
            if let Some(i) = l.find(tag) {
                let what = if tag.contains("OK") { "OK " } else { "" };
                eprintln!("  {:7.2}s  {what}{}", t.as_secs_f64(), &l[i + tag.len()..]);
            }
        }
    }

    // perf/initiator/run.sh: one row per job and engine, each with I/O done.
    let fio = tagged(&serial_text, "BOOTLUN-VM-FIO ");
    eprintln!("--- perf/initiator/run.sh in the guest (TCG: bound by emulation) ---");
    for l in &fio {
        eprintln!("  {l}");
    }
    let initiator_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/initiator");
    for file in ["read.fio", "write.fio"] {
        let text = std::fs::read_to_string(initiator_dir.join(file)).unwrap();
        let jobs = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'))
            .filter(|j| *j != "global");
        for job in jobs {
            for engine in ["io_uring", "libaio"] {
                let iops = fio.iter().find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 6 && f[0] == job && f[1] == engine)
                        .then(|| f[2].parse::<u64>().unwrap_or(0))
                });
                assert!(
                    iops.is_some_and(|n| n > 0),
                    "run.sh printed no I/O for {job} with {engine}:\n{}",
                    fio.join("\n")
                );
            }
        }
    }

    // --- bootlun: stop cleanly ----------------------------------------
    let st = bootlun.stop(libc::SIGTERM, common::STOP_TIMEOUT);
    let blog = bootlun.out.text();
    assert!(
        matches!(st, Some(s) if s.success()),
        "bootlun did not exit 0 after SIGTERM: {st:?}\n--- bootlun log ---\n{blog}"
    );
    phases.done("bootlun SIGTERM stop");

    // --- Assertions -----------------------------------------------------
    let login = format!("login complete (Normal session, initiator {INITIATOR_IQN}");
    assert!(
        blog.contains(&login),
        "bootlun's log lacks `{login}`:\n{blog}"
    );
    let discovery = format!("login complete (Discovery session, initiator {INITIATOR_IQN}");
    assert!(
        blog.contains(&discovery),
        "bootlun's log lacks `{discovery}` (iscsiadm SendTargets):\n{blog}"
    );
    // CHAP: the guest's deliberately wrong secret was refused, naming the
    // key, and no secret reached the log.
    assert!(
        blog.contains("login failed: AuthFailed: CHAP_R"),
        "bootlun's log lacks the refused wrong-secret login:\n{blog}"
    );
    for secret in [CHAP_SECRET, TARGET_CHAP_SECRET] {
        assert!(!blog.contains(secret), "a CHAP secret is in bootlun's log");
    }
    let normal_logins = blog.matches(&login).count();
    assert!(
        normal_logins >= 7,
        "expected at least 7 Normal-session logins (iscsistart, iscsid's takeover, iscsiadm, recovery, digests, 2 sessions), saw {normal_logins}:\n{blog}"
    );
    let logouts = blog
        .lines()
        .filter(|l| l.contains(": logout of initiator ") && l.contains(" (reason 0)"))
        .count();
    assert!(
        logouts >= 5,
        "expected the guest's 5 logouts (reason 0) in bootlun's log, saw {logouts}:\n{blog}"
    );
    let digests = format!("initiator {INITIATOR_IQN}, digests true/true");
    assert!(
        blog.contains(&digests),
        "bootlun's log lacks a login with `{digests}`:\n{blog}"
    );
    let logins = sniffer.as_ref().map(|s| s.logins()).unwrap_or_default();
    eprintln!("--- Login Requests on the wire (first of each connection) ---");
    let mut ports = std::collections::BTreeSet::new();
    for l in &logins {
        if ports.insert(l.port) {
            eprintln!(
                "  port {} ISID {} TSIH {} CID {}",
                l.port,
                l.isid_hex(),
                l.tsih,
                l.cid
            );
        }
    }
    let mut stale = not_reinstated(&blog, &logins);
    stale.extend(stale_connections(&blog));
    if !stale.is_empty() {
        let msg = format!(
            "bootlun did not reinstate a session the guest abandoned (RFC 7143 6.3.5: a login with the \
             ISID of a live session and TSIH 0 must end the old session first):\n  {}",
            stale.join("\n  ")
        );
        panic!("{msg}\n--- bootlun log ---\n{blog}");
    }
    assert!(froze, "the guest never asked for bootlun to be frozen");
    let aborts: Vec<&str> = blog
        .lines()
        .filter(|l| l.contains("task management AbortTask"))
        .collect();
    assert!(
        !aborts.is_empty(),
        "the kernel's ABORT TASK for the timed-out WRITE is not in bootlun's log:\n{blog}"
    );
    for tmf in [
        "task management LogicalUnitReset -> 0",
        "task management TargetWarmReset -> 0",
    ] {
        assert!(
            blog.contains(tmf),
            "bootlun's log lacks `{tmf}` (the guest's sg_reset):\n{blog}"
        );
    }

    let disks: Vec<BTreeMap<String, String>> = tagged(&serial_text, "BOOTLUN-VM-DISK ")
        .into_iter()
        .map(kv)
        .collect();
    for (lun, want) in [
        ("0", RAM_LUN_BYTES),
        ("1", FILE_LUN_BYTES),
        ("2", RO_LUN_BYTES),
        ("3", NULL_LUN_BYTES),
    ] {
        let d = disks
            .iter()
            .find(|d| d.get("lun").map(String::as_str) == Some(lun))
            .unwrap_or_else(|| panic!("guest did not report LUN {lun}:\n{serial_text}"));
        let sectors: u64 = d["sectors"].parse().unwrap();
        let lbs: u64 = d["lbs"].parse().unwrap();
        assert_eq!(
            sectors * 512,
            want,
            "LUN {lun}: the guest sees {sectors} sectors ({d:?})"
        );
        assert_eq!(lbs, 512, "LUN {lun}: logical block size {lbs}");
        eprintln!("guest LUN {lun}: {d:?}");
    }

    // Every region the guest wrote (or read), as the backing file holds it.
    let regions: [(&str, u64, &[u8]); 10] = [
        (
            "write that timed out while bootlun was frozen",
            ABORT_OFF,
            &pat.par,
        ),
        (
            "halves written by two concurrent sessions",
            TWO_OFF,
            &pat.par,
        ),
        ("host pattern (read by the guest)", HOST_OFF, &pat.host),
        (
            "O_DIRECT write issued while the link was down",
            RECOVERY_OFF,
            &pat.par,
        ),
        (
            "4 MiB O_DIRECT write with CRC32C digests",
            DIGEST_OFF,
            &pat.guest,
        ),
        ("1 MiB O_DIRECT writes", GUEST_OFF, &pat.guest),
        (
            "4 MiB O_DIRECT write in 1 MiB commands",
            LARGE_OFF,
            &pat.guest,
        ),
        ("8 concurrent O_DIRECT writers", PAR_OFF, &pat.par),
        ("page-cache writeback", BUFFERED_OFF, &pat.par),
        ("9-sector write", SMALL_SECTOR * 512, &pat.small),
    ];
    let mut all = Vec::new();
    File::open(&backing).unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(
        all.len() as u64,
        FILE_LUN_BYTES,
        "the backing file changed size"
    );
    for (what, off, want) in regions {
        let got = &all[off as usize..off as usize + want.len()];
        assert!(
            got == want,
            "{what}: the backing file differs at offset {off} + {:?}",
            first_diff(got, want)
        );
    }
    // Nothing else was written: the rest of the backing file is still zero.
    let stray = all.iter().enumerate().position(|(i, b)| {
        *b != 0
            && !regions
                .iter()
                .any(|(_, o, w)| i >= *o as usize && i < *o as usize + w.len())
    });
    assert!(
        stray.is_none(),
        "unexpected non-zero byte in the backing file at offset {stray:?}"
    );
    let ro_now = std::fs::read(&ro_backing).unwrap();
    assert!(
        ro_now == ro_image,
        "the read-only LUN's file changed at +{:?}",
        first_diff(&ro_now, &ro_image)
    );
    for (lun, ro) in [("0", "0"), ("1", "0"), ("2", "1"), ("3", "0")] {
        let d = disks
            .iter()
            .find(|d| d.get("lun").map(String::as_str) == Some(lun))
            .unwrap();
        assert_eq!(
            d.get("ro").map(String::as_str),
            Some(ro),
            "LUN {lun}: the kernel's read-only flag ({d:?})"
        );
    }
    phases.done("host verification");

    // --- Report -----------------------------------------------------------
    eprintln!("--- what the guest saw ---");
    for l in serial_text.lines() {
        if l.contains("BOOTLUN-VM-DISK")
            || l.contains("BOOTLUN-VM-INFO")
            || l.contains("BOOTLUN-VM-DMESG")
            || l.contains("BOOTLUN-VM-SG")
            || l.contains("BOOTLUN-VM-ISCSI")
            || l.contains("BOOTLUN-VM-DISCOVERY")
        {
            eprintln!("  {l}");
        }
    }
    eprintln!("--- bootlun log (info and above) ---");
    for l in blog
        .lines()
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
    {
        eprintln!("  {l}");
    }
    // The namespace goes last, after the processes that ran in it.
    drop(qemu);
    drop(bootlun);
    drop(sniffer);
    drop(ns);
    phases.report();
}
