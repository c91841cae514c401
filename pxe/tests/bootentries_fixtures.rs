//! Boot-entry discovery and menus against checked-in boot directories
//! (Fedora with BLS entries, Debian and Arch without), compared exactly with
//! the checked-in expected output. `BOOTLUN_BLESS=1` rewrites the expected
//! files after a deliberate change.

use bootlun_pxe::bootentries::{self, Source};
use bootlun_pxe::{bootentries_render, BootMethod, BootentriesArgs, BootentriesFormat};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Checkout order decides file mtimes; the kernel scan sorts by mtime, so
/// pin them: later in `order` = newer.
fn pin_mtimes(dir: &str, order: &[&str]) {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (i, name) in order.iter().enumerate() {
        let f = std::fs::File::options()
            .write(true)
            .open(fixtures().join(dir).join(name))
            .unwrap();
        f.set_modified(base + Duration::from_secs(3600 * i as u64))
            .unwrap();
    }
}

fn pin_all() {
    pin_mtimes(
        "debian",
        &[
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-13-amd64",
            "vmlinuz-6.1.0-18-amd64",
        ],
    );
    pin_mtimes("arch", &["vmlinuz-linux-lts", "vmlinuz-linux"]);
}

fn args(dir: &str, format: BootentriesFormat) -> BootentriesArgs {
    BootentriesArgs {
        boot_dir: Some(fixtures().join(dir)),
        boot_device: None,
        boot_path: "/".into(),
        format,
        server: "192.168.200.1".into(),
        http_port: 80,
        target_name: "iqn.2025-01.org.bootlun:laptop".into(),
        iscsi_port: 3260,
        initiator_name: "iqn.2025-01.org.bootlun:initiator".into(),
        boot_method: BootMethod::Netroot,
        cmdline_default: "root=UUID=3e6d2c4a-1b2f-4c1e-9a77-5b8f0e2d4c11 ro quiet splash".into(),
        menu_timeout: 5,
        strip_args: "quiet".into(),
    }
}

fn check(name: &str, a: &BootentriesArgs) {
    let got = bootentries_render(a).unwrap();
    let path = fixtures().join("expected").join(name);
    if std::env::var_os("BOOTLUN_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if got != want {
        panic!(
            "{name} differs from {}:\n--- got ---\n{got}\n--- want ---\n{want}",
            path.display()
        );
    }
}

#[test]
fn expected_menus() {
    pin_all();
    use BootentriesFormat::*;
    for dir in ["fedora", "debian", "arch"] {
        check(&format!("{dir}.ipxe"), &args(dir, Ipxe));
        check(&format!("{dir}.pxelinux"), &args(dir, Pxelinux));
        check(&format!("{dir}.json"), &args(dir, Json));
    }
    let mut a = args("fedora", Ipxe);
    a.boot_method = BootMethod::Ibft;
    check("fedora-ibft.ipxe", &a);
    let mut a = args("debian", Ipxe);
    a.boot_method = BootMethod::Sanboot;
    a.menu_timeout = 0;
    check("debian-sanboot.ipxe", &a);
    let mut a = args("arch", Ipxe);
    a.menu_timeout = 0;
    a.http_port = 8080;
    a.iscsi_port = 3261;
    check("arch-timeout0.ipxe", &a);
    let mut a = args("arch", Pxelinux);
    a.menu_timeout = 0;
    check("arch-timeout0.pxelinux", &a);
}

#[test]
fn fedora_bls_order_and_keys() {
    let (src, e) = bootentries::discover(&fixtures().join("fedora"), "ignored").unwrap();
    assert_eq!(src, Source::Bls);
    let v: Vec<_> = e.iter().map(|e| e.version.clone().unwrap()).collect();
    assert_eq!(v[0], "6.8.9-300.fc40.x86_64");
    assert_eq!(v[1], "6.5.6-300.fc39.x86_64");
    assert!(v[2].starts_with("0-rescue-"));
    assert_eq!(e[0].linux, "vmlinuz-6.8.9-300.fc40.x86_64");
    assert_eq!(e[0].initrd, ["initramfs-6.8.9-300.fc40.x86_64.img"]);
    assert!(e[0].options.contains("rhgb quiet"));
}

#[test]
fn debian_scan_skips_kernel_without_initrd() {
    pin_all();
    let (src, e) = bootentries::discover(&fixtures().join("debian"), "root=/dev/sda1").unwrap();
    assert_eq!(src, Source::KernelScan);
    let ids: Vec<_> = e.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["vmlinuz-6.1.0-18-amd64", "vmlinuz-6.1.0-13-amd64"]);
    assert_eq!(e[0].initrd, ["initrd.img-6.1.0-18-amd64"]);
    assert_eq!(e[0].options, "root=/dev/sda1");
}

