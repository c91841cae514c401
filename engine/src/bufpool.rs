//! Per-reactor pool of fixed-size I/O buffers.
//!
//! The whole pool is one anonymous mapping made at start-up, split into
//! equal buffers and registered with the reactor's io_uring, so disk I/O
//! can use the fixed-buffer opcodes and nothing is allocated per I/O.
//! Buffers are page aligned, which also satisfies O_DIRECT.
//!
//! A buffer is handed out as a [`PoolBuf`]: a handle that is neither
//! `Copy` nor `Clone`, so exactly one owner holds it and gives it back with
//! [`BufPool::release`]. Disk and network operations take the handle, never
//! a raw pointer (see [`crate::IoOps`]).

use std::ptr::NonNull;

/// Index of a buffer in its pool (also its io_uring registered-buffer index).
pub type BufId = u16;

/// One buffer taken from a [`BufPool`]. Only the pool makes these.
#[derive(Debug, PartialEq, Eq)]
pub struct PoolBuf(BufId);

impl PoolBuf {
    /// The buffer's index in its pool (its registered-buffer index).
    pub fn id(&self) -> BufId {
        self.0
    }
}

/// Share of the machine's RAM the default pools may pin, all reactors
/// together (1/128: 192 MiB on a 24 GiB box, 2 GiB on a 256 GiB server).
pub const DEFAULT_RAM_SHARE: u64 = 128;
/// Per-reactor floor and ceiling of the default buffer count. A command
/// holds a buffer while it is in flight, and one session may have its
/// whole command window (`--queue-depth`, 128 by default) in flight on one
/// reactor: below that, a single qemu-img writing 128 KiB at depth 32 was
/// answered TASK SET FULL thousands of times with 94 buffers and never
/// with 128. The ceiling is the old fixed default.
pub const DEFAULT_MIN_BUFFERS: usize = 128;
pub const DEFAULT_MAX_BUFFERS: usize = 256;

/// The default number of buffers per reactor: a share of physical RAM
/// ([`DEFAULT_RAM_SHARE`]) split between the reactors, clamped to
/// [`DEFAULT_MIN_BUFFERS`]..=[`DEFAULT_MAX_BUFFERS`]. Pinned memory is
/// taken from the machine we are booting, so it must scale with it rather
/// than with the core count alone (256 x 1 MiB per reactor was 16 GiB on a
/// 64-core server).
pub fn default_buffers(reactors: usize, buf_size: usize) -> usize {
    default_buffers_for(physical_ram(), reactors, buf_size)
}

fn default_buffers_for(ram: u64, reactors: usize, buf_size: usize) -> usize {
    let per_reactor = ram / DEFAULT_RAM_SHARE / reactors.max(1) as u64 / buf_size.max(1) as u64;
    (per_reactor.min(usize::MAX as u64) as usize).clamp(DEFAULT_MIN_BUFFERS, DEFAULT_MAX_BUFFERS)
}

/// Physical RAM in bytes (0 if the system will not say: the floor applies).
fn physical_ram() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || size <= 0 {
        return 0;
    }
    (pages as u64).saturating_mul(size as u64)
}

pub struct BufPool {
    base: NonNull<u8>,
    buf_size: usize,
    count: usize,
    free: Vec<BufId>,
    registered: bool,
}

// SAFETY: the mapping is owned by the pool and not shared; the pool is
// built on one thread and moved into the reactor thread that uses it.
unsafe impl Send for BufPool {}

