//! What the journey boots: the Debian packages, the OS disk (GPT, an ext4
//! boot partition with a BootLoaderSpec entry, the kernel and a
//! "dracut-style" initramfs, and an ext4 root partition with a marker), and
//! reading files back from the disk image once every machine is off.
//!
//! Nothing here needs loop devices: `mke2fs -d` fills a file-system image
//! from a directory, `sfdisk` writes the GPT into a plain file, and the
//! partitions are copied into place at their offsets.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::vm::{self, Cpio, DebCache, Modules};

/// Modules of the initiator's initramfs (dependencies are added). `af_packet`
/// is built into Debian's kernel, so udhcpc's raw socket needs no module.
const INITRAMFS_MODULES: &[&str] = &[
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
    "iscsi_ibft",
    "ext4",
];

const INIT: &str = include_str!("init.sh");

/// busybox udhcpc's event script: the lease's address on the interface.
const UDHCPC_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  bound|renew) ifconfig \"$interface\" \"$ip\" netmask \"${subnet:-255.255.255.0}\" up ;;\n\
  deconfig) ifconfig \"$interface\" 0.0.0.0 ;;\n\
esac\n\
exit 0\n";

/// Sizes of the OS disk's partitions (the kernel appears twice on the boot
/// partition after the upgrade).
const BOOT_PART_BYTES: u64 = 112 << 20;
const ROOT_PART_BYTES: u64 = 32 << 20;
const FIRST_PART_OFFSET: u64 = 1 << 20;
/// GPT partition name of the boot partition.
pub const BOOT_PARTLABEL: &str = "e2e-boot";

/// Downloaded and unpacked packages.
pub struct Packages {
    pub kernel_deb: PathBuf,
    pub kernel_tree: PathBuf,
    pub busybox: PathBuf,
    pub iscsi: PathBuf,
    pub iscsi_lib_dirs: Vec<PathBuf>,
}

impl Packages {
    /// Fetches (once, cached) the kernel, busybox-static and open-iscsi
    /// with its private libraries.
    pub fn fetch(cache: &DebCache) -> Packages {
        let kernel_deb = cache.kernel_deb();
        let kernel_tree = cache.unpacked(&kernel_deb);
        let busybox = cache.unpacked(&cache.deb("busybox-static"));
        let iscsi_deb = cache.deb("open-iscsi");
        let iscsi = cache.unpacked(&iscsi_deb);
        let mut iscsi_lib_dirs = Vec::new();
        let mut libs = cache.depends_named(&iscsi_deb, "libopeniscsiusr");
        libs.extend(cache.depends_named(&iscsi_deb, "libisns"));
        for dep in libs {
            let t = cache.unpacked(&cache.deb(&dep));
            iscsi_lib_dirs.push(t.join("usr/lib/x86_64-linux-gnu"));
            iscsi_lib_dirs.push(t.join("lib/x86_64-linux-gnu"));
        }
        Packages {
            kernel_deb,
            kernel_tree,
            busybox,
            iscsi,
            iscsi_lib_dirs,
        }
    }
}

/// busybox, iscsistart with its libraries, the modules and `init.sh`.
pub fn initiator_initramfs(p: &Packages, mods: &Modules) -> Vec<u8> {
    let order = mods.closure(INITRAMFS_MODULES);
    let mut c = Cpio::new();
    for d in [
        "dev", "proc", "sys", "tmp", "run", "etc", "sbin", "var", "root", "sysroot", "bootfs",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    let bb = p.busybox.join("bin/busybox");
    c.host_file("bin/busybox", 0o755, &bb);
    let applets = vm::run_ok(Command::new(&bb).arg("--list"), Duration::from_secs(30));
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        c.symlink(&format!("bin/{a}"), "busybox");
    }
    let iscsistart = p.iscsi.join("sbin/iscsistart");
    c.host_file("sbin/iscsistart", 0o755, &iscsistart);
    for (g, h) in vm::shared_libs(&iscsistart, &p.iscsi_lib_dirs) {
        if !c.has(&g) {
            c.host_file(&g, 0o755, &h);
        }
    }
    for m in &order {
        c.file(&format!("lib/modules/{m}.ko"), 0o644, &mods.bytes(m));
    }
    let mut load = order.join("\n");
    load.push('\n');
    c.file("etc/modules.load", 0o644, load.as_bytes());
    c.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    c.file("etc/group", 0o644, b"root:x:0:\n");
    c.file("bin/udhcpc-script", 0o755, UDHCPC_SCRIPT.as_bytes());
    c.file("init", 0o755, INIT.as_bytes());
    c.finish()
}

