//! Helpers shared by the `build_*` tests: scratch directories, synthetic
//! ELF files (kernel modules, a static executable), a fake bzImage, reading
//! an initramfs back, and bounded external commands.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bootlun_image::cpio;

/// True when tests may skip because an external tool is missing.
pub fn skip_external() -> bool {
    std::env::var("BOOTLUN_SKIP_EXTERNAL").is_ok_and(|v| v == "1")
}

/// A fresh scratch directory under the target's tmp dir.
pub fn scratch(name: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-tests");
    // Directories of earlier runs whose process is gone are removed, so
    // reruns do not pile up.
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid = n
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let d = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// True when `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Runs a command, feeding `input` on stdin, killed after `limit`.
pub fn run_bounded(cmd: &mut Command, input: &[u8], limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child this helper started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    let _ = feeder.join();
    out
}

/// A minimal ELF64 relocatable object whose `.modinfo` holds `items`
/// (`key=value` strings), like a kernel module.
pub fn make_ko(items: &[&str]) -> Vec<u8> {
    let mut modinfo = Vec::new();
    for i in items {
        modinfo.extend_from_slice(i.as_bytes());
        modinfo.push(0);
    }
    let shstr = b"\0.modinfo\0.shstrtab\0".to_vec();
    let mi_off = 64u64;
    let ss_off = mi_off + modinfo.len() as u64;
    let mut sh_off = ss_off + shstr.len() as u64;
    sh_off = (sh_off + 7) & !7;
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&1u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[40..48].copy_from_slice(&sh_off.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[58..60].copy_from_slice(&64u16.to_le_bytes());
    b[60..62].copy_from_slice(&3u16.to_le_bytes());
    b[62..64].copy_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&modinfo);
    b.extend_from_slice(&shstr);
    b.resize(sh_off as usize, 0);
    let sh = |name: u32, ty: u32, off: u64, size: u64| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        h
    };
    b.extend(sh(0, 0, 0, 0));
    b.extend(sh(1, 1, mi_off, modinfo.len() as u64));
    b.extend(sh(10, 3, ss_off, shstr.len() as u64));
    b
}

/// A tiny statically linked ELF64 executable: one PT_LOAD, no PT_INTERP,
/// no sections.
pub fn static_elf() -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&0x400078u64.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut b[64..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes());
    ph[4..8].copy_from_slice(&5u32.to_le_bytes());
    ph[16..24].copy_from_slice(&0x400000u64.to_le_bytes());
    ph[32..40].copy_from_slice(&120u64.to_le_bytes());
    ph[40..48].copy_from_slice(&120u64.to_le_bytes());
    b
}

/// Enough of an x86 bzImage for the builder: `MZ`, `HdrS` at 0x202 and a
/// version string pointed to from 0x20E.
pub fn fake_bzimage(version: &str) -> Vec<u8> {
    let mut b = vec![0u8; 0x1000];
    b[0..2].copy_from_slice(b"MZ");
    b[0x202..0x206].copy_from_slice(b"HdrS");
    let at = 0x400usize;
    b[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
    let s = format!("{version} (test@example) #1 SMP");
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
    b
}

/// The uncompressed archive of an initramfs written with any of the
/// builder's compressions.
pub fn initrd_bytes(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(&raw[..]).unwrap()
    } else if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    }
}

pub fn entries(path: &Path) -> Vec<cpio::Entry> {
    cpio::parse(&initrd_bytes(path)).unwrap()
}

pub fn find<'a>(e: &'a [cpio::Entry], name: &str) -> &'a cpio::Entry {
    e.iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("{name} not in the image"))
}

/// Names as listed by the real `cpio -it` (package cpio).
pub fn cpio_tool_list(archive: &[u8]) -> Option<Vec<String>> {
    if !have("cpio") {
        if skip_external() {
            eprintln!("skipping cpio -it: cpio not installed (BOOTLUN_SKIP_EXTERNAL=1)");
            return None;
        }
        panic!("cpio not found: apt-get install cpio (or BOOTLUN_SKIP_EXTERNAL=1)");
    }
    let out = run_bounded(
        Command::new("cpio").arg("-it").arg("--quiet"),
        archive,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "cpio -it failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// Writes the image's files below `prefix` (e.g. `lib/modules/`) into `dir`.
pub fn unpack_prefix(e: &[cpio::Entry], prefix: &str, dir: &Path) {
    for x in e {
        if x.kind() == cpio::S_IFREG && x.name.starts_with(prefix) {
            let p = dir.join(&x.name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &x.data).unwrap();
        }
    }
}