impl BufPool {
    /// Map `count` buffers of `buf_size` bytes (rounded up to pages).
    pub fn new(count: usize, buf_size: usize) -> std::io::Result<Self> {
        assert!(count > 0 && count <= u16::MAX as usize);
        let buf_size = buf_size.div_ceil(4096) * 4096;
        let len = buf_size * count;
        // SAFETY: anonymous private mapping; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(BufPool {
            base: NonNull::new(p as *mut u8).expect("mmap returned null"),
            buf_size,
            count,
            free: (0..count as u16).rev().collect(),
            registered: false,
        })
    }

    /// iovecs describing every buffer, for `register_buffers`.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.base_of(i as BufId) as *mut _,
                iov_len: self.buf_size,
            })
            .collect()
    }

    pub(crate) fn set_registered(&mut self, r: bool) {
        self.registered = r;
    }

    /// Whether the buffers are registered with the ring (fixed opcodes usable).
    pub fn registered(&self) -> bool {
        self.registered
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn alloc(&mut self) -> Option<PoolBuf> {
        self.free.pop().map(PoolBuf)
    }

    pub fn release(&mut self, buf: PoolBuf) {
        debug_assert!(
            (buf.0 as usize) < self.count,
            "buffer {} not of this pool",
            buf.0
        );
        debug_assert!(
            !self.free.contains(&buf.0),
            "double release of buffer {}",
            buf.0
        );
        self.free.push(buf.0);
    }

    fn base_of(&self, id: BufId) -> *mut u8 {
        assert!((id as usize) < self.count);
        // SAFETY: `id < count`, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(id as usize * self.buf_size) }
    }

    /// Start of `buf`: valid for `buf_size()` bytes for the life of the
    /// pool. For building iovecs; reading and writing go through
    /// [`slice`](Self::slice) and [`slice_mut`](Self::slice_mut).
    pub fn ptr(&self, buf: &PoolBuf) -> *mut u8 {
        self.base_of(buf.0)
    }

    /// The first `len` bytes of `buf` (the caller must not hold the slice
    /// across an I/O that writes into the buffer).
    pub fn slice(&self, buf: &PoolBuf, len: usize) -> &[u8] {
        let len = len.min(self.buf_size);
        // SAFETY: inside the mapping (see `base_of`), which lives as long
        // as `self`; `PoolBuf` has one owner, who passed it here.
        unsafe { std::slice::from_raw_parts(self.ptr(buf), len) }
    }

    pub fn slice_mut(&mut self, buf: &PoolBuf, len: usize) -> &mut [u8] {
        let len = len.min(self.buf_size);
        // SAFETY: as for `slice`; `&mut self` keeps other slices of the
        // pool from being alive at the same time.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(buf), len) }
    }

    /// Two buffers at once (a compare of both).
    pub fn pair(&self, a: &PoolBuf, b: &PoolBuf, len: usize) -> (&[u8], &[u8]) {
        (self.slice(a, len), self.slice(b, len))
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length; nothing uses
        // it after the pool is dropped (the reactor drops its ring first).
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut _, self.buf_size * self.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_scales_with_ram_and_reactors() {
        const G: u64 = 1 << 30;
        // 24 GiB, 2 reactors, 1 MiB buffers: the share is 96 each, under
        // the floor (256 MiB pinned in all instead of 512).
        assert_eq!(default_buffers_for(24 * G, 2, 1 << 20), DEFAULT_MIN_BUFFERS);
        // 48 GiB, 2 reactors: the share, 192 each.
        assert_eq!(default_buffers_for(48 * G, 2, 1 << 20), 192);
        // 256 GiB, 64 reactors: the floor, 8 GiB in all instead of 16.
        assert_eq!(
            default_buffers_for(256 * G, 64, 1 << 20),
            DEFAULT_MIN_BUFFERS
        );
        // A big box with few reactors stops at the old default.
        assert_eq!(
            default_buffers_for(1024 * G, 2, 1 << 20),
            DEFAULT_MAX_BUFFERS
        );
        // Unknown RAM or a tiny machine: the floor.
        assert_eq!(default_buffers_for(0, 1, 1 << 20), DEFAULT_MIN_BUFFERS);
        // Nonsense inputs do not divide by zero.
        assert_eq!(default_buffers_for(G, 0, 0), DEFAULT_MAX_BUFFERS);
        let n = default_buffers(2, 1 << 20);
        assert!((DEFAULT_MIN_BUFFERS..=DEFAULT_MAX_BUFFERS).contains(&n));
    }

    #[test]
    fn alloc_release_and_alignment() {
        let mut p = BufPool::new(4, 5000).unwrap();
        assert_eq!(p.buf_size(), 8192);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.ptr(&a) as usize % 4096, 0);
        p.slice_mut(&a, 8192).fill(7);
        assert!(p.slice(&a, 8192).iter().all(|&x| x == 7));
        let c = p.alloc().unwrap();
        let d = p.alloc().unwrap();
        assert!(p.alloc().is_none());
        let bid = b.id();
        p.release(b);
        assert_eq!(p.alloc().map(|x| x.id()), Some(bid));
        for x in [a, c, d] {
            p.release(x);
        }
    }
}
