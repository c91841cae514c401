//! `bootlun_engine::blkid` against util-linux `blkid` on real images made by
//! the real mkfs tools, plus a fake sysfs tree for `resolve`.
//!
//! Needs: util-linux (blkid), e2fsprogs, dosfstools, xfsprogs, btrfs-progs,
//! genisoimage, fdisk (sfdisk), gdisk (sgdisk).

use bootlun_engine::blkid::{self, Roots};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("bootlun-blkid-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Is `tool` installed? If not: fail naming the package, unless
/// BOOTLUN_SKIP_EXTERNAL=1 (then say why and let the caller return).
fn have(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file());
    if found {
        return true;
    }
    if std::env::var("BOOTLUN_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipped: {tool} not installed (Debian package {package})");
        return false;
    }
    panic!(
        "{tool} not found: install the Debian package {package} (or set BOOTLUN_SKIP_EXTERNAL=1)"
    );
}

/// Run a command with a deadline; its stdout on success, panic otherwise.
fn run(args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    // Read the pipes on threads so a chatty tool cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still running after 120 s, killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = to.join().unwrap();
    let err = te.join().unwrap();
    assert!(status.success(), "{args:?}: {status}: {err}");
    out
}

/// `blkid -p -o export FILE`, with its backslash escapes undone.
fn blkid_export(path: &Path) -> HashMap<String, String> {
    let out = run(
        &["blkid", "-p", "-o", "export", path.to_str().unwrap()],
        None,
    );
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let mut s = String::new();
            let mut esc = false;
            for c in v.chars() {
                if esc || c != '\\' {
                    s.push(c);
                    esc = false;
                } else {
                    esc = true;
                }
            }
            (k.to_string(), s)
        })
        .collect()
}

