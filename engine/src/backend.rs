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
    /// Where bytes `[offset, offset + len)` can be sent from in place: a
    /// shared mapping of a LU whose data lives in memory (a
    /// `ram:` memfd, a file on tmpfs or ramfs). A read of such a LU is a
    /// memory copy into a pool buffer and a second copy into the socket;
    /// sending from the mapping skips the first (a profile of 1 MiB reads
    /// from a tmpfs file put 31 % of the target's CPU in that `preadv2`).
    /// `None`: read with [`prep_read`](Self::prep_read).
    ///
    /// The pointer stays valid as long as the backend. The kernel reads
    /// it (a send); user space must not: if the file shrinks, touching a
    /// page past its end raises SIGBUS, where a send fails with EFAULT.
    fn mapped(&self, _offset: u64, _len: u32) -> Option<*const u8> {
        None
    }
    /// Where bytes `[offset, offset + len)` of a writable memory-backed LU
    /// can be received in place: the same mapping, writable. A write of
    /// such a LU is a copy from the socket into a pool buffer and a second
    /// copy into the file; receiving into the mapping skips one, and the
    /// `pwritev2` with it (a profile of 128 KiB writes to a tmpfs file put
    /// 45 % of the target's CPU in that call). The bytes are on the medium
    /// as the receive completes, so the caller uses this only where that
    /// is allowed: not for atomic writes, not before a data digest is
    /// checked. `None`: receive into a buffer and
    /// [`prep_write`](Self::prep_write).
    ///
    /// As with [`mapped`](Self::mapped), only the kernel writes it: a
    /// receive past the end of a shrunk file fails with EFAULT.
    fn mapped_mut(&self, _offset: u64, _len: u32) -> Option<*mut u8> {
        None
    }
    /// A send from (or a receive into) [`mapped`](Self::mapped) memory
    /// failed with EFAULT: the file shrank under the mapping. Later reads
    /// and writes copy again.
    fn mapping_faulted(&self) {}
    fn prep_write(&self, buf: IoBuf, offset: u64, fua: bool) -> Prep;
    fn prep_flush(&self) -> Prep;
    /// Flush from a normal thread (shutdown).
    fn flush_blocking(&self) -> io::Result<()>;

    // Blocking helpers for the SCSI commands that manage the medium rather
    // than move data (UNMAP, WRITE SAME, COMPARE AND WRITE, GET LBA STATUS,
    // EXTENDED COPY, SANITIZE). Callers on a reactor keep each call small:
    // at most a pool buffer of data, or one deallocation request.

    /// Read `buf.len()` bytes at `offset` (whole blocks). A read past the
    /// end of a shrunk file returns zeros for the missing part.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `buf` at `offset` (whole blocks); with `fua`, durably.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Whether [`discard`](Self::discard) frees space and later reads of the
    /// range return zeros (thin provisioning with LBPRZ).
    fn thin(&self) -> bool {
        false
    }
    /// Whether a discarded range reads back as zeros (LBPRZ). A block
    /// device's discard makes no such promise.
    fn discard_zeroes(&self) -> bool {
        self.thin()
    }
    /// Deallocate `len` bytes at `offset`: the space goes back to the file
    /// system, device or memory (which then reads as zeros when
    /// [`discard_zeroes`](Self::discard_zeroes)).
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Make `len` bytes at `offset` read as zeros, keeping them allocated
    /// where the backend can (no data is transferred for files).
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let chunk = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write_at(&chunk[..n as usize], offset + done, false)?;
            done += n;
        }
        Ok(())
    }
    /// Whether the byte at `offset` is allocated, and how many bytes from
    /// `offset` (at most `max`) share that state.
    fn allocation(&self, _offset: u64, max: u64) -> io::Result<(bool, u64)> {
        Ok((true, max))
    }
    /// A small file next to the backing store where state that must
    /// survive a restart may be kept (persistent reservations with APTPL);
    /// `None` for memory and block devices.
    fn state_file(&self, _suffix: &str) -> Option<PathBuf> {
        None
    }
}

