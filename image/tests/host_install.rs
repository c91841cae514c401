//! `bootlun host install|update|uninstall` against hand-made root trees
//! (Debian, Fedora, Arch) in temporary directories: exact file contents,
//! idempotence, dry runs that change nothing, and uninstall restoring every
//! file, symlink and mode byte for byte. No root needed; the machine's own
//! /boot is never touched.

use bootlun_image::host::{run, HostAction, HostError, HostOpts};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---- scaffolding --------------------------------------------------------

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("bootlun-host-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn put(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, p).unwrap();
}

fn mkdir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel.trim_start_matches('/'))).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn exists(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel.trim_start_matches('/'))).is_ok()
}

fn expected(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host/expected")
        .join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every entry below `root`: type, mode and content (or link target).
type Snapshot = BTreeMap<String, (char, u32, Vec<u8>)>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap().display().to_string();
                out.insert(rel, ('l', 0, t.into_bytes()));
            } else if m.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                walk(base, &p, out);
            } else {
                out.insert(rel, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same(before: &Snapshot, after: &Snapshot, when: &str) {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let show = |s: Option<&(char, u32, Vec<u8>)>| match s {
                None => "absent".to_string(),
                Some((t, m, c)) => format!("{t} {m:o} {} bytes", c.len()),
            };
            format!("{k}: {} -> {}", show(before.get(k)), show(after.get(k)))
        })
        .collect();
    assert!(
        diff.is_empty(),
        "{when}: the tree differs:\n{}",
        diff.join("\n")
    );
}

/// A kernel with the bzImage/PE markers and a small initrd.
fn image_dir(tmp: &Tmp, initrd: &str) -> PathBuf {
    let d = tmp.path().join("image");
    fs::create_dir_all(&d).unwrap();
    let mut k = vec![0u8; 8192];
    k[..2].copy_from_slice(b"MZ");
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x1000..0x1010].copy_from_slice(b"bootlun test krn");
    fs::write(d.join("bootlun-kernel.bin"), k).unwrap();
    fs::write(d.join("bootlun-initrd.img"), initrd).unwrap();
    d
}

#[derive(Clone, Copy)]
enum Act {
    Install,
    Update,
    Uninstall,
}

fn host(act: Act, o: &HostOpts) -> (Result<(), HostError>, String) {
    let action = match act {
        Act::Install => HostAction::Install(o.clone()),
        Act::Update => HostAction::Update(o.clone()),
        Act::Uninstall => HostAction::Uninstall(o.clone()),
    };
    let mut out = Vec::new();
    let r = run(&action, &mut out);
    (r, String::from_utf8(out).unwrap())
}

fn ok(act: Act, o: &HostOpts) -> String {
    let (r, out) = host(act, o);
    if let Err(e) = r {
        panic!(
            "expected success, got exit {}: {}\noutput:\n{out}",
            e.code, e.msg
        );
    }
    out
}

fn opts(root: &Path, image: Option<&Path>) -> HostOpts {
    let mut o = HostOpts::new(root);
    o.image_dir = image.map(Path::to_path_buf);
    o.no_regenerate = true;
    o
}

/// Run a child to completion within `secs`, returning (status ok, stdout,
/// stderr).
fn run_bounded(cmd: &mut Command, secs: u64) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (package dash)"));
    let start = Instant::now();
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            return (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            );
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- fixture trees ------------------------------------------------------

fn common_dracut(root: &Path, bin: &str) {
    put(root, bin, "#!/bin/sh\nexit 0\n", 0o755);
    put(
        root,
        "/usr/lib/dracut/modules.d/40network/module-setup.sh",
        "# stub\n",
        0o755,
    );
    put(
        root,
        "/usr/lib/dracut/modules.d/95iscsi/module-setup.sh",
        "# stub\n",
        0o755,
    );
}