fn sparse(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

fn assert_same_as_blkid(img: &Path, want_type: &str) {
    let ours = blkid::probe(img).unwrap();
    let theirs = blkid_export(img);
    assert_eq!(
        ours.fstype.as_deref(),
        theirs.get("TYPE").map(String::as_str),
        "{}",
        img.display()
    );
    assert_eq!(ours.fstype.as_deref(), Some(want_type));
    assert_eq!(ours.uuid.as_deref(), theirs.get("UUID").map(String::as_str));
    assert_eq!(
        ours.label.as_deref(),
        theirs.get("LABEL").map(String::as_str)
    );
    assert!(ours.partuuid.is_none() && ours.partlabel.is_none() && ours.serial.is_none());
}

#[test]
fn file_systems_match_blkid() {
    let tools = [
        ("blkid", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.vfat", "dosfstools"),
        ("mkswap", "util-linux"),
        ("mkfs.xfs", "xfsprogs"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("genisoimage", "genisoimage"),
    ];
    if !tools.iter().all(|(t, p)| have(t, p)) {
        return;
    }
    let d = TempDir::new("fs");
    let img = d.0.join("fs.img");
    let s = img.to_str().unwrap();

    sparse(&img, 64 << 20);
    run(
        &[
            "mkfs.ext4",
            "-q",
            "-F",
            "-U",
            "0b0e6a4c-1111-2222-3333-444455556666",
            "-L",
            "rootfs",
            s,
        ],
        None,
    );
    assert_same_as_blkid(&img, "ext4");
    let id = blkid::probe(&img).unwrap();
    assert_eq!(
        id.uuid.as_deref(),
        Some("0b0e6a4c-1111-2222-3333-444455556666")
    );
    assert_eq!(id.label.as_deref(), Some("rootfs"));

    sparse(&img, 64 << 20);
    run(&["mkfs.ext2", "-q", "-F", "-L", "old", s], None);
    assert_same_as_blkid(&img, "ext2");
    sparse(&img, 64 << 20);
    run(&["mkfs.ext3", "-q", "-F", s], None);
    assert_same_as_blkid(&img, "ext3");

    for (fat, sz) in [("12", 8u64 << 20), ("16", 64 << 20), ("32", 64 << 20)] {
        std::fs::remove_file(&img).ok();
        sparse(&img, sz);
        run(
            &["mkfs.vfat", "-F", fat, "-i", "1234ABCD", "-n", "BOOT ME", s],
            None,
        );
        assert_same_as_blkid(&img, "vfat");
        let id = blkid::probe(&img).unwrap();
        assert_eq!(id.uuid.as_deref(), Some("1234-ABCD"), "FAT{fat}");
        assert_eq!(id.label.as_deref(), Some("BOOT ME"), "FAT{fat}");
    }
    // No label at all.
    sparse(&img, 64 << 20);
    run(&["mkfs.vfat", "-i", "0000BEEF", s], None);
    assert_same_as_blkid(&img, "vfat");

    sparse(&img, 64 << 20);
    run(
        &[
            "mkswap",
            "-U",
            "0b0e6a4c-1111-2222-3333-444455556667",
            "-L",
            "sw",
            s,
        ],
        None,
    );
    assert_same_as_blkid(&img, "swap");

    std::fs::remove_file(&img).ok();
    sparse(&img, 320 << 20);
    run(
        &[
            "mkfs.xfs",
            "-q",
            "-f",
            "-m",
            "uuid=0b0e6a4c-1111-2222-3333-444455556668",
            "-L",
            "xlabel",
            s,
        ],
        None,
    );
    assert_same_as_blkid(&img, "xfs");

    std::fs::remove_file(&img).ok();
    sparse(&img, 128 << 20);
    run(
        &[
            "mkfs.btrfs",
            "-q",
            "-f",
            "-U",
            "0b0e6a4c-1111-2222-3333-444455556669",
            "-L",
            "b label",
            s,
        ],
        None,
    );
    assert_same_as_blkid(&img, "btrfs");

    let src = d.0.join("isodir");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), "x").unwrap();
    let iso = d.0.join("t.iso");
    let isos = iso.to_str().unwrap();
    for (label, joliet) in [
        ("plain_label", false),
        ("My Volume Label X", true),
        ("short", true),
    ] {
        let mut a = vec!["genisoimage", "-quiet", "-V", label, "-o", isos];
        if joliet {
            a.push("-J");
        }
        a.push(src.to_str().unwrap());
        run(&a, None);
        assert_same_as_blkid(&iso, "iso9660");
        assert_eq!(blkid::probe(&iso).unwrap().label.as_deref(), Some(label));
    }

    // Nothing recognisable.
    sparse(&img, 1 << 20);
    assert_eq!(blkid::probe(&img).unwrap().fstype, None);
}

#[test]
fn partition_tables_match_sfdisk() {
    if !(have("sfdisk", "fdisk") && have("sgdisk", "gdisk") && have("blkid", "util-linux")) {
        return;
    }
    let d = TempDir::new("pt");
    let img = d.0.join("disk.img");
    let s = img.to_str().unwrap();

    sparse(&img, 64 << 20);
    run(
        &["sfdisk", "-q", s],
        Some(
            "label: gpt\nlabel-id: 5E3B3B7A-0D3E-4C1B-9F00-0123456789AB\n\
             size=8M, type=L, name=\"EFI system\"\nsize=8M, type=L, name=boot\ntype=L\n",
        ),
    );
    // sgdisk can set the name to something non-ASCII.
    run(&["sgdisk", "-c", "3:rootfs-\u{e9}t\u{e9}", s], None);
    let t = blkid::partitions(&img).unwrap().unwrap();
    assert_eq!(t.kind, "gpt");
    assert_eq!(t.ptuuid, "5e3b3b7a-0d3e-4c1b-9f00-0123456789ab");
    let theirs = blkid_export(&img);
    assert_eq!(theirs.get("PTUUID"), Some(&t.ptuuid));
    assert_eq!(t.parts.len(), 3);
    for p in &t.parts {
        let n = p.number.to_string();
        let uuid = run(&["sfdisk", "--part-uuid", s, &n], None);
        assert_eq!(p.partuuid, uuid.trim().to_ascii_lowercase());
        let name = run(&["sfdisk", "--part-label", s, &n], None);
        assert_eq!(p.partlabel.as_deref().unwrap_or(""), name.trim());
    }
    assert_eq!(
        t.parts[2].partlabel.as_deref(),
        Some("rootfs-\u{e9}t\u{e9}")
    );
    assert_eq!(t.parts[0].start, 2048);
    assert_eq!(t.parts[0].size, 16384);

    // MBR with an extended partition and two logical ones.
    sparse(&img, 64 << 20);
    run(
        &["sfdisk", "-q", s],
        Some(
            "label: dos\nlabel-id: 0x1badcafe\nsize=8M, type=83\ntype=5\n\
             size=8M, type=83\ntype=82\n",
        ),
    );
    let t = blkid::partitions(&img).unwrap().unwrap();
    assert_eq!(t.kind, "dos");
    assert_eq!(t.ptuuid, "1badcafe");
    let dump = run(&["sfdisk", "-J", s], None);
    let nums: Vec<u32> = t.parts.iter().map(|p| p.number).collect();
    assert_eq!(nums, [1, 2, 5, 6]);
    for p in &t.parts {
        // What the kernel and blkid call the partition on an MBR disk
        // (sfdisk --part-uuid knows GPT only).
        assert_eq!(p.partuuid, format!("1badcafe-{:02x}", p.number));
        // sfdisk's JSON lists "start": N for every partition.
        assert!(
            dump.contains(&format!("\"start\": {},", p.start)),
            "{} start {} not in {dump}",
            p.number,
            p.start
        );
    }
}

/// Make `dir/class/block/NAME` → `dir/devices/.../NAME` like sysfs does.
fn fake_block(sys: &Path, path_in_devices: &str, partition: Option<u32>, serial: Option<&str>) {
    let dir = sys.join("devices").join(path_in_devices);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("size"), "131072\n").unwrap();
    if let Some(n) = partition {
        std::fs::write(dir.join("partition"), format!("{n}\n")).unwrap();
    }
    if let Some(s) = serial {
        std::fs::write(dir.join("serial"), format!("{s}\n")).unwrap();
    }
    let name = dir.file_name().unwrap().to_owned();
    std::fs::create_dir_all(sys.join("class/block")).unwrap();
    std::os::unix::fs::symlink(&dir, sys.join("class/block").join(name)).unwrap();
}