/// A parsed `--lun` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    pub kind: LunKind,
    pub read_only: bool,
    /// The text as given.
    pub text: String,
    /// Export a block device even when it is mounted, used as swap or
    /// held by device-mapper/md (`--force`). Otherwise such a device is
    /// refused and an exported one is opened O_EXCL, so nothing on this
    /// host can mount it while the initiator writes to it.
    pub force: bool,
    /// The boot partition bootlun itself mounts read-only (to read the
    /// kernels it offers) lies on this device: open it without O_EXCL,
    /// which would refuse that mount. The in-use checks still run.
    pub holds_boot: bool,
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
            force: false,
            holds_boot: false,
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
            let map = Mapping::new(&file, *size, !spec.read_only);
            Ok(Arc::new(FileBackend {
                file,
                store: Store::Memory,
                inline_io: true,
                map,
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
    // Two writers of one file system corrupt it: the initiator must be the
    // only user of an exported disk.
    let exclusive = is_block && !spec.force && !spec.holds_boot;
    if is_block && spec.holds_boot && !spec.force {
        tracing::info!(
            "--lun {}: not opened exclusively: the boot partition is on it (bootlun mounts it read-only for the kernels)",
            p.display()
        );
    }
    if is_block {
        use std::os::unix::fs::MetadataExt;
        if let Some(user) = block_device_user(meta.rdev()) {
            if spec.force {
                tracing::warn!(
                    "--lun {}: {user}; exporting it anyway (--force): writes from both sides will corrupt it",
                    p.display()
                );
            } else {
                return Err(format!(
                    "--lun {}: {user}; unmount or release it first, or add --force to export it anyway",
                    p.display()
                ));
            }
        }
    }
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(!spec.read_only);
        let mut flags = 0;
        if direct {
            flags |= libc::O_DIRECT;
        }
        // On a block device O_EXCL claims it: mount, swapon, dm and md are
        // refused while we hold it, and we are refused if they hold it.
        if exclusive {
            flags |= libc::O_EXCL;
        }
        o.custom_flags(flags);
        o.open(p)
    };
    let busy = |e: io::Error| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            format!(
                "--lun {}: in use by another program (exclusive open refused); stop it, or add --force",
                p.display()
            )
        } else {
            format!("--lun {}: cannot open: {e}", p.display())
        }
    };
    let (file, direct) = match open(true) {
        Ok(f) if probe_direct(&f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(busy(e)),
        _ => (open(false).map_err(busy)?, false),
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
    let store = if is_block {
        Store::Block {
            discard: sysfs_discard(&meta).unwrap_or(false),
        }
    } else {
        Store::File(canon)
    };
    let inline_io = !is_block && on_memory_fs(p);
    // Only what the file holds now: a page past its end cannot be sent.
    let map = inline_io
        .then(|| file.metadata().ok())
        .flatten()
        .and_then(|m| Mapping::new(&file, size.min(m.len()), !spec.read_only));
    Ok(Arc::new(FileBackend {
        file,
        store,
        inline_io,
        map,
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

/// The path is on a file system kept in memory (tmpfs, ramfs).
fn on_memory_fs(p: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path and `st` a zeroed statfs the
    // call fills in; both live across the call.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0
            && matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
    }
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

/// The device (or, for a partition, its disk) takes discards.
fn sysfs_discard(meta: &std::fs::Metadata) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let base = format!("/sys/dev/block/{maj}:{min}");
    let read = |p: String| std::fs::read_to_string(p).ok();
    let v = read(format!("{base}/queue/discard_max_bytes"))
        .or_else(|| read(format!("{base}/../queue/discard_max_bytes")))?;
    Some(v.trim().parse::<u64>().ok()? > 0)
}

/// What uses the block device `rdev` or one of its partitions on this
/// host: a mount (naming the mount point), swap, or a holder such as
/// device-mapper or md. `None` when it is free.
pub fn block_device_user(rdev: u64) -> Option<String> {
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    // The device itself, then each partition (a subdirectory with a
    // `partition` file), as (name, "MAJ:MIN", sysfs dir).
    let own_name = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{maj}:{min}"));
    let mut devs = vec![(own_name, format!("{maj}:{min}"), sys.clone())];
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.flatten() {
            let dir = e.path();
            if !dir.join("partition").exists() {
                continue;
            }
            if let Ok(dev) = std::fs::read_to_string(dir.join("dev")) {
                let name = e.file_name().to_string_lossy().into_owned();
                devs.push((name, dev.trim().to_string(), dir));
            }
        }
    }
    // Mounts: field 3 of mountinfo is the MAJ:MIN, field 5 the mount point.
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (Some(dev), Some(mnt)) = (f.get(2), f.get(4)) else {
                continue;
            };
            if let Some((name, _, _)) = devs.iter().find(|(_, d, _)| d == dev) {
                return Some(format!("/dev/{name} is mounted on {}", unescape_mount(mnt)));
            }
        }
    }
    // Swap: /proc/swaps lists paths; compare device numbers.
    if let Ok(text) = std::fs::read_to_string("/proc/swaps") {
        use std::os::unix::fs::MetadataExt;
        for line in text.lines().skip(1) {
            let Some(path) = line.split_whitespace().next() else {
                continue;
            };
            let Ok(m) = std::fs::metadata(unescape_mount(path)) else {
                continue;
            };
            if !m.file_type().is_block_device() {
                continue;
            }
            let dev = format!("{}:{}", libc::major(m.rdev()), libc::minor(m.rdev()));
            if let Some((name, _, _)) = devs.iter().find(|(_, d, _)| *d == dev) {
                return Some(format!("/dev/{name} is in use as swap"));
            }
        }
    }
    // Holders: device-mapper (LVM, dm-crypt, multipath) and md arrays.
    for (name, _, dir) in &devs {
        let Ok(rd) = std::fs::read_dir(dir.join("holders")) else {
            continue;
        };
        if let Some(h) = rd.flatten().next() {
            let holder = h.file_name().to_string_lossy().into_owned();
            let dm = std::fs::read_to_string(h.path().join("dm/name"))
                .map(|n| format!(" (device-mapper {})", n.trim()))
                .unwrap_or_default();
            return Some(format!("/dev/{name} is held by {holder}{dm}"));
        }
    }
    None
}

/// Mount points in mountinfo and paths in /proc/swaps escape space, tab,
/// newline and backslash as \ooo octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod exclusive_tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/mnt/x\\134y"), "/mnt/x\\y");
        assert_eq!(unescape_mount("/odd\\9"), "/odd\\9");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }

    #[test]
    fn the_root_file_system_device_is_in_use() {
        use std::os::unix::fs::MetadataExt;
        // Whatever holds / is mounted; a device nothing uses is not.
        let Ok(m) = std::fs::metadata("/") else {
            return;
        };
        let user = block_device_user(m.dev());
        if std::path::Path::new(&format!(
            "/sys/dev/block/{}:{}",
            libc::major(m.dev()),
            libc::minor(m.dev())
        ))
        .exists()
        {
            assert!(user.is_some_and(|u| u.contains("mounted on")));
        }
        assert_eq!(block_device_user(libc::makedev(4095, 4095)), None);
    }
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

