//! The menu follows the disk: kernels installed after start-up appear on
//! the next menu request, and Arch's `vmlinuz-linux` pairs with dracut's
//! versioned initramfs.

use bootlun_pxe::{bootentries, start, DhcpModeArg, IscsiExport, PxeArgs};
use std::io::{Read, Write};
use std::path::Path;

/// A file that looks like an x86 bzImage reporting `release`.
fn fake_kernel(path: &Path, release: &str) {
    let mut k = vec![0u8; 0x1000];
    k[0] = b'M';
    k[1] = b'Z';
    k[0x202..0x206].copy_from_slice(b"HdrS");
    let ptr: u16 = 0x0800;
    k[0x20E..0x210].copy_from_slice(&ptr.to_le_bytes());
    let s = format!("{release} (builder@host) #1 SMP PREEMPT_DYNAMIC\0");
    let at = usize::from(ptr) + 0x200;
    k[at..at + s.len()].copy_from_slice(s.as_bytes());
    std::fs::write(path, k).unwrap();
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn kernel_release_from_the_header() {
    let dir = testkit::TempDir::new("krel");
    let d = dir.path().to_path_buf();
    fake_kernel(&d.join("vmlinuz-linux"), "6.6.1-arch1-1");
    assert_eq!(
        bootentries::kernel_release(&d.join("vmlinuz-linux")).as_deref(),
        Some("6.6.1-arch1-1")
    );
    std::fs::write(d.join("junk"), b"not a kernel").unwrap();
    assert_eq!(bootentries::kernel_release(&d.join("junk")), None);
}

#[test]
fn efi_stub_detection() {
    let dir = testkit::TempDir::new("efistub");
    let d = dir.path().to_path_buf();
    // A bzImage header alone: BIOS only.
    fake_kernel(&d.join("bios"), "6.1.0");
    assert_eq!(bootentries::has_efi_stub(&d.join("bios")), Some(false));
    // With a PE header where 0x3C points.
    let mut k = std::fs::read(d.join("bios")).unwrap();
    k[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    k[0x40..0x44].copy_from_slice(b"PE\0\0");
    std::fs::write(d.join("efi"), k).unwrap();
    assert_eq!(bootentries::has_efi_stub(&d.join("efi")), Some(true));
    assert_eq!(bootentries::has_efi_stub(&d.join("missing")), None);
}

#[test]
fn arch_vmlinuz_linux_pairs_with_dracut_initramfs() {
    let dir = testkit::TempDir::new("archdracut");
    let d = dir.path().to_path_buf();
    fake_kernel(&d.join("vmlinuz-linux"), "6.6.1-arch1-1");
    std::fs::write(d.join("initramfs-6.6.1-arch1-1.img"), b"dracut").unwrap();
    let (_, e) = bootentries::discover(&d, "root=UUID=1 rw").unwrap();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].linux, "vmlinuz-linux");
    assert_eq!(e[0].initrd, ["initramfs-6.6.1-arch1-1.img"]);
}

#[test]
fn menu_is_rescanned_on_each_request() {
    let dir = testkit::TempDir::new("rescan");
    let d = dir.path().to_path_buf();
    fake_kernel(&d.join("vmlinuz-6.1.0-13-amd64"), "6.1.0-13-amd64");
    std::fs::write(d.join("initrd.img-6.1.0-13-amd64"), b"old initrd").unwrap();
    let args = PxeArgs {
        pxe_interface: Some("lo".into()),
        boot_dir: Some(d.clone()),
        dhcp_mode: Some(DhcpModeArg::Off),
        http_port: Some(0),
        ipxe_dir: Some("/nonexistent".into()),
        cmdline_default: Some("root=UUID=1 ro".into()),
        ..PxeArgs::default()
    };
    let export = IscsiExport {
        target_name: "iqn.2026-11.org.bootlun:t".into(),
        port: 3260,
        luns: vec![0],
        ..Default::default()
    };
    let h = start(&args, &export).unwrap().unwrap();
    let addr = h.http.local_addr();
    let first = get(addr, "/boot.ipxe");
    assert!(first.contains("vmlinuz-6.1.0-13-amd64"), "{first}");
    assert!(!first.contains("6.1.0-18"), "{first}");
    assert!(get(addr, "/boot/vmlinuz-6.1.0-18-amd64").starts_with("HTTP/1.1 404"));

    // "apt upgrade" on the initiator: a newer kernel lands on the disk.
    fake_kernel(&d.join("vmlinuz-6.1.0-18-amd64"), "6.1.0-18-amd64");
    std::fs::write(d.join("initrd.img-6.1.0-18-amd64"), b"new initrd").unwrap();
    let newer = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    for f in ["vmlinuz-6.1.0-18-amd64", "initrd.img-6.1.0-18-amd64"] {
        std::fs::File::options()
            .write(true)
            .open(d.join(f))
            .unwrap()
            .set_modified(newer)
            .unwrap();
    }
    let second = get(addr, "/boot.ipxe");
    let default_item = second
        .lines()
        .find(|l| l.starts_with("kernel ") || l.contains("vmlinuz-"))
        .unwrap_or("");
    assert!(
        default_item.contains("vmlinuz-6.1.0-18-amd64"),
        "the new kernel must come first:\n{second}"
    );
    let k = get(addr, "/boot/initrd.img-6.1.0-18-amd64");
    assert!(
        k.starts_with("HTTP/1.1 200") && k.ends_with("new initrd"),
        "{k}"
    );
    h.stop();
}
