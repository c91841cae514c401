//! TFTP server against tftp-hpa's `tftp` and curl across a veth pair
//! between two network namespaces: block sizes 512/1468/65464 (the last
//! capped to the veth MTU by the server), a file over 32 MiB at blksize 512
//! (block-number rollover), traversal and symlink escapes refused with
//! error 2, missing files with error 1, and several transfers at once.

mod common_net;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use bootlun_pxe::tftp::{self, TftpConfig};
use common_net::{can_run, fnv, Link};
use testkit::TempDir;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn same(got: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: no output file: {e}"));
    assert!(
        got == want,
        "{what}: {} bytes, hash {:016x}; want {} bytes, hash {:016x}",
        got.len(),
        fnv(&got),
        want.len(),
        fnv(want)
    );
}

#[test]
fn tftp_hpa_and_curl_transfers_and_jail() {
    if !can_run(&[("tftp", "tftp-hpa"), ("curl", "curl")]) {
        return;
    }
    let t0 = Instant::now();
    let link = Link::new("tf", 2, true);
    let dir = TempDir::new("tftp-netns");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("efi")).unwrap();
    let small = pattern(200_000, 1);
    let exact = pattern(1468 * 20, 2);
    let big = pattern(32 * 1024 * 1024 + 1000, 3);
    std::fs::write(root.join("undionly.kpxe"), &small).unwrap();
    std::fs::write(root.join("efi/snponly.efi"), &exact).unwrap();
    std::fs::write(root.join("big.img"), &big).unwrap();
    std::fs::write(dir.join("outside"), b"secret").unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();

    let cfg = TftpConfig {
        bind: SocketAddr::from((link.server_ip.octets(), 69)),
        interface: Some(link.server_if.clone()),
        root: root.clone(),
    };
    let handle = link
        .in_server_ns(move || tftp::spawn(cfg))
        .expect("start TFTP server");
    eprintln!("setup: {:?}", t0.elapsed());
    let out = |n: &str| dir.join(n);
    let server = link.server_ip.to_string();

    // tftp-hpa: no options, 512-byte blocks.
    let t = Instant::now();
    let o = out("hpa-small");
    let r = link.client_cmd(
        30,
        &[
            "tftp",
            "-m",
            "binary",
            &server,
            "-c",
            "get",
            "undionly.kpxe",
            o.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        r.status.success(),
        "tftp: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    same(&o, &small, "tftp-hpa undionly.kpxe");
    eprintln!("tftp-hpa 200 kB, blksize 512: {:?}", t.elapsed());

    // curl at three block sizes, and a file that is a whole number of
    // blocks (ends with an empty DATA).
    for (blk, file, want) in [
        ("512", "undionly.kpxe", &small),
        ("1468", "undionly.kpxe", &small),
        ("65464", "undionly.kpxe", &small),
        ("1468", "efi/snponly.efi", &exact),
    ] {
        let t = Instant::now();
        let o = out(&format!("curl-{blk}"));
        let url = format!("tftp://{server}/{file}");
        let r = link.client_cmd(
            30,
            &[
                "curl",
                "-sS",
                "--tftp-blksize",
                blk,
                "-o",
                o.to_str().unwrap(),
                &url,
            ],
            &[],
        );
        assert!(
            r.status.success(),
            "curl blksize {blk}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        same(&o, want, &format!("curl blksize {blk} {file}"));
        eprintln!("curl {file} blksize {blk}: {:?}", t.elapsed());
    }

    // Over 32 MiB at blksize 512: 65538 blocks, numbers wrap past 65535.
    let t = Instant::now();
    let o = out("hpa-big");
    let r = link.client_cmd(
        120,
        &[
            "tftp",
            "-m",
            "binary",
            &server,
            "-c",
            "get",
            "big.img",
            o.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        r.status.success(),
        "tftp big: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    same(&o, &big, "tftp-hpa big.img (block rollover)");
    eprintln!(
        "tftp-hpa 32 MiB + 1000 B, blksize 512, rollover: {:?}",
        t.elapsed()
    );

    // Several clients at once, each on its own server port.
    let t = Instant::now();
    let kids: Vec<_> = (0..4)
        .map(|i| {
            let o = out(&format!("par{i}"));
            let url = format!("tftp://{server}/undionly.kpxe");
            let mut c = std::process::Command::new("ip");
            c.args([
                "netns",
                "exec",
                &link.client_ns,
                "timeout",
                "-s",
                "KILL",
                "30",
                "curl",
                "-sS",
                "-o",
            ])
            .arg(&o)
            .arg(url);
            (o, c.spawn().unwrap())
        })
        .collect();
    for (o, mut k) in kids {
        assert!(k.wait().unwrap().success());
        same(&o, &small, "parallel curl");
    }
    eprintln!("4 parallel curl transfers: {:?}", t.elapsed());

    // Refusals. curl exits 69 for TFTP error 2 (permission) and 68 for
    // error 1 (not found).
    let t = Instant::now();
    for (path, code) in [
        ("../etc/passwd", 69),
        ("efi/../../outside", 69),
        ("/etc/passwd", 69),
        ("escape", 69),
        ("passwd", 69),
        ("missing.efi", 68),
    ] {
        let url = format!("tftp://{server}/{path}");
        let o = out("refused");
        let r = link.client_cmd(
            30,
            &[
                "curl",
                "-sS",
                "--path-as-is",
                "-o",
                o.to_str().unwrap(),
                &url,
            ],
            &[],
        );
        assert_eq!(
            r.status.code(),
            Some(code),
            "curl {path}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    for path in ["../etc/passwd", "/etc/passwd", "escape"] {
        let o = out("refused-hpa");
        let r = link.client_cmd(
            30,
            &[
                "tftp",
                "-m",
                "binary",
                &server,
                "-c",
                "get",
                path,
                o.to_str().unwrap(),
            ],
            &[],
        );
        let msg =
            String::from_utf8_lossy(&r.stderr).to_string() + &String::from_utf8_lossy(&r.stdout);
        assert!(msg.contains("Error code 2"), "tftp-hpa {path}: {msg}");
    }
    // netascii is refused with an explanation (error 0).
    let o = out("ascii");
    let r = link.client_cmd(
        30,
        &[
            "tftp",
            "-m",
            "ascii",
            &server,
            "-c",
            "get",
            "undionly.kpxe",
            o.to_str().unwrap(),
        ],
        &[],
    );
    let msg = String::from_utf8_lossy(&r.stderr).to_string() + &String::from_utf8_lossy(&r.stdout);
    assert!(
        msg.contains("Error code 0") && msg.contains("octet"),
        "tftp-hpa netascii: {msg}"
    );
    eprintln!(
        "refusals (traversal, absolute, symlinks, missing, netascii): {:?}",
        t.elapsed()
    );

    assert!(!handle.is_finished(), "TFTP server thread ended");
    eprintln!("total: {:?}", t0.elapsed());
}
