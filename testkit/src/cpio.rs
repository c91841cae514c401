//! Initramfs images for test guests, written by the image crate's cpio
//! "newc" writer (the one `bootlun image` uses), so the tests exercise the
//! same archive code the product ships.

use std::collections::BTreeMap;
use std::path::Path;

use bootlun_image::cpio::{Writer, S_IFCHR};

/// An uncompressed initramfs built in memory; parent directories are added
/// by the writer. Write errors cannot happen on a `Vec`, and a bad name is a
/// bug in the test, so both panic with the entry's name.
pub struct Cpio {
    w: Writer<Vec<u8>>,
    /// Regular files written so far, with their sizes.
    pub entries: BTreeMap<String, usize>,
}

impl Default for Cpio {
    fn default() -> Self {
        Cpio::new()
    }
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio {
            w: Writer::new(Vec::new()),
            entries: BTreeMap::new(),
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.dir_mode(path, 0o755);
    }

    pub fn dir_mode(&mut self, path: &str, perm: u32) {
        self.w
            .dir(path, perm)
            .unwrap_or_else(|e| panic!("cpio dir {path}: {e}"));
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.w
            .file(path, mode, data)
            .unwrap_or_else(|e| panic!("cpio file {path}: {e}"));
        self.entries
            .insert(path.trim_start_matches('/').to_string(), data.len());
    }

    pub fn has(&self, path: &str) -> bool {
        self.w.contains(path)
    }

    pub fn host_file(&mut self, path: &str, mode: u32, host: &Path) {
        let data = std::fs::read(host).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
        self.file(path, mode, &data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.w
            .symlink(path, target)
            .unwrap_or_else(|e| panic!("cpio symlink {path}: {e}"));
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.w
            .device(path, S_IFCHR, mode, major, minor)
            .unwrap_or_else(|e| panic!("cpio device {path}: {e}"));
    }

    /// The archive, trailer included.
    pub fn finish(self) -> Vec<u8> {
        self.w
            .finish()
            .unwrap_or_else(|e| panic!("cpio trailer: {e}"))
    }
}
