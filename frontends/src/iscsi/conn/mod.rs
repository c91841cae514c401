//! One iSCSI connection (and its single-connection session) on a reactor.
//!
//! Receive: PDUs are read into a per-connection staging buffer. A header is
//! parsed there; a large data segment for a WRITE goes straight into the
//! task's registered pool buffer with a second recv (zero copy); the
//! bytes that were already in staging are copied. After such a direct
//! receive the next staging receive takes only a header, so a stream of
//! large writes is never copied out of staging. Small data segments
//! (login text, NOP data, small writes) are copied.
//!
//! Send: responses are queued as [`Tx`] items (inline header, data that
//! points into a pool buffer or a small owned vector) and written with one
//! `sendmsg` per batch. A READ's Data-In payload is never copied: the disk
//! read lands in a pool buffer, which the Data-In iovecs point at.
//!
//! Commands: each SCSI command that touches the medium becomes a
//! [`Task`] owning one pool buffer for its lifetime, processed in chunks of
//! one buffer (reads: disk read, then Data-In; writes: unsolicited data and
//! R2T-driven Data-Out, then disk write). On a LU whose data lives in
//! memory, large reads are sent from its mapping and large writes are
//! received into it (`Task::mapped`, `Task::in_place`): no buffer, no disk
//! I/O. The session has one connection
//! (MaxConnections=1) and ErrorRecoveryLevel 0: a protocol violation
//! gets a Reject and the connection is closed, except a Data-Out with the
//! wrong DataSN or offset, which ends only its task (CHECK CONDITION, as
//! RFC 7143 7.7/7.8 asks at ERL 0). Commands outside the CmdSN window are
//! dropped silently. Task management acts on every session of a LU
//! through its shared state (task epoch, unit attentions); idle
//! connections are pinged with NOP-In and closed when dead.
//!
//! This is the driver: it moves bytes between the socket, the pool and the
//! session core. What is not I/O lives in [`super::session`] (sequence
//! numbers, login checks, reinstatement) and [`super::task`] (chunks,
//! R2Ts, Data-Out acceptance, Data-In segmentation). The pieces:
//! `rx` (framing and dispatch), `login` (login, text, NOP, logout, task
//! management), `cmd` (SCSI commands and their disk I/O), `tx` (the send
//! queue and responses). Every I/O goes through [`IoOps`], so `tests`
//! drives whole connections in process with byte PDUs.

use bootlun_engine::{BufPool, Connection, Io, IoOps, Issued, Spill};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::discovery::{answer_text, portal_list, TargetRecord};
use super::negotiate::{Negotiator, SessionParams, SessionType};
use super::session::{
    reinstate, Keepalive, LoginCheck, LoginSeq, Reinstate, SeqNums, Tick, REINSTATE_POLL_MS,
};
use super::target::{SessionInfo, TargetShared};
use super::task::{DataInSeg, DataOutError, Kind, Task, TaskId, TaskTable};
use super::wire::*;
use crate::scsi::{self, CommandCtx, Outcome, Sense, Status};

const RX_CAP: usize = 64 * 1024;
/// Data still to come beyond this size is received straight into the
/// task's buffer instead of through the staging buffer.
const DIRECT_MIN: usize = 8 * 1024;
/// Writes of at least this much to a LU whose data lives in memory are
/// received straight into its mapping (`Task::in_place`). Smaller ones
/// keep the buffer and one disk write per chunk: their data mostly arrives
/// with the header, in the staging buffer, and each staged piece of a
/// placed write is written with a system call of its own.
const PLACE_MIN: u32 = 64 * 1024;
/// Stop reading new PDUs while this many responses wait to be sent.
const TXQ_MAX: usize = 4096;
const SEND_BATCH: usize = 64;
/// A send of fewer data bytes than this goes to the ring before the
/// receive posted with it (see `post_recv`).
const SEND_AFTER_RECV: usize = 64 * 1024;

const TAG_RECV: u32 = 1 << 28;
const TAG_RECV_DIRECT: u32 = 2 << 28;
const TAG_SEND: u32 = 3 << 28;
const TAG_DISK: u32 = 4 << 28;
const TAG_LOGIN_TIMER: u32 = 5 << 28;
const TAG_CANCEL: u32 = 6 << 28;
const TAG_REINSTATE_TIMER: u32 = 7 << 28;
const TAG_NOP_TIMER: u32 = 8 << 28;

