//! Thread-per-core reactors.
//!
//! Each reactor is a thread pinned to one core. It owns an io_uring, a
//! registered [`BufPool`] and the connections the acceptor handed it; no
//! lock is taken on the I/O path. Every SQE a connection submits carries
//! `slot << 32 | tag` in its user data, and the completion is handed back to
//! that connection's [`Connection::complete`] with the tag: the connection
//! owns the meaning of its completions (TigerBeetle style), the reactor only
//! routes them. A connection is dropped only once it says it is finished
//! *and* none of its SQEs are still in flight, so no completion can reach a
//! freed connection or a reused buffer.

use crossbeam::channel::{unbounded, Receiver, Sender};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::{BlockBackend, IoBuf, Prep};
use crate::bufpool::{BufPool, PoolBuf};
use crate::config::{PollMode, ZeroCopySend};
use crate::ops::{IoOps, Issued, Spill};
use crate::stats::{ReactorStats, Stats};

/// Engine sizing and behaviour.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// One reactor per listed core.
    pub cores: Vec<usize>,
    pub poll: PollMode,
    /// Adaptive mode: how long to spin after the last completion.
    pub spin: Duration,
    /// Buffers per reactor.
    pub buffers: usize,
    /// Bytes per buffer.
    pub buffer_size: usize,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// `Some(idle_ms)`: a kernel thread polls each ring's submission queue
    /// (IORING_SETUP_SQPOLL), sleeping after this long without work. It
    /// spins a core of its own per reactor: for machines with cores to
    /// spare.
    pub sqpoll: Option<u32>,
    /// Zero-copy sends (see [`ZeroCopySend`]).
    pub zero_copy_send: ZeroCopySend,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cores: vec![0],
            poll: PollMode::Adaptive,
            spin: Duration::from_micros(50),
            buffers: 128,
            buffer_size: 1 << 20,
            ring_entries: 1024,
            sqpoll: None,
            zero_copy_send: ZeroCopySend::Auto,
        }
    }
}

/// A connection living on one reactor.
pub trait Connection: 'static {
    /// Called once on the reactor, before any completion.
    fn start(&mut self, io: &mut Io<'_>);
    /// A completion for an SQE this connection pushed with `tag`.
    fn complete(&mut self, io: &mut Io<'_>, tag: u32, res: i32);
    /// True once the connection is closed and wants to be dropped. The
    /// reactor waits for its in-flight SQEs before dropping it.
    fn finished(&self) -> bool;
    /// The engine is stopping: close as soon as possible.
    fn shutdown(&mut self, io: &mut Io<'_>) {
        let _ = io;
    }
    /// Pool buffers were returned after this connection called
    /// [`Io::wait_for_buffers`].
    fn buffers_available(&mut self, io: &mut Io<'_>) {
        let _ = io;
    }
}

/// Makes connections for accepted sockets.
pub trait Service: Send + Sync + 'static {
    type Conn: Connection;
    fn connect(&self, stream: TcpStream, peer: SocketAddr, reactor: usize) -> Self::Conn;
}

/// What a connection may use while handling a completion: typed
/// operations on the reactor's ring (see [`IoOps`]), its buffer pool and
/// its counters.
pub struct Io<'a> {
    ring: &'a mut IoUring,
    pool: &'a mut BufPool,
    buf_waiters: &'a mut VecDeque<u32>,
    stats: &'a ReactorStats,
    reactor: usize,
    slot: u32,
    inflight: &'a mut u32,
    own: &'a mut SlotOwned,
    /// Zero-copy sends ask the kernel to report copies.
    zc_report: bool,
}

/// Operation kinds the engine itself must know about at completion time,
/// kept in the top byte of the user data (`kind << 56 | slot << 32 | tag`).
const KIND_PLAIN: u64 = 0;
const KIND_SEND: u64 = 1;
const KIND_TIMEOUT: u64 = 2;
/// A zero-copy send: a result CQE flagged MORE, then a notification CQE
/// once the kernel no longer reads the buffers.
const KIND_SEND_ZC: u64 = 3;
/// Smallest send worth zero-copy: below it, pinning pages and the extra
/// notification cost more than the copy saves.
const ZC_MIN: usize = 32 * 1024;
/// IORING_SEND_ZC_REPORT_USAGE and IORING_NOTIF_USAGE_ZC_COPIED (the
/// io-uring crate keeps its `sys` constants private).
const ZC_REPORT_USAGE: u16 = 1 << 3;
const ZC_COPIED: u32 = 1 << 31;
/// IORING_RECVSEND_POLL_FIRST: arm the poll before trying the receive.
const RECVSEND_POLL_FIRST: u16 = 1;
/// Direct receives this large wait for all their bytes behind a raised
/// SO_RCVLOWAT (see `Io::recv_pool`).
const LOWAT_MIN: u32 = 16 * 1024;
/// Connection slots are 24 bits of the user data.
const MAX_SLOTS: usize = 1 << 24;

fn user_data(kind: u64, slot: u32, tag: u32) -> u64 {
    (kind << 56) | ((slot as u64) << 32) | tag as u64
}

/// Memory the kernel reads after submission that belongs to one
/// connection slot. Boxed, so it never moves while an SQE points at it.
struct SlotOwned {
    msg: libc::msghdr,
    iov: Vec<libc::iovec>,
    send_busy: bool,
    timers: Vec<(u32, Box<types::Timespec>)>,
    /// Large sends of this connection go out zero-copy.
    zc: bool,
    /// The result of the zero-copy send whose notification is awaited:
    /// the connection hears it only with the notification, when its
    /// buffers are free again.
    zc_res: i32,
    /// The socket's SO_RCVLOWAT as last set (1, the kernel default, until
    /// a large direct receive raises it).
    lowat: u32,
    /// The msghdr and iovecs of a direct receive with a spill (one
    /// receive per connection is in flight at a time).
    rmsg: libc::msghdr,
    riov: [libc::iovec; 2],
}

impl SlotOwned {
    fn new() -> Box<SlotOwned> {
        Box::new(SlotOwned {
            // SAFETY: msghdr is plain data; all zeros is a valid empty one.
            msg: unsafe { std::mem::zeroed() },
            iov: Vec::new(),
            send_busy: false,
            timers: Vec::new(),
            zc: false,
            zc_res: 0,
            lowat: 1,
            // SAFETY: as `msg`.
            rmsg: unsafe { std::mem::zeroed() },
            riov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
        })
    }
}

