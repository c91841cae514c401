//! Acceptance: a 64 MiB random image written with `qemu-img convert` to a
//! LUN reads back byte-identical, with and without CRC32C header digests, on
//! a ram: LUN and on a file LUN; after SIGTERM the file LUN's backing file
//! holds the data.

mod common;

use common::*;
use std::path::Path;

const SIZE: usize = 64 << 20;

fn checksum(path: &Path) -> (u32, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (crc32c::crc32c(&data), data)
}

fn assert_same(what: &str, expected: &Path, actual: &Path) {
    let (a, da) = checksum(expected);
    let (b, db) = checksum(actual);
    println!(
        "{what}: crc32c {:08x} (source) vs {:08x} ({})",
        a,
        b,
        actual.display()
    );
    assert_eq!(
        da.len(),
        db.len(),
        "{what}: {} has {} bytes, expected {}",
        actual.display(),
        db.len(),
        da.len()
    );
    if da != db {
        let first = da.iter().zip(&db).position(|(x, y)| x != y).unwrap();
        panic!("{what}: data differs from the source (first difference at byte {first}; crc32c {a:08x} vs {b:08x})");
    }
}

fn image_opts(server: &Server, lun: u32) -> String {
    format!(
        "driver=iscsi,transport=tcp,portal={},target={},lun={},header-digest=crc32c",
        server.addr, server.iqn, lun
    )
}

#[test]
fn qemu_img_roundtrip_plain_and_crc32c_on_ram_and_file_luns() {
    if !require_tool("qemu-img", "qemu-utils") {
        return;
    }
    let dir = TempDir::new("qemu-img");
    let src_plain = dir.join("src-plain.raw");
    let src_digest = dir.join("src-digest.raw");
    std::fs::write(&src_plain, pseudo_random_bytes(SIZE, 0x5eed_0001)).unwrap();
    std::fs::write(&src_digest, pseudo_random_bytes(SIZE, 0x5eed_0002)).unwrap();
    let backing = dir.join("file-lun.img");
    sparse_file(&backing, SIZE as u64);
    let backing_spec = backing.to_string_lossy().into_owned();

    let mut server = Server::start(&["ram:64M", &backing_spec], &[]);

    for (i, name) in [(0u32, "ram LUN"), (1u32, "file LUN")] {
        let lun = server.lun(i);
        let url = server.url(i);

        // Plain: URL syntax both ways.
        let back = dir.join(&format!("back-plain-{i}.raw"));
        qemu_img_write_and_read_back(&src_plain, &url, &back);
        assert_same(&format!("{name}, no digest"), &src_plain, &back);
        std::fs::remove_file(&back).unwrap();

        // CRC32C header digests: image-opts for the destination, then the source.
        let opts = image_opts(&server, lun);
        let back = dir.join(&format!("back-digest-{i}.raw"));
        qemu_img(&[
            "convert",
            "-n",
            "-f",
            "raw",
            &src_digest.to_string_lossy(),
            "--target-image-opts",
            &opts,
        ]);
        qemu_img(&[
            "convert",
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &back.to_string_lossy(),
        ]);
        assert_same(&format!("{name}, header-digest=crc32c"), &src_digest, &back);
        std::fs::remove_file(&back).unwrap();
    }

    let status = server.stop();
    if server.kind == TargetKind::Bootlun {
        assert_eq!(
            status.code(),
            Some(0),
            "bootlun exited with {status} after SIGTERM:\n{}",
            server.output()
        );
    }
    // The last thing written to the file LUN was the digest pass.
    assert_same("file LUN backing file after stop", &src_digest, &backing);
}

/// Every way a reactor can wait moves the same bytes: busy polling,
/// interrupt (sleep in io_uring_enter), and an SQPOLL ring.
#[test]
fn qemu_img_roundtrip_in_every_poll_mode() {
    if !require_tool("qemu-img", "qemu-utils") {
        return;
    }
    let dir = TempDir::new("qemu-img-poll");
    let src = dir.join("src.raw");
    std::fs::write(&src, pseudo_random_bytes(16 << 20, 0x5eed_0003)).unwrap();
    for extra in [
        &["--poll", "busy"][..],
        &["--poll", "interrupt"][..],
        &["--sqpoll"][..],
    ] {
        let server = Server::start(&["ram:16M"], extra);
        let url = server.url(0);
        let back = dir.join("back.raw");
        qemu_img_write_and_read_back(&src, &url, &back);
        assert_same(&extra.join(" "), &src, &back);
        std::fs::remove_file(&back).unwrap();
    }
}