fn debian_tree(root: &Path) {
    put(
        root,
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        0o644,
    );
    common_dracut(root, "/usr/bin/dracut");
    put(root, "/usr/sbin/iscsistart", "#!/bin/sh\n", 0o755);
    put(root, "/etc/grub.d/00_header", "#!/bin/sh\n", 0o755);
    put(root, "/etc/grub.d/10_linux", "#!/bin/sh\n", 0o755);
    put(
        root,
        "/etc/grub.d/40_custom",
        "#!/bin/sh\nexec tail -n +3 $0\n",
        0o755,
    );
    put(
        root,
        "/etc/default/grub",
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n",
        0o644,
    );
    put(
        root,
        "/boot/grub/grub.cfg",
        "# generated by grub-mkconfig\n",
        0o444,
    );
    put(root, "/boot/vmlinuz-6.1.0-18-amd64", "kernel", 0o644);
    put(root, "/boot/initrd.img-6.1.0-18-amd64", "initrd", 0o644);
    put(
        root,
        "/etc/fstab",
        "UUID=1111 / ext4 errors=remount-ro 0 1\nUUID=2222 /boot/efi vfat umask=0077 0 1\n",
        0o644,
    );
    link(
        root,
        "/etc/systemd/system/sysinit.target.wants/open-iscsi.service",
        "/lib/systemd/system/open-iscsi.service",
    );
    link(
        root,
        "/etc/systemd/system/sockets.target.wants/iscsid.socket",
        "/lib/systemd/system/iscsid.socket",
    );
    link(
        root,
        "/etc/systemd/system/multi-user.target.wants/iscsid.service",
        "../../../../lib/systemd/system/iscsid.service",
    );
    link(
        root,
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
        "/lib/systemd/system/ssh.service",
    );
    mkdir(root, "/var/lib/dpkg");
}

fn fedora_tree(root: &Path) {
    put(
        root,
        "/usr/lib/os-release",
        "NAME=\"Fedora Linux\"\nVERSION=\"40 (Workstation Edition)\"\nID=fedora\nVERSION_ID=40\n",
        0o644,
    );
    // Absolute, as some images ship it: must resolve inside the tree.
    link(root, "/etc/os-release", "/usr/lib/os-release");
    common_dracut(root, "/usr/bin/dracut");
    put(root, "/usr/sbin/iscsistart", "#!/bin/sh\n", 0o755);
    put(
        root,
        "/etc/dracut.conf.d/50-local.conf",
        "compress=\"zstd\"\n",
        0o644,
    );
    put(
        root,
        "/boot/loader/entries/2b7c4a0d9e8f4f1a8c3e5d6b7a8f9e0d-6.8.5-301.fc40.x86_64.conf",
        "title Fedora Linux (6.8.5-301.fc40.x86_64) 40 (Workstation Edition)\nversion 6.8.5-301.fc40.x86_64\nlinux /vmlinuz-6.8.5-301.fc40.x86_64\ninitrd /initramfs-6.8.5-301.fc40.x86_64.img\noptions root=UUID=3333 ro rhgb quiet\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class fedora\n",
        0o644,
    );
    put(
        root,
        "/boot/grub2/grubenv",
        "# GRUB Environment Block\nmenu_auto_hide=1\n",
        0o644,
    );
    put(root, "/etc/grub.d/10_linux", "#!/bin/sh\n", 0o755);
    put(
        root,
        "/etc/fstab",
        "UUID=3333 / btrfs subvol=root,compress=zstd:1 0 0\nUUID=4444 /boot ext4 defaults 1 2\nUUID=5555 /boot/efi vfat umask=0077,shortname=winnt 0 2\n",
        0o644,
    );
    // Not Debian: the open-iscsi units stay as they are.
    link(
        root,
        "/etc/systemd/system/sockets.target.wants/iscsid.socket",
        "/usr/lib/systemd/system/iscsid.socket",
    );
    mkdir(root, "/var/lib/rpm");
}

fn arch_tree(root: &Path) {
    put(
        root,
        "/etc/os-release",
        "NAME=\"Arch Linux\"\nPRETTY_NAME=\"Arch Linux\"\nID=arch\nBUILD_ID=rolling\n",
        0o644,
    );
    common_dracut(root, "/usr/bin/dracut");
    put(root, "/usr/bin/iscsistart", "#!/bin/sh\n", 0o755);
    put(
        root,
        "/usr/lib/modules/6.9.1-arch1-1/pkgbase",
        "linux\n",
        0o644,
    );
    put(root, "/etc/grub.d/10_linux", "#!/bin/sh\n", 0o755);
    put(
        root,
        "/etc/default/grub",
        "GRUB_TIMEOUT=0\nGRUB_TIMEOUT_STYLE=hidden\n",
        0o644,
    );
    put(root, "/boot/grub/grub.cfg", "# generated\n", 0o600);
    put(root, "/boot/vmlinuz-linux", "kernel", 0o644);
    put(root, "/boot/initramfs-linux.img", "initrd", 0o644);
    put(
        root,
        "/etc/fstab",
        "UUID=6666 / ext4 rw,relatime 0 1\n",
        0o644,
    );
    // The operator's own ramdisk config, which install replaces and
    // uninstall must give back with its mode.
    put(root, "/boot/bootlun.toml", "lun = [\"/dev/sda\"]\n", 0o640);
    // No /var at all: install creates it and uninstall removes it again.
}