impl Io<'_> {
    /// Queue an SQE; its completion comes back with `tag`.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid until the
    /// completion arrives.
    unsafe fn push(&mut self, entry: squeue::Entry, kind: u64, tag: u32) {
        let e = entry.user_data(user_data(kind, self.slot, tag));
        loop {
            // SAFETY: the ring copies the entry, so only the memory it
            // points at must outlive this call; this fn's `# Safety`
            // section makes each caller keep that valid until the
            // completion, and each call site says why it does.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                break;
            }
            // Queue full: hand what we have to the kernel and retry.
            if let Err(err) = self.ring.submit() {
                tracing::warn!("io_uring submit failed: {err}");
            }
        }
        *self.inflight += 1;
    }

    /// The reactor this connection lives on.
    pub fn reactor(&self) -> usize {
        self.reactor
    }

    /// Receive `len` bytes into `dst`, in one completion when it can.
    ///
    /// A large receive waits for all of its bytes in one piece: the
    /// socket's low-water mark is raised to `len` and the ring polls
    /// before it reads, so the kernel wakes this reactor once, when the
    /// whole segment is queued, instead of once per arriving segment
    /// (each wake-up is an IPI paid by the sender). On loopback this cut
    /// the initiator's CPU per GB of 128 KiB writes by 7 %
    /// (perf/README.md). Not with MSG_WAITALL: after a short read the ring
    /// would wait for `len` bytes again, more than can still come, and
    /// hang; a short completion is re-posted by the caller for the rest,
    /// with the mark lowered to match.
    ///
    /// With a `spill`, the same receive (a `recvmsg` with a second iovec)
    /// also takes what already follows the `len` bytes, up to the spill's
    /// size: the next PDU's header. The mark stays at `len`, so it never
    /// waits for those bytes, and a stream of equal Data-Out segments
    /// needs neither a second receive nor a `setsockopt` per PDU. (A small
    /// receive waits with MSG_WAITALL, which would wait for the spill
    /// too, so it takes none.)
    ///
    /// # Safety
    /// `dst..dst+len` stays valid, and untouched by user space, until the
    /// completion for `tag` arrives.
    unsafe fn recv_whole(
        &mut self,
        fd: RawFd,
        dst: *mut u8,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    ) {
        let e = if len >= LOWAT_MIN && self.set_lowat(fd, len) {
            match spill.filter(|s| !s.is_empty()) {
                Some(sp) => {
                    let own = &mut *self.own;
                    own.riov = [
                        libc::iovec {
                            iov_base: dst.cast(),
                            iov_len: len as usize,
                        },
                        libc::iovec {
                            iov_base: sp.ptr().cast(),
                            iov_len: sp.len() as usize,
                        },
                    ];
                    // SAFETY: plain data, all zeros is an empty msghdr.
                    own.rmsg = unsafe { std::mem::zeroed() };
                    own.rmsg.msg_iov = own.riov.as_mut_ptr();
                    own.rmsg.msg_iovlen = 2;
                    opcode::RecvMsg::new(types::Fd(fd), &mut own.rmsg as *mut _)
                        .ioprio(RECVSEND_POLL_FIRST)
                        .build()
                }
                None => opcode::Recv::new(types::Fd(fd), dst, len)
                    .ioprio(RECVSEND_POLL_FIRST)
                    .build(),
            }
        } else {
            opcode::Recv::new(types::Fd(fd), dst, len)
                .flags(libc::MSG_WAITALL)
                .build()
        };
        // SAFETY: the entry points at `dst..dst+len`, which our caller
        // keeps valid until the completion, and maybe at the slot's boxed
        // msghdr and iovecs (untouched until then: one receive per slot
        // is in flight) and the spill, whose constructor's contract keeps
        // it valid until then too.
        unsafe { self.push(e, KIND_PLAIN, tag) };
    }

    /// Set `fd`'s SO_RCVLOWAT to `n` unless it already is; false if the
    /// kernel refused (the receive then falls back to MSG_WAITALL).
    fn set_lowat(&mut self, fd: RawFd, n: u32) -> bool {
        if self.own.lowat == n {
            return true;
        }
        // A plain syscall: the ring's SETSOCKOPT command needs 6.7 and a
        // link to the receive, and this costs well under a microsecond
        // next to the tens a large data segment takes. (rustix 0.38 and
        // socket2 have no SO_RCVLOWAT setter.)
        let v = n.min(i32::MAX as u32) as libc::c_int;
        // SAFETY: `v` is a valid c_int for the duration of the call, and
        // its size is passed; `fd` is the connection's open socket.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            self.own.lowat = n;
            true
        } else {
            false
        }
    }

    /// An `IoBuf` for `len` bytes of pool buffer `buf` from byte `off`.
    fn io_buf(&self, buf: &PoolBuf, off: u32, len: u32) -> IoBuf {
        assert!(
            off as usize + len as usize <= self.pool.buf_size(),
            "I/O of {len} bytes at {off} does not fit a {} byte buffer",
            self.pool.buf_size()
        );
        let index = self.pool.registered().then_some(buf.id());
        // SAFETY: in range of one buffer of this reactor's pool, which
        // outlives the ring; the caller holds the `PoolBuf` for the op.
        unsafe { IoBuf::new(self.pool.ptr(buf).add(off as usize), len, index) }
    }

    fn disk(&mut self, prep: Prep, tag: u32) -> Issued {
        match prep {
            Prep::Submit(e) => {
                // SAFETY: the entry was built from an `IoBuf` of the pool
                // (valid as long as the reactor) and a backend file the
                // LUN table keeps open for the engine's life.
                unsafe { self.push(e, KIND_PLAIN, tag) };
                Issued::Pending
            }
            Prep::Done(res) => Issued::Done(res),
        }
    }
}

