//! The real build: Debian's kernel package (fetched with `apt-get
//! download`), read without dpkg, turned into a kernel and an initramfs;
//! then the image is decompressed, listed and checked.

mod build_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootlun_image::build::{self, BuildArgs};
use bootlun_image::cpio;
use bootlun_image::kmod::{self, ModIndex};
use build_common::*;

/// The `linux-image-amd64` meta package and the versioned package it
/// depends on, downloaded once into target/tmp/deb-cache.
fn debs() -> Option<(PathBuf, PathBuf)> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let find = |prefix: &str| -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with(prefix)
                    && p.extension().is_some_and(|e| e == "deb")
            })
            .collect();
        v.sort();
        v.pop()
    };
    if !have("apt-get") {
        if skip_external() {
            eprintln!("skipping: apt-get not available (BOOTLUN_SKIP_EXTERNAL=1)");
            return None;
        }
        panic!("apt-get not found: this test downloads Debian's linux-image-amd64 (or set BOOTLUN_SKIP_EXTERNAL=1)");
    }
    let download = |name: &str| {
        let out = run_bounded(
            Command::new("apt-get")
                .arg("download")
                .arg(name)
                .current_dir(&cache),
            b"",
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "apt-get download {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let meta = match find("linux-image-amd64_") {
        Some(m) => m,
        None => {
            download("linux-image-amd64");
            find("linux-image-amd64_").expect("apt-get download linux-image-amd64 left no .deb")
        }
    };
    // The real package is named in the meta package's Depends.
    let out = run_bounded(
        Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"),
        b"",
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "dpkg-deb -f failed (package dpkg)");
    let depends = String::from_utf8_lossy(&out.stdout).to_string();
    let real_name = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .unwrap_or_else(|| panic!("no linux-image-* in Depends: {depends}"))
        .to_string();
    let real = match find(&format!("{real_name}_")) {
        Some(r) => r,
        None => {
            download(&real_name);
            find(&format!("{real_name}_")).unwrap()
        }
    };
    Some((meta, real))
}

fn check(text: &str) -> Result<(), String> {
    text.parse::<toml::Table>()
        .map(|_| ())
        .map_err(|e| e.message().to_string())
}