const TAG_KIND: u32 = 0xf << 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
}

/// Where the data segment of the PDU being received goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Thrown away (data for an aborted or finished task).
    Discard,
    /// `pdu_data`, for text, NOP and other small payloads.
    Vec,
    /// Task `id`'s data space at byte offset `off`.
    Task { id: TaskId, off: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Waiting for a complete header.
    Header,
    /// Receiving a data segment of `total` bytes, `got` so far, then
    /// `trailer` bytes of padding and digest.
    Data {
        sink: Sink,
        total: usize,
        got: usize,
        trailer: usize,
    },
}

enum TxData {
    None,
    /// Small payloads built here (login and text answers, sense data,
    /// emulated Data-In, Rejects). `Bytes`, so that one emulation answer
    /// split over several Data-In PDUs is sliced, not copied per PDU; its
    /// storage does not move while the send is in flight.
    Owned(Bytes),
    /// A slice of a task's pool buffer (disk data): pool memory is
    /// registered with the ring and handed back to the pool, not freed,
    /// so it cannot be an owned `Bytes`. Or a slice of a LU's mapped
    /// memory (`Task::mapped`), which only the kernel reads: never with a
    /// data digest, which user space would compute over it.
    Buf {
        ptr: *const u8,
        len: u32,
    },
}

impl TxData {
    /// The data segment's length in bytes (no padding, no digest).
    fn len(&self) -> usize {
        match self {
            TxData::None => 0,
            TxData::Owned(v) => v.len(),
            TxData::Buf { len, .. } => *len as usize,
        }
    }
}

/// One PDU waiting to be sent.
struct Tx {
    hdr: [u8; BHS_LEN + DIGEST_LEN],
    hlen: u8,
    data: TxData,
    trailer: [u8; 8],
    tlen: u8,
    /// Task whose buffer `data` points into (its `sends` count is dropped
    /// when this PDU has gone out), and whether the task wants to hear.
    task: Option<TaskId>,
    notify: bool,
    close_after: bool,
}

pub struct Conn {
    sh: Arc<TargetShared>,
    /// Unique among all connections of the target.
    id: u64,
    /// Registered as the holder of a normal session (see
    /// `TargetShared::register_session`).
    session_registered: bool,
    /// The status page's view of the session, once registered; its
    /// counters are bumped as commands complete.
    session: Option<Arc<SessionInfo>>,
    /// Owns the socket; closed when the connection is dropped. Any
    /// connected stream socket works (tests hand in one end of a Unix
    /// socket pair): only `shutdown` is called on it here.
    sock: TcpStream,
    fd: RawFd,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    reactor: usize,
    phase: Phase,
    closing: bool,
    neg: Negotiator,
    login: LoginSeq,
    params: SessionParams,
    hd: bool,
    dd: bool,
    seq: SeqNums,
    // receive
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    rx_busy: bool,
    rx_state: Rx,
    cur: [u8; BHS_LEN],
    pdu_data: Vec<u8>,
    data_crc: u32,
    /// Where in its task's buffer the direct recv in flight writes (for the
    /// data digest), and the task whose buffer that is: it is not freed
    /// until the recv ends.
    direct_off: u32,
    direct_task: Option<TaskId>,
    /// How many bytes of data the direct recv in flight asked for; what it
    /// got beyond them went on into the staging buffer (its spill).
    direct_len: u32,
    /// A data segment just went straight into a task buffer: the next
    /// receive takes no more than the next header, so that if the next PDU
    /// is large too its data lands in its buffer from the first byte, never
    /// copied out of the staging buffer.
    header_next: bool,
    /// Pool buffers this connection's tasks hold (bounded by `buf_limit`,
    /// so one connection cannot starve the reactor's others).
    bufs_held: usize,
    // send
    txq: VecDeque<Tx>,
    tx_fly: Vec<Tx>,
    iov: Vec<libc::iovec>,
    iov_pos: usize,
    tx_busy: bool,
    /// Inside an entry point: PDUs queue up and are sent at its end.
    tx_hold: bool,
    /// A receive into the staging buffer was asked for inside an entry
    /// point; it is posted after that entry point's send (see `post_recv`).
    rx_wanted: bool,
    close_after_send: bool,
    // tasks
    tasks: TaskTable,
    buf_waiters: VecDeque<TaskId>,
    next_ttt: u32,
    scratch: Vec<u8>,
    notify: Vec<TaskId>,
    data_in: Vec<DataInSeg>,
    /// Whether the login timer is in flight, and whether it was cancelled.
    timer_armed: bool,
    timer_cancelled: bool,
    /// The final Login Response, held while an old session is reinstated.
    pending_login: Option<(LoginResponse, Vec<u8>)>,
    reinstate_timer_armed: bool,
    reinstate_polls: u32,
    /// The I_T nexus SCSI reservations see (built at the first command).
    nexus: Option<scsi::Nexus>,
    /// NOP-In keepalive, its timer in flight, and whether it was cancelled.
    keepalive: Keepalive,
    nop_timer_armed: bool,
    nop_timer_cancelled: bool,
}

