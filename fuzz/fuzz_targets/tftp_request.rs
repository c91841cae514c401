//! Feeds arbitrary bytes to the TFTP request parser, then the parsed
//! request to option negotiation and path resolution inside a scratch
//! TFTP root (with a symlink that points outside it). Resolution must
//! never leave the root; negotiated values stay within their bounds; the
//! encoders produce well-formed packets.
#![no_main]

use bootlun_pxe::tftp::{encode_error, encode_oack, negotiate, parse_request, resolve_path, MAX_BLKSIZE, MAX_WINDOW};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A scratch root: `boot/vmlinuz`, `undionly.kpxe`, a directory, and
/// `escape` -> `/etc`.
fn root() -> &'static (PathBuf, PathBuf) {
    static ROOT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("bootlun-fuzz-tftp-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("boot/dir")).unwrap();
        std::fs::write(root.join("boot/vmlinuz"), b"kernel").unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"pxe").unwrap();
        std::fs::write(base.join("secret"), b"outside").unwrap();
        let _ = std::os::unix::fs::symlink("/etc", root.join("escape"));
        let _ = std::os::unix::fs::symlink(base.join("secret"), root.join("boot/secret-link"));
        let real = root.canonicalize().unwrap();
        (root, real)
    })
}

fuzz_target!(|data: &[u8]| {
    let (root, real_root) = root();
    let (max_blk, pkt) = match data.split_first() {
        Some((b, rest)) => (u16::from(*b) * 257, rest),
        None => (0, data),
    };
    let req = match parse_request(pkt) {
        Ok(r) => r,
        Err(e) => {
            let p = encode_error(e.code, &e.msg);
            assert_eq!(&p[..2], &[0, 5]);
            assert_eq!(p.last(), Some(&0));
            assert!(!p[4..p.len() - 1].contains(&0));
            return;
        }
    };
    assert!(!req.filename.is_empty());
    assert_eq!(req.mode, "octet");
    for (i, (n, _)) in req.options.iter().enumerate() {
        assert!(!n.is_empty());
        assert_eq!(*n, n.to_ascii_lowercase());
        assert!(req.options[..i].iter().all(|(m, _)| m != n), "duplicate option {n}");
    }

    let neg = negotiate(&req.options, 12345, max_blk);
    assert!(neg.blksize >= 8 && neg.blksize <= MAX_BLKSIZE, "blksize {}", neg.blksize);
    assert!(neg.blksize == 512 || neg.blksize <= max_blk.clamp(8, MAX_BLKSIZE));
    assert!(neg.windowsize >= 1 && neg.windowsize <= MAX_WINDOW);
    assert!(neg.timeout.as_secs() >= 1 && neg.timeout.as_secs() <= 255);
    let oack = encode_oack(&neg.oack);
    assert_eq!(&oack[..2], &[0, 6]);

    // The name as sent, and the same name under the root's absolute path.
    for name in [req.filename.clone(), format!("{}/{}", root.display(), req.filename)] {
        if let Ok(p) = resolve_path(root, &name) {
            assert!(p.starts_with(real_root), "{name:?} resolved outside the root: {}", p.display());
            assert!(p.is_file());
        }
    }
});