impl IoOps for Io<'_> {
    fn pool(&self) -> &BufPool {
        self.pool
    }

    fn pool_mut(&mut self) -> &mut BufPool {
        self.pool
    }

    fn stats(&self) -> &ReactorStats {
        self.stats
    }

    /// Buffers are shared by every connection of the reactor, so a
    /// connection waiting for one must hear when another gives one back.
    fn wait_for_buffers(&mut self) {
        if !self.buf_waiters.contains(&self.slot) {
            self.buf_waiters.push_back(self.slot);
        }
    }

    unsafe fn recv(&mut self, fd: RawFd, buf: *mut u8, len: u32, tag: u32) {
        // A staging receive takes whatever has arrived, however little.
        self.set_lowat(fd, 1);
        let e = opcode::Recv::new(types::Fd(fd), buf, len).build();
        // SAFETY: `buf..buf+len` is the only memory the entry points at,
        // and `IoOps::recv`'s contract makes our caller keep it valid and
        // untouched until the completion, which is what `push` needs.
        unsafe { self.push(e, KIND_PLAIN, tag) };
    }

    fn recv_pool(
        &mut self,
        fd: RawFd,
        buf: &PoolBuf,
        off: u32,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    ) {
        let b = self.io_buf(buf, off, len);
        // SAFETY: `b` lies inside one buffer of this reactor's pool
        // (`io_buf` checked); the pool is dropped after the ring (field
        // order of `Parts`), and the caller holds the `PoolBuf`, so the
        // buffer is not handed out again before the completion.
        unsafe { self.recv_whole(fd, b.ptr(), len, spill, tag) };
    }

    unsafe fn recv_mapped(
        &mut self,
        fd: RawFd,
        dst: *mut u8,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    ) {
        // SAFETY: the caller's contract (`IoOps::recv_mapped`).
        unsafe { self.recv_whole(fd, dst, len, spill, tag) };
    }

    unsafe fn send(&mut self, fd: RawFd, iov: &[libc::iovec], tag: u32) {
        debug_assert!(!self.own.send_busy, "a second send while one is in flight");
        let own = &mut *self.own;
        own.iov.clear();
        own.iov.extend_from_slice(iov);
        // SAFETY: plain data, all zeros is an empty msghdr.
        own.msg = unsafe { std::mem::zeroed() };
        own.msg.msg_iov = own.iov.as_mut_ptr();
        own.msg.msg_iovlen = own.iov.len();
        own.send_busy = true;
        let zc = own.zc && iov.iter().map(|v| v.iov_len).sum::<usize>() >= ZC_MIN;
        let (e, kind) = if zc {
            self.stats.zc_sends.fetch_add(1, Ordering::Relaxed);
            let e = opcode::SendMsgZc::new(types::Fd(fd), &own.msg as *const _)
                .ioprio(if self.zc_report { ZC_REPORT_USAGE } else { 0 })
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            (e, KIND_SEND_ZC)
        } else {
            let e = opcode::SendMsg::new(types::Fd(fd), &own.msg as *const _)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            (e, KIND_SEND)
        };
        // SAFETY: the msghdr and iovec array live in the slot's boxed
        // state, untouched until the completion clears `send_busy` (for a
        // zero-copy send, the notification); the bytes they point at are
        // the caller's contract, and the caller hears of a zero-copy send
        // only once the kernel has let go of them.
        unsafe { self.push(e, kind, tag) };
    }

    fn disk_read(
        &mut self,
        backend: &dyn BlockBackend,
        buf: &PoolBuf,
        len: u32,
        offset: u64,
        tag: u32,
    ) -> Issued {
        let b = self.io_buf(buf, 0, len);
        self.disk(backend.prep_read(b, offset), tag)
    }

    fn disk_write(
        &mut self,
        backend: &dyn BlockBackend,
        buf: &PoolBuf,
        len: u32,
        offset: u64,
        fua: bool,
        tag: u32,
    ) -> Issued {
        let b = self.io_buf(buf, 0, len);
        self.disk(backend.prep_write(b, offset, fua), tag)
    }

    fn disk_flush(&mut self, backend: &dyn BlockBackend, tag: u32) -> Issued {
        self.disk(backend.prep_flush(), tag)
    }

    fn timeout(&mut self, after: Duration, tag: u32) {
        let ts = Box::new(
            types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos()),
        );
        let e = opcode::Timeout::new(&*ts as *const _).build();
        self.own.timers.push((tag, ts));
        // SAFETY: the timespec is boxed in the slot until the timeout's
        // completion removes it.
        unsafe { self.push(e, KIND_TIMEOUT, tag) };
    }

    fn cancel_timeout(&mut self, timer_tag: u32, tag: u32) {
        let target = user_data(KIND_TIMEOUT, self.slot, timer_tag);
        // SAFETY: an AsyncCancel entry carries only the user_data of the
        // request to cancel, no pointer, so there is no memory to keep.
        unsafe { self.push(opcode::AsyncCancel::new(target).build(), KIND_PLAIN, tag) };
    }
}

fn io<'a>(
    p: &'a mut Parts,
    stats: &'a ReactorStats,
    reactor: usize,
    slot: u32,
    inflight: &'a mut u32,
    own: &'a mut SlotOwned,
) -> Io<'a> {
    Io {
        ring: &mut p.ring,
        pool: &mut p.pool,
        buf_waiters: &mut p.buf_waiters,
        stats,
        reactor,
        slot,
        inflight,
        own,
        zc_report: p.zc_report,
    }
}

/// The parts of a reactor that connections reach through [`Io`].
struct Parts {
    ring: IoUring,
    pool: BufPool,
    buf_waiters: VecDeque<u32>,
    /// The kernel reports whether a zero-copy send was copied after all
    /// (IORING_SEND_ZC_REPORT_USAGE, Linux 6.2).
    zc_report: bool,
}

const WAKE: u64 = u64::MAX;

/// Running reactors and the acceptor.
pub struct Engine {
    stop: Arc<AtomicBool>,
    wakers: Vec<RawFd>,
    reactors: Vec<JoinHandle<()>>,
    pub stats: Stats,
    pub local_addr: SocketAddr,
}