/// What a [`FileBackend`] sits on: it decides how space is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    /// A regular file at this (canonical) path: punch holes.
    File(PathBuf),
    /// A block device: BLKDISCARD when the device advertises discard.
    Block { discard: bool },
    /// A memfd (`ram:`): punching holes frees its pages.
    Memory,
}

struct FileBackend {
    file: File,
    info: BackendInfo,
    store: Store,
    /// The data lives in memory (a memfd, or a file on tmpfs/ramfs): a
    /// read or write is a memory copy that io_uring does not attempt
    /// without blocking on these file systems, so it would go to an io-wq
    /// worker thread, a context switch or two (and, across cores, an
    /// interrupt) per command; a profile of 4 KiB random reads showed the
    /// worker with a third of the target's CPU. `prep_read` and
    /// `prep_write` copy on the reactor instead.
    inline_io: bool,
    /// With `inline_io`: the data mapped (see `mapped` and `mapped_mut`).
    map: Option<Mapping>,
}

/// Reads smaller than this copy even when the LU is mapped: the hole check
/// costs a system call, and at 4 KiB random reads sending from the mapping
/// measured no faster than copying (the per-command costs dominate).
const MAPPED_MIN: u32 = 64 * 1024;

/// A shared mapping of a whole memory-backed LU: read-only, or read-write
/// when the LU is writable.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    writable: bool,
    /// Cleared once a send from the mapping, or a receive into it, faulted.
    ok: std::sync::atomic::AtomicBool,
    /// One bit per [`GRANULE`] of the mapping: every page of it was found
    /// in memory, so a read there needs no `mincore`. A profile of 128 KiB
    /// reads had 3.6 % of the target's CPU in that call, each read asking
    /// again about pages that never go away. Bits are cleared when the LU
    /// gives space back (UNMAP, WRITE SAME with unmap, zeroing). A bit
    /// that goes stale anyway (another process punched a hole, or a
    /// discard ran between another reactor's `mincore` and its setting
    /// the bit) costs only memory: a send from the hole faults in a page
    /// of zeros, which is what a read of it returns.
    known: Box<[std::sync::atomic::AtomicU64]>,
}

