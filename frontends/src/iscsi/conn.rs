//! One iSCSI connection (and its single-connection session) on a reactor.
//!
//! Receive: PDUs are read into a per-connection staging buffer. A header is
//! parsed there; a large data segment for a WRITE goes straight into the
//! task's registered pool buffer with a second recv (zero copy); the
//! bytes that were already in staging are copied. Small data segments
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
//! R2T-driven Data-Out, then disk write). The session has one connection
//! (MaxConnections=1) and ErrorRecoveryLevel 0: any protocol violation
//! gets a Reject and the connection is closed.

use bootlun_engine::{BufPool, Connection, Io, IoOps, Issued, PoolBuf};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::discovery::{answer_text, TargetRecord};
use super::negotiate::{Negotiator, SessionParams, SessionType, Stage};
use super::target::{SessionClaim, TargetShared};
use super::wire::*;
use crate::scsi::{self, CommandCtx, Outcome, Sense, Status};

const RX_CAP: usize = 64 * 1024;
/// Data still to come beyond this size is received straight into the
/// task's buffer instead of through the staging buffer.
const DIRECT_MIN: usize = 8 * 1024;
/// Stop reading new PDUs while this many responses wait to be sent.
const TXQ_MAX: usize = 4096;
const SEND_BATCH: usize = 64;
const NO_TASK: u32 = u32::MAX;

const TAG_RECV: u32 = 1 << 28;
const TAG_RECV_DIRECT: u32 = 2 << 28;
const TAG_SEND: u32 = 3 << 28;
const TAG_DISK: u32 = 4 << 28;
const TAG_LOGIN_TIMER: u32 = 5 << 28;
const TAG_CANCEL: u32 = 6 << 28;
const TAG_REINSTATE_TIMER: u32 = 7 << 28;
/// Session reinstatement waits for the old connection in steps of
/// `REINSTATE_POLL_MS`, at most this many.
const REINSTATE_MAX_POLLS: u32 = 3000;
const REINSTATE_POLL_MS: u64 = 10;

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
    /// Task `idx`'s data space at byte offset `off`.
    Task { idx: u32, off: u32 },
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
    Owned(Vec<u8>),
    Buf { ptr: *const u8, len: u32 },
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
    task: u32,
    notify: bool,
    close_after: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    VerifyCompare,
    Flush,
}