// ---- the tests ----------------------------------------------------------

#[test]
fn debian_grub_install_twice_update_uninstall() {
    let tmp = Tmp::new("debian");
    let root = tmp.path().join("root");
    debian_tree(&root);
    let img = image_dir(&tmp, "initrd v1");
    let o = opts(&root, Some(&img));
    let pristine = snapshot(&root);

    // Dry run: lists each change, changes nothing.
    let mut dry = o.clone();
    dry.dry_run = true;
    let out = ok(Act::Install, &dry);
    assert_same(&pristine, &snapshot(&root), "after install --dry-run");
    let r = root.display().to_string();
    for line in [
        "mkdir /var/lib/bootlun".to_string(),
        "mkdir /etc/dracut.conf.d".to_string(),
        "create /etc/dracut.conf.d/90-bootlun.conf".to_string(),
        "create /boot/bootlun-kernel.bin".to_string(),
        "create /boot/bootlun-initrd.img".to_string(),
        "create /etc/grub.d/45_bootlun".to_string(),
        "remove symlink /etc/systemd/system/sysinit.target.wants/open-iscsi.service -> /lib/systemd/system/open-iscsi.service".to_string(),
        "remove symlink /etc/systemd/system/sockets.target.wants/iscsid.socket -> /lib/systemd/system/iscsid.socket".to_string(),
        "remove symlink /etc/systemd/system/multi-user.target.wants/iscsid.service -> ../../../../lib/systemd/system/iscsid.service".to_string(),
        format!("run: chroot {r} dracut --regenerate-all --force"),
        format!("run: chroot {r} update-grub"),
        "dry run: nothing was changed".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "dry run lacks {line:?}:\n{out}");
    }
    assert!(!out.contains("ssh.service"), "{out}");

    let out = ok(Act::Install, &o);
    assert_eq!(
        read(&root, "/etc/dracut.conf.d/90-bootlun.conf"),
        expected("90-bootlun.conf")
    );
    assert_eq!(
        read(&root, "/etc/grub.d/45_bootlun"),
        expected("45_bootlun")
    );
    let mode = fs::metadata(root.join("etc/grub.d/45_bootlun"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755, "grub-mkconfig only runs executable scripts");
    assert_eq!(
        fs::read(root.join("boot/bootlun-kernel.bin")).unwrap(),
        fs::read(img.join("bootlun-kernel.bin")).unwrap()
    );
    assert_eq!(read(&root, "/boot/bootlun-initrd.img"), "initrd v1");
    assert!(
        !exists(&root, "/boot/loader"),
        "a GRUB tree gets no BLS entry"
    );
    for gone in [
        "/etc/systemd/system/sysinit.target.wants/open-iscsi.service",
        "/etc/systemd/system/sockets.target.wants/iscsid.socket",
        "/etc/systemd/system/multi-user.target.wants/iscsid.service",
    ] {
        assert!(!exists(&root, gone), "{gone} still there");
    }
    assert!(exists(
        &root,
        "/etc/systemd/system/multi-user.target.wants/ssh.service"
    ));
    assert!(
        out.contains(&format!(
            "run it yourself: chroot {r} dracut --regenerate-all --force"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("run it yourself: chroot {r} update-grub")),
        "{out}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&root, "/var/lib/bootlun/manifest.json")).unwrap();
    assert_eq!(manifest["distro"], "debian");
    assert_eq!(
        manifest["pending"],
        serde_json::json!(["initramfs", "bootloader"])
    );

    // The script grub-mkconfig would run.
    grub_script_checks(&root);

    // Second install: nothing to do.
    let installed = snapshot(&root);
    let out = ok(Act::Install, &o);
    assert!(
        out.lines().next() == Some("already installed; nothing to change"),
        "{out}"
    );
    assert!(!out.contains("create ") && !out.contains("write "), "{out}");
    assert_same(&installed, &snapshot(&root), "after the second install");
    let out = ok(Act::Update, &o);
    assert!(out.starts_with("up to date; nothing to change"), "{out}");

    // A rebuilt image: update copies it, nothing else.
    fs::write(img.join("bootlun-initrd.img"), "initrd v2, larger").unwrap();
    let out = ok(Act::Update, &o);
    assert!(
        out.lines().any(|l| l == "write /boot/bootlun-initrd.img"),
        "{out}"
    );
    assert!(!out.contains("bootlun-kernel.bin"), "{out}");
    assert_eq!(read(&root, "/boot/bootlun-initrd.img"), "initrd v2, larger");

    // Dry-run uninstall changes nothing.
    let before = snapshot(&root);
    let out = ok(Act::Uninstall, &dry);
    assert_same(&before, &snapshot(&root), "after uninstall --dry-run");
    for line in [
        "remove /boot/bootlun-initrd.img",
        "remove /etc/grub.d/45_bootlun",
        "create symlink /etc/systemd/system/sockets.target.wants/iscsid.socket -> /lib/systemd/system/iscsid.socket",
        "rmdir /var/lib/bootlun",
        "rmdir /etc/dracut.conf.d",
    ] {
        assert!(out.lines().any(|l| l == line), "uninstall dry run lacks {line:?}:\n{out}");
    }

    let out = ok(Act::Uninstall, &o);
    assert!(
        out.contains(&format!("run it yourself: chroot {r} update-grub")),
        "{out}"
    );
    assert_same(&pristine, &snapshot(&root), "after uninstall");
    let out = ok(Act::Uninstall, &o);
    assert_eq!(out.trim(), format!("bootlun is not installed in {r}"));
}

/// The grub.d script parses, prints the entry with GRUB's helpers and
/// without, and prints nothing when the kernel is gone.
fn grub_script_checks(root: &Path) {
    let script = root.join("etc/grub.d/45_bootlun");
    let (ok_, _, err) = run_bounded(Command::new("sh").arg("-n").arg(&script), 20);
    assert!(ok_, "sh -n 45_bootlun: {err}");

    // GRUB's library as grub-mkconfig would provide it, reduced to the two
    // helpers the script uses; /boot as a partition of its own.
    let lib = root.parent().unwrap().join("grublib");
    fs::create_dir_all(&lib).unwrap();
    fs::write(
        lib.join("grub-mkconfig_lib"),
        "make_system_path_relative_to_its_root() { echo \"${1#/boot}\"; }\n\
         prepare_grub_to_access_device() { echo \"insmod part_gpt\"; echo \"search --no-floppy --fs-uuid --set=root $1-uuid\"; }\n",
    )
    .unwrap();
    let (ok_, out, err) = run_bounded(
        Command::new("sh")
            .arg(&script)
            .env("BOOTLUN_ROOT", root)
            .env("pkgdatadir", &lib)
            .env("GRUB_DEVICE_BOOT", "/dev/sda2"),
        20,
    );
    assert!(ok_, "{err}");
    assert_eq!(
        out,
        "menuentry 'bootlun iSCSI target' --class bootlun --id bootlun-iscsi-target {\n\
         \tinsmod part_gpt\n\
         \tsearch --no-floppy --fs-uuid --set=root /dev/sda2-uuid\n\
         \techo 'Loading bootlun...'\n\
         \tlinux /bootlun-kernel.bin console=tty0 console=ttyS0,115200n8\n\
         \tinitrd /bootlun-initrd.img\n\
         }\n"
    );
    assert!(
        err.contains("Found bootlun iSCSI target: /boot/bootlun-kernel.bin"),
        "{err}"
    );

    // Without GRUB's library: the paths found at install time.
    let (ok_, out, err) = run_bounded(
        Command::new("sh")
            .arg(&script)
            .env("BOOTLUN_ROOT", root)
            .env_remove("pkgdatadir"),
        20,
    );
    assert!(ok_, "{err}");
    assert!(out.starts_with("menuentry 'bootlun iSCSI target'"), "{out}");
    assert!(
        out.contains("\tsearch --no-floppy --set=root --file /boot/bootlun-kernel.bin\n"),
        "{out}"
    );
    assert!(
        out.contains("\tlinux /boot/bootlun-kernel.bin console=tty0 console=ttyS0,115200n8\n"),
        "{out}"
    );
    assert!(out.contains("\tinitrd /boot/bootlun-initrd.img\n"), "{out}");

    // No kernel, no entry.
    let empty = root.parent().unwrap().join("empty-root");
    fs::create_dir_all(&empty).unwrap();
    let (ok_, out, _) = run_bounded(
        Command::new("sh").arg(&script).env("BOOTLUN_ROOT", &empty),
        20,
    );
    assert!(ok_);
    assert_eq!(out, "");
}

#[test]
fn fedora_bls_separate_boot_with_config() {
    let tmp = Tmp::new("fedora");
    let root = tmp.path().join("root");
    fedora_tree(&root);
    let img = image_dir(&tmp, "initrd");
    let cfg = tmp.path().join("bootlun.toml");
    fs::write(
        &cfg,
        "lun = [\"/dev/nvme0n1\"]\npxe-interface = \"enp0s31f6\"\n",
    )
    .unwrap();
    let mut o = opts(&root, Some(&img));
    o.config = Some(cfg.clone());
    let pristine = snapshot(&root);

    let mut dry = o.clone();
    dry.dry_run = true;
    let out = ok(Act::Install, &dry);
    assert_same(&pristine, &snapshot(&root), "after install --dry-run");
    assert!(
        out.lines()
            .any(|l| l == "create /boot/loader/entries/bootlun.conf"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "create /boot/bootlun.toml"),
        "{out}"
    );
    assert!(
        !out.contains("grub2-mkconfig"),
        "BLS entries need no grub regeneration:\n{out}"
    );
    assert!(!out.contains("symlink"), "{out}");

    let out = ok(Act::Install, &o);
    assert_eq!(
        read(&root, "/boot/loader/entries/bootlun.conf"),
        expected("bootlun-fedora.conf")
    );
    assert_eq!(
        read(&root, "/etc/dracut.conf.d/90-bootlun.conf"),
        expected("90-bootlun.conf")
    );
    assert_eq!(
        read(&root, "/etc/dracut.conf.d/50-local.conf"),
        "compress=\"zstd\"\n"
    );
    assert_eq!(
        read(&root, "/boot/bootlun.toml"),
        fs::read_to_string(&cfg).unwrap()
    );
    let mode = fs::metadata(root.join("boot/bootlun.toml")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config may hold secrets");
    assert!(exists(
        &root,
        "/etc/systemd/system/sockets.target.wants/iscsid.socket"
    ));
    assert!(
        !exists(&root, "/etc/grub.d/45_bootlun"),
        "BLS wins over grub.d"
    );
    assert!(out.contains("menu_auto_hide"), "{out}");

    let installed = snapshot(&root);
    let out = ok(Act::Install, &o);
    assert!(
        out.starts_with("already installed; nothing to change"),
        "{out}"
    );
    assert_same(&installed, &snapshot(&root), "after the second install");

    ok(Act::Uninstall, &o);
    assert_same(&pristine, &snapshot(&root), "after uninstall");

    // A file changed since install is kept, with a warning; the rest goes.
    ok(Act::Install, &o);
    fs::write(
        root.join("boot/loader/entries/bootlun.conf"),
        "title mine now\n",
    )
    .unwrap();
    let out = ok(Act::Uninstall, &o);
    assert!(
        out.contains(
            "warning: /boot/loader/entries/bootlun.conf changed since bootlun installed it; kept"
        ),
        "{out}"
    );
    assert_eq!(
        read(&root, "/boot/loader/entries/bootlun.conf"),
        "title mine now\n"
    );
    assert!(!exists(&root, "/boot/bootlun-kernel.bin"));
    assert!(!exists(&root, "/etc/dracut.conf.d/90-bootlun.conf"));
    assert!(!exists(&root, "/var/lib/bootlun"));
}

#[test]
fn arch_grub_replaces_operator_config_and_restores_it() {
    let tmp = Tmp::new("arch");
    let root = tmp.path().join("root");
    arch_tree(&root);
    let img = image_dir(&tmp, "initrd");
    let cfg = tmp.path().join("new.toml");
    fs::write(&cfg, "lun = [\"/dev/nvme0n1\"]\n").unwrap();
    let mut o = opts(&root, Some(&img));
    o.config = Some(cfg);
    let pristine = snapshot(&root);
    let r = root.display().to_string();

    let out = ok(Act::Install, &o);
    for line in [
        "mkdir /var".to_string(),
        "mkdir /var/lib".to_string(),
        "mkdir /var/lib/bootlun".to_string(),
        "mkdir /var/lib/bootlun/backup".to_string(),
        "mkdir /var/lib/bootlun/backup/boot".to_string(),
        "write /boot/bootlun.toml (original kept as /var/lib/bootlun/backup/boot/bootlun.toml)".to_string(),
        "create /etc/grub.d/45_bootlun".to_string(),
        format!("not run (--no-regenerate), run it yourself: chroot {r} dracut --force /boot/initramfs-linux.img --kver 6.9.1-arch1-1"),
        format!("not run (--no-regenerate), run it yourself: chroot {r} grub-mkconfig -o /boot/grub/grub.cfg"),
    ] {
        assert!(out.lines().any(|l| l == line), "install lacks {line:?}:\n{out}");
    }
    assert!(out.contains("GRUB menu is hidden"), "{out}");
    assert_eq!(
        read(&root, "/etc/grub.d/45_bootlun"),
        expected("45_bootlun")
    );
    assert_eq!(
        read(&root, "/boot/bootlun.toml"),
        "lun = [\"/dev/nvme0n1\"]\n"
    );
    assert_eq!(
        read(&root, "/var/lib/bootlun/backup/boot/bootlun.toml"),
        "lun = [\"/dev/sda\"]\n"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&root, "/var/lib/bootlun/manifest.json")).unwrap();
    let replaced: Vec<_> = manifest["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "replace")
        .collect();
    assert_eq!(replaced.len(), 1, "{manifest}");
    assert_eq!(replaced[0]["path"], "/boot/bootlun.toml");
    assert_eq!(replaced[0]["mode"], 0o640);

    let installed = snapshot(&root);
    let out = ok(Act::Install, &o);
    assert!(
        out.starts_with("already installed; nothing to change"),
        "{out}"
    );
    // Regeneration is still owed from the --no-regenerate run.
    assert!(out.contains("run it yourself: chroot"), "{out}");
    assert_same(&installed, &snapshot(&root), "after the second install");

    ok(Act::Uninstall, &o);
    assert_same(&pristine, &snapshot(&root), "after uninstall");
}

#[test]
fn systemd_boot_entry_sorts_after_the_os_entries() {
    let tmp = Tmp::new("sdboot");
    let root = tmp.path().join("root");
    arch_tree(&root);
    // systemd-boot on the ESP mounted at /boot; kernel-install's entries
    // carry a sort key.
    put(
        &root,
        "/etc/fstab",
        "UUID=6666 / ext4 rw 0 1\nUUID=7777 /boot vfat rw,fmask=0077 0 2\n",
        0o644,
    );
    put(
        &root,
        "/boot/loader/entries/arch-6.9.1-arch1-1.conf",
        "title Arch Linux\nversion 6.9.1-arch1-1\nsort-key arch\nlinux /vmlinuz-linux\ninitrd /initramfs-linux.img\n",
        0o644,
    );
    let img = image_dir(&tmp, "initrd");
    let o = opts(&root, Some(&img));
    let pristine = snapshot(&root);
    let out = ok(Act::Install, &o);
    assert_eq!(
        read(&root, "/boot/loader/entries/bootlun.conf"),
        expected("bootlun-sdboot.conf")
    );
    assert!(!out.contains("grub-mkconfig"), "{out}");
    assert!(!exists(&root, "/etc/grub.d/45_bootlun"));
    ok(Act::Uninstall, &o);
    assert_same(&pristine, &snapshot(&root), "after uninstall");
}

#[test]
fn operator_errors_change_nothing() {
    let tmp = Tmp::new("errors");
    let img = image_dir(&tmp, "initrd");

    let check = |root: &Path, o: &HostOpts, act: Act, want: &str| {
        let before = snapshot(root);
        let (r, out) = host(act, o);
        let e = r.expect_err(&format!(
            "expected an error containing {want:?}; output:\n{out}"
        ));
        assert_eq!(e.code, 2, "{}", e.msg);
        assert!(e.msg.contains(want), "{:?} lacks {want:?}", e.msg);
        assert!(!e.msg.contains('\n'), "one line: {:?}", e.msg);
        assert_same(
            &before,
            &snapshot(root),
            &format!("after the error {:?}", e.msg),
        );
    };

    // Debian without dracut.
    let deb = tmp.path().join("debian");
    debian_tree(&deb);
    fs::remove_file(deb.join("usr/bin/dracut")).unwrap();
    check(
        &deb,
        &opts(&deb, Some(&img)),
        Act::Install,
        "apt-get install dracut dracut-network open-iscsi",
    );
    check(
        &deb,
        &opts(&deb, Some(&img)),
        Act::Install,
        "missing dracut",
    );

    // Fedora without open-iscsi, and without dracut's network module.
    let fed = tmp.path().join("fedora");
    fedora_tree(&fed);
    fs::remove_file(fed.join("usr/sbin/iscsistart")).unwrap();
    fs::remove_dir_all(fed.join("usr/lib/dracut/modules.d/40network")).unwrap();
    let o = opts(&fed, Some(&img));
    check(
        &fed,
        &o,
        Act::Install,
        "dnf install dracut-network iscsi-initiator-utils",
    );
    check(&fed, &o, Act::Install, "iscsistart");
    check(&fed, &o, Act::Install, "network module");

    // Arch without dracut.
    let arch = tmp.path().join("arch");
    arch_tree(&arch);
    fs::remove_file(arch.join("usr/bin/dracut")).unwrap();
    check(
        &arch,
        &opts(&arch, Some(&img)),
        Act::Install,
        "pacman -S dracut open-iscsi",
    );

    // Image problems name --image-dir.
    let deb2 = tmp.path().join("debian2");
    debian_tree(&deb2);
    let missing = tmp.path().join("no-such-image");
    check(
        &deb2,
        &opts(&deb2, Some(&missing)),
        Act::Install,
        "--image-dir",
    );
    let bad = tmp.path().join("bad-image");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("bootlun-kernel.bin"), vec![0u8; 4096]).unwrap();
    fs::write(bad.join("bootlun-initrd.img"), "x").unwrap();
    check(&deb2, &opts(&deb2, Some(&bad)), Act::Install, "--image-dir");
    check(
        &deb2,
        &opts(&deb2, Some(&bad)),
        Act::Install,
        "not a bzImage",
    );
    fs::write(bad.join("bootlun-kernel.bin"), b"MZ").unwrap();
    check(
        &deb2,
        &opts(&deb2, Some(&bad)),
        Act::Install,
        "not a bzImage",
    );
    fs::copy(
        img.join("bootlun-kernel.bin"),
        bad.join("bootlun-kernel.bin"),
    )
    .unwrap();
    fs::write(bad.join("bootlun-initrd.img"), "").unwrap();
    check(
        &deb2,
        &opts(&deb2, Some(&bad)),
        Act::Install,
        "bootlun-initrd.img is empty",
    );

    // A config that is not TOML names --config.
    let cfg = tmp.path().join("broken.toml");
    fs::write(&cfg, "lun = [\"/dev/sda\"\n").unwrap();
    let mut o = opts(&deb2, Some(&img));
    o.config = Some(cfg);
    check(&deb2, &o, Act::Install, "--config");

    // Update before install; a tree that is no OS; an unknown distro.
    check(
        &deb2,
        &opts(&deb2, Some(&img)),
        Act::Update,
        "not installed",
    );
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    check(&empty, &opts(&empty, Some(&img)), Act::Install, "--root");
    put(
        &empty,
        "/etc/os-release",
        "ID=opensuse-tumbleweed\nID_LIKE=\"opensuse suse\"\n",
        0o644,
    );
    check(
        &empty,
        &opts(&empty, Some(&img)),
        Act::Install,
        "unsupported distribution",
    );
    let nope = tmp.path().join("nope");
    check(&empty, &opts(&nope, Some(&img)), Act::Install, "--root");

    // Uninstall of a tree never installed to: a message, success.
    let (r, out) = host(Act::Uninstall, &opts(&deb2, None));
    assert!(r.is_ok());
    assert!(out.contains("bootlun is not installed in"), "{out}");
}

#[test]
fn failure_midway_leaves_a_manifest_that_uninstall_can_follow() {
    let tmp = Tmp::new("midway");
    let root = tmp.path().join("root");
    arch_tree(&root);
    // A stray file where the backup directory belongs: the install gets
    // as far as backing up /boot/bootlun.toml and fails there.
    put(&root, "/var/lib/bootlun/backup", "stray\n", 0o644);
    let img = image_dir(&tmp, "initrd");
    let cfg = tmp.path().join("new.toml");
    fs::write(&cfg, "lun = [\"/dev/sdb\"]\n").unwrap();
    let mut o = opts(&root, Some(&img));
    o.config = Some(cfg);
    let pristine = snapshot(&root);

    let (r, out) = host(Act::Install, &o);
    let e = r.expect_err(&out);
    assert_eq!(e.code, 1, "{}", e.msg);
    assert!(e.msg.contains("/var/lib/bootlun/backup"), "{}", e.msg);
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&root, "/var/lib/bootlun/manifest.json")).unwrap();
    let paths: Vec<&str> = manifest["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/etc/dracut.conf.d",
            "/etc/dracut.conf.d/90-bootlun.conf",
            "/boot/bootlun-kernel.bin",
            "/boot/bootlun-initrd.img"
        ],
        "{manifest}"
    );
    assert_eq!(
        read(&root, "/boot/bootlun.toml"),
        "lun = [\"/dev/sda\"]\n",
        "left as it was"
    );
    assert_eq!(manifest["pending"], serde_json::json!(["initramfs"]));

    ok(Act::Uninstall, &o);
    assert_same(&pristine, &snapshot(&root), "after uninstall");
}

