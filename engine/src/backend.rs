//! Block backends behind one trait.
//!
//! A backend does not perform I/O itself: it turns a request into an
//! io_uring SQE for the reactor to submit ([`Prep::Submit`]), or completes
//! it on the spot ([`Prep::Done`]) when there is nothing to wait for
//! (`null:`). This keeps every byte of data on the reactor's ring and in
//! its registered buffers.
//!
//! * A path: a regular file or a block device, opened with O_DIRECT when the
//!   file system or device accepts it.
//! * `ram:SIZE`: anonymous memory (a memfd), so it shares the file path.
//! * `null:SIZE`: reads zeros, discards writes.

use io_uring::{opcode, squeue, types};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::parse_size;

/// How a request will complete.
pub enum Prep {
    /// Submit this entry; its result is the request's result.
    Submit(squeue::Entry),
    /// Already done with this result (bytes, or a negative errno).
    Done(i32),
}

/// A buffer handed to a backend: `len` bytes at `ptr`, registered with the
/// ring at `index` when `Some`. Only the engine makes these, from a
/// [`PoolBuf`](crate::PoolBuf) it checked (see [`crate::IoOps`]), so safe
/// code cannot point a backend at arbitrary memory.
#[derive(Debug)]
pub struct IoBuf {
    ptr: *mut u8,
    len: u32,
    index: Option<u16>,
}

impl IoBuf {
    /// `len` bytes of a pool buffer at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` lies inside one buffer of a live pool and nothing
    /// else reads or writes it until the operation built from it ends.
    pub(crate) unsafe fn new(ptr: *mut u8, len: u32, index: Option<u16>) -> IoBuf {
        IoBuf { ptr, len, index }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fill the buffer with zeros (backends that complete on the spot).
    fn zero(&self) {
        // SAFETY: `new`'s contract: the range is one pool buffer that only
        // this operation uses.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len as usize) };
    }
}

/// What every backend reports about itself.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// What the operator gave (`/dev/sda`, `ram:1G`, ...), for messages.
    pub describe: String,
    /// Stable identity of the backing store, hashed into SCSI designators.
    pub identity: String,
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub rotational: bool,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

pub trait BlockBackend: Send + Sync {
    fn info(&self) -> &BackendInfo;
    fn describe(&self) -> &str {
        &self.info().describe
    }
    fn identity(&self) -> &str {
        &self.info().identity
    }
    fn size_bytes(&self) -> u64 {
        self.info().size
    }
    fn block_size(&self) -> u32 {
        self.info().block_size
    }
    fn read_only(&self) -> bool {
        self.info().read_only
    }
    fn rotational(&self) -> bool {
        self.info().rotational
    }
    fn prep_read(&self, buf: IoBuf, offset: u64) -> Prep;
    fn prep_write(&self, buf: IoBuf, offset: u64, fua: bool) -> Prep;
    fn prep_flush(&self) -> Prep;
    /// Flush from a normal thread (shutdown).
    fn flush_blocking(&self) -> io::Result<()>;
}

/// A parsed `--lun` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    pub kind: LunKind,
    pub read_only: bool,
    /// The text as given.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunKind {
    Path(PathBuf),
    Ram(u64),
    Null(u64),
}

impl LunSpec {
    pub fn parse(s: &str) -> Result<LunSpec, String> {
        let (body, read_only) = match s.strip_suffix(",ro") {
            Some(b) => (b, true),
            None => (s, false),
        };
        if body.is_empty() {
            return Err("--lun: empty value; give a path, ram:SIZE or null:SIZE".into());
        }
        if let Some((opt_body, opt)) = body.rsplit_once(',') {
            if !opt_body.is_empty() && !opt.contains('/') {
                return Err(format!(
                    "--lun {s}: unknown option ',{opt}' (only ',ro' is known)"
                ));
            }
        }
        let sized = |rest: &str, what: &str| -> Result<u64, String> {
            let n = parse_size(rest).map_err(|e| format!("--lun {s}: {e}"))?;
            if n < 512 || n % 512 != 0 {
                return Err(format!(
                    "--lun {s}: {what} size must be a positive multiple of 512 bytes"
                ));
            }
            Ok(n)
        };
        let kind = if let Some(rest) = body.strip_prefix("ram:") {
            LunKind::Ram(sized(rest, "ram")?)
        } else if let Some(rest) = body.strip_prefix("null:") {
            LunKind::Null(sized(rest, "null")?)
        } else if body.contains(':') && !body.starts_with('/') && !body.starts_with('.') {
            let scheme = body.split(':').next().unwrap_or("");
            return Err(format!(
                "--lun {s}: unknown backend '{scheme}:' (use a path, ram:SIZE or null:SIZE)"
            ));
        } else {
            LunKind::Path(PathBuf::from(body))
        };
        Ok(LunSpec {
            kind,
            read_only,
            text: s.to_string(),
        })
    }
}

