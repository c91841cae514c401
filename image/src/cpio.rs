//! The newc ("070701") cpio format the kernel unpacks as an initramfs:
//! a streaming writer, and a reader used by tests and to inspect images.
//!
//! Each entry is a 110-byte ASCII header (13 eight-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes;
//! the archive ends with an entry named `TRAILER!!!`.

use std::collections::HashSet;
use std::io::{self, Read, Write};

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// Writes a newc archive. Names are stored without a leading `/`; parent
/// directories missing from the archive are added (mode 0755) before the
/// first entry inside them, because the kernel does not create them.
pub struct Writer<W: Write> {
    w: W,
    next_ino: u32,
    mtime: u32,
    written: u64,
    dirs: HashSet<String>,
    names: HashSet<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(w: W) -> Self {
        Writer {
            w,
            next_ino: 1,
            mtime: 0,
            written: 0,
            dirs: HashSet::new(),
            names: HashSet::new(),
        }
    }

    /// Modification time stored in every following entry (default 0, so
    /// that the same inputs give the same bytes).
    pub fn set_mtime(&mut self, mtime: u32) {
        self.mtime = mtime;
    }

    /// Bytes written so far (uncompressed archive size).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// True when an entry of that name was written.
    pub fn contains(&self, path: &str) -> bool {
        self.names.contains(clean(path))
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let p = clean(path);
        if p.is_empty() || self.dirs.contains(p) {
            return Ok(());
        }
        self.parents(p)?;
        self.dirs.insert(p.to_string());
        self.entry(p, S_IFDIR | (perm & 0o7777), 2, 0, 0, &mut io::empty(), 0)
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.file_from(path, perm, data.len() as u64, &mut &data[..])
    }

    /// A regular file of exactly `len` bytes read from `r` (streamed, so
    /// large modules need not sit in memory twice).
    pub fn file_from(
        &mut self,
        path: &str,
        perm: u32,
        len: u64,
        r: &mut dyn Read,
    ) -> io::Result<()> {
        let p = clean(path);
        self.parents(p)?;
        self.entry(p, S_IFREG | (perm & 0o7777), 1, 0, 0, r, len)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let p = clean(path);
        self.parents(p)?;
        let t = target.as_bytes();
        self.entry(p, S_IFLNK | 0o777, 1, 0, 0, &mut &t[..], t.len() as u64)
    }

    /// A character (`S_IFCHR`) or block (`S_IFBLK`) device node.
    pub fn device(
        &mut self,
        path: &str,
        kind: u32,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        if kind != S_IFCHR && kind != S_IFBLK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a device kind",
            ));
        }
        let p = clean(path);
        self.parents(p)?;
        self.entry(
            p,
            kind | (perm & 0o7777),
            1,
            major,
            minor,
            &mut io::empty(),
            0,
        )
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.finish_counted().map(|(w, _)| w)
    }

    /// Writes the trailer; returns the inner writer and the archive size.
    pub fn finish_counted(mut self) -> io::Result<(W, u64)> {
        self.header(TRAILER, 0, 0, 1, 0, 0, 0)?;
        self.w.flush()?;
        Ok((self.w, self.written))
    }

    fn parents(&mut self, p: &str) -> io::Result<()> {
        if let Some((parent, _)) = p.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                self.dir(parent, 0o755)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rmaj: u32,
        rmin: u32,
        data: &mut dyn Read,
        len: u64,
    ) -> io::Result<()> {
        if name.is_empty() || name == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio name {name:?}"),
            ));
        }
        if len > u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: too large for cpio"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.header(name, ino, mode, nlink, len as u32, rmaj, rmin)?;
        let copied = io::copy(&mut data.take(len), &mut self.w)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: file shrank while archiving ({copied} of {len} bytes)"),
            ));
        }
        self.written += len;
        self.pad()?;
        self.names.insert(name.to_string());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rmaj: u32,
        rmin: u32,
    ) -> io::Result<()> {
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            self.mtime,
            size,
            0,
            0,
            rmaj,
            rmin,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = Vec::with_capacity(110 + name.len() + 4);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        self.w.write_all(&h)?;
        self.written += h.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.w.write_all(&[0u8; 3][..n])?;
        self.written += n as u64;
        Ok(())
    }
}

/// Archive names have no leading `/` or `./`.
fn clean(path: &str) -> &str {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/')
}

/// One entry of a parsed archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

impl Entry {
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// Parses a whole uncompressed newc archive up to its trailer. Hostile
/// input gives an error, never a panic. Several archives concatenated (as
/// the kernel accepts) are read one after another; zero padding between
/// them is skipped.
pub fn parse(mut b: &[u8]) -> Result<Vec<Entry>, String> {
    let total = b.len();
    let mut out = Vec::new();
    let mut saw_trailer = false;
    loop {
        while let [0, rest @ ..] = b {
            b = rest;
        }
        if b.is_empty() {
            break;
        }
        let at = total - b.len();
        if b.len() < 110 || &b[..6] != MAGIC {
            return Err(format!("offset {at}: not a newc cpio header"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&b[6 + i * 8..14 + i * 8])
                .map_err(|_| format!("offset {at}: bad header"))?;
            *v = u32::from_str_radix(s, 16)
                .map_err(|_| format!("offset {at}: bad header field {s:?}"))?;
        }
        let namesize = f[11] as usize;
        let filesize = f[6] as usize;
        if namesize == 0 {
            return Err(format!("offset {at}: empty name"));
        }
        let name_end = 110usize.checked_add(namesize).ok_or("name too long")?;
        let name_bytes = b
            .get(110..name_end)
            .ok_or(format!("offset {at}: name past end"))?;
        let name = String::from_utf8_lossy(&name_bytes[..namesize - 1]).into_owned();
        let data_start = align4(at + name_end) - at;
        let data_end = data_start.checked_add(filesize).ok_or("file too large")?;
        let data = b
            .get(data_start..data_end)
            .ok_or(format!("{name}: data past end"))?
            .to_vec();
        let next = (align4(at + data_end) - at).min(b.len());
        b = &b[next..];
        if name == TRAILER {
            saw_trailer = true;
            continue;
        }
        out.push(Entry {
            name,
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdev_major: f[9],
            rdev_minor: f[10],
            data,
        });
    }
    if !saw_trailer {
        return Err("no TRAILER!!! entry".into());
    }
    Ok(out)
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read() {
        let mut w = Writer::new(Vec::new());
        w.file("/bin/bootlun", 0o755, b"hello").unwrap();
        w.symlink("/init", "bin/bootlun").unwrap();
        w.device("/dev/console", S_IFCHR, 0o600, 5, 1).unwrap();
        w.dir("/proc", 0o555).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let e = parse(&bytes).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/bootlun", "init", "dev", "dev/console", "proc"]
        );
        assert_eq!(e[1].mode, S_IFREG | 0o755);
        assert_eq!(e[1].data, b"hello");
        assert_eq!(e[2].kind(), S_IFLNK);
        assert_eq!(e[2].data, b"bin/bootlun");
        assert_eq!(
            (e[4].kind(), e[4].rdev_major, e[4].rdev_minor),
            (S_IFCHR, 5, 1)
        );
        assert_eq!(e[5].mode, S_IFDIR | 0o555);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"070701zzzz").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(&[b'0'; 200]).is_err());
    }
}
