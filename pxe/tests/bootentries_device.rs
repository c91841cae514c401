//! `--boot-device`: an ext4 image on a loop device, mounted read-only, with
//! the kernels in `--boot-path`. Needs root, losetup and mke2fs; skips
//! (passing, with a message) otherwise.

use bootlun_pxe::{bootentries_render, BootMethod, BootentriesArgs, BootentriesFormat};
use std::process::Command;

fn run(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !o.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run(&["losetup", "-d", &self.0]);
    }
}

/// A missing tool or privilege fails the test unless
/// `BOOTLUN_SKIP_EXTERNAL=1` (needs root, e2fsprogs and util-linux).
fn skip_or_fail(why: &str) {
    if testkit::skip_external() {
        eprintln!("SKIPPED (BOOTLUN_SKIP_EXTERNAL=1): {why}");
        return;
    }
    panic!("{why} (needs root, e2fsprogs and mount/util-linux; BOOTLUN_SKIP_EXTERNAL=1 skips)");
}

#[test]
fn boot_device_on_a_loop_device() {
    if !testkit::require_root()
        || !testkit::require_tool("mke2fs", "e2fsprogs")
        || !testkit::require_tool("losetup", "mount")
        || !testkit::require_file("/dev/loop-control", "kmod (modprobe loop)")
    {
        return;
    }
    let dir_tmp = testkit::TempDir::new("bootdev");
    let dir = dir_tmp.path().to_path_buf();
    let tree = dir.join("tree/boot");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("vmlinuz-6.1.0-20-amd64"), "k").unwrap();
    std::fs::write(tree.join("initrd.img-6.1.0-20-amd64"), "i").unwrap();
    let img = dir.join("root.img");
    let img_s = img.to_str().unwrap();
    if let Err(e) = run(&[
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "bootlun-test",
        "-d",
        dir.join("tree").to_str().unwrap(),
        img_s,
        "8M",
    ]) {
        return skip_or_fail(&e);
    }
    let dev = match run(&["losetup", "-f", "--show", "-r", img_s]) {
        Ok(d) => Loop(d),
        Err(e) => return skip_or_fail(&e),
    };
    let mut a = BootentriesArgs {
        boot_dir: None,
        boot_device: Some(dev.0.clone()),
        boot_path: "/boot".into(),
        format: BootentriesFormat::Json,
        server: "10.0.0.1".into(),
        http_port: 80,
        target_name: "iqn.2026-11.org.bootlun:t".into(),
        iscsi_port: 3260,
        initiator_name: "iqn.2026-11.org.bootlun:i".into(),
        boot_method: BootMethod::Netroot,
        cmdline_default: "root=LABEL=bootlun-test ro".into(),
        menu_timeout: 5,
        strip_args: "quiet".into(),
    };
    let out = bootentries_render(&a).unwrap();
    assert!(
        out.contains("\"linux\": \"vmlinuz-6.1.0-20-amd64\""),
        "{out}"
    );
    assert!(
        out.contains(
            "root=LABEL=bootlun-test ro netroot=iscsi:10.0.0.1::::iqn.2026-11.org.bootlun:t"
        ),
        "{out}"
    );
    // Unmounted again (the mount lives as long as the render).
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&dev.0), "{} still mounted", dev.0);

    a.boot_path = "/nope".into();
    let e = bootentries_render(&a).unwrap_err();
    assert_eq!(e, format!("--boot-device {}: no such directory", dev.0));
    a.boot_device = Some("/dev/does-not-exist".into());
    assert_eq!(
        bootentries_render(&a).unwrap_err(),
        "--boot-device /dev/does-not-exist: no such device"
    );
    // By label, with or without udev's /dev/disk/by-label: the ramdisk has
    // no udev, and the superblock is read instead.
    a.boot_device = Some("LABEL=bootlun-test".into());
    a.boot_path = "/boot".into();
    let out = bootentries_render(&a).unwrap();
    assert!(out.contains("vmlinuz-6.1.0-20-amd64"), "{out}");
    a.boot_device = Some("UUID=0000-not-there".into());
    let e = bootentries_render(&a).unwrap_err();
    assert_eq!(e, "--boot-device UUID=0000-not-there: no such device");
    drop(dev);
}