impl Engine {
    /// Start one reactor per core and an acceptor on `listener`.
    pub fn start<S: Service>(
        cfg: EngineConfig,
        listener: TcpListener,
        service: Arc<S>,
    ) -> std::io::Result<Engine> {
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Stats::new(cfg.cores.len());
        let mut senders: Vec<Sender<(TcpStream, SocketAddr)>> = Vec::new();
        let mut wakers = Vec::new();
        let mut reactors = Vec::new();
        let (ready_tx, ready_rx) = unbounded::<Result<(), String>>();
        for (id, &core) in cfg.cores.iter().enumerate() {
            let (tx, rx) = unbounded();
            // SAFETY: eventfd(2) takes no pointers and touches no memory of
            // ours; failure is the -1 checked below.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            senders.push(tx);
            wakers.push(efd);
            let (svc, stop, stats, cfg, ready) = (
                service.clone(),
                stop.clone(),
                stats.clone(),
                cfg.clone(),
                ready_tx.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    let r = Reactor::new(id, core, &cfg, efd, rx, stats, stop);
                    match r {
                        Ok(mut r) => {
                            let _ = ready.send(Ok(()));
                            r.run(&*svc);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })?;
            reactors.push(h);
        }
        for _ in 0..cfg.cores.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Err(std::io::Error::other("reactor died during start-up")),
            }
        }
        let acc_stats = stats.clone();
        let acc_wakers = wakers.clone();
        let acc_stop = stop.clone();
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || accept_loop(listener, senders, acc_wakers, acc_stats, acc_stop))?;
        Ok(Engine {
            stop,
            wakers,
            reactors,
            stats,
            local_addr,
        })
    }

    /// Ask every reactor to close its connections and stop, then wait.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        for &w in &self.wakers {
            wake(w);
        }
        for h in self.reactors {
            let _ = h.join();
        }
        // Unblock the acceptor so it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(200));
    }
}

/// Does the kernel take IORING_SEND_ZC_REPORT_USAGE (Linux 6.2)? A
/// zero-copy send on fd -1 with the flag fails in preparation with EINVAL
/// when the flag is unknown, and later with EBADF when it is known.
fn probe_zc_report_usage(ring: &mut IoUring) -> bool {
    // SAFETY: plain data; all zeros is an empty msghdr.
    let msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    let e = opcode::SendMsgZc::new(types::Fd(-1), &*msg as *const _)
        .ioprio(ZC_REPORT_USAGE)
        .build()
        .user_data(WAKE - 1);
    // SAFETY: `msg` outlives the wait below for every CQE of this entry.
    if unsafe { ring.submission().push(&e) }.is_err() {
        return false;
    }
    let mut known = false;
    // At most two CQEs (a result flagged MORE, then a notification).
    for _ in 0..2 {
        if ring.submit_and_wait(1).is_err() {
            break;
        }
        let Some(cqe) = ring.completion().next() else {
            break;
        };
        if !io_uring::cqueue::notif(cqe.flags()) {
            known = cqe.result() != -libc::EINVAL;
        }
        if !io_uring::cqueue::more(cqe.flags()) {
            break;
        }
    }
    drop(msg);
    known
}

fn wake(efd: RawFd) {
    let one: u64 = 1;
    // SAFETY: write(2) reads exactly 8 bytes from `one`, a u64 that lives
    // across the call (8 is the size an eventfd requires); the kernel only
    // reads our memory, so even a stale descriptor cannot corrupt it.
    unsafe {
        libc::write(efd, &one as *const u64 as *const _, 8);
    }
}

fn accept_loop(
    listener: TcpListener,
    senders: Vec<Sender<(TcpStream, SocketAddr)>>,
    wakers: Vec<RawFd>,
    stats: Stats,
    stop: Arc<AtomicBool>,
) {
    let mut placer = Placer::new(senders.len());
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!("accept failed: {e}");
                // EMFILE and friends: back off briefly instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream);
        let n = placer.pick(&stats, Instant::now());
        stats.reactors[n]
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        stats.reactors[n]
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!("accepted connection from {peer} on reactor {n}");
        if senders[n].send((stream, peer)).is_err() {
            return;
        }
        wake(wakers[n]);
    }
}

/// Where the acceptor puts a new connection: on the least-loaded reactor.
/// Load is the commands a reactor completed since the acceptor last looked
/// (in eighths of the busiest reactor's, so small differences do not
/// count), then its open connections: a reactor with one busy session is
/// more loaded than one with two idle ones, and a burst of logins (no time
/// to measure anything) is spread by connection count.
struct Placer {
    ops_then: Vec<u64>,
    load: Vec<u64>,
    sampled: Option<Instant>,
}

impl Placer {
    /// Shorter gaps between accepts keep the last measurement.
    const MIN_SAMPLE: Duration = Duration::from_millis(50);

    fn new(n: usize) -> Placer {
        Placer {
            ops_then: vec![0; n],
            load: vec![0; n],
            sampled: None,
        }
    }

    fn pick(&mut self, stats: &Stats, now: Instant) -> usize {
        let n = self.load.len();
        let ops = |i: usize| {
            let r = &stats.reactors[i];
            r.read_ops.load(Ordering::Relaxed) + r.write_ops.load(Ordering::Relaxed)
        };
        if self
            .sampled
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::MIN_SAMPLE)
        {
            for i in 0..n {
                let o = ops(i);
                self.load[i] = o.saturating_sub(self.ops_then[i]);
                self.ops_then[i] = o;
            }
            self.sampled = Some(now);
        }
        let busiest = self.load.iter().copied().max().unwrap_or(0);
        (0..n)
            .min_by_key(|&i| {
                (
                    self.load[i] * 8 / (busiest + 1),
                    stats.reactors[i].connections_open.load(Ordering::Relaxed),
                )
            })
            .unwrap_or(0)
    }
}

fn set_keepalive(s: &TcpStream) {
    let fd = s.as_raw_fd();
    let on: libc::c_int = 1;
    let idle: libc::c_int = 30;
    let intvl: libc::c_int = 10;
    let cnt: libc::c_int = 6;
    // SAFETY: each option value is a live c_int of the size passed, on
    // the socket `s` owns.
    unsafe {
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const _ as *const _,
            sz,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            &idle as *const _ as *const _,
            sz,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            &intvl as *const _ as *const _,
            sz,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            &cnt as *const _ as *const _,
            sz,
        );
    }
}