#[test]
fn failed_regeneration_is_retried_by_the_next_install() {
    let tmp = Tmp::new("regen");
    let root = tmp.path().join("root");
    fedora_tree(&root);
    let img = image_dir(&tmp, "initrd");
    let mut o = opts(&root, Some(&img));
    // Really run `chroot ROOT dracut ...`: it fails (no permission for
    // chroot, or, as root, no /bin/sh for the dracut stub in the tree).
    o.no_regenerate = false;
    let (r, out) = host(Act::Install, &o);
    let e = r.expect_err(&out);
    assert_eq!(e.code, 1, "{}", e.msg);
    assert!(
        e.msg.contains("dracut --regenerate-all --force"),
        "{}",
        e.msg
    );
    assert!(
        exists(&root, "/boot/loader/entries/bootlun.conf"),
        "files stay in place"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&root, "/var/lib/bootlun/manifest.json")).unwrap();
    assert_eq!(manifest["pending"], serde_json::json!(["initramfs"]));

    o.no_regenerate = true;
    let out = ok(Act::Install, &o);
    assert!(
        out.starts_with("already installed; nothing to change"),
        "{out}"
    );
    assert!(
        out.contains("run it yourself: chroot"),
        "the owed dracut run is shown:\n{out}"
    );
    ok(Act::Uninstall, &o);
    assert!(!exists(&root, "/var/lib/bootlun"));
}