impl Kind {
    /// Pool buffers a task of this kind holds.
    fn buffers(self) -> usize {
        if self == Kind::VerifyCompare {
            2
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct R2tOut {
    ttt: u32,
    off: u32,
    len: u32,
    got: u32,
    /// DataSN the next Data-Out of this burst must carry.
    data_sn: u32,
}

/// A SCSI command in progress.
struct Task {
    itt: u32,
    lun: usize,
    lun_raw: u64,
    kind: Kind,
    lba: u64,
    fua: bool,
    bs: u32,
    /// Bytes the CDB asks for.
    wanted: u64,
    /// Expected data transfer length from the initiator.
    edtl: u32,
    /// Bytes that move (min of both).
    xfer: u32,
    /// Bytes finished on the medium.
    done: u32,
    buf: Option<PoolBuf>,
    cmp_buf: Option<PoolBuf>,
    chunk_start: u32,
    chunk_len: u32,
    chunk_got: u32,
    /// Unsolicited (immediate + Data-Out without R2T) data ends here, as
    /// far as the medium is concerned (clipped to what moves).
    unsol_end: u32,
    /// Wire offsets of unsolicited data: the next one due, and the end
    /// the initiator may send up to (RFC 7143: immediate data, plus
    /// FirstBurstLength when InitialR2T=No).
    unsol_next: u32,
    unsol_limit: u32,
    r2t_next: u32,
    r2t: Option<R2tOut>,
    r2t_sn: u32,
    /// DataSN the next unsolicited Data-Out must carry.
    unsol_data_sn: u32,
    data_sn: u32,
    /// Bytes of Data-In queued so far (for F bits at MaxBurstLength).
    burst: u32,
    /// PDUs pointing into this task's buffer not yet sent.
    sends: u32,
    io_busy: bool,
    waiting_buf: bool,
    /// The status has been queued (or the task was aborted): only waiting
    /// for I/O and sends to drain before the buffers go back.
    finished: bool,
    aborted: bool,
}

pub struct Conn {
    sh: Arc<TargetShared>,
    /// Unique among all connections of the target.
    id: u64,
    /// Registered as the holder of a normal session (see
    /// `TargetShared::register_session`).
    session_registered: bool,
    /// Owns the socket; closed when the connection is dropped.
    _stream: TcpStream,
    fd: RawFd,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    reactor: usize,
    phase: Phase,
    closing: bool,
    neg: Negotiator,
    login_text: Vec<u8>,
    login_started: bool,
    isid: [u8; 6],
    tsih: u16,
    params: SessionParams,
    hd: bool,
    dd: bool,
    stat_sn: u32,
    exp_cmd_sn: u32,
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
    direct_task: Option<u32>,
    /// Pool buffers this connection's tasks hold (bounded by `buf_limit`,
    /// so one connection cannot starve the reactor's others).
    bufs_held: usize,
    // send
    txq: VecDeque<Tx>,
    tx_fly: Vec<Tx>,
    iov: Vec<libc::iovec>,
    iov_pos: usize,
    tx_busy: bool,
    close_after_send: bool,
    // tasks
    tasks: Vec<Option<Task>>,
    free_tasks: Vec<u32>,
    by_itt: HashMap<u32, u32>,
    buf_waiters: VecDeque<u32>,
    next_ttt: u32,
    scratch: Vec<u8>,
    notify: Vec<u32>,
    /// Whether the login timer is in flight, and whether it was cancelled.
    timer_armed: bool,
    timer_cancelled: bool,
    /// The final Login Response, held while an old session is reinstated.
    pending_login: Option<(LoginResponse, Vec<u8>)>,
    reinstate_timer_armed: bool,
    reinstate_polls: u32,
}

impl Conn {
    pub fn new(sh: Arc<TargetShared>, stream: TcpStream, peer: SocketAddr, reactor: usize) -> Conn {
        let fd = stream.as_raw_fd();
        let local = stream.local_addr().ok();
        let neg = Negotiator::new(sh.limits.clone());
        let id = sh.conn_id();
        Conn {
            id,
            session_registered: false,
            sh,
            _stream: stream,
            fd,
            peer,
            local,
            reactor,
            phase: Phase::Login,
            closing: false,
            neg,
            login_text: Vec::new(),
            login_started: false,
            isid: [0; 6],
            tsih: 0,
            params: SessionParams::default(),
            hd: false,
            dd: false,
            stat_sn: 0,
            exp_cmd_sn: 0,
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
            bufs_held: 0,
            txq: VecDeque::with_capacity(256),
            tx_fly: Vec::with_capacity(SEND_BATCH),
            iov: Vec::with_capacity(SEND_BATCH * 3),
            iov_pos: 0,
            tx_busy: false,
            close_after_send: false,
            tasks: Vec::new(),
            free_tasks: Vec::new(),
            by_itt: HashMap::new(),
            buf_waiters: VecDeque::new(),
            next_ttt: 1,
            scratch: Vec::with_capacity(4096),
            notify: Vec::with_capacity(SEND_BATCH),
            timer_armed: false,
            timer_cancelled: false,
            pending_login: None,
            reinstate_timer_armed: false,
            reinstate_polls: 0,
        }
    }

    fn sn(&self) -> Sn {
        let active = self.by_itt.len() as u32;
        let window = self.sh.queue_depth.saturating_sub(active).max(1);
        Sn {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.exp_cmd_sn.wrapping_add(window - 1),
        }
    }

    /// Queue a PDU that carries status (it advances StatSN), built by
    /// `build` from the sequence numbers, and start sending. With `close`,
    /// nothing more is read and the connection closes once it is out.
    fn send_status(
        &mut self,
        io: &mut impl IoOps,
        data: TxData,
        close: bool,
        build: impl FnOnce(&mut [u8; BHS_LEN], Sn),
    ) {
        let sn = self.sn_status();
        let mut hdr = [0u8; BHS_LEN];
        build(&mut hdr, sn);
        self.queue(hdr, data, NO_TASK, false, close);
        if close {
            self.close_after_send = true;
        }
        self.flush_tx(io);
    }

    /// Sequence numbers for a PDU that carries status (advances StatSN).
    fn sn_status(&mut self) -> Sn {
        let s = self.sn();
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    // ------------------------------------------------------------------
    // Closing

    fn close(&mut self, why: &str) {
        if !self.closing {
            tracing::info!(
                "connection {} (reactor {}): closing: {why}",
                self.peer,
                self.reactor
            );
            self.closing = true;
            // Ends the receive and send in flight; the socket itself is
            // closed when the connection is dropped.
            let _ = self._stream.shutdown(std::net::Shutdown::Both);
            self.txq.clear();
        }
    }

    /// Reject the PDU in `cur` and close the connection once the Reject is
    /// out (ERL 0 has no way to resynchronise).
    fn reject_and_close(&mut self, io: &mut impl IoOps, reason: u8, why: &str) {
        tracing::warn!(
            "connection {}: rejecting PDU ({why}), reason {reason:#x}",
            self.peer
        );
        let rejected = TxData::Owned(self.cur.to_vec());
        self.send_status(io, rejected, true, |h, sn| build_reject(h, reason, sn));
    }

    /// Reject the PDU in `cur` and carry on.
    fn reject(&mut self, io: &mut impl IoOps, reason: u8, why: &str) {
        tracing::warn!(
            "connection {}: rejecting PDU ({why}), reason {reason:#x}",
            self.peer
        );
        let rejected = TxData::Owned(self.cur.to_vec());
        self.send_status(io, rejected, false, |h, sn| build_reject(h, reason, sn));
    }

    // ------------------------------------------------------------------
    // Receive path

    fn post_recv(&mut self, io: &mut impl IoOps) {
        if self.rx_busy || self.closing || self.close_after_send || self.txq.len() > TXQ_MAX {
            return;
        }
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if RX_CAP - self.rx_end < 4096 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        let room = RX_CAP - self.rx_end;
        let ptr = self.rx[self.rx_end..].as_mut_ptr();
        // SAFETY: `rx` is a boxed slice owned by the connection and never
        // reallocated; the reactor drops a connection only once nothing is
        // in flight, and `rx_busy` keeps the rest of the code from
        // touching `rx[rx_end..]` until the receive completes.
        unsafe { io.recv(self.fd, ptr, room as u32, TAG_RECV) };
        self.rx_busy = true;
    }

    fn header_len(&self, bhs: &Bhs<'_>) -> usize {
        BHS_LEN + bhs.ahs_len() + if self.hd { DIGEST_LEN } else { 0 }
    }

    /// Largest data segment we accept now.
    fn max_dsl(&self) -> usize {
        if self.phase == Phase::Login {
            // Login text is bounded by our declaration too.
            self.sh.limits.max_recv_data_segment_length.max(8192) as usize
        } else {
            self.params.target_max_recv_dsl.max(512) as usize
        }
    }

    /// Consume whatever complete pieces sit in the staging buffer.
    fn process_rx(&mut self, io: &mut impl IoOps) {
        while !self.closing && !self.close_after_send {
            match self.rx_state {
                Rx::Header => {
                    let avail = &self.rx[self.rx_start..self.rx_end];
                    let Ok(bhs) = Bhs::parse(avail) else { break };
                    let hlen = self.header_len(&bhs);
                    if avail.len() < hlen {
                        break;
                    }
                    self.cur.copy_from_slice(bhs.bytes());
                    if self.hd {
                        let got = u32::from_le_bytes(avail[hlen - 4..hlen].try_into().unwrap());
                        let want = digest(&[&avail[..hlen - 4]]);
                        if got != want {
                            // RFC 7143 7.8: a header digest error at ERL 0
                            // means the connection cannot be trusted.
                            self.close("header digest error");
                            break;
                        }
                    }
                    self.rx_start += hlen;
                    let dsl = bhs.data_segment_len();
                    if dsl > self.max_dsl() {
                        self.reject_and_close(
                            io,
                            reject_reason::PROTOCOL_ERROR,
                            "data segment longer than negotiated",
                        );
                        break;
                    }
                    let sink = self.on_header(io, dsl);
                    if self.closing || self.close_after_send {
                        break;
                    }
                    if dsl == 0 {
                        self.on_pdu(io, Sink::Discard);
                        continue;
                    }
                    self.pdu_data.clear();
                    self.data_crc = 0;
                    let trailer = pad_len(dsl) + if self.dd { DIGEST_LEN } else { 0 };
                    self.rx_state = Rx::Data {
                        sink,
                        total: dsl,
                        got: 0,
                        trailer,
                    };
                }
                Rx::Data {
                    sink,
                    total,
                    got,
                    trailer,
                } => {
                    if got < total {
                        let avail = self.rx_end - self.rx_start;
                        let n = avail.min(total - got);
                        if n > 0 {
                            let (s, e) = (self.rx_start, self.rx_start + n);
                            let bytes: &[u8] = &self.rx[s..e];
                            if self.dd {
                                self.data_crc = crc32c::crc32c_append(self.data_crc, bytes);
                            }
                            deliver(
                                &self.tasks,
                                &mut self.pdu_data,
                                io.pool_mut(),
                                sink,
                                got,
                                bytes,
                            );
                            self.rx_start += n;
                        }
                        let got = got + n;
                        if self.data_progress(io, got) {
                            return;
                        }
                        if got < total {
                            break;
                        }
                    }
                    let avail = self.rx_end - self.rx_start;
                    if avail < trailer {
                        break;
                    }
                    let t = &self.rx[self.rx_start..self.rx_start + trailer];
                    if self.dd {
                        let pad = trailer - DIGEST_LEN;
                        let crc = crc32c::crc32c_append(self.data_crc, &t[..pad]);
                        let got = u32::from_le_bytes(t[pad..].try_into().unwrap());
                        if crc != got {
                            self.rx_start += trailer;
                            self.rx_state = Rx::Header;
                            self.reject_and_close(
                                io,
                                reject_reason::DATA_DIGEST_ERROR,
                                "data digest error",
                            );
                            break;
                        }
                    }
                    self.rx_start += trailer;
                    self.rx_state = Rx::Header;
                    self.on_pdu(io, sink);
                }
            }
        }
        self.post_recv(io);
    }

    /// `got` bytes of the current data segment are in. If the rest can go
    /// straight into a task buffer, start that receive and return true.
    fn data_progress(&mut self, io: &mut impl IoOps, got: usize) -> bool {
        let Rx::Data {
            sink,
            total,
            trailer,
            ..
        } = self.rx_state
        else {
            return false;
        };
        self.rx_state = Rx::Data {
            sink,
            total,
            got,
            trailer,
        };
        if got < total {
            if let Some((idx, off)) = self.direct_target(sink, got, total) {
                self.recv_direct(io, idx, off, total - got);
                return true;
            }
        }
        false
    }

    /// Receive the next `len` bytes of the data segment straight into task
    /// `task`'s pool buffer at byte `off`.
    fn recv_direct(&mut self, io: &mut impl IoOps, task: u32, off: u32, len: usize) {
        let Some(buf) = self.tasks[task as usize]
            .as_ref()
            .and_then(|t| t.buf.as_ref())
        else {
            return;
        };
        io.recv_pool(self.fd, buf, off, len as u32, TAG_RECV_DIRECT);
        self.direct_task = Some(task);
        self.direct_off = off;
        self.rx_busy = true;
    }

    /// Where a direct recv of the rest of a data segment may land (task and
    /// offset in its buffer), if the sink is a task buffer that covers all
    /// of it.
    fn direct_target(&mut self, sink: Sink, got: usize, total: usize) -> Option<(u32, u32)> {
        if total - got < DIRECT_MIN {
            return None;
        }
        let Sink::Task { idx, off } = sink else {
            return None;
        };
        let t = self.tasks.get(idx as usize)?.as_ref()?;
        let start = off as u64 + got as u64;
        let end = off as u64 + total as u64;
        if start < t.chunk_start as u64 || end > (t.chunk_start + t.chunk_len) as u64 {
            return None;
        }
        t.buf.as_ref()?;
        Some((idx, start as u32 - t.chunk_start))
    }

    // ------------------------------------------------------------------
    // PDU dispatch

    /// A header has been received: decide where its data goes. SCSI
    /// Command and Data-Out are acted on here so their data can land in
    /// the task's buffer.
    fn on_header(&mut self, io: &mut impl IoOps, dsl: usize) -> Sink {
        let cur = self.cur;
        let bhs = Bhs::parse(&cur).unwrap();
        let op = bhs.opcode();
        if self.phase == Phase::Login && op != Opcode::LoginRequest {
            self.reject_and_close(
                io,
                reject_reason::PROTOCOL_ERROR,
                "PDU other than Login before login completed",
            );
            return Sink::Discard;
        }
        match op {
            Opcode::ScsiCommand => self.on_scsi_command(io, bhs, dsl),
            Opcode::DataOut => self.on_data_out_header(io, bhs, dsl),
            _ => Sink::Vec,
        }
    }

    /// A whole PDU (header and data) has been received.
    fn on_pdu(&mut self, io: &mut impl IoOps, sink: Sink) {
        let cur = self.cur;
        let bhs = Bhs::parse(&cur).unwrap();
        match bhs.opcode() {
            Opcode::ScsiCommand => {
                if let Sink::Task { idx, .. } = sink {
                    let n = bhs.data_segment_len() as u32;
                    self.data_arrived(io, idx, 0, n, None);
                }
            }
            Opcode::DataOut => {
                if let Sink::Task { idx, off } = sink {
                    let n = bhs.data_segment_len() as u32;
                    let d = DataOut(bhs);
                    self.data_arrived(io, idx, off, n, Some((d.ttt(), bhs.final_bit())));
                }
            }
            Opcode::LoginRequest => self.on_login(io, bhs),
            Opcode::TextRequest => self.on_text(io, bhs),
            Opcode::NopOut => self.on_nop_out(io, bhs),
            Opcode::LogoutRequest => self.on_logout(io, bhs),
            Opcode::TaskMgmtRequest => self.on_tmf(io, bhs),
            Opcode::SnackRequest => {
                self.reject(
                    io,
                    reject_reason::PROTOCOL_ERROR,
                    "SNACK at ErrorRecoveryLevel 0",
                );
            }
            op => {
                let why = format!("unsupported opcode {:#04x}", op.as_u8());
                self.reject_and_close(io, reject_reason::COMMAND_NOT_SUPPORTED, &why);
            }
        }
    }

    /// CmdSN bookkeeping for a non-immediate command. False when the
    /// command lies outside the window and must be ignored (RFC 7143 4.2.2.1).
    fn accept_cmd_sn(&mut self, cmd_sn: u32, immediate: bool) -> bool {
        if immediate {
            return true;
        }
        let sn = self.sn();
        if !sn_in_window(cmd_sn, sn.exp_cmd_sn, sn.max_cmd_sn.wrapping_add(1)) {
            tracing::warn!(
                "connection {}: CmdSN {cmd_sn} outside window {}..{}; ignored",
                self.peer,
                sn.exp_cmd_sn,
                sn.max_cmd_sn
            );
            return false;
        }
        if !sn_lt(cmd_sn, self.exp_cmd_sn) {
            self.exp_cmd_sn = cmd_sn.wrapping_add(1);
        }
        true
    }

    // ------------------------------------------------------------------
    // Login

    fn on_login(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = LoginRequest::new(bhs) else {
            return;
        };
        if self.phase == Phase::FullFeature {
            self.reject_and_close(
                io,
                reject_reason::PROTOCOL_ERROR,
                "Login Request in full feature phase",
            );
            return;
        }
        if !self.login_started {
            self.login_started = true;
            self.isid = req.isid();
            self.stat_sn = req.exp_stat_sn();
            self.exp_cmd_sn = req.cmd_sn();
            self.tsih = req.tsih();
        }
        let mut resp = LoginResponse {
            transit: false,
            cont: false,
            csg: req.csg(),
            nsg: req.csg(),
            isid: self.isid,
            tsih: 0,
            itt: bhs.itt(),
            status_class: 0,
            status_detail: 0,
        };
        if req.version_min() > 0 {
            return self.login_fail(io, resp, (2, 0x05), "unsupported iSCSI version");
        }
        if self.tsih != 0 {
            // Adding a connection to (or reinstating) a session: bootlun
            // sessions have exactly one connection.
            return self.login_fail(io, resp, (2, 0x0a), "session does not exist");
        }
        if self.login_text.len() + self.pdu_data.len() > 64 * 1024 {
            return self.login_fail(io, resp, (2, 0x00), "login text too long");
        }
        self.login_text.extend_from_slice(&self.pdu_data);
        if req.cont() {
            // More text follows: answer with an empty response.
            self.send_status(io, TxData::None, false, |h, sn| {
                build_login_response(h, &resp, 0, sn)
            });
            return;
        }
        let stage = |v: u8| match v {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        };
        let (Some(csg), Some(nsg)) = (stage(req.csg()), stage(req.nsg())) else {
            return self.login_fail(io, resp, (2, 0x00), "invalid login stage");
        };
        if csg == Stage::FullFeature || (req.transit() && (nsg as u8) <= (csg as u8)) {
            return self.login_fail(io, resp, (2, 0x00), "invalid login stage transition");
        }
        let text = std::mem::take(&mut self.login_text);
        let mut out = Vec::new();
        let target = self.sh.target_name.clone();
        let exists = move |n: &str| n == target;
        match self
            .neg
            .step(csg, req.transit(), nsg, &text, &exists, &mut out)
        {
            Err(f) => {
                let st = f.status();
                let why = format!("{f:?}");
                self.login_fail(io, resp, st, &why)
            }
            Ok(r) => {
                resp.transit = r.transit;
                if r.transit {
                    resp.nsg = nsg as u8;
                }
                let done = r.transit && nsg == Stage::FullFeature;
                if !done {
                    let len = out.len();
                    self.send_status(io, TxData::Owned(out), false, |h, sn| {
                        build_login_response(h, &resp, len, sn)
                    });
                    return;
                }
                self.tsih = self.sh.alloc_tsih();
                resp.tsih = self.tsih;
                self.params = self.neg.params().clone();
                self.pending_login = Some((resp, out));
                self.finish_login(io);
            }
        }
    }

    /// Send the final Login Response and enter the full feature phase. A
    /// normal session whose InitiatorName and ISID belong to a live session
    /// reinstates it (RFC 7143 6.3.5): the old connection is shut down and
    /// the response waits until it has drained its I/O, so no command of
    /// the old session can land after one of the new.
    fn finish_login(&mut self, io: &mut impl IoOps) {
        if self.params.session_type == SessionType::Normal {
            match self
                .sh
                .claim_session(&self.params.initiator_name, self.isid, self.id, self.fd)
            {
                SessionClaim::Claimed => self.session_registered = true,
                SessionClaim::Reinstating => {
                    if self.reinstate_polls == 0 {
                        tracing::warn!(
                            "connection {}: session reinstatement: closing the previous connection of {} with this ISID",
                            self.peer,
                            self.params.initiator_name
                        );
                    }
                    self.reinstate_polls += 1;
                    if self.reinstate_polls > REINSTATE_MAX_POLLS {
                        let (resp, _) = self.pending_login.take().unwrap();
                        return self.login_fail(
                            io,
                            resp,
                            (3, 0x00),
                            "previous session did not end",
                        );
                    }
                    io.timeout(
                        Duration::from_millis(REINSTATE_POLL_MS),
                        TAG_REINSTATE_TIMER,
                    );
                    self.reinstate_timer_armed = true;
                    return;
                }
            }
        }
        let Some((resp, out)) = self.pending_login.take() else {
            return;
        };
        let len = out.len();
        // The last Login Response goes out without digests; everything
        // after it uses them.
        self.send_status(io, TxData::Owned(out), false, |h, sn| {
            build_login_response(h, &resp, len, sn)
        });
        tracing::info!(
            "connection {}: login complete ({:?} session, initiator {}, digests {}/{}, MaxRecvDataSegmentLength {}/{}, burst {}/{}, InitialR2T {}, ImmediateData {})",
            self.peer,
            self.params.session_type,
            self.params.initiator_name,
            self.params.header_digest,
            self.params.data_digest,
            self.params.initiator_max_recv_dsl,
            self.params.target_max_recv_dsl,
            self.params.first_burst_length,
            self.params.max_burst_length,
            self.params.initial_r2t,
            self.params.immediate_data,
        );
        self.phase = Phase::FullFeature;
        self.hd = self.params.header_digest;
        self.dd = self.params.data_digest;
        self.post_recv(io);
    }

    fn login_fail(
        &mut self,
        io: &mut impl IoOps,
        mut resp: LoginResponse,
        st: (u8, u8),
        why: &str,
    ) {
        tracing::warn!(
            "connection {}: login failed: {why} (status {:02x}{:02x})",
            self.peer,
            st.0,
            st.1
        );
        resp.status_class = st.0;
        resp.status_detail = st.1;
        resp.transit = false;
        self.send_status(io, TxData::None, true, |h, sn| {
            build_login_response(h, &resp, 0, sn)
        });
    }

    // ------------------------------------------------------------------
    // Text, NOP, Logout

    fn on_text(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = TextRequest::new(bhs) else {
            return;
        };
        if !self.accept_cmd_sn(req.cmd_sn(), bhs.immediate()) {
            return;
        }
        if req.cont() || (req.ttt() != RESERVED_TAG && self.pdu_data.is_empty()) {
            // Multi-PDU text exchanges are not needed for the keys we
            // answer; say so instead of guessing.
            self.reject(
                io,
                reject_reason::COMMAND_NOT_SUPPORTED,
                "continued Text Request",
            );
            return;
        }
        let portals: Vec<String> = if self.sh.portals.is_empty() {
            match self.local {
                Some(SocketAddr::V6(a)) => vec![format!("[{}]:{},1", a.ip(), a.port())],
                Some(a) => vec![format!("{a},1")],
                None => vec![],
            }
        } else {
            self.sh.portals.clone()
        };
        let rec = [TargetRecord {
            name: &self.sh.target_name,
            portals: &portals,
        }];
        let session_target = match self.params.session_type {
            SessionType::Discovery => None,
            SessionType::Normal => Some(self.sh.target_name.as_str()),
        };
        let mut out = Vec::new();
        answer_text(&self.pdu_data, &rec, session_target, &mut out);
        let limit = self.params.initiator_max_recv_dsl as usize;
        if out.len() > limit {
            // Cut at a key boundary so the initiator gets whole records.
            let cut = out[..limit]
                .iter()
                .rposition(|&b| b == 0)
                .map(|p| p + 1)
                .unwrap_or(0);
            out.truncate(cut);
        }
        let (itt, len) = (bhs.itt(), out.len());
        self.send_status(io, TxData::Owned(out), false, |h, sn| {
            build_text_response(h, itt, RESERVED_TAG, true, false, len, sn)
        });
    }

    fn on_nop_out(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(nop) = NopOut::new(bhs) else { return };
        if !self.accept_cmd_sn(nop.cmd_sn(), bhs.immediate()) {
            return;
        }
        if bhs.itt() == RESERVED_TAG {
            // A reply to our NOP-In, or a one-way ping: nothing to send.
            return;
        }
        let data = std::mem::take(&mut self.pdu_data);
        let limit = self.params.initiator_max_recv_dsl as usize;
        let data = if data.len() > limit {
            data[..limit].to_vec()
        } else {
            data
        };
        let (itt, lun, len) = (bhs.itt(), bhs.lun_raw(), data.len());
        self.send_status(io, TxData::Owned(data), false, |h, sn| {
            build_nop_in(h, itt, RESERVED_TAG, lun, len, sn)
        });
    }

    fn on_logout(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = LogoutRequest::new(bhs) else {
            return;
        };
        if !self.accept_cmd_sn(req.cmd_sn(), bhs.immediate()) {
            return;
        }
        let response = match req.reason() {
            0 | 1 => LOGOUT_OK,
            _ => LOGOUT_RECOVERY_UNSUPPORTED,
        };
        tracing::info!("connection {}: logout (reason {})", self.peer, req.reason());
        let itt = bhs.itt();
        self.send_status(io, TxData::None, true, |h, sn| {
            build_logout_response(h, itt, response, sn)
        });
    }

    // ------------------------------------------------------------------
    // Task management

    fn on_tmf(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = TaskMgmtRequest::new(bhs) else {
            return;
        };
        if !self.accept_cmd_sn(req.cmd_sn(), bhs.immediate()) {
            return;
        }
        use tmf_response::*;
        let lun = bhs.lun() as usize;
        let response = match req.function() {
            TmfFunction::AbortTask => match self.by_itt.get(&req.referenced_task_tag()).copied() {
                Some(idx) => {
                    self.abort_task(io, idx);
                    FUNCTION_COMPLETE
                }
                None => TASK_DOES_NOT_EXIST,
            },
            TmfFunction::AbortTaskSet
            | TmfFunction::ClearTaskSet
            | TmfFunction::LogicalUnitReset => {
                if lun >= self.sh.luns.len() {
                    LUN_DOES_NOT_EXIST
                } else {
                    self.abort_where(io, |t| t.lun == lun);
                    FUNCTION_COMPLETE
                }
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                self.abort_where(io, |_| true);
                FUNCTION_COMPLETE
            }
            TmfFunction::TaskReassign => REASSIGNMENT_NOT_SUPPORTED,
            TmfFunction::ClearAca | TmfFunction::Unknown(_) => NOT_SUPPORTED,
        };
        tracing::info!(
            "connection {}: task management {:?} -> {response}",
            self.peer,
            req.function()
        );
        let (itt, cold) = (bhs.itt(), req.function() == TmfFunction::TargetColdReset);
        self.send_status(io, TxData::None, cold, |h, sn| {
            build_tmf_response(h, itt, response, sn)
        });
    }

    fn abort_where(&mut self, io: &mut impl IoOps, f: impl Fn(&Task) -> bool) {
        let idxs: Vec<u32> = self
            .by_itt
            .values()
            .copied()
            .filter(|&i| self.tasks[i as usize].as_ref().is_some_and(&f))
            .collect();
        for i in idxs {
            self.abort_task(io, i);
        }
    }

    /// Forget a task: no status will be sent for it. Its buffers return
    /// once its I/O and queued sends have drained.
    fn abort_task(&mut self, io: &mut impl IoOps, idx: u32) {
        let Some(t) = self.tasks[idx as usize].as_mut() else {
            return;
        };
        t.aborted = true;
        t.finished = true;
        let itt = t.itt;
        self.by_itt.remove(&itt);
        self.buf_waiters.retain(|&w| w != idx);
        self.maybe_free(io, idx);
    }

    // ------------------------------------------------------------------
    // SCSI commands

    fn on_scsi_command(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>, dsl: usize) -> Sink {
        let cmd = ScsiCommand::new(bhs).unwrap();
        if !self.accept_cmd_sn(cmd.cmd_sn(), bhs.immediate()) {
            return Sink::Discard;
        }
        let itt = bhs.itt();
        if self.params.session_type == SessionType::Discovery {
            self.reject(
                io,
                reject_reason::PROTOCOL_ERROR,
                "SCSI command in a discovery session",
            );
            return Sink::Discard;
        }
        if self.by_itt.len() >= 2 * self.sh.queue_depth as usize {
            // Only immediate commands can get here (the CmdSN window holds
            // the rest back): refuse instead of growing without bound.
            self.respond_status(io, itt, Status::TaskSetFull, Residual::None, 0);
            return Sink::Discard;
        }
        if self.by_itt.contains_key(&itt) {
            self.reject(
                io,
                reject_reason::TASK_IN_PROGRESS,
                "ITT of a command still in progress",
            );
            return Sink::Discard;
        }
        if dsl > 0
            && (!cmd.write()
                || !self.params.immediate_data
                || dsl as u32 > self.params.first_burst_length)
        {
            self.reject_and_close(
                io,
                reject_reason::PROTOCOL_ERROR,
                "unexpected immediate data",
            );
            return Sink::Discard;
        }
        let edtl = cmd.expected_len();
        if bhs.ahs_len() > 0 {
            // Extended CDBs and bidirectional commands are not supported.
            self.respond_check(io, itt, Sense::invalid_opcode(), Residual::None);
            return Sink::Discard;
        }
        let lun = bhs.lun();
        let lu = self.sh.luns.get(lun as usize).map(|l| &l.info);
        let ctx = CommandCtx {
            lun,
            lu,
            luns: &self.sh.lun_numbers,
            expected_len: edtl,
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let outcome = scsi::execute(cmd.cdb(), &ctx, &mut scratch);
        let bs = lu.map(|l| l.block_size).unwrap_or(512);
        let sink = match outcome {
            Outcome::Good => {
                self.respond_data(io, bhs, &scratch);
                Sink::Discard
            }
            Outcome::Check(sense) => {
                self.respond_check(io, itt, sense, Residual::None);
                Sink::Discard
            }
            Outcome::Read { lba, blocks, fua } => {
                let wanted = blocks as u64 * bs as u64;
                if !cmd.read() {
                    // No Data-In was asked for (some initiators flag odd
                    // commands as writes): nothing moves, report it all
                    // as overflow. Any unsolicited data is dropped.
                    self.respond_status(io, itt, Status::Good, Residual::of(0, wanted), 0);
                    self.scratch = scratch;
                    return Sink::Discard;
                }
                let idx = self.new_task(bhs, Kind::Read, lba, fua, bs, wanted, edtl);
                if self.tasks[idx as usize].as_ref().unwrap().xfer == 0 {
                    self.finish_good(io, idx);
                } else {
                    self.run_task(io, idx);
                }
                Sink::Discard
            }
            Outcome::Write { lba, blocks, fua } => {
                let wanted = blocks as u64 * bs as u64;
                self.start_data_out_task(io, bhs, Kind::Write, lba, fua, bs, wanted, edtl, dsl)
            }
            Outcome::Verify {
                lba,
                blocks,
                bytchk: true,
            } => {
                let wanted = blocks as u64 * bs as u64;
                self.start_data_out_task(
                    io,
                    bhs,
                    Kind::VerifyCompare,
                    lba,
                    false,
                    bs,
                    wanted,
                    edtl,
                    dsl,
                )
            }
            Outcome::Verify { bytchk: false, .. } => {
                self.respond_status(io, itt, Status::Good, Residual::of(edtl, 0), 0);
                Sink::Discard
            }
            Outcome::Flush => {
                let idx = self.new_task(bhs, Kind::Flush, 0, false, bs, 0, edtl);
                self.run_task(io, idx);
                Sink::Discard
            }
        };
        self.scratch = scratch;
        sink
    }

    #[allow(clippy::too_many_arguments)]
    fn start_data_out_task(
        &mut self,
        io: &mut impl IoOps,
        bhs: Bhs<'_>,
        kind: Kind,
        lba: u64,
        fua: bool,
        bs: u32,
        wanted: u64,
        edtl: u32,
        dsl: usize,
    ) -> Sink {
        let itt = bhs.itt();
        // With EDTL below what the CDB describes (overflow) only the whole
        // blocks the initiator sends are written; with EDTL above it
        // (underflow) the extra data is dropped. Both report a residual.
        let idx = self.new_task(bhs, kind, lba, fua, bs, wanted, edtl);
        if self.tasks[idx as usize].as_ref().unwrap().xfer < bs {
            self.finish_good(io, idx);
            return Sink::Discard;
        }
        let unsol_limit = if self.params.initial_r2t {
            dsl as u32
        } else {
            self.params.first_burst_length.min(edtl)
        };
        {
            let t = self.tasks[idx as usize].as_mut().unwrap();
            t.unsol_limit = unsol_limit;
            t.unsol_next = dsl as u32;
        }
        if !self.can_take(io, kind.buffers()) {
            if unsol_limit > 0 {
                // Data is on its way and there is nowhere to put it.
                io.stats().buffer_waits.fetch_add(1, Relaxed);
                self.drop_task(io, idx);
                self.respond_status(io, itt, Status::TaskSetFull, Residual::None, 0);
                return Sink::Discard;
            }
            // Nothing comes before our R2T: wait for a buffer.
            self.park_for_buffer(io, idx);
            return Sink::Discard;
        }
        self.start_data_out(io, idx);
        if dsl > 0 {
            Sink::Task { idx, off: 0 }
        } else {
            Sink::Discard
        }
    }

    /// A write or verify task got its buffers: ask for the data.
    fn start_data_out(&mut self, io: &mut impl IoOps, idx: u32) {
        self.take_buffers(io, idx);
        let t = self.tasks[idx as usize].as_mut().unwrap();
        t.unsol_end = t.unsol_limit.min(t.xfer).min(t.chunk_len);
        t.r2t_next = t.unsol_end;
        self.send_r2t(idx);
        self.flush_tx(io);
    }

    /// Most buffers one connection may hold: a quarter of the reactor's
    /// pool, and at least four.
    fn buf_limit(io: &impl IoOps) -> usize {
        (io.pool().count() / 4).max(4)
    }

    fn can_take(&self, io: &impl IoOps, n: usize) -> bool {
        io.pool().available() >= n && self.bufs_held + n <= Self::buf_limit(io)
    }

    /// Queue task `idx` until a buffer can be had.
    fn park_for_buffer(&mut self, io: &mut impl IoOps, idx: u32) {
        let t = self.tasks[idx as usize].as_mut().unwrap();
        if !t.waiting_buf {
            t.waiting_buf = true;
            io.stats().buffer_waits.fetch_add(1, Relaxed);
            self.buf_waiters.push_back(idx);
        }
        // Buffers held by other connections: hear when they come back.
        // (Our own come back through `maybe_free`.)
        if io.pool().available() < 2 {
            io.wait_for_buffers();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_task(
        &mut self,
        bhs: Bhs<'_>,
        kind: Kind,
        lba: u64,
        fua: bool,
        bs: u32,
        wanted: u64,
        edtl: u32,
    ) -> u32 {
        let xfer = wanted.min(edtl as u64) as u32;
        let t = Task {
            itt: bhs.itt(),
            lun: bhs.lun() as usize,
            lun_raw: bhs.lun_raw(),
            kind,
            lba,
            fua,
            bs,
            wanted,
            edtl,
            xfer,
            done: 0,
            buf: None,
            cmp_buf: None,
            chunk_start: 0,
            chunk_len: 0,
            chunk_got: 0,
            unsol_end: 0,
            unsol_next: 0,
            unsol_limit: 0,
            r2t_next: 0,
            r2t: None,
            r2t_sn: 0,
            unsol_data_sn: 0,
            data_sn: 0,
            burst: 0,
            sends: 0,
            io_busy: false,
            waiting_buf: false,
            finished: false,
            aborted: false,
        };
        let idx = match self.free_tasks.pop() {
            Some(i) => {
                self.tasks[i as usize] = Some(t);
                i
            }
            None => {
                self.tasks.push(Some(t));
                (self.tasks.len() - 1) as u32
            }
        };
        self.by_itt.insert(bhs.itt(), idx);
        idx
    }

    fn take_buffers(&mut self, io: &mut impl IoOps, idx: u32) {
        let buf_size = io.pool().buf_size() as u32;
        let t = self.tasks[idx as usize].as_mut().unwrap();
        t.buf = io.pool_mut().alloc();
        if t.kind == Kind::VerifyCompare {
            t.cmp_buf = io.pool_mut().alloc();
        }
        self.bufs_held += t.buf.is_some() as usize + t.cmp_buf.is_some() as usize;
        let chunk_max = buf_size - buf_size % t.bs;
        t.chunk_start = 0;
        t.chunk_len = t.xfer.min(chunk_max);
        t.chunk_got = 0;
    }

    /// Move a read or flush task forward: get a buffer, start the next
    /// medium operation.
    fn run_task(&mut self, io: &mut impl IoOps, idx: u32) {
        let Some(t) = self.tasks[idx as usize].as_mut() else {
            return;
        };
        if t.finished || t.io_busy {
            return;
        }
        // The backend is borrowed, not cloned: an Arc clone per I/O would
        // bounce one refcount cache line between every reactor.
        let lun = t.lun;
        let issued = match t.kind {
            Kind::Flush => {
                t.io_busy = true;
                io.disk_flush(&*self.sh.luns[lun].backend, TAG_DISK | idx)
            }
            Kind::Read => {
                if t.buf.is_none() {
                    if !self.can_take(io, 1) {
                        return self.park_for_buffer(io, idx);
                    }
                    self.take_buffers(io, idx);
                }
                let buf_size = io.pool().buf_size() as u32;
                let t = self.tasks[idx as usize].as_mut().unwrap();
                t.waiting_buf = false;
                let chunk_max = buf_size - buf_size % t.bs;
                t.chunk_start = t.done;
                t.chunk_len = (t.xfer - t.done).min(chunk_max);
                // The medium is read in whole blocks even when the
                // initiator asked for less (overflow).
                let disk_len = t.chunk_len.div_ceil(t.bs) * t.bs;
                t.io_busy = true;
                let Some(b) = t.buf.as_ref() else { return };
                let offset = t.lba * t.bs as u64 + t.chunk_start as u64;
                io.disk_read(
                    &*self.sh.luns[lun].backend,
                    b,
                    disk_len,
                    offset,
                    TAG_DISK | idx,
                )
            }
            Kind::Write | Kind::VerifyCompare => {
                if t.buf.is_none() {
                    let need = t.kind.buffers();
                    if !self.can_take(io, need) {
                        return self.park_for_buffer(io, idx);
                    }
                    self.tasks[idx as usize].as_mut().unwrap().waiting_buf = false;
                    self.start_data_out(io, idx);
                }
                return;
            }
        };
        self.disk_issued(io, idx, issued);
    }

    fn disk_issued(&mut self, io: &mut impl IoOps, idx: u32, issued: Issued) {
        if let Issued::Done(res) = issued {
            self.disk_done(io, idx, res);
        }
    }

    /// Data bytes `[off, off+n)` of task `idx` have been stored.
    fn data_arrived(
        &mut self,
        io: &mut impl IoOps,
        idx: u32,
        off: u32,
        n: u32,
        data_out: Option<(u32, bool)>,
    ) {
        let Some(t) = self.tasks[idx as usize].as_mut() else {
            return;
        };
        if t.finished {
            return;
        }
        let ws = t.chunk_start as u64;
        let we = ws + t.chunk_len as u64;
        let s = (off as u64).max(ws);
        let e = (off as u64 + n as u64).min(we);
        if e > s {
            t.chunk_got += (e - s) as u32;
        }
        if let (Some((ttt, _)), Some(r)) = (data_out, t.r2t.as_ref()) {
            if ttt == r.ttt && r.got >= r.len {
                t.r2t = None;
            }
        }
        if t.chunk_got >= t.chunk_len && !t.io_busy {
            self.chunk_received(io, idx);
        } else {
            self.send_r2t(idx);
            self.flush_tx(io);
        }
    }

    /// The current chunk of a write or verify has all its data.
    fn chunk_received(&mut self, io: &mut impl IoOps, idx: u32) {
        let t = self.tasks[idx as usize].as_mut().unwrap();
        // Only whole blocks reach the medium (an overflowing EDTL can end
        // mid-block).
        let len = t.chunk_len - t.chunk_len % t.bs;
        if len == 0 {
            return self.next_chunk(io, idx);
        }
        let (lun, fua, write) = (t.lun, t.fua, t.kind == Kind::Write);
        let off = t.lba * t.bs as u64 + t.chunk_start as u64;
        t.io_busy = true;
        let b = match t.kind {
            Kind::VerifyCompare => t.cmp_buf.as_ref(),
            _ => t.buf.as_ref(),
        };
        let Some(b) = b else { return };
        let backend = &*self.sh.luns[lun].backend;
        let issued = if write {
            io.stats().write_ops.fetch_add(1, Relaxed);
            io.disk_write(backend, b, len, off, fua, TAG_DISK | idx)
        } else {
            io.disk_read(backend, b, len, off, TAG_DISK | idx)
        };
        self.disk_issued(io, idx, issued);
    }

    /// Send the next R2T of a write if none is outstanding
    /// (MaxOutstandingR2T is 1) and the chunk still lacks data.
    fn send_r2t(&mut self, idx: u32) {
        let max_burst = self.params.max_burst_length.max(512);
        let sn = self.sn();
        let ttt = self.next_ttt;
        let Some(t) = self.tasks[idx as usize].as_mut() else {
            return;
        };
        if t.finished || t.r2t.is_some() {
            return;
        }
        let chunk_end = t.chunk_start + t.chunk_len;
        if t.r2t_next < t.chunk_start {
            t.r2t_next = t.chunk_start;
        }
        if t.r2t_next >= chunk_end {
            return;
        }
        let len = (chunk_end - t.r2t_next).min(max_burst);
        let off = t.r2t_next;
        t.r2t = Some(R2tOut {
            ttt,
            off,
            len,
            got: 0,
            data_sn: 0,
        });
        t.r2t_next += len;
        let r2t_sn = t.r2t_sn;
        t.r2t_sn += 1;
        let (itt, lun_raw) = (t.itt, t.lun_raw);
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        let mut hdr = [0u8; BHS_LEN];
        build_r2t(&mut hdr, itt, lun_raw, ttt, r2t_sn, off, len, sn);
        self.queue(hdr, TxData::None, NO_TASK, false, false);
    }

    fn on_data_out_header(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>, dsl: usize) -> Sink {
        let d = DataOut::new(bhs).unwrap();
        let Some(&idx) = self.by_itt.get(&bhs.itt()) else {
            // Data for a task that was aborted or already answered.
            tracing::debug!(
                "connection {}: Data-Out for unknown ITT {:#x} dropped",
                self.peer,
                bhs.itt()
            );
            return Sink::Discard;
        };
        let t = self.tasks[idx as usize].as_ref().unwrap();
        if !matches!(t.kind, Kind::Write | Kind::VerifyCompare) {
            self.reject_and_close(
                io,
                reject_reason::PROTOCOL_ERROR,
                "Data-Out for a command without data",
            );
            return Sink::Discard;
        }
        // DataPDUInOrder and DataSequenceInOrder are Yes: every burst's
        // data comes in order, each byte once. Anything else (overlaps,
        // repeats, gaps, bytes past the burst) would let a chunk look
        // complete with bytes missing.
        let off = d.buffer_offset();
        let end = off as u64 + dsl as u64;
        let fin = bhs.final_bit();
        let initial_r2t = self.params.initial_r2t;
        let t = self.tasks[idx as usize].as_mut().unwrap();
        let ok = if d.ttt() == RESERVED_TAG {
            let ok = !initial_r2t && off == t.unsol_next && end <= t.unsol_limit as u64;
            if ok {
                t.unsol_next = end as u32;
            }
            ok
        } else {
            match t.r2t.as_mut() {
                Some(r)
                    if r.ttt == d.ttt()
                        && off == r.off + r.got
                        && end <= (r.off + r.len) as u64
                        && (!fin || end == (r.off + r.len) as u64) =>
                {
                    r.got += dsl as u32;
                    true
                }
                _ => false,
            }
        };
        if !ok {
            self.reject_and_close(
                io,
                reject_reason::PROTOCOL_ERROR,
                "Data-Out out of order or outside the solicited range",
            );
            return Sink::Discard;
        }
        // DataSN counts the Data-Out PDUs of each burst from 0 (RFC 7143
        // 11.7.5); a gap or repeat means lost or duplicated data.
        let t = self.tasks[idx as usize].as_mut().unwrap();
        let expected = match t.r2t.as_mut() {
            Some(r) if d.ttt() != RESERVED_TAG => &mut r.data_sn,
            _ => &mut t.unsol_data_sn,
        };
        if d.data_sn() != *expected {
            let why = format!(
                "Data-Out DataSN {} where {} was due",
                d.data_sn(),
                *expected
            );
            self.reject_and_close(io, reject_reason::PROTOCOL_ERROR, &why);
            return Sink::Discard;
        }
        *expected += 1;
        Sink::Task { idx, off }
    }

    /// A medium operation of task `idx` finished with `res`.
    fn disk_done(&mut self, io: &mut impl IoOps, idx: u32, res: i32) {
        let Some(t) = self.tasks[idx as usize].as_mut() else {
            return;
        };
        t.io_busy = false;
        if t.finished {
            self.maybe_free(io, idx);
            return;
        }
        match t.kind {
            Kind::Flush => {
                if res < 0 {
                    tracing::warn!("flush failed: {}", std::io::Error::from_raw_os_error(-res));
                    self.finish_check(io, idx, Sense::write_error());
                } else {
                    self.finish_good(io, idx);
                }
            }
            Kind::Read => {
                if res < 0 {
                    tracing::warn!("read failed: {}", std::io::Error::from_raw_os_error(-res));
                    return self.finish_check(io, idx, Sense::read_error());
                }
                if (res as u32) < t.chunk_len {
                    // Short read past the end of a shrinking file: zeros.
                    if let Some(b) = t.buf.as_ref() {
                        io.pool_mut().slice_mut(b, t.chunk_len as usize)[res as usize..].fill(0);
                    }
                }
                io.stats().read_ops.fetch_add(1, Relaxed);
                self.queue_data_in(io, idx);
            }
            Kind::Write => {
                if res < 0 || (res as u32) < t.chunk_len - t.chunk_len % t.bs {
                    tracing::warn!("write failed: {res}");
                    return self.finish_check(io, idx, Sense::write_error());
                }
                io.stats()
                    .write_bytes
                    .fetch_add(t.chunk_len as u64, Relaxed);
                self.next_chunk(io, idx);
            }
            Kind::VerifyCompare => {
                if res < 0 {
                    return self.finish_check(io, idx, Sense::read_error());
                }
                let len = (t.chunk_len - t.chunk_len % t.bs) as usize;
                let (Some(a), Some(b)) = (t.buf.as_ref(), t.cmp_buf.as_ref()) else {
                    return self.finish_check(io, idx, Sense::read_error());
                };
                let (sa, sb) = io.pool().pair(a, b, len);
                if let Some(pos) = sa.iter().zip(sb).position(|(x, y)| x != y) {
                    let at = t.chunk_start as u64 + pos as u64;
                    return self.finish_check(io, idx, Sense::miscompare(at));
                }
                self.next_chunk(io, idx);
            }
        }
    }

    /// After a write or verify chunk: the next chunk, or the status.
    fn next_chunk(&mut self, io: &mut impl IoOps, idx: u32) {
        let buf_size = io.pool().buf_size() as u32;
        let t = self.tasks[idx as usize].as_mut().unwrap();
        t.done += t.chunk_len;
        if t.done >= t.xfer {
            return self.finish_good(io, idx);
        }
        let chunk_max = buf_size - buf_size % t.bs;
        t.chunk_start = t.done;
        t.chunk_len = (t.xfer - t.done).min(chunk_max);
        t.chunk_got = 0;
        self.send_r2t(idx);
        self.flush_tx(io);
    }

    /// Queue the Data-In PDUs of the chunk just read.
    fn queue_data_in(&mut self, io: &mut impl IoOps, idx: u32) {
        let mrdsl = self.params.initiator_max_recv_dsl.max(512);
        let max_burst = self.params.max_burst_length.max(512);
        let t = self.tasks[idx as usize].as_ref().unwrap();
        let Some(buf) = t.buf.as_ref() else { return };
        let base = io.pool().ptr(buf);
        let (itt, lun_raw, start, len) = (t.itt, t.lun_raw, t.chunk_start, t.chunk_len);
        let last_chunk = start + len >= t.xfer;
        let residual = Residual::of(t.edtl, t.wanted);
        io.stats().read_bytes.fetch_add(len as u64, Relaxed);
        let mut pos = 0u32;
        while pos < len {
            let n = (len - pos).min(mrdsl);
            let t = self.tasks[idx as usize].as_mut().unwrap();
            let n = n.min(max_burst - t.burst);
            let end_of_data = pos + n >= len;
            t.burst += n;
            let end_of_burst = t.burst >= max_burst;
            if end_of_burst {
                t.burst = 0;
            }
            let data_sn = t.data_sn;
            t.data_sn += 1;
            t.sends += 1;
            let status_here = end_of_data && last_chunk;
            let sn = if status_here {
                self.sn_status()
            } else {
                self.sn()
            };
            let mut hdr = [0u8; BHS_LEN];
            build_data_in(
                &mut hdr,
                itt,
                lun_raw,
                data_sn,
                start + pos,
                n as usize,
                end_of_burst || status_here,
                status_here.then_some((Status::Good as u8, residual)),
                sn,
            );
            let data = TxData::Buf {
                ptr: base.wrapping_add(pos as usize),
                len: n,
            };
            self.queue(hdr, data, idx, end_of_data, false);
            pos += n;
        }
        let t = self.tasks[idx as usize].as_mut().unwrap();
        t.done += len;
        if last_chunk {
            t.finished = true;
            let itt = t.itt;
            self.by_itt.remove(&itt);
        }
        self.flush_tx(io);
    }

    /// A send of task `idx`'s data finished: read the next chunk.
    fn chunk_sent(&mut self, io: &mut impl IoOps, idx: u32) {
        let Some(t) = self.tasks[idx as usize].as_ref() else {
            return;
        };
        if t.finished {
            self.maybe_free(io, idx);
        } else if t.kind == Kind::Read {
            self.run_task(io, idx);
        }
    }

    fn finish_good(&mut self, io: &mut impl IoOps, idx: u32) {
        let t = self.tasks[idx as usize].as_mut().unwrap();
        let (itt, residual) = (t.itt, Residual::of(t.edtl, t.wanted));
        let exp_data_sn = t.data_sn;
        t.finished = true;
        self.by_itt.remove(&itt);
        self.respond_status(io, itt, Status::Good, residual, exp_data_sn);
        self.maybe_free(io, idx);
    }

    fn finish_check(&mut self, io: &mut impl IoOps, idx: u32, sense: Sense) {
        let t = self.tasks[idx as usize].as_mut().unwrap();
        let itt = t.itt;
        t.finished = true;
        self.by_itt.remove(&itt);
        self.respond_check(io, itt, sense, Residual::None);
        self.maybe_free(io, idx);
    }

    /// Remove a task that never started.
    fn drop_task(&mut self, io: &mut impl IoOps, idx: u32) {
        let t = self.tasks[idx as usize].as_mut().unwrap();
        t.finished = true;
        let itt = t.itt;
        self.by_itt.remove(&itt);
        self.maybe_free(io, idx);
    }

    /// Give a finished task's buffers back once nothing refers to them.
    fn maybe_free(&mut self, io: &mut impl IoOps, idx: u32) {
        let Some(t) = self.tasks[idx as usize].as_ref() else {
            return;
        };
        if !t.finished || t.io_busy || t.sends > 0 || self.direct_task == Some(idx) {
            return;
        }
        self.release_task(io, idx);
        // A buffer came back: wake a waiting read.
        self.run_buffer_waiters(io);
    }

    /// Start reads that were waiting for a pool buffer, while there are
    /// buffers.
    fn run_buffer_waiters(&mut self, io: &mut impl IoOps) {
        // Each waiter is tried once: one that still cannot get a buffer
        // goes back to the end of the queue.
        for _ in 0..self.buf_waiters.len() {
            if !self.can_take(io, 1) {
                break;
            }
            let Some(w) = self.buf_waiters.pop_front() else {
                break;
            };
            if let Some(wt) = self.tasks[w as usize].as_mut() {
                wt.waiting_buf = false;
            }
            self.run_task(io, w);
        }
    }

    // ------------------------------------------------------------------
    // Responses

    fn respond_status(
        &mut self,
        io: &mut impl IoOps,
        itt: u32,
        status: Status,
        residual: Residual,
        exp_data_sn: u32,
    ) {
        self.send_status(io, TxData::None, false, |h, sn| {
            build_scsi_response(h, itt, status as u8, residual, exp_data_sn, 0, sn)
        });
    }

    fn respond_check(&mut self, io: &mut impl IoOps, itt: u32, sense: Sense, residual: Residual) {
        let fixed = sense.fixed();
        let mut data = Vec::with_capacity(2 + fixed.len());
        data.extend_from_slice(&(fixed.len() as u16).to_be_bytes());
        data.extend_from_slice(&fixed);
        let len = data.len();
        self.send_status(io, TxData::Owned(data), false, |h, sn| {
            build_scsi_response(h, itt, Status::CheckCondition as u8, residual, 0, len, sn)
        });
    }

    /// GOOD status with Data-In from the emulation (INQUIRY and friends).
    fn respond_data(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>, data: &[u8]) {
        let cmd = ScsiCommand(bhs);
        let edtl = cmd.expected_len();
        let itt = bhs.itt();
        let n = if cmd.read() {
            data.len().min(edtl as usize)
        } else {
            0
        };
        let residual = Residual::of(edtl, data.len() as u64);
        if n == 0 {
            return self.respond_status(io, itt, Status::Good, residual, 0);
        }
        let mrdsl = self.params.initiator_max_recv_dsl.max(512) as usize;
        let mut pos = 0;
        let mut data_sn = 0;
        while pos < n {
            let len = (n - pos).min(mrdsl);
            let last = pos + len >= n;
            let sn = if last { self.sn_status() } else { self.sn() };
            let mut hdr = [0u8; BHS_LEN];
            build_data_in(
                &mut hdr,
                itt,
                bhs.lun_raw(),
                data_sn,
                pos as u32,
                len,
                last,
                last.then_some((Status::Good as u8, residual)),
                sn,
            );
            self.queue(
                hdr,
                TxData::Owned(data[pos..pos + len].to_vec()),
                NO_TASK,
                false,
                false,
            );
            pos += len;
            data_sn += 1;
        }
        self.flush_tx(io);
    }

    // ------------------------------------------------------------------
    // Send path

    fn queue(
        &mut self,
        bhs: [u8; BHS_LEN],
        data: TxData,
        task: u32,
        notify: bool,
        close_after: bool,
    ) {
        let mut hdr = [0u8; BHS_LEN + DIGEST_LEN];
        hdr[..BHS_LEN].copy_from_slice(&bhs);
        let mut hlen = BHS_LEN;
        if self.hd {
            hdr[BHS_LEN..].copy_from_slice(&digest_bytes(digest(&[&bhs])));
            hlen += DIGEST_LEN;
        }
        let payload: &[u8] = match &data {
            TxData::None => &[],
            TxData::Owned(v) => v,
            // SAFETY: `ptr..ptr+len` lies in a pool buffer of the task
            // this PDU belongs to, held until the PDU is sent.
            TxData::Buf { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len as usize) },
        };
        let pad = pad_len(payload.len());
        let mut trailer = [0u8; 8];
        let mut tlen = pad;
        if self.dd && !payload.is_empty() {
            let crc = digest(&[payload, &[0u8; 3][..pad]]);
            trailer[pad..pad + 4].copy_from_slice(&digest_bytes(crc));
            tlen += DIGEST_LEN;
        }
        self.txq.push_back(Tx {
            hdr,
            hlen: hlen as u8,
            data,
            trailer,
            tlen: tlen as u8,
            task,
            notify,
            close_after,
        });
    }

    fn flush_tx(&mut self, io: &mut impl IoOps) {
        if self.tx_busy || self.txq.is_empty() || self.closing {
            return;
        }
        self.tx_fly.clear();
        while self.tx_fly.len() < SEND_BATCH {
            let Some(t) = self.txq.pop_front() else { break };
            let stop = t.close_after;
            self.tx_fly.push(t);
            if stop {
                break;
            }
        }
        self.iov.clear();
        for t in &self.tx_fly {
            self.iov.push(libc::iovec {
                iov_base: t.hdr.as_ptr() as *mut _,
                iov_len: t.hlen as usize,
            });
            match &t.data {
                TxData::None => {}
                TxData::Owned(v) => {
                    if !v.is_empty() {
                        self.iov.push(libc::iovec {
                            iov_base: v.as_ptr() as *mut _,
                            iov_len: v.len(),
                        })
                    }
                }
                TxData::Buf { ptr, len } => self.iov.push(libc::iovec {
                    iov_base: *ptr as *mut _,
                    iov_len: *len as usize,
                }),
            }
            if t.tlen > 0 {
                self.iov.push(libc::iovec {
                    iov_base: t.trailer.as_ptr() as *mut _,
                    iov_len: t.tlen as usize,
                });
            }
        }
        self.iov_pos = 0;
        self.submit_send(io);
    }

    fn submit_send(&mut self, io: &mut impl IoOps) {
        // SAFETY: the iovecs point into `tx_fly` (headers, trailers and
        // owned data, which stay put until `send_done` drains it) and into
        // pool buffers of tasks whose `sends` count keeps them alive.
        unsafe { io.send(self.fd, &self.iov[self.iov_pos..], TAG_SEND) };
        self.tx_busy = true;
    }

    fn send_done(&mut self, io: &mut impl IoOps, res: i32) {
        self.tx_busy = false;
        if res < 0 {
            self.close(&format!(
                "send failed: {}",
                std::io::Error::from_raw_os_error(-res)
            ));
        } else {
            // Advance over what was written; resubmit the rest.
            let mut n = res as usize;
            while n > 0 && self.iov_pos < self.iov.len() {
                let v = &mut self.iov[self.iov_pos];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    self.iov_pos += 1;
                } else {
                    v.iov_base = (v.iov_base as *mut u8).wrapping_add(n) as *mut _;
                    v.iov_len -= n;
                    n = 0;
                }
            }
            if self.iov_pos < self.iov.len() && !self.closing {
                self.submit_send(io);
                return;
            }
        }
        // The whole batch is out (or the connection is going away).
        let mut close = false;
        self.notify.clear();
        for t in self.tx_fly.drain(..) {
            close |= t.close_after;
            if t.task != NO_TASK {
                if let Some(task) = self.tasks[t.task as usize].as_mut() {
                    task.sends -= 1;
                    if t.notify || task.finished {
                        self.notify.push(t.task);
                    }
                }
            }
        }
        let notify = std::mem::take(&mut self.notify);
        for &idx in &notify {
            self.chunk_sent(io, idx);
        }
        self.notify = notify;
        if close {
            self.close("done");
            return;
        }
        self.flush_tx(io);
        self.post_recv(io);
    }

    /// Release everything once closed and idle.
    fn reap(&mut self, io: &mut impl IoOps) {
        if !self.closing {
            return;
        }
        if self.timer_armed && !self.timer_cancelled {
            self.timer_cancelled = true;
            io.cancel_timeout(TAG_LOGIN_TIMER, TAG_CANCEL);
        }
        if self.tx_busy {
            return;
        }
        for i in 0..self.tasks.len() {
            if let Some(t) = self.tasks[i].as_mut() {
                // Never while the kernel may still write into its buffer.
                if !t.io_busy && !(self.rx_busy && self.direct_task == Some(i as u32)) {
                    t.finished = true;
                    t.sends = 0;
                    self.release_task(io, i as u32);
                }
            }
        }
    }

    /// Drop task `idx` and give its buffers back to the pool.
    fn release_task(&mut self, io: &mut impl IoOps, idx: u32) {
        if let Some(t) = self.tasks[idx as usize].take() {
            for b in [t.buf, t.cmp_buf].into_iter().flatten() {
                io.pool_mut().release(b);
                self.bufs_held -= 1;
            }
            self.free_tasks.push(idx);
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
        self.post_recv(io);
    }

    pub fn on_complete(&mut self, io: &mut impl IoOps, tag: u32, res: i32) {
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
                    self.rx_end += res as usize;
                    self.process_rx(io);
                }
            }
            TAG_RECV_DIRECT => {
                self.rx_busy = false;
                let target_task = self.direct_task.take();
                if self.closing {
                } else if res <= 0 {
                    self.close("peer closed the connection during data");
                } else if let Rx::Data { got, .. } = self.rx_state {
                    let (off, n) = (self.direct_off as usize, res as usize);
                    if self.dd {
                        let buf = target_task
                            .and_then(|t| self.tasks.get(t as usize))
                            .and_then(|t| t.as_ref())
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
            TAG_CANCEL => {}
            TAG_REINSTATE_TIMER => {
                self.reinstate_timer_armed = false;
                if !self.closing {
                    self.finish_login(io);
                }
            }
            TAG_DISK => {
                let idx = tag & !TAG_KIND;
                if self.closing {
                    if let Some(t) = self.tasks.get_mut(idx as usize).and_then(|t| t.as_mut()) {
                        t.io_busy = false;
                    }
                } else {
                    self.disk_done(io, idx, res);
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
            && self.tasks.iter().all(|t| t.is_none())
    }

    pub fn on_buffers_available(&mut self, io: &mut impl IoOps) {
        if !self.closing {
            self.run_buffer_waiters(io);
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
                .unregister_session(&self.params.initiator_name, self.isid, self.id);
        }
        tracing::debug!("connection {} released", self.peer);
    }
}

/// Store received data bytes `[at, at+len)` of the current PDU where `sink`
/// says. A free function so the bytes can be borrowed from the
/// connection's staging buffer while the task table is read.
fn deliver(
    tasks: &[Option<Task>],
    pdu_data: &mut Vec<u8>,
    pool: &mut BufPool,
    sink: Sink,
    at: usize,
    bytes: &[u8],
) {
    match sink {
        Sink::Discard => {}
        Sink::Vec => pdu_data.extend_from_slice(bytes),
        Sink::Task { idx, off } => {
            let Some(Some(t)) = tasks.get(idx as usize) else {
                return;
            };
            let Some(buf) = t.buf.as_ref() else { return };
            // Clip to the current chunk window.
            let start = off as u64 + at as u64;
            let end = start + bytes.len() as u64;
            let ws = t.chunk_start as u64;
            let we = ws + t.chunk_len as u64;
            let s = start.max(ws);
            let e = end.min(we);
            if s >= e {
                return;
            }
            let dst = pool.slice_mut(buf, t.chunk_len as usize);
            dst[(s - ws) as usize..(e - ws) as usize]
                .copy_from_slice(&bytes[(s - start) as usize..(e - start) as usize]);
        }
    }
}
