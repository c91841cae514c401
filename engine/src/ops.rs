//! Typed I/O operations: the only way a connection reaches the ring.
//!
//! The engine is the only place that builds io_uring SQEs. A connection
//! asks for an operation by kind (receive into its own buffer, receive
//! straight into a pool buffer, send a batch of iovecs, a disk read or
//! write on a pool buffer, a flush, a timer, a cancel) and hears back with
//! its `tag` through [`Connection::complete`](crate::Connection::complete).
//!
//! [`IoOps`] is a trait so a connection's logic can run against a recording
//! stand-in in unit tests (no ring, no socket, no thread); the reactor's
//! [`Io`](crate::Io) is the real one.

use std::os::unix::io::RawFd;
use std::time::Duration;

use crate::backend::BlockBackend;
use crate::bufpool::{BufPool, PoolBuf};
use crate::stats::ReactorStats;

/// How an operation that may finish without the kernel went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// Submitted: the result comes back as a completion with the tag.
    Pending,
    /// Finished on the spot with this result (bytes, or a negative errno);
    /// no completion follows.
    Done(i32),
}

/// Memory a direct receive (`recv_pool`, `recv_mapped`) may also fill,
/// after its `len` bytes, with what follows them on the socket if that
/// has arrived already: the next PDU's header, so that a stream of large
/// Data-Out PDUs takes one receive each instead of two. The receive still
/// waits only for its `len` bytes; it never waits for the spill.
#[derive(Debug, Clone, Copy)]
pub struct Spill {
    ptr: *mut u8,
    len: u32,
}

impl Spill {
    /// # Safety
    /// `ptr..ptr+len` must stay valid, and must not be read or written by
    /// anyone else, until the completion of the receive it is given to.
    pub unsafe fn new(ptr: *mut u8, len: u32) -> Spill {
        Spill { ptr, len }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a connection may do on its reactor.
pub trait IoOps {
    /// The reactor's buffer pool (shared by all its connections).
    fn pool(&self) -> &BufPool;
    fn pool_mut(&mut self) -> &mut BufPool;
    /// The reactor's counters.
    fn stats(&self) -> &ReactorStats;
    /// Ask for [`Connection::buffers_available`](crate::Connection::buffers_available)
    /// once pool buffers are free again.
    fn wait_for_buffers(&mut self);

    /// Receive up to `len` bytes from socket `fd` into memory the
    /// connection owns.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid, and must not be read or written by
    /// anyone else, until the completion for `tag` arrives.
    unsafe fn recv(&mut self, fd: RawFd, buf: *mut u8, len: u32, tag: u32);

    /// Receive `len` bytes from `fd` into pool buffer `buf` at byte `off`,
    /// in one completion when it can (the reactor waits until they are
    /// all queued); a short completion is the caller's to re-post for the
    /// rest. A result above `len` counts bytes that went on into `spill`.
    /// Panics if the range does not fit the buffer. The caller keeps `buf`
    /// (and does not look at that range) until the completion arrives.
    fn recv_pool(
        &mut self,
        fd: RawFd,
        buf: &PoolBuf,
        off: u32,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    );

    /// Receive `len` bytes from `fd` straight into a LU's writable mapping
    /// (see [`BlockBackend::mapped_mut`]), in one completion when it can,
    /// as [`recv_pool`](Self::recv_pool) does, spill included. A receive
    /// past the end of a shrunk file completes with `-EFAULT` (or short,
    /// before it).
    ///
    /// # Safety
    /// `dst..dst+len` must come from `mapped_mut` of a backend that
    /// outlives the completion for `tag`.
    unsafe fn recv_mapped(
        &mut self,
        fd: RawFd,
        dst: *mut u8,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    );

    /// Send the bytes the iovecs describe on `fd`, with one `sendmsg`. At
    /// most one send per connection is in flight. The iovec array itself is
    /// copied; a short send is the caller's to resubmit.
    ///
    /// # Safety
    /// Every byte the iovecs point at must stay valid and unchanged until
    /// the completion for `tag` arrives.
    unsafe fn send(&mut self, fd: RawFd, iov: &[libc::iovec], tag: u32);

    /// Where `len` bytes at byte `offset` of `backend` can be sent from in
    /// place, without a read into a pool buffer (see
    /// [`BlockBackend::mapped`]); `None`: read them with
    /// [`disk_read`](Self::disk_read).
    fn disk_mapped(
        &mut self,
        backend: &dyn BlockBackend,
        offset: u64,
        len: u32,
    ) -> Option<*const u8> {
        backend.mapped(offset, len)
    }

    /// Where `len` bytes at byte `offset` of `backend` can be received in
    /// place, with no pool buffer and no disk write (see
    /// [`BlockBackend::mapped_mut`]); `None`: receive into a buffer and
    /// [`disk_write`](Self::disk_write) it.
    fn disk_mapped_mut(
        &mut self,
        backend: &dyn BlockBackend,
        offset: u64,
        len: u32,
    ) -> Option<*mut u8> {
        backend.mapped_mut(offset, len)
    }

    /// Write `data` at byte `offset` of `backend` now, with a copy on this
    /// thread: the pieces of a write received in place that arrived in
    /// the staging buffer with a header (only for a backend that has a
    /// [`disk_mapped_mut`](Self::disk_mapped_mut) mapping, whose data
    /// lives in memory, so this never waits for a device).
    fn disk_write_now(
        &mut self,
        backend: &dyn BlockBackend,
        data: &[u8],
        offset: u64,
    ) -> std::io::Result<()> {
        backend.write_at(data, offset, false)
    }

    /// Read `len` bytes at byte `offset` of `backend` into pool buffer `buf`.
    fn disk_read(
        &mut self,
        backend: &dyn BlockBackend,
        buf: &PoolBuf,
        len: u32,
        offset: u64,
        tag: u32,
    ) -> Issued;

    /// Write the first `len` bytes of pool buffer `buf` to byte `offset` of
    /// `backend`; with `fua`, durably.
    fn disk_write(
        &mut self,
        backend: &dyn BlockBackend,
        buf: &PoolBuf,
        len: u32,
        offset: u64,
        fua: bool,
        tag: u32,
    ) -> Issued;

    /// Make earlier writes to `backend` durable.
    fn disk_flush(&mut self, backend: &dyn BlockBackend, tag: u32) -> Issued;

    /// Complete with `-ETIME` after `after` (or `-ECANCELED`, see
    /// [`cancel_timeout`](Self::cancel_timeout)).
    fn timeout(&mut self, after: Duration, tag: u32);

    /// Cancel the timer armed with `timer_tag`; the cancel itself completes
    /// with `tag`.
    fn cancel_timeout(&mut self, timer_tag: u32, tag: u32);
}