/// Adaptive polling, learned per reactor.
///
/// Spinning on the completion queue saves the sleep/wake round trip only
/// when a completion arrives while we spin; otherwise it burns a core that,
/// on a small machine, the initiator or the other reactors needed. So the
/// spinner spins only within a *window* after the last completion, and
/// learns the window: a spin that finds a completion doubles it, a spin
/// that runs out empty halves it, and a sleep that was woken sooner than
/// the window's ceiling (a spin would have caught it) grows it back.
///
/// Finding completions is not proof that spinning pays: a spinning
/// reactor reaps completions one at a time where a sleeping one wakes to
/// a batch, and on a small machine it takes the core the initiator needed.
/// So the reactor also runs short *epochs* and compares: SCSI reads and
/// writes finished per second, and thread CPU per command, with spinning
/// allowed against without. Spinning is taken up only when it moves at
/// least 25 % more (twice in a row) for at most 10 % more CPU per
/// command, and kept only while it still does; the other choice is
/// re-tried every [`PROBE_EVERY`]th epoch, so a change of workload is
/// noticed. Commands, not completions: a spinning reactor that catches a
/// large Data-Out in more, smaller receives reaps more completions for
/// the same work, and looked faster to a count of completions.
///
/// The epochs are the only budget. An earlier design also paid for each
/// spin from a credit of a tenth of the reactor's useful CPU time; at
/// queue depth 1 the next command comes some 20 µs after the last reply,
/// twice the work of the reply itself, so no spin was ever paid for and
/// the reactor slept and woke for every command: 12-13k IOPS of 4 KiB
/// reads where spinning moves 29-30k, at less CPU per command.
struct Spinner {
    /// Upper bound of the window (`--poll-spin-us`).
    max_ns: u64,
    /// Current learned window.
    window_ns: u64,
    last_found: Instant,
    /// Set while consecutive spin polls find nothing.
    empty_streak: bool,
    /// Spinning allowed in this epoch.
    spin_on: bool,
    /// What the last comparison chose.
    prefer_spin: bool,
    epoch_start: Instant,
    epoch_cpu: Duration,
    epoch_done: u64,
    epochs: u64,
    /// Last measured epoch of each kind: (commands per second, CPU
    /// nanoseconds per command).
    with_spin: Option<(f64, f64)>,
    without_spin: Option<(f64, f64)>,
    /// Consecutive spinning epochs that beat the last non-spinning one.
    spin_wins: u32,
}

const EPOCH: Duration = Duration::from_millis(20);
/// One epoch in this many tries the choice not taken.
const PROBE_EVERY: u64 = 16;
/// Spinning must move this much more than sleeping. A lower bar (5 %)
/// was cleared by noise: after a depth-1 workload, 128 KiB writes kept
/// spinning against a stale measure and then on one lucky epoch.
const SPIN_GAIN: f64 = 1.25;
/// Epochs with fewer commands say nothing about throughput.
const EPOCH_MIN_DONE: u64 = 64;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a
    // live local.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Below this a window is not worth a spin.
const SPIN_MIN_NS: u64 = 1_000;

impl Spinner {
    fn new(max: Duration, now: Instant) -> Spinner {
        let max_ns = max.as_nanos().min(u64::MAX as u128) as u64;
        Spinner {
            max_ns,
            window_ns: max_ns,
            last_found: now,
            empty_streak: false,
            spin_on: false,
            prefer_spin: false,
            epoch_start: now,
            epoch_cpu: thread_cpu(),
            epoch_done: 0,
            epochs: 0,
            with_spin: None,
            without_spin: None,
            spin_wins: 0,
        }
    }

    /// End of a loop turn that finished `done` commands.
    fn tick(&mut self, now: Instant, done: u64) {
        self.epoch_done += done;
        if now.saturating_duration_since(self.epoch_start) >= EPOCH {
            self.end_epoch(now, thread_cpu());
        }
    }

    fn end_epoch(&mut self, now: Instant, cpu: Duration) {
        let wall = now
            .saturating_duration_since(self.epoch_start)
            .as_secs_f64();
        if self.epoch_done >= EPOCH_MIN_DONE && wall > 0.0 {
            let used = cpu.saturating_sub(self.epoch_cpu).as_nanos() as f64;
            let m = (self.epoch_done as f64 / wall, used / self.epoch_done as f64);
            if self.spin_on {
                self.with_spin = Some(m);
            } else {
                self.without_spin = Some(m);
            }
            if let (Some(sp), Some(sl)) = (self.with_spin, self.without_spin) {
                // One 20 ms epoch is noisy on a shared machine (±10 % from
                // one to the next): spinning must win two comparisons in a
                // row, by a margin noise does not give, to be taken up,
                // and is dropped at its first loss. Where it pays, at
                // queue depth 1, it moves twice as much.
                if sp.0 >= sl.0 * SPIN_GAIN && sp.1 <= sl.1 * 1.10 {
                    if self.spin_on {
                        self.spin_wins = self.spin_wins.saturating_add(1);
                    }
                } else {
                    self.spin_wins = 0;
                }
                let prefer = self.spin_wins >= 2;
                if prefer != self.prefer_spin {
                    tracing::debug!(
                        "adaptive polling: {} (spinning {:.0} commands/s at {:.1} us CPU each, sleeping {:.0} at {:.1} us)",
                        if prefer { "spinning" } else { "sleeping" },
                        sp.0,
                        sp.1 / 1e3,
                        sl.0,
                        sl.1 / 1e3
                    );
                }
                self.prefer_spin = prefer;
            }
        }
        self.epochs += 1;
        self.spin_on = if self.epochs.is_multiple_of(PROBE_EVERY) {
            !self.prefer_spin
        } else {
            self.prefer_spin
        };
        self.epoch_start = now;
        self.epoch_cpu = cpu;
        self.epoch_done = 0;
    }

    /// Whether to poll without sleeping now.
    fn should_spin(&mut self, now: Instant) -> bool {
        if !self.spin_on || self.window_ns < SPIN_MIN_NS {
            return false;
        }
        let since = now.saturating_duration_since(self.last_found).as_nanos() as u64;
        if since < self.window_ns {
            return true;
        }
        if self.empty_streak {
            // The window ran out with nothing found: it was too long.
            self.window_ns /= 2;
            self.empty_streak = false;
        }
        false
    }

    /// End of a turn that polled without sleeping (`spun`) or slept, and
    /// `found` completions or not.
    fn turned(&mut self, spun: bool, found: bool, now: Instant) {
        if found {
            if spun && self.empty_streak {
                // Spinning paid: a completion came while we waited on it.
                self.window_ns = (self.window_ns * 2).clamp(SPIN_MIN_NS, self.max_ns);
                self.empty_streak = false;
            }
            self.last_found = now;
        } else if spun {
            self.empty_streak = true;
        }
    }

    /// We slept `slept` in the kernel before a completion came.
    fn slept(&mut self, slept: Duration) {
        let s = slept.as_nanos() as u64;
        if s < self.max_ns {
            // A spin this long would have caught it.
            self.window_ns = self.window_ns.max(s.next_power_of_two().min(self.max_ns));
        }
    }
}

struct Slot<C> {
    conn: Option<Box<C>>,
    inflight: u32,
    own: Box<SlotOwned>,
}