impl Conn {
    pub fn new(sh: Arc<TargetShared>, stream: TcpStream, peer: SocketAddr, reactor: usize) -> Conn {
        let local = stream.local_addr().ok();
        if sh.nop_interval_secs > 0 {
            tcp_keepalive(&stream, sh.nop_interval_secs, sh.nop_timeout_secs);
        }
        Conn::with_socket(sh, stream.into(), peer, local, reactor)
    }

    /// A connection over any connected stream socket (tests use a Unix
    /// socket pair).
    pub fn with_socket(
        sh: Arc<TargetShared>,
        sock: OwnedFd,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        reactor: usize,
    ) -> Conn {
        let sock = TcpStream::from(sock);
        let fd = sock.as_raw_fd();
        let neg = Negotiator::new(sh.limits.clone());
        let id = sh.conn_id();
        let seq = SeqNums::new(sh.queue_depth);
        let keepalive = Keepalive::new(sh.nop_interval_secs, sh.nop_timeout_secs);
        Conn {
            id,
            session_registered: false,
            session: None,
            sh,
            sock,
            fd,
            peer,
            local,
            reactor,
            phase: Phase::Login,
            closing: false,
            neg,
            login: LoginSeq::default(),
            params: SessionParams::default(),
            hd: false,
            dd: false,
            seq,
            rx: vec![0u8; RX_CAP].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            rx_busy: false,
            rx_state: Rx::Header,
            cur: [0; BHS_LEN],
            pdu_data: Vec::new(),
            data_crc: 0,
            direct_off: 0,
            direct_task: None,
            direct_len: 0,
            header_next: false,
            bufs_held: 0,
            txq: VecDeque::with_capacity(256),
            tx_fly: Vec::with_capacity(SEND_BATCH),
            iov: Vec::with_capacity(SEND_BATCH * 3),
            iov_pos: 0,
            tx_busy: false,
            tx_hold: false,
            rx_wanted: false,
            close_after_send: false,
            tasks: TaskTable::default(),
            buf_waiters: VecDeque::new(),
            next_ttt: 1,
            scratch: Vec::with_capacity(4096),
            notify: Vec::with_capacity(SEND_BATCH),
            data_in: Vec::with_capacity(64),
            timer_armed: false,
            timer_cancelled: false,
            pending_login: None,
            reinstate_timer_armed: false,
            reinstate_polls: 0,
            nexus: None,
            keepalive,
            nop_timer_armed: false,
            nop_timer_cancelled: false,
        }
    }
}

/// TCP keepalive on `s`: probes after `idle` seconds of silence, every
/// `idle` seconds, dropping the connection when `timeout` seconds of
/// probes go unanswered. It finds dead peers that do not answer NOP-In
/// pings (see `Keepalive`). Failure only costs that detection.
fn tcp_keepalive(s: &TcpStream, idle: u64, timeout: u64) {
    let idle = idle.clamp(1, 32767) as libc::c_int;
    let count = timeout.div_ceil(idle as u64).clamp(1, 127) as libc::c_int;
    let opts = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ];
    for (level, name, value) in opts {
        // SAFETY: setsockopt on a socket this connection owns, with a
        // pointer to a live int and its size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "TCP keepalive option {name}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Conn {
    /// Release everything once closed and idle.
    fn reap(&mut self, io: &mut impl IoOps) {
        if !self.closing {
            return;
        }
        if self.timer_armed && !self.timer_cancelled {
            self.timer_cancelled = true;
            io.cancel_timeout(TAG_LOGIN_TIMER, TAG_CANCEL);
        }
        if self.nop_timer_armed && !self.nop_timer_cancelled {
            self.nop_timer_cancelled = true;
            io.cancel_timeout(TAG_NOP_TIMER, TAG_CANCEL);
        }
        if self.tx_busy {
            return;
        }
        for id in self.tasks.ids() {
            let direct = self.rx_busy && self.direct_task == Some(id);
            if let Some(t) = self.tasks.get_mut(id) {
                // Never while the kernel may still write into its buffer.
                // Its queued sends are dropped with the send queue.
                if !t.io_busy && !direct {
                    t.finished = true;
                    t.sends = 0;
                    self.release_task(io, id);
                }
            }
        }
    }

    /// Drop task `id` and give its buffers back to the pool.
    fn release_task(&mut self, io: &mut impl IoOps, id: TaskId) {
        if let Some(t) = self.tasks.remove(id) {
            debug_assert!(
                !t.io_busy && t.sends == 0,
                "task released with I/O in flight"
            );
            for b in [t.buf, t.cmp_buf].into_iter().flatten() {
                io.pool_mut().release(b);
                debug_assert!(self.bufs_held > 0, "more buffers released than held");
                self.bufs_held -= 1;
            }
        }
    }
}