#[test]
fn resolve_against_a_fake_sysfs() {
    if !(have("sfdisk", "fdisk")
        && have("mkfs.ext4", "e2fsprogs")
        && have("mkfs.vfat", "dosfstools"))
    {
        return;
    }
    let d = TempDir::new("resolve");
    let roots = Roots {
        sys: d.0.join("sys"),
        dev: d.0.join("dev"),
    };
    std::fs::create_dir_all(&roots.dev).unwrap();
    // Disk vdx: GPT with two partitions. The partition "nodes" are plain
    // files holding the file systems, as the kernel would show them.
    let disk = roots.dev.join("vdx");
    sparse(&disk, 64 << 20);
    run(
        &["sfdisk", "-q", disk.to_str().unwrap()],
        Some(
            "label: gpt\nsize=16M, type=L, name=ESP, uuid=11111111-2222-3333-4444-555555555555\n\
             type=L, name=root, uuid=AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE\n",
        ),
    );
    let p1 = roots.dev.join("vdx1");
    sparse(&p1, 16 << 20);
    run(
        &[
            "mkfs.vfat",
            "-i",
            "CAFE0001",
            "-n",
            "ESP",
            p1.to_str().unwrap(),
        ],
        None,
    );
    let p2 = roots.dev.join("vdx2");
    sparse(&p2, 32 << 20);
    run(
        &[
            "mkfs.ext4",
            "-q",
            "-F",
            "-U",
            "7d0c8b2e-0000-4000-8000-000000000001",
            "-L",
            "root",
            p2.to_str().unwrap(),
        ],
        None,
    );
    // Disk vdy: MBR, one partition, and a serial.
    let disk2 = roots.dev.join("vdy");
    sparse(&disk2, 16 << 20);
    run(
        &["sfdisk", "-q", disk2.to_str().unwrap()],
        Some("label: dos\nlabel-id: 0x0000abcd\ntype=83\n"),
    );
    sparse(&roots.dev.join("vdy1"), 1 << 20);
    fake_block(&roots.sys, "pci0/virtio1/block/vdx", None, None);
    fake_block(&roots.sys, "pci0/virtio1/block/vdx/vdx1", Some(1), None);
    fake_block(&roots.sys, "pci0/virtio1/block/vdx/vdx2", Some(2), None);
    fake_block(&roots.sys, "pci0/virtio2/block/vdy", None, Some("SER-42"));
    fake_block(&roots.sys, "pci0/virtio2/block/vdy/vdy1", Some(1), None);
    // An empty device is not looked at.
    fake_block(&roots.sys, "virtual/block/loop9", None, None);
    std::fs::write(roots.sys.join("devices/virtual/block/loop9/size"), "0\n").unwrap();

    let r = |spec: &str| blkid::resolve_in(&roots, spec);
    assert_eq!(r("UUID=CAFE-0001").unwrap(), Some(p1.clone()));
    assert_eq!(r("uuid=cafe-0001").unwrap(), Some(p1.clone()));
    assert_eq!(r("LABEL=ESP").unwrap(), Some(p1.clone()));
    assert_eq!(
        r("PARTUUID=11111111-2222-3333-4444-555555555555").unwrap(),
        Some(p1.clone())
    );
    assert_eq!(r("PARTLABEL=root").unwrap(), Some(p2.clone()));
    assert_eq!(
        r("PARTUUID=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").unwrap(),
        Some(p2.clone())
    );
    assert_eq!(
        r("UUID=7d0c8b2e-0000-4000-8000-000000000001").unwrap(),
        Some(p2.clone())
    );
    assert_eq!(r("LABEL=\"root\"").unwrap(), Some(p2.clone()));
    assert_eq!(
        r("PARTUUID=0000abcd-01").unwrap(),
        Some(roots.dev.join("vdy1"))
    );
    assert_eq!(r("serial=SER-42").unwrap(), Some(disk2.clone()));
    assert_eq!(r("serial=SER-4").unwrap(), None);
    assert_eq!(r("LABEL=nothere").unwrap(), None);
    assert_eq!(r(disk.to_str().unwrap()).unwrap(), Some(disk.clone()));
    assert_eq!(r("/nonexistent/dev").unwrap(), None);
    assert!(r("KEY=1").unwrap_err().contains("unknown key KEY"));

    // Two devices with the same label: an error naming both.
    sparse(&roots.dev.join("vdy1"), 16 << 20);
    run(
        &[
            "mkfs.vfat",
            "-n",
            "ESP",
            roots.dev.join("vdy1").to_str().unwrap(),
        ],
        None,
    );
    let e = r("LABEL=ESP").unwrap_err();
    assert!(e.contains("vdx1") && e.contains("vdy1"), "{e}");

    // udev's links win when they exist.
    std::fs::create_dir_all(roots.dev.join("disk/by-label")).unwrap();
    std::os::unix::fs::symlink("../../vdy1", roots.dev.join("disk/by-label/ESP")).unwrap();
    assert_eq!(
        r("LABEL=ESP").unwrap(),
        Some(std::fs::canonicalize(roots.dev.join("vdy1")).unwrap())
    );

    // The whole-disk probe fills the serial and nothing else.
    let id = blkid::probe(&disk2).unwrap();
    assert_eq!(id.fstype, None);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
                           at in 0usize..70000, which in 0usize..9) {
        // Random bytes with one real signature planted, so the parsers get
        // past their first check and into the structures behind it.
        let mut img = vec![0u8; at + data.len()];
        img[at..].copy_from_slice(&data);
        let plant: &[(usize, &[u8])] = &[
            (1024 + 0x38, &[0x53, 0xEF]),
            (0, b"XFSB\x00\x00\x10\x00"),
            (0x10040, b"_BHRfS_M"),
            (4086, b"SWAPSPACE2"),
            (32769, b"CD001"),
            (510, &[0x55, 0xAA]),
            (512, b"EFI PART"),
            (54, b"FAT16   "),
            (82, b"FAT32   "),
        ];
        let (off, m) = plant[which];
        if img.len() < off + m.len() { img.resize(off + m.len(), 0); }
        img[off..off + m.len()].copy_from_slice(m);
        let _ = blkid::probe_bytes(&img);
        let _ = blkid::partitions_bytes(&img);
        let _ = blkid::probe_bytes(&data);
        let _ = blkid::partitions_bytes(&data);
    }
}