/// A random lowercase hex string of `bytes` bytes, from the kernel.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random RFC 4122 UUID, from the kernel.
pub fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read /proc/sys/kernel/random/uuid")
        .trim()
        .to_string()
}

/// The OS disk image and what the test knows about it.
pub struct OsDisk {
    pub path: PathBuf,
    /// Kernel version (`uname -r`) of the installed kernel.
    pub version: String,
    pub boot_uuid: String,
    pub root_uuid: String,
    /// The string in the root file system's `/etc/e2e-marker`.
    pub marker: String,
    pub boot_offset: u64,
    pub boot_bytes: u64,
    pub root_offset: u64,
    pub root_bytes: u64,
    /// Bytes of the initramfs on the boot partition.
    pub initrd_bytes: usize,
}

fn mke2fs(dir: &Path, uuid: &str, label: &str, image: &Path, bytes: u64) {
    vm::run_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(dir)
            .args(["-U", uuid, "-L", label])
            .arg(image)
            .arg(format!("{}k", bytes / 1024)),
        Duration::from_secs(120),
    );
}

fn copy_into(disk: &Path, offset: u64, part: &Path) {
    let mut src = File::open(part).unwrap_or_else(|e| panic!("{}: {e}", part.display()));
    let mut dst = File::options()
        .write(true)
        .open(disk)
        .unwrap_or_else(|e| panic!("{}: {e}", disk.display()));
    dst.seek(SeekFrom::Start(offset)).unwrap();
    // Zero blocks are skipped so the disk image stays sparse.
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(pos)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        pos += n as u64;
    }
    dst.sync_all().unwrap();
}