/// The engine's entry points, generic over [`IoOps`] so tests can drive a
/// connection without a reactor.
impl Conn {
    pub fn on_start(&mut self, io: &mut impl IoOps) {
        // A peer that connects and never logs in is dropped.
        io.timeout(
            Duration::from_secs(self.sh.login_timeout_secs),
            TAG_LOGIN_TIMER,
        );
        self.timer_armed = true;
        self.arm_keepalive(io);
        self.post_recv(io);
    }

    fn arm_keepalive(&mut self, io: &mut impl IoOps) {
        if let Some(every) = self.keepalive.interval() {
            io.timeout(every, TAG_NOP_TIMER);
            self.nop_timer_armed = true;
        }
    }

    /// One keepalive interval went by. Before the full feature phase the
    /// login timer watches the connection instead.
    fn keepalive_tick(&mut self, io: &mut impl IoOps) {
        if self.phase == Phase::FullFeature {
            match self.keepalive.tick() {
                Tick::Nothing => {}
                Tick::Ping => self.send_ping(io),
                Tick::Dead => {
                    tracing::warn!(
                        "connection {}: nothing received for {} s after a NOP-In; closing",
                        self.peer,
                        self.sh.nop_timeout_secs
                    );
                    self.close("keepalive timeout");
                    return;
                }
            }
        }
        self.arm_keepalive(io);
    }

    /// A NOP-In with a target transfer tag: the initiator must answer
    /// with a NOP-Out (RFC 7143 11.19). It does not advance StatSN.
    fn send_ping(&mut self, io: &mut impl IoOps) {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        let sn = self.sn();
        let mut hdr = [0u8; BHS_LEN];
        build_nop_in(&mut hdr, RESERVED_TAG, ttt, 0, 0, sn);
        self.queue(hdr, TxData::None, None, false, false);
        self.flush_tx(io);
    }

    /// A completion. What it makes the connection send (responses, R2Ts,
    /// Data-In) goes out together at its end, in one `sendmsg`, rather
    /// than the first PDU alone and the rest after that send completes.
    pub fn on_complete(&mut self, io: &mut impl IoOps, tag: u32, res: i32) {
        self.tx_hold = true;
        self.dispatch(io, tag, res);
        self.tx_hold = false;
        self.flush_tx(io);
        self.post_wanted_recv(io);
    }

