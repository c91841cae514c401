//! Per-reactor pool of fixed-size I/O buffers.
//!
//! The whole pool is one anonymous mapping made at start-up, split into
//! equal buffers and registered with the reactor's io_uring, so disk I/O
//! can use the fixed-buffer opcodes and nothing is allocated per I/O.
//! Buffers are page aligned, which also satisfies O_DIRECT.

use std::ptr::NonNull;

/// Index of a buffer in its pool (also its io_uring registered-buffer index).
pub type BufId = u16;

pub struct BufPool {
    base: NonNull<u8>,
    buf_size: usize,
    count: usize,
    free: Vec<BufId>,
    registered: bool,
}

// The pool is owned by one reactor thread; it is only moved into it.
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
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                iov_base: unsafe { self.base.as_ptr().add(i * self.buf_size) } as *mut _,
                iov_len: self.buf_size,
            })
            .collect()
    }

    pub fn set_registered(&mut self, r: bool) {
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

    pub fn alloc(&mut self) -> Option<BufId> {
        self.free.pop()
    }

    pub fn release(&mut self, id: BufId) {
        debug_assert!(!self.free.contains(&id), "double release of buffer {id}");
        self.free.push(id);
    }

    /// Start of buffer `id`. Valid for `buf_size()` bytes for the life of
    /// the pool.
    pub fn ptr(&self, id: BufId) -> *mut u8 {
        assert!((id as usize) < self.count);
        unsafe { self.base.as_ptr().add(id as usize * self.buf_size) }
    }

    /// Buffer `id` as a slice (the caller must not hold it across an I/O
    /// that writes into the buffer).
    pub fn slice(&self, id: BufId, len: usize) -> &[u8] {
        let len = len.min(self.buf_size);
        unsafe { std::slice::from_raw_parts(self.ptr(id), len) }
    }

    pub fn slice_mut(&mut self, id: BufId, len: usize) -> &mut [u8] {
        let len = len.min(self.buf_size);
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id), len) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut _, self.buf_size * self.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_and_alignment() {
        let mut p = BufPool::new(4, 5000).unwrap();
        assert_eq!(p.buf_size(), 8192);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.ptr(a) as usize % 4096, 0);
        p.slice_mut(a, 8192).fill(7);
        assert!(p.slice(a, 8192).iter().all(|&x| x == 7));
        p.alloc().unwrap();
        p.alloc().unwrap();
        assert!(p.alloc().is_none());
        p.release(b);
        assert_eq!(p.alloc(), Some(b));
    }
}