#[test]
fn debian_kernel_package_to_image() {
    let Some((meta, real)) = debs() else { return };
    let dir = scratch("deb-build");
    let config = dir.join("bootlun.toml");
    std::fs::write(&config, "lun = [\"/dev/vda\"]\nnet-interface = \"eth0\"\n").unwrap();
    let mut a = BuildArgs::new(dir.join("out"));
    a.kernel_deb = Some(real.clone());
    a.config = Some(config);
    a.bootlun_bin = Some(std::env::current_exe().unwrap());
    a.busybox = Some("none".into());

    let t = Instant::now();
    let s = build::run(&a, &check).unwrap();
    let first = t.elapsed();
    eprintln!(
        "build from {}: {:.1} s; kernel {} {} bytes; initramfs {} bytes zstd, {} uncompressed; {} modules; missing {:?}",
        real.display(),
        first.as_secs_f64(),
        s.kernel_version,
        s.kernel_size,
        s.initrd_size,
        s.initrd_uncompressed,
        s.modules.len(),
        s.missing_modules
    );
    let ver = s.kernel_version.clone();
    let pkg_ver = real
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('_')
        .next()
        .unwrap()
        .trim_start_matches("linux-image-")
        .to_string();
    assert_eq!(ver, pkg_ver, "kernel version from the bzImage header");

    // The kernel: a bzImage with the EFI stub.
    let k = std::fs::read(dir.join("out/bootlun-kernel.bin")).unwrap();
    assert_eq!(&k[..2], b"MZ");
    assert_eq!(&k[0x202..0x206], b"HdrS");

    let raw = std::fs::read(dir.join("out/bootlun-initrd.img")).unwrap();
    assert!(
        raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "zstd by default"
    );
    let archive = initrd_bytes(&dir.join("out/bootlun-initrd.img"));
    let e = cpio::parse(&archive).unwrap();
    if let Some(names) = cpio_tool_list(&archive) {
        assert_eq!(names.len(), e.len(), "cpio -it and our reader disagree");
        assert!(names.iter().any(|n| n == "init"));
    }
    let init = find(&e, "init");
    assert_eq!(
        (init.kind(), init.data.as_slice()),
        (cpio::S_IFLNK, &b"bin/bootlun"[..])
    );
    assert!(find(&e, "bin/bootlun").data.starts_with(b"\x7fELF"));
    assert!(String::from_utf8_lossy(&find(&e, "etc/bootlun.toml").data).contains("/dev/vda"));
    assert!(
        !e.iter()
            .any(|x| x.name.ends_with(".ko.xz") || x.name.ends_with(".ko.zst")),
        "compressed module left"
    );

    let base = format!("lib/modules/{ver}/");
    let ko = |n: &str| {
        e.iter()
            .find(|x| x.name.starts_with(&base) && x.name.ends_with(&format!("/{n}.ko")))
    };
    for m in [
        "virtio_net",
        "virtio_blk",
        "ext4",
        "jbd2",
        "mbcache",
        "crc16",
        "net_failover",
        "failover",
    ] {
        let x = ko(m).unwrap_or_else(|| panic!("{m}.ko not in the image"));
        let info = kmod::read_modinfo(&x.data).unwrap();
        assert_eq!(info.name.as_deref(), Some(m));
        // Every dependency of an included module is included or built in.
        let builtin =
            String::from_utf8_lossy(&find(&e, &format!("{base}modules.builtin")).data).to_string();
        for d in info.depends {
            assert!(
                ko(&d).is_some() || builtin.contains(&format!("/{d}.ko")),
                "{m} needs {d}"
            );
        }
    }
    let dep = String::from_utf8_lossy(&find(&e, &format!("{base}modules.dep")).data).to_string();
    let ext4 = dep
        .lines()
        .find(|l| l.starts_with("kernel/fs/ext4/ext4.ko:"))
        .expect("ext4 in modules.dep");
    for d in ["jbd2.ko", "mbcache.ko", "crc16.ko"] {
        assert!(ext4.contains(d), "{ext4}");
    }
    let alias =
        String::from_utf8_lossy(&find(&e, &format!("{base}modules.alias")).data).to_string();
    assert!(alias
        .lines()
        .any(|l| l == "alias virtio:d00000001v* virtio_net"));

    // What PID 1 will do with it: resolve a NIC's modalias and an fs alias.
    let unpacked = dir.join("unpacked");
    unpack_prefix(&e, "lib/", &unpacked);
    let idx = ModIndex::open(&unpacked.join(&base)).unwrap();
    assert_eq!(
        idx.match_modalias("virtio:d00000001v00001AF4"),
        ["virtio_net"]
    );
    let order = idx.load_order(&idx.resolve("fs-ext4"));
    assert_eq!(order.last().map(String::as_str), Some("ext4"));
    let pos = |n: &str| {
        order
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} not in {order:?}"))
    };
    assert!(pos("jbd2") < pos("ext4") && pos("mbcache") < pos("ext4"));
    // ext4 asks for crc32c through a soft dependency on an alias.
    assert!(order.iter().any(|m| m.starts_with("crc32c")), "{order:?}");
    assert!(
        idx.path_of("isofs").is_some(),
        "iso9660 is the isofs module"
    );
    assert!(
        !idx.match_modalias("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00")
            .is_empty(),
        "e1000e by PCI id"
    );

    // The meta package is followed to the package beside it, and the
    // extracted cache is reused rather than unpacked again.
    let marker = std::fs::read_dir(dir.join("out/.cache"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join(".complete"))
        .find(|p| p.exists())
        .unwrap();
    let before = std::fs::metadata(&marker).unwrap().modified().unwrap();
    a.kernel_deb = Some(meta);
    a.compress = build::Compress::Gzip;
    let t = Instant::now();
    let s2 = build::run(&a, &check).unwrap();
    eprintln!(
        "second build (meta package, cache reused, gzip): {:.1} s, {} bytes",
        t.elapsed().as_secs_f64(),
        s2.initrd_size
    );
    assert_eq!(s2.kernel_version, ver);
    assert_eq!(
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
        before,
        "cache was extracted again"
    );
    // The extracted package takes about 400 MB: not kept per run.
    std::fs::remove_dir_all(&dir).unwrap();
}