/// The size of the pieces whose residency [`Mapping`] remembers.
const GRANULE: u64 = MAPPED_MIN as u64;

// SAFETY: the mapping is shared; the pointer is only handed to the kernel
// (sends from it, receives into it), never dereferenced in user space, and
// unmapped once, when the backend is dropped.
unsafe impl Send for Mapping {}
// SAFETY: as above; `ok` is atomic.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of `file`, `writable` or read-only; `None` if the
    /// kernel refuses (the LU then reads and writes with copies).
    fn new(file: &File, len: u64, writable: bool) -> Option<Mapping> {
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a descriptor we own; the result
        // is checked, and nothing else is placed at that address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            tracing::debug!("mmap of a memory LU failed: {}", io::Error::last_os_error());
            return None;
        }
        populate(file, ptr, len, writable);
        let granules = (len as u64).div_ceil(GRANULE);
        Some(Mapping {
            ptr,
            len,
            writable,
            ok: std::sync::atomic::AtomicBool::new(true),
            known: (0..granules.div_ceil(64))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        })
    }

    /// Every page of bytes `[start, end)` (inside the mapping, `start <
    /// end`) is in memory: from the granules already known to be, or
    /// else from `mincore` over the whole granules, which are then known.
    fn resident(&self, start: u64, end: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let (first, last) = (start / GRANULE, (end - 1) / GRANULE);
        let bit = |g: u64| (&self.known[(g / 64) as usize], 1u64 << (g % 64));
        if (first..=last).all(|g| {
            let (w, b) = bit(g);
            w.load(Relaxed) & b != 0
        }) {
            return true;
        }
        let whole_end = ((last + 1) * GRANULE).min(self.len as u64);
        if self.resident_pages(first * GRANULE, whole_end) {
            for g in first..=last {
                let (w, b) = bit(g);
                w.fetch_or(b, Relaxed);
            }
            return true;
        }
        // A hole somewhere in the granules: maybe not in the range itself.
        self.resident_pages(start, end)
    }

    /// Forget what is known about the granules that bytes `[start, end)`
    /// touch: they may have lost pages.
    fn forget(&self, start: u64, end: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let end = end.min(self.len as u64);
        if start >= end {
            return;
        }
        for g in start / GRANULE..=(end - 1) / GRANULE {
            self.known[(g / 64) as usize].fetch_and(!(1u64 << (g % 64)), Relaxed);
        }
    }

    /// Every page of bytes `[start, end)` is in memory (mincore).
    fn resident_pages(&self, start: u64, end: u64) -> bool {
        const PAGE: u64 = 4096;
        const STEP: u64 = 256;
        let mut vec = [0u8; STEP as usize];
        let mut page = start / PAGE;
        let last = end.div_ceil(PAGE);
        while page < last {
            let n = (last - page).min(STEP);
            // SAFETY: the range lies inside the mapping (`end` <= `len`,
            // rounded up to a page, which the mapping covers), and `vec`
            // has a byte for each of its `n` pages.
            let r = unsafe {
                libc::mincore(
                    (self.ptr as *mut u8).wrapping_add((page * PAGE) as usize) as *mut _,
                    (n * PAGE) as usize,
                    vec.as_mut_ptr(),
                )
            };
            if r != 0 || vec[..n as usize].iter().any(|b| b & 1 == 0) {
                return false;
            }
            page += n;
        }
        true
    }
}