struct Reactor {
    id: usize,
    parts: Parts,
    wake_fd: RawFd,
    wake_buf: Box<u64>,
    incoming: Receiver<(TcpStream, SocketAddr)>,
    stats: Stats,
    stop: Arc<AtomicBool>,
    poll: PollMode,
    spin: Duration,
    zero_copy_send: ZeroCopySend,
    /// The kernel has IORING_OP_SENDMSG_ZC.
    zc_supported: bool,
    /// The ring runs completion work only when asked for events: a spin
    /// must ask too (IORING_ENTER_GETEVENTS), or it would never see one.
    defer_taskrun: bool,
}

impl Reactor {
    fn new(
        id: usize,
        core: usize,
        cfg: &EngineConfig,
        wake_fd: RawFd,
        incoming: Receiver<(TcpStream, SocketAddr)>,
        stats: Stats,
        stop: Arc<AtomicBool>,
    ) -> Result<Reactor, String> {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!("reactor {id}: could not pin to core {core}");
        }
        stats.reactors[id]
            .core
            .store(core as u64, Ordering::Relaxed);
        // Only this thread submits (SINGLE_ISSUER). Completion work is
        // run when this thread asks for events (DEFER_TASKRUN, kernel 6.1
        // and later), in one batch per loop turn instead of interrupting
        // it; older kernels get COOP_TASKRUN, then a plain ring.
        let mut defer_taskrun = false;
        let ring = match cfg.sqpoll {
            Some(idle) => IoUring::builder()
                .setup_sqpoll(idle)
                .setup_single_issuer()
                .build(cfg.ring_entries)
                .map_err(|e| format!("io_uring with --sqpoll failed: {e} (leave --sqpoll off)"))?,
            None => match IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(cfg.ring_entries)
            {
                Ok(r) => {
                    defer_taskrun = true;
                    r
                }
                Err(_) => IoUring::builder()
                    .setup_single_issuer()
                    .setup_coop_taskrun()
                    .build(cfg.ring_entries)
                    .or_else(|_| IoUring::new(cfg.ring_entries))
                    .map_err(|e| format!("io_uring setup failed: {e} (is io_uring disabled? see sysctl kernel.io_uring_disabled)"))?,
            },
        };
        let mut pool = BufPool::new(cfg.buffers, cfg.buffer_size).map_err(|e| {
            format!(
                "cannot map {} buffers of {} bytes: {e}",
                cfg.buffers, cfg.buffer_size
            )
        })?;
        let iovecs = pool.iovecs();
        // SAFETY: the pool outlives the ring's use of it (both owned here,
        // the ring is dropped first).
        match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => pool.set_registered(true),
            Err(e) => tracing::warn!(
                "reactor {id}: cannot register I/O buffers ({e}); using plain reads/writes (raise RLIMIT_MEMLOCK)"
            ),
        }
        tracing::debug!(
            "reactor {id} on core {core}: {} buffers of {} bytes",
            pool.count(),
            pool.buf_size()
        );
        let zc_supported = {
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe).is_ok()
                && probe.is_supported(opcode::SendMsgZc::CODE)
        };
        let mut ring = ring;
        let zc_report = zc_supported && probe_zc_report_usage(&mut ring);
        if !zc_supported && cfg.zero_copy_send != ZeroCopySend::Off && id == 0 {
            let level_on = cfg.zero_copy_send == ZeroCopySend::On;
            let msg = "this kernel has no zero-copy sendmsg (IORING_OP_SENDMSG_ZC, Linux 6.1): sending with plain sendmsg";
            if level_on {
                tracing::warn!("--zero-copy-send on: {msg}");
            } else {
                tracing::debug!("{msg}");
            }
        }
        Ok(Reactor {
            id,
            parts: Parts {
                ring,
                pool,
                buf_waiters: VecDeque::new(),
                zc_report,
            },
            wake_fd,
            wake_buf: Box::new(0),
            incoming,
            stats,
            stop,
            poll: cfg.poll,
            spin: cfg.spin,
            zero_copy_send: cfg.zero_copy_send,
            zc_supported,
            defer_taskrun,
        })
    }

    /// Submit what is queued and, on a DEFER_TASKRUN ring, run the
    /// completion work that is due, without waiting.
    fn submit_and_reap(&mut self) -> std::io::Result<usize> {
        if !self.defer_taskrun {
            return self.parts.ring.submit();
        }
        /// IORING_ENTER_GETEVENTS (the io-uring crate keeps its `sys`
        /// constants private).
        const GETEVENTS: u32 = 1;
        let submitter = self.parts.ring.submitter();
        let pending = {
            // SAFETY: only the length of our own submission queue is read.
            unsafe { self.parts.ring.submission_shared().len() }
        };
        // SAFETY: io_uring_enter with no signal mask and no wait: the
        // entries it submits were pushed by this thread and stay valid as
        // the push contract required.
        unsafe { submitter.enter::<libc::sigset_t>(pending as u32, 0, GETEVENTS, None) }
    }

    fn arm_wake(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.wake_fd),
            &mut *self.wake_buf as *mut u64 as *mut u8,
            8,
        )
        .build()
        .user_data(WAKE);
        // SAFETY: `wake_buf` is boxed and owned by the reactor, which
        // outlives its ring's use of it.
        unsafe {
            while self.parts.ring.submission().push(&e).is_err() {
                let _ = self.parts.ring.submit();
            }
        }
    }

    fn run<S: Service>(&mut self, svc: &S) {
        let mut slots: Vec<Slot<S::Conn>> = Vec::new();
        let mut free_slots: Vec<u32> = Vec::new();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        let mut spinner = Spinner::new(self.spin, Instant::now());
        // SCSI reads and writes counted so far, for the spinner's epochs.
        let mut ops_seen = 0u64;
        let adaptive = self.poll == PollMode::Adaptive;
        let mut stopping = false;
        let stats = self.stats.clone();
        let rstats = &stats.reactors[self.id];
        self.arm_wake();
        loop {
            if !stopping && self.stop.load(Ordering::Relaxed) {
                stopping = true;
                for (i, s) in slots.iter_mut().enumerate() {
                    if let Some(c) = s.conn.as_mut() {
                        let mut io = io(
                            &mut self.parts,
                            rstats,
                            self.id,
                            i as u32,
                            &mut s.inflight,
                            &mut s.own,
                        );
                        c.shutdown(&mut io);
                    }
                }
            }
            if stopping && slots.iter().all(|s| s.conn.is_none()) {
                return;
            }
            // New connections from the acceptor.
            while let Ok((stream, peer)) = self.incoming.try_recv() {
                let zc = self.zc_supported
                    && match self.zero_copy_send {
                        ZeroCopySend::On => true,
                        ZeroCopySend::Off => false,
                        // On loopback the kernel copies anyway.
                        ZeroCopySend::Auto => !peer.ip().is_loopback(),
                    };
                let conn = Box::new(svc.connect(stream, peer, self.id));
                let idx = match free_slots.pop() {
                    Some(i) => {
                        slots[i as usize].conn = Some(conn);
                        i
                    }
                    None if slots.len() < MAX_SLOTS => {
                        slots.push(Slot {
                            conn: Some(conn),
                            inflight: 0,
                            own: SlotOwned::new(),
                        });
                        (slots.len() - 1) as u32
                    }
                    None => {
                        // 16M connections on one reactor: refuse this one
                        // (dropping it closes the socket).
                        tracing::warn!("reactor {}: too many connections", self.id);
                        rstats.connections_open.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let s = &mut slots[idx as usize];
                s.own.zc = zc;
                let mut io = io(
                    &mut self.parts,
                    rstats,
                    self.id,
                    idx,
                    &mut s.inflight,
                    &mut s.own,
                );
                let Some(c) = s.conn.as_mut() else { continue };
                c.start(&mut io);
                if stopping {
                    c.shutdown(&mut io);
                }
            }
            // Submit, and wait according to the poll mode. A reactor with
            // no connection has nothing to spin for, whatever the mode.
            let live = slots.len() - free_slots.len();
            let now = if adaptive { Some(Instant::now()) } else { None };
            let spin = live > 0
                && match (self.poll, now) {
                    (PollMode::Busy, _) => true,
                    (PollMode::Adaptive, Some(now)) => spinner.should_spin(now),
                    _ => false,
                };
            rstats.loops.fetch_add(1, Ordering::Relaxed);
            let sleep = !spin && self.parts.ring.completion().is_empty();
            let r = if sleep {
                rstats.sleeps.fetch_add(1, Ordering::Relaxed);
                self.parts.ring.submit_and_wait(1)
            } else {
                self.submit_and_reap()
            };
            if let Err(e) = r {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!("reactor {}: io_uring_enter failed: {e}", self.id);
                }
            }
            if let (Some(t), true) = (now, sleep) {
                spinner.slept(t.elapsed());
                rstats.spin_window_ns.store(
                    spinner.window_ns * u64::from(spinner.prefer_spin),
                    Ordering::Relaxed,
                );
            }
            cqes.clear();
            for cqe in self.parts.ring.completion() {
                cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
            let found = !cqes.is_empty();
            if spin {
                let c = if found {
                    &rstats.busy_polls
                } else {
                    &rstats.idle_polls
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            for &(ud, mut res, flags) in &cqes {
                if ud == WAKE {
                    self.arm_wake();
                    continue;
                }
                let kind = ud >> 56;
                let idx = ((ud >> 32) as usize) & (MAX_SLOTS - 1);
                let tag = ud as u32;
                let Some(s) = slots.get_mut(idx) else {
                    debug_assert!(false, "completion for slot {idx} that never existed");
                    continue;
                };
                if kind == KIND_SEND_ZC {
                    if io_uring::cqueue::more(flags) {
                        // The send's result; its buffers are still the
                        // kernel's until the notification.
                        s.own.zc_res = res;
                        continue;
                    }
                    if io_uring::cqueue::notif(flags) {
                        if res as u32 & ZC_COPIED != 0 {
                            rstats.zc_copied.fetch_add(1, Ordering::Relaxed);
                            if s.own.zc && self.zero_copy_send == ZeroCopySend::Auto {
                                s.own.zc = false;
                                tracing::debug!(
                                    "reactor {}: the kernel copied a zero-copy send; this connection sends with plain sendmsg from now on",
                                    self.id
                                );
                            }
                        }
                        res = s.own.zc_res;
                    }
                }
                debug_assert!(
                    s.inflight > 0,
                    "completion for slot {idx} with nothing in flight"
                );
                s.inflight -= 1;
                match kind {
                    KIND_SEND | KIND_SEND_ZC => s.own.send_busy = false,
                    KIND_TIMEOUT => {
                        if let Some(p) = s.own.timers.iter().position(|(t, _)| *t == tag) {
                            s.own.timers.swap_remove(p);
                        }
                    }
                    _ => {}
                }
                if let Some(c) = s.conn.as_mut() {
                    let mut io = io(
                        &mut self.parts,
                        rstats,
                        self.id,
                        idx as u32,
                        &mut s.inflight,
                        &mut s.own,
                    );
                    c.complete(&mut io, tag, res);
                }
                if s.inflight == 0 && s.conn.as_ref().is_some_and(|c| c.finished()) {
                    s.conn = None;
                    free_slots.push(idx as u32);
                    rstats.connections_open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // Buffers came back: let waiting connections retry, oldest
            // first, while there are buffers to take.
            while self.parts.pool.available() > 0 {
                let Some(w) = self.parts.buf_waiters.pop_front() else {
                    break;
                };
                let Some(s) = slots.get_mut(w as usize) else {
                    continue;
                };
                if let Some(c) = s.conn.as_mut() {
                    let mut io = io(
                        &mut self.parts,
                        rstats,
                        self.id,
                        w,
                        &mut s.inflight,
                        &mut s.own,
                    );
                    c.buffers_available(&mut io);
                }
            }
            // A connection that finished without any SQE in flight (for
            // example one that was shut down before its first recv).
            if stopping {
                for (i, s) in slots.iter_mut().enumerate() {
                    if s.inflight == 0 && s.conn.as_ref().is_some_and(|c| c.finished()) {
                        s.conn = None;
                        free_slots.push(i as u32);
                        rstats.connections_open.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            // Teach the spinner what this turn was worth.
            if adaptive {
                let end = Instant::now();
                spinner.turned(spin, found, end);
                let ops = rstats.read_ops.load(Ordering::Relaxed)
                    + rstats.write_ops.load(Ordering::Relaxed);
                spinner.tick(end, ops.wrapping_sub(ops_seen));
                ops_seen = ops;
            }
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // SAFETY: the eventfd this reactor owns, closed once.
        unsafe {
            libc::close(self.wake_fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn placer_prefers_the_idle_reactor_then_fewer_connections() {
        let stats = Stats::new(2);
        let (r0, r1) = (&stats.reactors[0], &stats.reactors[1]);
        let mut p = Placer::new(2);
        let t0 = Instant::now();
        // Nothing measured yet: fewest connections.
        r0.connections_open.store(1, Ordering::Relaxed);
        assert_eq!(p.pick(&stats, t0), 1);
        // Reactor 0 holds one busy session, reactor 1 two idle ones: the
        // new connection goes to reactor 1.
        r1.connections_open.store(2, Ordering::Relaxed);
        r0.read_ops.store(100_000, Ordering::Relaxed);
        assert_eq!(p.pick(&stats, t0 + Duration::from_millis(100)), 1);
        // A burst of accepts right after keeps that measurement.
        r1.connections_open.store(5, Ordering::Relaxed);
        assert_eq!(p.pick(&stats, t0 + Duration::from_millis(101)), 1);
        // Both equally busy since: connection count decides.
        r0.read_ops.store(200_000, Ordering::Relaxed);
        r1.write_ops.store(100_000, Ordering::Relaxed);
        assert_eq!(p.pick(&stats, t0 + Duration::from_millis(300)), 0);
    }

    #[test]
    fn spinner_spins_only_in_spinning_epochs_and_within_the_window() {
        let t0 = Instant::now();
        let mut s = Spinner::new(50 * US, t0);
        // Until an epoch has shown that spinning pays, it sleeps.
        assert!(!s.should_spin(t0));
        s.spin_on = true;
        s.turned(false, true, t0);
        assert!(s.should_spin(t0 + 10 * US));
        assert!(s.should_spin(t0 + 49 * US));
        assert!(!s.should_spin(t0 + 50 * US), "window over: sleep");
    }

    #[test]
    fn spinner_window_shrinks_when_spins_find_nothing_and_grows_when_they_pay() {
        let t0 = Instant::now();
        let mut s = Spinner::new(64 * US, t0);
        s.spin_on = true;
        let w0 = s.window_ns;
        assert_eq!(w0, 64_000, "starts at the ceiling");
        // An empty spin that outlives the window halves it.
        s.turned(false, true, t0);
        assert!(s.should_spin(t0));
        s.turned(true, false, t0);
        assert!(!s.should_spin(t0 + 64 * US));
        assert_eq!(s.window_ns, w0 / 2);
        // A spin that finds a completion after empty ones doubles it.
        let t1 = t0 + 100 * US;
        s.turned(false, true, t1);
        assert!(s.should_spin(t1));
        s.turned(true, false, t1);
        s.turned(true, true, t1 + US);
        assert_eq!(s.window_ns, w0);
        // Repeated misses drive it below the floor: no spinning at all.
        let mut t = t1;
        for _ in 0..20 {
            t += Duration::from_millis(1);
            s.turned(false, true, t);
            if s.should_spin(t) {
                s.turned(true, false, t);
            }
            let _ = s.should_spin(t + 64 * US);
        }
        assert!(s.window_ns < SPIN_MIN_NS);
        assert!(!s.should_spin(t));
        // Quick wake-ups from sleep teach it that a spin would have paid.
        s.slept(10 * US);
        assert!(s.window_ns >= 10_000);
        assert!(s.window_ns <= 64_000);
        // Long sleeps teach nothing.
        let w = s.window_ns;
        s.slept(Duration::from_millis(5));
        assert_eq!(s.window_ns, w);
    }

    /// Run one epoch of `done` commands in `wall`, using `cpu`.
    fn epoch(
        s: &mut Spinner,
        t: &mut Instant,
        cpu: &mut Duration,
        done: usize,
        wall: Duration,
        used: Duration,
    ) {
        *t += wall;
        *cpu += used;
        s.epoch_done += done as u64;
        s.end_epoch(*t, *cpu);
    }

    #[test]
    fn spinning_is_kept_only_when_epochs_show_it_pays() {
        let mut t = Instant::now();
        let mut cpu = Duration::ZERO;
        let mut s = Spinner::new(50 * US, t);
        s.epoch_cpu = cpu;
        assert!(!s.spin_on, "starts like interrupt mode");
        let ms = Duration::from_millis(1);
        // Sleeping epochs until the probe: 1000 commands per 20 ms.
        while !s.spin_on {
            epoch(&mut s, &mut t, &mut cpu, 1000, 20 * ms, 10 * ms);
        }
        assert_eq!(s.epochs % PROBE_EVERY, 0);
        // The spinning probe moves 10 % more but costs 30 % more CPU per
        // command: rejected.
        epoch(&mut s, &mut t, &mut cpu, 1100, 20 * ms, 14 * ms + 300 * US);
        assert!(!s.prefer_spin && !s.spin_on);
        while !s.spin_on {
            epoch(&mut s, &mut t, &mut cpu, 1000, 20 * ms, 10 * ms);
        }
        // 20 % more at 5 % more CPU each is within what noise gives: not
        // taken up, however often it is seen.
        for _ in 0..3 {
            epoch(&mut s, &mut t, &mut cpu, 1200, 20 * ms, 12 * ms + 600 * US);
            assert!(!s.prefer_spin && !s.spin_on);
            while !s.spin_on {
                epoch(&mut s, &mut t, &mut cpu, 1000, 20 * ms, 10 * ms);
            }
        }
        // Twice as much at 5 % more CPU each: one win is not enough, the
        // next probe's second win takes it up.
        epoch(&mut s, &mut t, &mut cpu, 2000, 20 * ms, 21 * ms);
        assert!(!s.prefer_spin && !s.spin_on);
        while !s.spin_on {
            epoch(&mut s, &mut t, &mut cpu, 1000, 20 * ms, 10 * ms);
        }
        epoch(&mut s, &mut t, &mut cpu, 2000, 20 * ms, 21 * ms);
        assert!(s.prefer_spin && s.spin_on);
        // Kept while it pays...
        epoch(&mut s, &mut t, &mut cpu, 1900, 20 * ms, 19 * ms);
        assert!(s.prefer_spin && s.spin_on);
        // Idle epochs decide nothing.
        epoch(&mut s, &mut t, &mut cpu, 3, 20 * ms, US);
        assert!(s.prefer_spin);
        // ... and dropped by the first spinning epoch that moves only
        // 10 % more.
        epoch(&mut s, &mut t, &mut cpu, 1100, 20 * ms, 11 * ms);
        assert!(!s.prefer_spin);
    }
}