#[test]
fn deleted_file_is_put_back_and_the_original_still_restored() {
    let tmp = Tmp::new("putback");
    let root = tmp.path().join("root");
    arch_tree(&root);
    let img = image_dir(&tmp, "initrd");
    let cfg = tmp.path().join("new.toml");
    fs::write(&cfg, "lun = [\"/dev/nvme0n1\"]\n").unwrap();
    let mut o = opts(&root, Some(&img));
    o.config = Some(cfg);
    let pristine = snapshot(&root);
    ok(Act::Install, &o);
    fs::remove_file(root.join("boot/bootlun.toml")).unwrap();
    fs::remove_file(root.join("boot/bootlun-kernel.bin")).unwrap();
    let out = ok(Act::Update, &o);
    assert!(
        out.lines().any(|l| l == "write /boot/bootlun.toml"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "write /boot/bootlun-kernel.bin"),
        "{out}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&root, "/var/lib/bootlun/manifest.json")).unwrap();
    let n = manifest["changes"].as_array().unwrap().len();
    ok(Act::Uninstall, &o);
    assert_same(&pristine, &snapshot(&root), "after uninstall");
    assert_eq!(n, 11, "one entry per path: {manifest}");
}

#[test]
fn command_line_contract() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Host(bootlun_image::host::HostArgs),
    }
    let tmp = Tmp::new("cli");
    let r = tmp.path().display().to_string();
    let cli = Cli::try_parse_from([
        "bootlun",
        "host",
        "install",
        "--root",
        &r,
        "--dry-run",
        "--config",
        "c.toml",
        "--image-dir",
        "img",
        "--no-regenerate",
    ])
    .unwrap();
    let Cmd::Host(args) = cli.cmd;
    let HostAction::Install(o) = &args.action else {
        panic!("{args:?}")
    };
    assert_eq!(o.root, tmp.path());
    assert!(o.dry_run && o.no_regenerate);
    assert_eq!(o.config.as_deref(), Some(Path::new("c.toml")));
    assert_eq!(o.image_dir.as_deref(), Some(Path::new("img")));
    let Cmd::Host(args) = Cli::try_parse_from(["bootlun", "host", "update"])
        .unwrap()
        .cmd;
    let HostAction::Update(o) = &args.action else {
        panic!("{args:?}")
    };
    assert_eq!(o.root, Path::new("/"));
    assert!(!o.dry_run && o.config.is_none() && o.image_dir.is_none());

    // main: uninstall where nothing is installed exits 0; update exits 2.
    let Cmd::Host(args) = Cli::try_parse_from(["bootlun", "host", "uninstall", "--root", &r])
        .unwrap()
        .cmd;
    assert_eq!(
        bootlun_image::host::main(&args),
        std::process::ExitCode::SUCCESS
    );
    let Cmd::Host(args) = Cli::try_parse_from(["bootlun", "host", "update", "--root", &r])
        .unwrap()
        .cmd;
    assert_eq!(
        bootlun_image::host::main(&args),
        std::process::ExitCode::from(2)
    );
}
