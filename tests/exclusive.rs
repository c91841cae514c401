//! Exclusive disks: a block device that is mounted on this host is refused
//! (the error names the mount point), `--force` exports it anyway with a
//! warning, and a device bootlun exports cannot be mounted meanwhile
//! (O_EXCL). Needs root, loop devices, util-linux (losetup, mount) and
//! e2fsprogs; without them the test fails unless BOOTLUN_SKIP_EXTERNAL=1.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A loop device, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run_tool(Command::new("losetup").args(["-d", &self.0]), LIMIT);
    }
}

/// A mount, unmounted on drop (before the loop device is detached: fields
/// of the test drop in reverse order of creation).
struct Mounted(String);

impl Mounted {
    fn unmount(&mut self) {
        if !self.0.is_empty() {
            run_tool(Command::new("umount").arg(&self.0), LIMIT).assert_success();
            self.0.clear();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = run_tool(Command::new("umount").arg(&self.0), LIMIT);
        }
    }
}

fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let loops = std::path::Path::new("/dev/loop-control").exists();
    if !root || !loops {
        let why = "exclusive: needs root and loop devices (/dev/loop-control)";
        if skip_external() {
            println!("SKIPPED: {why}");
            return false;
        }
        panic!("{why}; set BOOTLUN_SKIP_EXTERNAL=1 to skip");
    }
    bootlun_cli_available()
        && require_tool("losetup", "mount")
        && require_tool("mount", "mount")
        && require_tool("mkfs.ext4", "e2fsprogs")
}

#[test]
fn mounted_device_is_refused_naming_the_mount_point_unless_forced() {
    if !prerequisites() {
        return;
    }
    let dir = TempDir::new("exclusive");
    let img = dir.join("disk.img");
    sparse_file(&img, 32 << 20);
    let img_s = img.to_string_lossy().into_owned();
    run_tool(Command::new("mkfs.ext4").args(["-q", "-F", &img_s]), LIMIT).assert_success();
    let out = run_tool(
        Command::new("losetup").args(["-f", "--show", &img_s]),
        LIMIT,
    );
    out.assert_success();
    let dev = Loop(out.stdout.trim().to_string());
    // A mount point with a space: mountinfo escapes it as \040.
    let mnt = dir.join("mount point");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_string_lossy().into_owned();
    run_tool(Command::new("mount").args([&dev.0, &mnt_s]), LIMIT).assert_success();
    let mut mounted = Mounted(mnt_s.clone());

    // Refused, naming the device's mount point and --force.
    let out = run_tool(
        Command::new(bootlun_bin()).args(["serve", "--listen", "127.0.0.1:0", "--lun", &dev.0]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("--lun {}", dev.0)),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("mounted on {mnt_s}")),
        "mount point not named: {}",
        out.stderr
    );
    assert!(out.stderr.contains("--force"), "{}", out.stderr);

    // --force exports it, with a warning.
    let mut server = Server::start(&[&dev.0], &["--force"]);
    assert!(server.is_running());
    let log = server.output();
    assert!(
        log.contains("WARN") && log.contains("--force") && log.contains(&mnt_s),
        "no warning naming the mount:\n{log}"
    );
    server.stop();

    // Unmounted: exported without --force, and then held exclusively, so
    // this host cannot mount it under the initiator's feet.
    mounted.unmount();
    let mut server = Server::start(&[&dev.0], &[]);
    let out = run_tool(Command::new("mount").args([&dev.0, &mnt_s]), LIMIT);
    if out.success() {
        mounted = Mounted(mnt_s.clone());
        drop(mounted);
        panic!("mounted a device bootlun exports:\n{}", server.output());
    }
    server.stop();
}

#[test]
fn whole_disk_is_refused_while_one_of_its_partitions_is_mounted() {
    if !prerequisites() || !require_tool("sfdisk", "fdisk") {
        return;
    }
    let dir = TempDir::new("exclusive-part");
    let img = dir.join("disk.img");
    sparse_file(&img, 32 << 20);
    let img_s = img.to_string_lossy().into_owned();
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", &img_s]);
    // One Linux partition from 1 MiB to the end.
    let table = "label: dos\nstart=2048, type=83\n";
    let out = run_with_stdin(&mut sf, table);
    assert!(out.0, "sfdisk failed: {}", out.1);
    let out = run_tool(
        Command::new("losetup").args(["-f", "--show", "-P", &img_s]),
        LIMIT,
    );
    out.assert_success();
    let dev = Loop(out.stdout.trim().to_string());
    let name = format!("{}p1", dev.0.trim_start_matches("/dev/"));
    // The kernel adds the partition as it scans the table; without udev
    // (containers) no /dev node appears, so make one from sysfs.
    let sys_dev = format!("/sys/class/block/{name}/dev");
    if !std::path::Path::new(&sys_dev).exists() {
        // Ask again over BLKPG when the scan at attach time did not run
        // (it fails with "already exists" when it did meanwhile).
        let _ = run_tool(Command::new("partx").args(["-a", &dev.0]), LIMIT);
    }
    let appeared = (0..200).any(|_| {
        if std::path::Path::new(&sys_dev).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
        false
    });
    assert!(appeared, "{sys_dev} did not appear");
    let mut part = format!("/dev/{name}");
    if !std::path::Path::new(&part).exists() {
        let mm = std::fs::read_to_string(&sys_dev).unwrap();
        let (maj, min) = mm.trim().split_once(':').unwrap();
        part = dir.join("p1-node").to_string_lossy().into_owned();
        run_tool(Command::new("mknod").args([&part, "b", maj, min]), LIMIT).assert_success();
    }
    run_tool(Command::new("mkfs.ext4").args(["-q", "-F", &part]), LIMIT).assert_success();
    let mnt = dir.join("p1");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_string_lossy().into_owned();
    run_tool(Command::new("mount").args([&part, &mnt_s]), LIMIT).assert_success();
    let _mounted = Mounted(mnt_s.clone());

    let out = run_tool(
        Command::new(bootlun_bin()).args(["serve", "--listen", "127.0.0.1:0", "--lun", &dev.0]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("/dev/{name} is mounted on {mnt_s}")),
        "partition's mount not named: {}",
        out.stderr
    );
}

/// Run `cmd` with `input` on stdin, bounded in time: (success, stderr).
fn run_with_stdin(cmd: &mut Command, input: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, "timed out".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
