//! The newc writer: read back by an independent reader written here and
//! by the real `cpio -it` (package cpio).

mod build_common;

use bootlun_image::cpio::{self, Writer};
use proptest::prelude::*;

/// A deliberately separate newc reader: (name, mode, rdevmajor, rdevminor, nlink, data).
fn read_newc(b: &[u8]) -> Vec<(String, u32, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        assert_eq!(off % 4, 0, "header not 4-byte aligned");
        assert_eq!(&b[off..off + 6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&b[off + 6 + i * 8..off + 14 + i * 8]).unwrap(),
                16,
            )
            .unwrap()
        };
        let (mode, nlink, size, rmaj, rmin, namesize, check) = (
            field(1),
            field(4),
            field(6) as usize,
            field(9),
            field(10),
            field(11) as usize,
            field(12),
        );
        assert_eq!(check, 0);
        let name_at = off + 110;
        assert_eq!(b[name_at + namesize - 1], 0, "name not NUL-terminated");
        let name = String::from_utf8(b[name_at..name_at + namesize - 1].to_vec()).unwrap();
        let data_at = (name_at + namesize + 3) & !3;
        for &pad in &b[name_at + namesize..data_at] {
            assert_eq!(pad, 0);
        }
        let data = b[data_at..data_at + size].to_vec();
        let next = (data_at + size + 3) & !3;
        for &pad in &b[data_at + size..next] {
            assert_eq!(pad, 0);
        }
        off = next;
        if name == "TRAILER!!!" {
            assert_eq!(off, b.len(), "bytes after the trailer");
            return out;
        }
        out.push((name, mode, rmaj, rmin, nlink, data));
    }
}

fn sample() -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    w.dir("/proc", 0o555).unwrap();
    w.file("/bin/bootlun", 0o755, b"\x7fELF-ish").unwrap();
    w.symlink("/init", "bin/bootlun").unwrap();
    w.device("/dev/console", cpio::S_IFCHR, 0o600, 5, 1)
        .unwrap();
    w.device("/dev/null", cpio::S_IFCHR, 0o666, 1, 3).unwrap();
    w.device("/dev/sda", cpio::S_IFBLK, 0o660, 8, 0).unwrap();
    // Sizes 0..=5 cover every padding length.
    for n in 0..6 {
        w.file(
            &format!("/pad/f{n}{}", "x".repeat(n)),
            0o644,
            &vec![b'a' + n as u8; n],
        )
        .unwrap();
    }
    w.file("tmp/empty", 0o600, b"").unwrap();
    w.finish().unwrap()
}

#[test]
fn round_trip_through_an_independent_reader() {
    let b = sample();
    assert_eq!(b.len() % 4, 0);
    let e = read_newc(&b);
    let get = |n: &str| {
        e.iter()
            .find(|x| x.0 == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(get("proc").1, 0o040555);
    assert_eq!(get("proc").4, 2);
    assert_eq!(get("bin").1, 0o040755, "parent directory added");
    assert_eq!(get("bin/bootlun").1, 0o100755);
    assert_eq!(get("bin/bootlun").5, b"\x7fELF-ish");
    assert_eq!(get("init").1, 0o120777);
    assert_eq!(get("init").5, b"bin/bootlun");
    assert_eq!(
        (
            get("dev/console").1,
            get("dev/console").2,
            get("dev/console").3
        ),
        (0o020600, 5, 1)
    );
    assert_eq!(
        (get("dev/null").1, get("dev/null").2, get("dev/null").3),
        (0o020666, 1, 3)
    );
    assert_eq!((get("dev/sda").1, get("dev/sda").2), (0o060660, 8));
    for n in 0..6 {
        assert_eq!(
            get(&format!("pad/f{n}{}", "x".repeat(n))).5,
            vec![b'a' + n as u8; n]
        );
    }
    // Parents come before children.
    let pos = |n: &str| e.iter().position(|x| x.0 == n).unwrap();
    assert!(
        pos("bin") < pos("bin/bootlun")
            && pos("pad") < pos("pad/f0")
            && pos("dev") < pos("dev/null")
    );
    // The library reader agrees.
    let lib = cpio::parse(&b).unwrap();
    assert_eq!(lib.len(), e.len());
    for (a, b) in lib.iter().zip(&e) {
        assert_eq!((&a.name, a.mode, &a.data), (&b.0, b.1, &b.5));
    }
}

#[test]
fn real_cpio_lists_the_names() {
    let b = sample();
    let Some(names) = build_common::cpio_tool_list(&b) else {
        return;
    };
    let expect: Vec<String> = read_newc(&b).into_iter().map(|e| e.0).collect();
    assert_eq!(names, expect);
    // And verbose listing shows the symlink and the device numbers.
    let out = build_common::run_bounded(
        std::process::Command::new("cpio").args(["-itv", "--quiet"]),
        &b,
        std::time::Duration::from_secs(60),
    );
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.lines()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("init -> bin/bootlun")),
        "{v}"
    );
    assert!(
        v.lines()
            .any(|l| l.starts_with("crw-------") && l.contains("5,") && l.ends_with("dev/console")),
        "{v}"
    );
}

#[test]
fn bad_names_and_devices_are_refused() {
    let mut w = Writer::new(Vec::new());
    assert!(w.file("/", 0o644, b"").is_err());
    assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
    assert!(w.device("dev/x", cpio::S_IFREG, 0o644, 1, 1).is_err());
    // A reader that delivers less than promised is an error, not a short entry.
    assert!(w.file_from("a", 0o644, 10, &mut &b"abc"[..]).is_err());
}

proptest! {
    #[test]
    fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..1000)) {
        let _ = cpio::parse(&b);
        let mut h = b"070701".to_vec();
        h.extend_from_slice(&b);
        let _ = cpio::parse(&h);
    }

    #[test]
    fn mutated_archives_never_panic(pos in 0usize..2000, val in any::<u8>()) {
        let mut b = sample();
        let n = b.len();
        b[pos % n] = val;
        let _ = cpio::parse(&b);
    }

    #[test]
    fn any_files_round_trip(files in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8}){0,2}", proptest::collection::vec(any::<u8>(), 0..70), 1..8)) {
        let mut w = Writer::new(Vec::new());
        let mut written = Vec::new();
        for (name, data) in &files {
            // A name that is already a directory of another file cannot also be a file.
            if w.contains(name) { continue; }
            if w.file(name, 0o644, data).is_ok() { written.push((name.clone(), data.clone())); }
        }
        let b = w.finish().unwrap();
        let e = cpio::parse(&b).unwrap();
        for (name, data) in written {
            let x = e.iter().find(|x| x.name == name && x.kind() == cpio::S_IFREG).unwrap();
            prop_assert_eq!(&x.data, &data);
        }
    }
}