    fn dispatch(&mut self, io: &mut impl IoOps, tag: u32, res: i32) {
        match tag & TAG_KIND {
            TAG_RECV => {
                self.rx_busy = false;
                if self.closing {
                } else if res <= 0 {
                    let why = if res == 0 {
                        "peer closed the connection".to_string()
                    } else {
                        format!(
                            "receive failed: {}",
                            std::io::Error::from_raw_os_error(-res)
                        )
                    };
                    self.close(&why);
                } else {
                    self.keepalive.heard();
                    self.rx_end += res as usize;
                    self.process_rx(io);
                }
            }
            TAG_RECV_DIRECT => {
                self.rx_busy = false;
                let target_task = self.direct_task.take();
                if self.closing {
                } else if res == -libc::EFAULT && self.placing(target_task) {
                    // The receive reached past the end of the LU's mapped
                    // file (it shrank, or its file system is full): the
                    // bytes stay queued in the socket. Stop receiving into
                    // the mapping; the rest of this data comes through
                    // the staging buffer and is written with copies.
                    if let Some(t) = target_task.and_then(|t| self.tasks.get(t)) {
                        self.sh.luns[t.lun].backend.mapping_faulted();
                    }
                    self.process_rx(io);
                } else if res <= 0 {
                    self.close("peer closed the connection during data");
                } else if let Rx::Data { got, .. } = self.rx_state {
                    self.keepalive.heard();
                    if self.placing(target_task) {
                        io.stats().mapped_writes.fetch_add(1, Relaxed);
                    }
                    // Bytes past the data went on into the staging buffer
                    // (the spill: the trailer and the next header).
                    let n = (res as u32).min(self.direct_len);
                    self.rx_end += (res as u32 - n) as usize;
                    let res = n as i32;
                    let (off, n) = (self.direct_off as usize, res as usize);
                    if self.dd {
                        let buf = target_task
                            .and_then(|t| self.tasks.get(t))
                            .and_then(|t| t.buf.as_ref());
                        if let Some(buf) = buf {
                            let b = &io.pool().slice(buf, off + n)[off..];
                            self.data_crc = crc32c::crc32c_append(self.data_crc, b);
                        }
                    }
                    self.direct_off += res as u32;
                    if self.data_progress(io, got + res as usize) {
                        return;
                    }
                    self.process_rx(io);
                }
                // The buffer it wrote into may belong to a task that ended
                // meanwhile; it can go back now.
                if let Some(t) = target_task {
                    if self.direct_task != Some(t) {
                        self.maybe_free(io, t);
                    }
                }
            }
            TAG_SEND => self.send_done(io, res),
            TAG_LOGIN_TIMER => {
                self.timer_armed = false;
                if res == -libc::ETIME && self.phase == Phase::Login && !self.closing {
                    tracing::warn!(
                        "connection {}: no login within {} s",
                        self.peer,
                        self.sh.login_timeout_secs
                    );
                    self.close("login timeout");
                }
            }
            TAG_NOP_TIMER => {
                self.nop_timer_armed = false;
                if res == -libc::ETIME && !self.closing {
                    self.keepalive_tick(io);
                }
            }
            TAG_CANCEL => {}
            TAG_REINSTATE_TIMER => {
                self.reinstate_timer_armed = false;
                if !self.closing {
                    self.finish_login(io);
                }
            }
            TAG_DISK => {
                let id = TaskId::from_index(tag & !TAG_KIND);
                if self.closing {
                    if let Some(t) = self.tasks.get_mut(id) {
                        t.io_busy = false;
                    }
                } else {
                    self.disk_done(io, id, res);
                }
            }
            _ => {}
        }
        self.reap(io);
    }

    pub fn is_finished(&self) -> bool {
        self.closing
            && !self.tx_busy
            && !self.rx_busy
            && !self.timer_armed
            && !self.reinstate_timer_armed
            && !self.nop_timer_armed
            && self.tasks.is_empty()
    }

    pub fn on_buffers_available(&mut self, io: &mut impl IoOps) {
        if !self.closing {
            self.tx_hold = true;
            self.run_buffer_waiters(io);
            self.tx_hold = false;
            self.flush_tx(io);
            self.post_wanted_recv(io);
        }
    }

    pub fn on_shutdown(&mut self, io: &mut impl IoOps) {
        self.close("target shutting down");
        self.reap(io);
    }
}

impl Connection for Conn {
    fn start(&mut self, io: &mut Io<'_>) {
        self.on_start(io);
    }
    fn complete(&mut self, io: &mut Io<'_>, tag: u32, res: i32) {
        self.on_complete(io, tag, res);
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
    fn buffers_available(&mut self, io: &mut Io<'_>) {
        self.on_buffers_available(io);
    }
    fn shutdown(&mut self, io: &mut Io<'_>) {
        self.on_shutdown(io);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // All I/O of this connection has drained (the reactor drops it only
        // then): a reinstating login may now proceed. `stream` closes the
        // socket after this.
        if self.session_registered {
            self.sh
                .unregister_session(&self.params.initiator_name, self.login.isid, self.id);
        }
        self.scsi_nexus_lost();
        tracing::debug!("connection {} released", self.peer);
    }
}

mod cmd;
mod login;
mod rx;
mod tx;

#[cfg(test)]
mod tests;