/// Large writes of a `ram:` LU are received straight into its mapping and
/// large reads are sent from it (the exit summary counts both), and the
/// bytes read back are the bytes written; with a data digest both go
/// through buffers again (tests/digests.rs).
#[test]
fn reads_and_writes_of_a_ram_lun_are_in_place() {
    if !require_tool("qemu-img", "qemu-utils") {
        return;
    }
    if target_kind() != TargetKind::Bootlun {
        return;
    }
    let dir = TempDir::new("qemu-img-mapped");
    let src = dir.join("src.raw");
    std::fs::write(&src, pseudo_random_bytes(16 << 20, 0x5eed_0005)).unwrap();
    let mut server = Server::start(&["ram:16M"], &[]);
    let back = dir.join("back.raw");
    qemu_img_write_and_read_back(&src, &server.url(0), &back);
    assert_same("reads in place", &src, &back);
    assert_eq!(server.stop().code(), Some(0), "{}", server.output());
    let n = summary_count(&server.output(), "reads in place ");
    let w = summary_count(&server.output(), "writes in place ");
    println!("{n} reads in place, {w} writes in place");
    assert!(n > 0, "no read was sent in place:\n{}", server.output());
    assert!(
        w > 0,
        "no write was received in place:\n{}",
        server.output()
    );
}

/// Data-In with zero-copy sendmsg moves the same bytes. `on` uses it even
/// on loopback (where the kernel copies anyway and says so): the exit
/// summary counts the zero-copy sends; `auto` never uses it on loopback.
#[test]
fn qemu_img_roundtrip_with_zero_copy_send() {
    if !require_tool("qemu-img", "qemu-utils") {
        return;
    }
    if target_kind() != TargetKind::Bootlun {
        return;
    }
    let dir = TempDir::new("qemu-img-zc");
    let src = dir.join("src.raw");
    std::fs::write(&src, pseudo_random_bytes(16 << 20, 0x5eed_0004)).unwrap();
    for (mode, used) in [("on", true), ("auto", false)] {
        let mut server = Server::start(&["ram:16M"], &["--zero-copy-send", mode]);
        let back = dir.join("back.raw");
        qemu_img_write_and_read_back(&src, &server.url(0), &back);
        assert_same(&format!("--zero-copy-send {mode}"), &src, &back);
        std::fs::remove_file(&back).unwrap();
        let status = server.stop();
        assert_eq!(status.code(), Some(0), "{}", server.output());
        let out = server.output();
        let sends = summary_count(&out, "zero-copy sends ");
        println!("--zero-copy-send {mode}: {sends} zero-copy sends");
        if used {
            assert!(sends > 0, "no zero-copy send with {mode}:\n{out}");
        } else {
            assert_eq!(sends, 0, "zero-copy sends on loopback with {mode}:\n{out}");
        }
    }
}

/// `--zero-copy-send auto` with a peer that is not on this machine: a
/// client in a network namespace of its own, across a veth pair. auto
/// uses zero-copy for the first large Data-In; the kernel reports that it
/// copied (a veth peer is delivered locally), so that connection goes back
/// to plain sendmsg, and the data reads back byte-identical.
#[test]
fn zero_copy_send_auto_falls_back_when_the_kernel_copies() {
    if !require_root() || !require_tool("ip", "iproute2") || !require_tool("qemu-img", "qemu-utils")
    {
        return;
    }
    if !bootlun_cli_available() || target_kind() != TargetKind::Bootlun {
        return;
    }
    let pid = std::process::id();
    let client_ns = NetNs::create(&format!("bl-zcc-{pid}"));
    let ns = NetNs::create(&format!("bl-zcs-{pid}"));
    ns.veth_to(
        &client_ns,
        ("v0", Some("10.207.0.1/24")),
        ("v1", Some("10.207.0.2/24")),
    );
    let args = [
        "serve",
        "--listen",
        "10.207.0.1:3260",
        "--lun",
        "ram:16M",
        "--zero-copy-send",
        "auto",
        "--admin-listen",
        "off",
    ];
    let mut server =
        ns.enter(move || Server::bootlun_on(&args, |a| a.ip().to_string() == "10.207.0.1"));
    let dir = TempDir::new("qemu-img-zc-auto");
    let src = dir.join("src.raw");
    let back = dir.join("back.raw");
    std::fs::write(&src, pseudo_random_bytes(16 << 20, 0x5eed_0005)).unwrap();
    let url = server.url(0);
    qemu_img_write_and_read_back_as(|| client_ns.command("qemu-img"), &src, &url, &back);
    assert_same("--zero-copy-send auto across a veth pair", &src, &back);
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{}", server.output());
    let out = server.output();
    let count = |what: &str| -> u64 {
        out.lines()
            .filter_map(|l| {
                let rest = &l[l.find(what)? + what.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let sends = count("zero-copy sends ");
    let copied: u64 = out
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("zero-copy sends ")?..];
            let open = rest.find('(')?;
            rest[open + 1..]
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    println!("auto across veth: {sends} zero-copy sends, {copied} reported copied");
    assert!(
        sends >= 1,
        "auto used no zero-copy send for a remote peer:\n{out}"
    );
    // Copy reports (IORING_SEND_ZC_REPORT_USAGE) exist from Linux 6.2.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) < (6, 2) {
        println!("Linux {release}: no copy reports, so auto cannot learn; not checked");
        return;
    }
    assert!(
        copied >= 1,
        "the kernel reported no copy over veth (this test expects one):\n{out}"
    );
    // After the first report of a copy the connection stops using it; only
    // sends already queued before that report went out zero-copy.
    assert!(
        sends <= 4,
        "auto kept sending zero-copy after the kernel reported copies ({sends} sends):\n{out}"
    );
}