/// Fill the page tables of a fresh mapping of `file` (`len` bytes at
/// `ptr`) for every page the file holds, so that sends from it and
/// receives into it take no page faults. Without this every first touch
/// of a page faults, one 4 KiB page at a time for writes: in a run of
/// 128 KiB writes over a 1 GiB tmpfs file, 11 % of the target's CPU, and
/// the writes ran slower than with copies. With it the same run used 25 %
/// less CPU than copying (perf/README.md). It costs about 0.25 s per GiB
/// at start. Holes are left alone: populating them would allocate their
/// pages. A kernel without MADV_POPULATE_* (before 5.14) faults on demand.
fn populate(file: &File, ptr: *mut libc::c_void, len: usize, writable: bool) {
    const MADV_POPULATE_READ: libc::c_int = 22;
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    const STEP: u64 = 1 << 30;
    let advice = if writable {
        MADV_POPULATE_WRITE
    } else {
        MADV_POPULATE_READ
    };
    let fd = file.as_raw_fd();
    let end = len as u64;
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut done = 0u64;
    let mut pos = 0u64;
    while pos < end {
        // SAFETY: plain lseek calls on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let mut at = data as u64;
        while at < hole {
            let n = (hole - at).min(STEP);
            // SAFETY: `at..at+n` lies inside the mapping (`hole` <= `len`);
            // populating only fills page tables, it changes no data.
            let r =
                unsafe { libc::madvise(ptr.wrapping_byte_add(at as usize), n as usize, advice) };
            if r != 0 {
                tracing::debug!(
                    "madvise(MADV_POPULATE) of a memory LU: {}",
                    io::Error::last_os_error()
                );
                return;
            }
            at += n;
            done += n;
            if logged.elapsed() >= std::time::Duration::from_secs(2) {
                logged = std::time::Instant::now();
                tracing::info!("mapping a memory LU: {} of {} MiB", done >> 20, end >> 20);
            }
        }
        pos = hole;
    }
    tracing::debug!(
        "mapped {} MiB of a memory LU in {:?}",
        done >> 20,
        started.elapsed()
    );
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A 4 KiB-aligned heap buffer: O_DIRECT descriptors refuse unaligned
/// user memory.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> io::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a nonzero size; the result is checked.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Aligned { ptr, layout })
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised (zeroed) bytes
        // for as long as `self` lives, and `&mut self` makes this the only
        // reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// A read or write done on the spot, as a completion would report it:
/// bytes moved, or a negative errno.
fn inline_result(n: isize) -> Prep {
    Prep::Done(if n < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        n as i32
    })
}

fn check_len(n: isize, want: usize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((n as usize).min(want))
    }
}

/// BLKDISCARD and BLKZEROOUT take a (start, length) pair of u64.
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127F;

impl FileBackend {
    fn range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: both ioctls read exactly two u64 from the pointer, which
        // points at a live array of two u64.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req, range.as_ptr()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on a descriptor we own; no memory passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        // Punching or zeroing may free pages (even when it fails part-way).
        if let Some(m) = &self.map {
            m.forget(offset, offset.saturating_add(len));
        }
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: plain syscall on a descriptor we own; pread/pwrite use
        // explicit offsets, so moving the file position disturbs no one.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after `offset`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    }
}

