//! kmod: modules.dep / modules.alias / modules.builtin parsing, modalias
//! globbing, load order, `-`/`_` equivalence, and parsers fed garbage.

mod build_common;

use std::path::Path;

use bootlun_image::kmod::{self, fnmatch, ModIndex};
use proptest::prelude::*;

fn fixture() -> ModIndex {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build/modules");
    ModIndex::open(&dir).unwrap()
}

fn v(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn modalias_globs() {
    let idx = fixture();
    assert_eq!(
        idx.match_modalias("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"),
        v(&["e1000e"])
    );
    // Another device ID of the same vendor is not this driver.
    assert!(idx
        .match_modalias("pci:v00008086d000010D5sv00008086sd0000A01Fbc02sc00i00")
        .is_empty());
    assert_eq!(
        idx.match_modalias("virtio:d00000001v00001AF4"),
        v(&["virtio_net"])
    );
    assert!(idx.match_modalias("virtio:d00000002v00001AF4").is_empty());
    assert_eq!(
        idx.match_modalias("usb:v0B95p1790d0100dcFFdscFFdp00icFFiscFFip00in00"),
        v(&["ax88179_178a"])
    );
    assert!(fnmatch(
        "pci:v00008086d000010D3sv*sd*bc*sc*i*",
        "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
    ));
    assert!(fnmatch(
        "usb:v*p*d01[0-9][0-9]dc*",
        "usb:v0B95p1790d0105dcFF"
    ));
    assert!(!fnmatch(
        "usb:v*p*d01[0-9][0-9]dc*",
        "usb:v0B95p1790d01A5dcFF"
    ));
    assert!(fnmatch("of:N*T*Cfoo?bar", "of:NxTyCfooXbar"));
}

#[test]
fn load_order_from_hand_written_dep() {
    let idx = fixture();
    assert_eq!(
        idx.load_order(&v(&["ext4"])),
        v(&["jbd2", "mbcache", "crc16", "ext4"])
    );
    assert_eq!(
        idx.load_order(&v(&["virtio_net", "ext4", "virtio_net"])),
        v(&[
            "failover",
            "net_failover",
            "virtio_net",
            "jbd2",
            "mbcache",
            "crc16",
            "ext4"
        ])
    );
    let e = idx.load_order(&v(&["e1000e", "ax88179_178a"]));
    assert_eq!(
        e,
        v(&["pps_core", "ptp", "e1000e", "mii", "usbnet", "ax88179_178a"])
    );
    // A dependency cycle in a damaged file terminates, each module once.
    let c = idx.load_order(&v(&["a"]));
    assert_eq!(c, v(&["b", "a"]));
    // Unknown names and built-ins drop out.
    assert!(idx.load_order(&v(&["nope", "af_packet"])).is_empty());
    assert_eq!(
        idx.path_of("ext4").unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/build/modules/kernel/fs/ext4/ext4.ko.xz")
    );
    assert!(idx.path_of("nope").is_none());
}

#[test]
fn dash_and_underscore_are_the_same_name() {
    let idx = fixture();
    assert_eq!(idx.resolve("ax88179-178a"), v(&["ax88179_178a"]));
    assert_eq!(idx.resolve("ax88179_178a"), v(&["ax88179_178a"]));
    assert_eq!(
        idx.load_order(&v(&["net-failover"])),
        v(&["failover", "net_failover"])
    );
    assert!(idx.path_of("net-failover").is_some());
    assert!(idx.is_builtin("af-packet"));
    // Aliases: fs-ext4 and fs_ext4 both name ext4; net-pf-17 is built in.
    assert_eq!(idx.resolve("fs-ext4"), v(&["ext4"]));
    assert_eq!(idx.resolve("fs_ext4"), v(&["ext4"]));
    assert_eq!(idx.resolve("ext3"), v(&["ext4"]));
    assert_eq!(idx.resolve("net-pf-17"), v(&["af_packet"]));
    assert!(idx.load_order(&idx.resolve("net-pf-17")).is_empty());
    assert!(idx
        .resolve("crypto-crc32c")
        .iter()
        .all(|m| idx.is_builtin(m)));
    assert!(idx.resolve("no-such-thing").is_empty());
}

#[test]
fn soft_dependencies_load_around_the_module() {
    let d = build_common::scratch("kmod-softdep");
    std::fs::write(d.join("modules.dep"), "kernel/fs/ext4.ko: kernel/fs/jbd2.ko\nkernel/fs/jbd2.ko:\nkernel/crypto/crc32c-generic.ko:\nkernel/x/after.ko:\n").unwrap();
    std::fs::write(
        d.join("modules.alias"),
        "alias crypto-crc32c crc32c_generic\n",
    )
    .unwrap();
    std::fs::write(
        d.join("modules.softdep"),
        "# comment\nsoftdep ext4 pre: crypto-crc32c post: after\nsoftdep\n",
    )
    .unwrap();
    let idx = ModIndex::open(&d).unwrap();
    assert_eq!(
        idx.load_order(&v(&["ext4"])),
        v(&["crc32c_generic", "jbd2", "ext4", "after"])
    );
}

#[test]
fn open_needs_modules_dep_only() {
    let d = build_common::scratch("kmod-open");
    assert!(ModIndex::open(&d).unwrap_err().contains("modules.dep"));
    std::fs::write(d.join("modules.dep"), "kernel/x.ko:\n").unwrap();
    let idx = ModIndex::open(&d).unwrap();
    assert_eq!(idx.load_order(&v(&["x"])), v(&["x"]));
    assert!(idx.match_modalias("anything").is_empty());
}

#[test]
fn modinfo_from_a_module_file() {
    let ko = build_common::make_ko(&[
        "license=GPL",
        "depends=jbd2,mbcache",
        "alias=fs-ext4",
        "name=ext4",
        "firmware=a/b.bin",
    ]);
    let mi = kmod::read_modinfo(&ko).unwrap();
    assert_eq!(mi.name.as_deref(), Some("ext4"));
    assert_eq!(mi.depends, v(&["jbd2", "mbcache"]));
    assert_eq!(mi.aliases, v(&["fs-ext4"]));
    assert_eq!(mi.firmware, v(&["a/b.bin"]));
    // Truncated anywhere: an error, not a panic.
    for cut in 0..ko.len() {
        let _ = kmod::read_modinfo(&ko[..cut]);
    }
}

proptest! {
    #[test]
    fn index_parsers_never_panic(dep in proptest::collection::vec(any::<u8>(), 0..600),
                                 alias in proptest::collection::vec(any::<u8>(), 0..600),
                                 builtin in proptest::collection::vec(any::<u8>(), 0..200),
                                 q in ".{0,40}") {
        let idx = ModIndex::from_texts(Path::new("/m"), &dep, &alias, &builtin);
        let _ = idx.match_modalias(&q);
        let r = idx.resolve(&q);
        let _ = idx.load_order(&r);
        let _ = idx.path_of(&q);
        let _ = kmod::parse_proc_modules(&dep);
    }

    #[test]
    fn structured_index_text_never_panics(lines in proptest::collection::vec("[a-z/_.:* \\[\\]!-]{0,30}", 0..40)) {
        let text = lines.join("\n");
        let idx = ModIndex::from_texts(Path::new("/m"), text.as_bytes(), format!("alias {text}").as_bytes(), text.as_bytes());
        for l in &lines {
            let _ = idx.load_order(&idx.resolve(l));
            let _ = idx.match_modalias(l);
        }
    }

    #[test]
    fn fnmatch_never_panics(p in "[a-c*?\\[\\]!^\\\\-]{0,24}", t in "[a-c\\[\\]-]{0,24}") {
        let _ = fnmatch(&p, &t);
    }

    #[test]
    fn fnmatch_star_and_literals(a in "[a-z]{0,8}", b in "[a-z]{0,8}", mid in "[a-z]{0,8}") {
        let text = format!("{a}{mid}{b}");
        let pat = format!("{a}*{b}");
        prop_assert!(fnmatch(&pat, &text));
        prop_assert!(fnmatch(&text, &text));
    }

    #[test]
    fn elf_readers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = kmod::read_modinfo(&b);
        let _ = kmod::parse_modinfo(&b);
        let mut e = b.clone();
        if e.len() >= 6 { e[..4].copy_from_slice(b"\x7fELF"); e[4] = 2; e[5] = 1; }
        let _ = kmod::read_modinfo(&e);
        let _ = bootlun_image::build::elf::elf_facts(&e);
        let _ = bootlun_image::build::elf::bzimage(&b);
    }

    #[test]
    fn mutated_module_never_panics(pos in 0usize..400, val in any::<u8>(), pos2 in 0usize..400, val2 in any::<u8>()) {
        let mut ko = build_common::make_ko(&["depends=a,b", "name=x"]);
        let n = ko.len();
        ko[pos % n] = val;
        ko[pos2 % n] = val2;
        let _ = kmod::read_modinfo(&ko);
        let _ = bootlun_image::build::elf::elf_facts(&ko);
    }
}