/// Open the backend a spec names. Errors are one line for the operator.
pub fn open_backend(spec: &LunSpec, index: usize) -> Result<Arc<dyn BlockBackend>, String> {
    match &spec.kind {
        LunKind::Null(size) => Ok(Arc::new(NullBackend {
            info: BackendInfo {
                describe: spec.text.clone(),
                identity: format!("{}null:{index}", host_id()),
                size: *size,
                block_size: 512,
                read_only: spec.read_only,
                rotational: false,
                direct: false,
            },
        })),
        LunKind::Ram(size) => {
            let name = CString::new("bootlun-ram").unwrap();
            // SAFETY: a valid C string; the result is checked below.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!(
                    "--lun {}: cannot allocate memory: {}",
                    spec.text,
                    io::Error::last_os_error()
                ));
            }
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(*size)
                .map_err(|e| format!("--lun {}: cannot size memory: {e}", spec.text))?;
            Ok(Arc::new(FileBackend {
                file,
                info: BackendInfo {
                    describe: spec.text.clone(),
                    identity: format!("{}ram:{index}", host_id()),
                    size: *size,
                    block_size: 512,
                    read_only: spec.read_only,
                    rotational: false,
                    direct: false,
                },
            }))
        }
        LunKind::Path(p) => open_path(spec, p),
    }
}

fn open_path(spec: &LunSpec, p: &PathBuf) -> Result<Arc<dyn BlockBackend>, String> {
    let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("--lun {}: no such file or block device", p.display()),
        _ => format!("--lun {}: {e}", p.display()),
    })?;
    let is_block = meta.file_type().is_block_device();
    if !is_block && !meta.is_file() {
        return Err(format!(
            "--lun {}: not a regular file or block device",
            p.display()
        ));
    }
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(!spec.read_only);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(p)
    };
    let (file, direct) = match open(true) {
        Ok(f) if probe_direct(&f) => (f, true),
        _ => (
            open(false).map_err(|e| format!("--lun {}: cannot open: {e}", p.display()))?,
            false,
        ),
    };
    let (size, block_size, rotational) = if is_block {
        let mut size: u64 = 0;
        let mut bs: libc::c_int = 512;
        // BLKGETSIZE64 and BLKSSZGET
        // SAFETY: both ioctls write one value of the type passed (u64 and
        // int) on an open block device.
        unsafe {
            libc::ioctl(file.as_raw_fd(), 0x80081272, &mut size);
            libc::ioctl(file.as_raw_fd(), 0x1268, &mut bs);
        }
        let rot = sysfs_rotational(&meta).unwrap_or(false);
        (size, bs.max(512) as u32, rot)
    } else {
        (meta.len(), 512, false)
    };
    let size = size - size % block_size as u64;
    if size == 0 {
        return Err(format!(
            "--lun {}: size is zero (a file LUN needs a size; create it with truncate -s 1G FILE)",
            p.display()
        ));
    }
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    // A disk's own WWID follows it from host to host and path to path;
    // otherwise this host plus the path.
    let identity = is_block
        .then(|| sysfs_wwid(&meta))
        .flatten()
        .unwrap_or_else(|| format!("{}{}", host_id(), canon.display()));
    Ok(Arc::new(FileBackend {
        file,
        info: BackendInfo {
            describe: spec.text.clone(),
            identity,
            size,
            block_size,
            read_only: spec.read_only,
            rotational,
            direct,
        },
    }))
}

/// O_DIRECT opens succeed on some file systems that then fail every read
/// (or the opposite): try one aligned read.
fn probe_direct(f: &File) -> bool {
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a 4 KiB aligned allocation, checked for null, read into by
    // at most 4096 bytes and freed with the same layout.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return false;
        }
        let r = libc::pread(f.as_raw_fd(), p as *mut _, 4096, 0);
        std::alloc::dealloc(p, layout);
        r >= 0
    }
}

/// This machine's id (`/etc/machine-id`, else the hostname), so two hosts
/// exporting `ram:` LUNs or the same path do not report the same SCSI
/// identifiers (multipath would merge them).
fn host_id() -> String {
    let id = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .unwrap_or_default();
    format!("{}/", id.trim())
}