impl BlockBackend for FileBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn prep_read(&self, buf: IoBuf, offset: u64) -> Prep {
        if self.inline_io {
            let iov = libc::iovec {
                iov_base: buf.ptr as *mut libc::c_void,
                iov_len: buf.len as usize,
            };
            // SAFETY: `buf` is a live pool buffer range (see `IoBuf`) that
            // the caller lends for this read, written here only, for the
            // length given.
            let n =
                unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset as libc::off_t, 0) };
            return inline_result(n);
        }
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
    fn mapped(&self, offset: u64, len: u32) -> Option<*const u8> {
        let m = self.map.as_ref()?;
        let end = offset.checked_add(len as u64)?;
        if len < MAPPED_MIN
            || end > m.len as u64
            || !m.ok.load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        // A send that touches a hole faults a fresh zeroed page into the
        // file (tmpfs allocates on a read fault), where a copying read
        // returns zeros and allocates nothing: a scan of a sparse `ram:`
        // LU would fill it. Only ranges whose pages all exist are sent in
        // place. (SEEK_HOLE would say so too, but on tmpfs it walks on to
        // the next hole, which in a full 1 GiB file is the end: a profile
        // showed reads slowed tenfold.)
        if !m.resident(offset, end) {
            return None;
        }
        Some((m.ptr as *const u8).wrapping_add(offset as usize))
    }
    fn mapped_mut(&self, offset: u64, len: u32) -> Option<*mut u8> {
        let m = self.map.as_ref()?;
        let end = offset.checked_add(len as u64)?;
        if !m.writable
            || self.info.read_only
            || end > m.len as u64
            || !m.ok.load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        // A hole is fine here: the receive's page fault allocates the page,
        // as a write would.
        Some((m.ptr as *mut u8).wrapping_add(offset as usize))
    }
    fn mapping_faulted(&self) {
        if let Some(m) = &self.map {
            if m.ok.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "{}: the backing file shrank under its mapping (or its file system is full); reads and writes now copy",
                    self.info.describe
                );
            }
        }
    }
    fn prep_write(&self, buf: IoBuf, offset: u64, fua: bool) -> Prep {
        if self.info.read_only {
            return Prep::Done(-libc::EROFS);
        }
        // FUA: the write is durable when it completes (RWF_DSYNC).
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        if self.inline_io {
            let iov = libc::iovec {
                iov_base: buf.ptr as *mut libc::c_void,
                iov_len: buf.len as usize,
            };
            // SAFETY: `buf` is a live pool buffer range (see `IoBuf`), read
            // here only, for the length given.
            let n = unsafe {
                libc::pwritev2(self.file.as_raw_fd(), &iov, 1, offset as libc::off_t, flags)
            };
            return inline_result(n);
        }
        let fd = types::Fd(self.file.as_raw_fd());
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
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut a = Aligned::new(buf.len())?;
        let b = a.as_mut();
        // SAFETY: `b` is a live, writable buffer of `b.len()` bytes.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                b.len(),
                offset as libc::off_t,
            )
        };
        let n = check_len(n, buf.len())?;
        buf[..n].copy_from_slice(&b[..n]);
        buf[n..].fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if self.info.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mut a = Aligned::new(buf.len())?;
        let b = a.as_mut();
        b[..buf.len()].copy_from_slice(buf);
        let iov = libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        // SAFETY: one iovec describing `buf.len()` readable bytes of `b`,
        // which outlives the call.
        let n =
            unsafe { libc::pwritev2(self.file.as_raw_fd(), &iov, 1, offset as libc::off_t, flags) };
        if check_len(n, buf.len())? < buf.len() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        Ok(())
    }
    /// Read-only or not: a read-only LU still reports which blocks are
    /// mapped (GET LBA STATUS), and UNMAP on it is refused as a write.
    fn thin(&self) -> bool {
        match self.store {
            Store::File(_) | Store::Memory => true,
            Store::Block { discard } => discard,
        }
    }
    fn discard_zeroes(&self) -> bool {
        self.thin() && !matches!(self.store, Store::Block { .. })
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.info.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        match self.store {
            Store::File(_) | Store::Memory => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            Store::Block { discard: true } => self.range_ioctl(BLKDISCARD, offset, len),
            Store::Block { discard: false } => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.info.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        match self.store {
            Store::File(_) | Store::Memory => self
                .fallocate(
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
                .or_else(|_| {
                    // File systems without ZERO_RANGE: punch, then allocate.
                    self.fallocate(
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset,
                        len,
                    )?;
                    self.fallocate(libc::FALLOC_FL_KEEP_SIZE, offset, len)
                        .or(Ok(()))
                }),
            Store::Block { .. } => self.range_ioctl(BLKZEROOUT, offset, len),
        }
    }
    fn allocation(&self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        if matches!(self.store, Store::Block { .. }) {
            return Ok((true, max));
        }
        let end = offset.saturating_add(max);
        // Beyond the end of a shrunk file everything is a hole.
        let data = self.seek(offset, libc::SEEK_DATA)?;
        match data {
            Some(d) if d == offset => {
                let hole = self.seek(offset, libc::SEEK_HOLE)?.unwrap_or(end);
                Ok((true, hole.min(end) - offset))
            }
            Some(d) => Ok((false, d.min(end) - offset)),
            None => Ok((false, max)),
        }
    }
    fn state_file(&self, suffix: &str) -> Option<PathBuf> {
        let Store::File(p) = &self.store else {
            return None;
        };
        let name = p.file_name()?.to_string_lossy().to_string();
        Some(p.with_file_name(format!(".{name}.{suffix}")))
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
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64, _fua: bool) -> io::Result<()> {
        if self.info.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(())
    }
    fn thin(&self) -> bool {
        true
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.write_at(&[], 0, false)
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.write_at(&[], 0, false)
    }
    fn allocation(&self, _offset: u64, max: u64) -> io::Result<(bool, u64)> {
        // Nothing is ever stored: every block reads as a deallocated one.
        Ok((false, max))
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
    fn ram_discard_frees_and_reads_zeros() {
        let b = open_backend(&LunSpec::parse("ram:1M").unwrap(), 0).unwrap();
        assert!(b.thin() && b.discard_zeroes());
        b.write_at(&[7u8; 65536], 0, false).unwrap();
        assert_eq!(b.allocation(0, 1 << 20).unwrap(), (true, 65536));
        b.discard(4096, 8192).unwrap();
        let mut r = vec![1u8; 16384];
        b.read_at(&mut r, 0).unwrap();
        assert!(r[..4096].iter().all(|&x| x == 7));
        assert!(r[4096..12288].iter().all(|&x| x == 0));
        assert!(r[12288..].iter().all(|&x| x == 7));
        assert_eq!(b.allocation(4096, 1 << 20).unwrap(), (false, 8192));
        b.write_zeroes(0, 4096).unwrap();
        b.read_at(&mut r[..4096], 0).unwrap();
        assert!(r[..4096].iter().all(|&x| x == 0));
    }

    #[test]
    fn file_backend_keeps_state_beside_it() {
        let dir = std::env::temp_dir().join(format!("bootlun-backend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let b = open_backend(&LunSpec::parse(img.to_str().unwrap()).unwrap(), 0).unwrap();
        assert_eq!(
            b.state_file("x"),
            Some(dir.canonicalize().unwrap().join(".d.img.x"))
        );
        // A fresh sparse file is all hole; written data is allocated.
        assert!(!b.allocation(0, 1 << 20).unwrap().0);
        b.write_at(&[3u8; 4096], 8192, true).unwrap();
        assert!(b.allocation(8192, 1 << 20).unwrap().0);
        b.discard(8192, 4096).unwrap();
        let mut r = vec![9u8; 4096];
        b.read_at(&mut r, 8192).unwrap();
        assert!(r.iter().all(|&x| x == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_memory_lu_is_sent_in_place_only_where_it_holds_data() {
        let b = open_backend(&LunSpec::parse("ram:1M").unwrap(), 0).unwrap();
        // A hole: a send from it would allocate pages; it is copied.
        assert!(b.mapped(0, 65536).is_none());
        let data: Vec<u8> = (0..131072u32).map(|i| (i % 251) as u8).collect();
        b.write_at(&data, 65536, false).unwrap();
        let p = b.mapped(65536, 131072).expect("written data is mapped");
        // SAFETY: 128 KiB of the live mapping; the memfd cannot shrink.
        let got = unsafe { std::slice::from_raw_parts(p, 131072) };
        assert_eq!(got, &data[..]);
        // Part hole, too small, past the end.
        assert!(b.mapped(0, 131072).is_none());
        assert!(b.mapped(65536, 4096).is_none());
        assert!(b.mapped((1 << 20) - 65024, 65536).is_none());
        // A send from it faulted: copy from now on.
        b.mapping_faulted();
        assert!(b.mapped(65536, 131072).is_none());
        // Other backends are never mapped.
        let n = open_backend(&LunSpec::parse("null:1M").unwrap(), 0).unwrap();
        assert!(n.mapped(0, 65536).is_none());
    }

    #[test]
    fn what_is_known_to_be_in_memory_is_forgotten_when_space_is_given_back() {
        let b = open_backend(&LunSpec::parse("ram:1M").unwrap(), 0).unwrap();
        // Data from 4 KiB on: the first 64 KiB piece has a hole at its
        // start, so the check of whole pieces fails and the range itself
        // is asked about.
        b.write_at(&[5u8; 262144], 4096, false).unwrap();
        assert!(b.mapped(0, 65536).is_none());
        assert!(b.mapped(4096, 65536).is_some());
        // Whole pieces, now known to be in memory.
        assert!(b.mapped(65536, 131072).is_some());
        assert!(b.mapped(65536, 131072).is_some());
        // UNMAP of one page of them: not sent in place any more (a send
        // would fill the hole again), while the piece after stays.
        b.discard(65536 + 8192, 4096).unwrap();
        assert!(b.mapped(65536, 131072).is_none());
        assert!(b.mapped(131072, 65536).is_some());
        // Zeroing gives pages back too.
        b.write_zeroes(131072, 65536).unwrap();
        assert!(b.mapped(131072, 65536).is_none());
        // Written again, the range is sent in place again.
        b.write_at(&[6u8; 131072], 65536, false).unwrap();
        assert!(b.mapped(65536, 131072).is_some());
    }

    #[test]
    fn a_writable_memory_lu_is_received_into_in_place() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let b = open_backend(&LunSpec::parse("ram:1M").unwrap(), 0).unwrap();
        // Holes too: a receive's fault allocates the page, as a write does.
        let p = b
            .mapped_mut(65536, 131072)
            .expect("a ram: LU is writable in place");
        let data: Vec<u8> = (0..131072u32).map(|i| (i % 241) as u8).collect();
        let (mut tx, rx) = UnixStream::pair().unwrap();
        tx.write_all(&data).unwrap();
        let mut got = 0;
        while got < data.len() {
            // SAFETY: the rest of the 128 KiB the mapping gave; the kernel
            // writes it, as the reactor's receive does.
            let n = unsafe {
                libc::recv(
                    rx.as_raw_fd(),
                    p.add(got) as *mut libc::c_void,
                    data.len() - got,
                    0,
                )
            };
            assert!(
                n > 0,
                "recv into the mapping: {}",
                io::Error::last_os_error()
            );
            got += n as usize;
        }
        let mut back = vec![0u8; data.len()];
        b.read_at(&mut back, 65536).unwrap();
        assert_eq!(back, data);
        // Past the end, after a fault, read-only and other backends: no.
        assert!(b.mapped_mut((1 << 20) - 4096, 8192).is_none());
        b.mapping_faulted();
        assert!(b.mapped_mut(0, 65536).is_none());
        let ro = open_backend(&LunSpec::parse("ram:1M,ro").unwrap(), 0).unwrap();
        assert!(ro.mapped_mut(0, 65536).is_none());
        let n = open_backend(&LunSpec::parse("null:1M").unwrap(), 0).unwrap();
        assert!(n.mapped_mut(0, 65536).is_none());
    }

    #[test]
    fn a_tmpfs_lu_is_mapped_without_filling_its_holes() {
        let shm = std::path::Path::new("/dev/shm");
        assert!(shm.is_dir(), "/dev/shm (a tmpfs) is needed for this test");
        let img = shm.join(format!("bootlun-engine-holes-{}.img", std::process::id()));
        let f = File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        // 1 MiB of data at 8 MiB, the rest holes.
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![7u8; 1 << 20], 8 << 20).unwrap();
        drop(f);
        let spec = LunSpec::parse(img.to_str().unwrap()).unwrap();
        let b = open_backend(&spec, 0).unwrap();
        assert!(
            b.mapped(8 << 20, 1 << 20).is_some(),
            "data is mapped for reads"
        );
        assert!(
            b.mapped_mut(0, 1 << 20).is_some(),
            "the LU is mapped for writes"
        );
        // Opening it (and filling the page tables of its data) allocated
        // nothing: still 1 MiB on disk.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&img).unwrap());
        drop(b);
        let _ = std::fs::remove_file(&img);
        assert_eq!(blocks * 512, 1 << 20, "holes were filled");
    }

    #[test]
    fn ram_backend_has_its_size() {
        let b = open_backend(&LunSpec::parse("ram:1M").unwrap(), 0).unwrap();
        assert_eq!(b.size_bytes(), 1 << 20);
        assert_eq!(b.block_size(), 512);
    }
}