/// Builds the OS disk in `work`: GPT, boot partition (ext4, label
/// `E2EBOOT`, GPT name `e2e-boot`) with `vmlinuz-VER`, `initrd.img-VER`
/// and `loader/entries/e2e-VER.conf`, root partition (ext4) with
/// `/etc/e2e-marker` and the upgrade flag `/etc/e2e-upgrade`.
pub fn build_os_disk(work: &Path, p: &Packages) -> OsDisk {
    let mods = Modules::index(&p.kernel_tree);
    let version = mods.version.clone();
    let vmlinuz = p.kernel_tree.join(format!("boot/vmlinuz-{version}"));
    assert!(
        vmlinuz.is_file(),
        "{}: no kernel in the package",
        vmlinuz.display()
    );
    let boot_uuid = random_uuid();
    let root_uuid = random_uuid();
    let marker = random_hex(16);

    let boot_dir = work.join("boot-tree");
    let root_dir = work.join("root-tree");
    let _ = std::fs::remove_dir_all(&boot_dir);
    let _ = std::fs::remove_dir_all(&root_dir);
    std::fs::create_dir_all(boot_dir.join("loader/entries")).unwrap();
    std::fs::copy(&vmlinuz, boot_dir.join(format!("vmlinuz-{version}"))).unwrap();
    let initrd = initiator_initramfs(p, &mods);
    let initrd_bytes = initrd.len();
    std::fs::write(boot_dir.join(format!("initrd.img-{version}")), &initrd).unwrap();
    let entry = format!(
        "title e2e {version}\n\
         version {version}\n\
         linux /vmlinuz-{version}\n\
         initrd /initrd.img-{version}\n\
         options root=UUID={root_uuid} ro console=ttyS0 tsc=reliable clocksource=tsc panic=-1\n"
    );
    std::fs::write(
        boot_dir.join(format!("loader/entries/e2e-{version}.conf")),
        entry,
    )
    .unwrap();
    std::fs::create_dir_all(root_dir.join("etc")).unwrap();
    std::fs::write(root_dir.join("etc/e2e-marker"), format!("{marker}\n")).unwrap();
    std::fs::write(
        root_dir.join("etc/e2e-upgrade"),
        format!("BOOT_UUID={boot_uuid}\nVERSION={version}\n"),
    )
    .unwrap();

    let boot_img = work.join("boot.part");
    let root_img = work.join("root.part");
    let _ = std::fs::remove_file(&boot_img);
    let _ = std::fs::remove_file(&root_img);
    mke2fs(&boot_dir, &boot_uuid, "E2EBOOT", &boot_img, BOOT_PART_BYTES);
    mke2fs(&root_dir, &root_uuid, "E2EROOT", &root_img, ROOT_PART_BYTES);

    let boot_offset = FIRST_PART_OFFSET;
    let root_offset = boot_offset + BOOT_PART_BYTES;
    // One MiB after the last partition for the backup GPT.
    let disk_bytes = root_offset + ROOT_PART_BYTES + (1 << 20);
    let path = work.join("osdisk.img");
    let _ = std::fs::remove_file(&path);
    File::create(&path).unwrap().set_len(disk_bytes).unwrap();
    let script = format!(
        "label: gpt\n\
         start={}, size={}, type=BC13C2FF-59E6-4262-A352-B275FD6F7172, name=\"{BOOT_PARTLABEL}\"\n\
         start={}, size={}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"e2e-root\"\n",
        boot_offset / 512,
        BOOT_PART_BYTES / 512,
        root_offset / 512,
        ROOT_PART_BYTES / 512
    );
    let mut sf = Command::new("sfdisk");
    sf.args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("run sfdisk (package fdisk)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let st = vm::wait_bounded(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        matches!(st, Some(s) if s.success()),
        "sfdisk {} failed ({st:?}): {err}\n{script}",
        path.display()
    );
    copy_into(&path, boot_offset, &boot_img);
    copy_into(&path, root_offset, &root_img);
    let _ = std::fs::remove_file(&boot_img);
    let _ = std::fs::remove_file(&root_img);
    let _ = std::fs::remove_dir_all(&boot_dir);
    let _ = std::fs::remove_dir_all(&root_dir);
    OsDisk {
        path,
        version,
        boot_uuid,
        root_uuid,
        marker,
        boot_offset,
        boot_bytes: BOOT_PART_BYTES,
        root_offset,
        root_bytes: ROOT_PART_BYTES,
        initrd_bytes,
    }
}

impl OsDisk {
    /// A file of one of the disk's file systems, read with `debugfs` from a
    /// copy of the partition (the machines are off; nothing is mounted).
    /// Err with debugfs' message when the file is not there.
    pub fn read_file(&self, root: bool, name: &str, work: &Path) -> Result<String, String> {
        let (off, len) = if root {
            (self.root_offset, self.root_bytes)
        } else {
            (self.boot_offset, self.boot_bytes)
        };
        let part = work.join(if root { "root.read" } else { "boot.read" });
        {
            let mut src = File::open(&self.path).map_err(|e| e.to_string())?;
            src.seek(SeekFrom::Start(off)).map_err(|e| e.to_string())?;
            let mut dst = File::create(&part).map_err(|e| e.to_string())?;
            std::io::copy(&mut src.take(len), &mut dst).map_err(|e| e.to_string())?;
        }
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {name}"))
            .arg(&part)
            .output()
            .map_err(|e| format!("debugfs: {e} (package e2fsprogs)"))?;
        let _ = std::fs::remove_file(&part);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // debugfs exits 0 even when the file is missing; it says so on stderr.
        if !out.status.success() || stderr.contains("File not found") {
            return Err(format!(
                "debugfs cat {name}: {}",
                stderr
                    .lines()
                    .filter(|l| !l.starts_with("debugfs "))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