/// The WWID the kernel reads from the device (`device/wwid` in sysfs).
fn sysfs_wwid(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let base = format!("/sys/dev/block/{maj}:{min}");
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // A partition's id is its disk's plus the partition number.
    read(&format!("{base}/device/wwid")).or_else(|| {
        let part = read(&format!("{base}/partition"))?;
        Some(format!(
            "{}-part{part}",
            read(&format!("{base}/../device/wwid"))?
        ))
    })
}

fn sysfs_rotational(meta: &std::fs::Metadata) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let dev = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let name = dev.file_name()?.to_string_lossy().to_string();
    let mut path = format!("/sys/block/{name}/queue/rotational");
    if !std::path::Path::new(&path).exists() {
        // A partition: the queue belongs to the parent disk.
        let parent = dev.parent()?.file_name()?.to_string_lossy().to_string();
        path = format!("/sys/block/{parent}/queue/rotational");
    }
    Some(std::fs::read_to_string(path).ok()?.trim() == "1")
}

struct FileBackend {
    file: File,
    info: BackendInfo,
}

impl BlockBackend for FileBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn prep_read(&self, buf: IoBuf, offset: u64) -> Prep {
        let fd = types::Fd(self.file.as_raw_fd());
        Prep::Submit(match buf.index {
            Some(i) => opcode::ReadFixed::new(fd, buf.ptr, buf.len, i)
                .offset(offset)
                .build(),
            None => opcode::Read::new(fd, buf.ptr, buf.len)
                .offset(offset)
                .build(),
        })
    }
    fn prep_write(&self, buf: IoBuf, offset: u64, fua: bool) -> Prep {
        if self.info.read_only {
            return Prep::Done(-libc::EROFS);
        }
        let fd = types::Fd(self.file.as_raw_fd());
        // FUA: the write is durable when it completes (RWF_DSYNC).
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        Prep::Submit(match buf.index {
            Some(i) => opcode::WriteFixed::new(fd, buf.ptr, buf.len, i)
                .offset(offset)
                .rw_flags(flags)
                .build(),
            None => opcode::Write::new(fd, buf.ptr, buf.len)
                .offset(offset)
                .rw_flags(flags)
                .build(),
        })
    }
    fn prep_flush(&self) -> Prep {
        if self.info.read_only {
            return Prep::Done(0);
        }
        let fd = types::Fd(self.file.as_raw_fd());
        Prep::Submit(
            opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        )
    }
    fn flush_blocking(&self) -> io::Result<()> {
        if self.info.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

struct NullBackend {
    info: BackendInfo,
}

impl BlockBackend for NullBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn prep_read(&self, buf: IoBuf, _offset: u64) -> Prep {
        buf.zero();
        Prep::Done(buf.len as i32)
    }
    fn prep_write(&self, buf: IoBuf, _offset: u64, _fua: bool) -> Prep {
        if self.info.read_only {
            return Prep::Done(-libc::EROFS);
        }
        Prep::Done(buf.len as i32)
    }
    fn prep_flush(&self) -> Prep {
        Prep::Done(0)
    }
    fn flush_blocking(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_specs() {
        assert_eq!(
            LunSpec::parse("ram:1G").unwrap().kind,
            LunKind::Ram(1 << 30)
        );
        let s = LunSpec::parse("null:64M,ro").unwrap();
        assert!(s.read_only);
        assert_eq!(s.kind, LunKind::Null(64 << 20));
        assert_eq!(
            LunSpec::parse("/dev/sda").unwrap().kind,
            LunKind::Path("/dev/sda".into())
        );
        assert!(LunSpec::parse("bogus:1")
            .unwrap_err()
            .contains("unknown backend"));
        assert!(LunSpec::parse("ram:13").is_err());
        assert!(LunSpec::parse("ram:1G,rw").is_err());
        assert!(LunSpec::parse("").is_err());
    }

    #[test]
    fn missing_path_is_one_clear_line() {
        let e = open_backend(&LunSpec::parse("/dev/sdz-bootlun-none").unwrap(), 0)
            .err()
            .unwrap();
        assert_eq!(
            e,
            "--lun /dev/sdz-bootlun-none: no such file or block device"
        );
    }

    #[test]
    fn ram_backend_has_its_size() {
        let b = open_backend(&LunSpec::parse("ram:1M").unwrap(), 0).unwrap();
        assert_eq!(b.size_bytes(), 1 << 20);
        assert_eq!(b.block_size(), 512);
    }
}