#[test]
fn arch_pairs_and_microcode() {
    pin_all();
    let (_, e) = bootentries::discover(&fixtures().join("arch"), "").unwrap();
    let ids: Vec<_> = e.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["vmlinuz-linux", "vmlinuz-linux-lts"]);
    assert_eq!(e[0].initrd, ["intel-ucode.img", "initramfs-linux.img"]);
}

#[test]
fn newest_mtime_is_default() {
    // A private copy: the shared fixtures keep their pinned order.
    let d_tmp = testkit::TempDir::new("mtime");
    let d = d_tmp.path().to_path_buf();
    std::fs::create_dir_all(&d).unwrap();
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for (i, v) in ["6.1.0-18-amd64", "6.1.0-13-amd64"].iter().enumerate() {
        std::fs::write(d.join(format!("initrd.img-{v}")), "i").unwrap();
        let k = d.join(format!("vmlinuz-{v}"));
        std::fs::write(&k, "k").unwrap();
        let f = std::fs::File::options().write(true).open(&k).unwrap();
        f.set_modified(base + Duration::from_secs(60 * i as u64))
            .unwrap();
    }
    let (_, e) = bootentries::discover(&d, "").unwrap();
    assert_eq!(e[0].id, "vmlinuz-6.1.0-13-amd64");
}

#[test]
fn errors_are_one_line() {
    let mut a = args("does-not-exist", BootentriesFormat::Ipxe);
    let e = bootentries_render(&a).unwrap_err();
    assert!(
        e.starts_with("--boot-dir ") && e.ends_with("does-not-exist: no such directory"),
        "{e}"
    );
    a.boot_dir = Some(fixtures().join("expected"));
    let e = bootentries_render(&a).unwrap_err();
    assert!(
        e.ends_with("expected: no kernels found (looked for loader/entries/*.conf and vmlinuz-*)"),
        "{e}"
    );
    assert!(!e.contains('\n'));
}

#[test]
fn bls_paths_under_boot_on_the_root_filesystem() {
    // /boot inside the root filesystem: entries say /boot/vmlinuz-…, and
    // the boot directory handed to us is that /boot.
    let d_tmp = testkit::TempDir::new("bootprefix");
    let d = d_tmp.path().to_path_buf();
    std::fs::create_dir_all(d.join("loader/entries")).unwrap();
    std::fs::write(d.join("vmlinuz-6.9.1"), "k").unwrap();
    std::fs::write(d.join("initramfs-6.9.1.img"), "i").unwrap();
    std::fs::write(
        d.join("loader/entries/m-6.9.1.conf"),
        "title T\nversion 6.9.1\nlinux /boot/vmlinuz-6.9.1\ninitrd /boot/initramfs-6.9.1.img\noptions ro\n",
    )
    .unwrap();
    let (_, e) = bootentries::discover(&d, "").unwrap();
    assert_eq!(e[0].linux, "vmlinuz-6.9.1");
    assert_eq!(e[0].initrd, ["initramfs-6.9.1.img"]);
}

#[test]
fn bls_kernelopts_from_grubenv() {
    // Fedora 30-33: `options $kernelopts`, the value in grub2/grubenv;
    // unknown variables ($tuned_params) vanish.
    let d_tmp = testkit::TempDir::new("grubenv");
    let d = d_tmp.path().to_path_buf();
    std::fs::create_dir_all(d.join("loader/entries")).unwrap();
    std::fs::create_dir_all(d.join("grub2")).unwrap();
    std::fs::write(d.join("vmlinuz-5.8.15"), "k").unwrap();
    std::fs::write(d.join("initramfs-5.8.15.img"), "i").unwrap();
    std::fs::write(
        d.join("grub2/grubenv"),
        "# GRUB Environment Block\nsaved_entry=x\nkernelopts=root=/dev/mapper/fedora-root ro rhgb quiet\n#######\n",
    )
    .unwrap();
    std::fs::write(
        d.join("loader/entries/m-5.8.15.conf"),
        "title F\nversion 5.8.15\nlinux /vmlinuz-5.8.15\ninitrd /initramfs-5.8.15.img $tuned_initrd\noptions $kernelopts $tuned_params\n",
    )
    .unwrap();
    std::fs::write(
        d.join("loader/entries/m-5.8.14.conf"),
        "title G\nversion 5.8.14\nlinux /vmlinuz-5.8.15\noptions $nothing\n",
    )
    .unwrap();
    let (_, e) = bootentries::discover(&d, "root=/dev/sdz9").unwrap();
    assert_eq!(e[0].options, "root=/dev/mapper/fedora-root ro rhgb quiet");
    assert_eq!(e[0].initrd, ["initramfs-5.8.15.img"]);
    assert_eq!(e[1].options, "root=/dev/sdz9");
}
