use super::*;

impl Conn {
    // ------------------------------------------------------------------
    // Receive path

    pub(super) fn post_recv(&mut self, io: &mut impl IoOps) {
        if self.rx_busy || self.closing || self.close_after_send || self.txq.len() > TXQ_MAX {
            return;
        }
        // Inside an entry point the receive waits for a small send it
        // makes, so that it goes to the ring after it. The send's segments
        // carry the acknowledgement of what has arrived; a receive ahead
        // of them sends one of its own, a pure ACK, whenever the
        // initiator's last segments were small pushed ones (a 48-byte
        // header and its data, as libiscsi sends a 4 KiB write). On
        // loopback each of those also runs the initiator's ACK processing
        // on this core. In 4 KiB writes at depth 32 this took the pure
        // ACKs the target sends from 0.65 to 0.39 per data segment, and its
        // CPU from a median of 2.04 to 1.88 s per GB (7 alternating pairs;
        // perf/README.md). A large send (Data-In of 128 KiB reads) goes
        // after the receive: there this order cost 3–10 % of the MB/s.
        if self.tx_hold && self.queued_data(SEND_AFTER_RECV) < SEND_AFTER_RECV {
            self.rx_wanted = true;
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
        let mut room = RX_CAP - self.rx_end;
        if std::mem::take(&mut self.header_next) {
            if let Some(gap) = self.header_gap() {
                room = room.min(gap);
            }
        }
        let ptr = self.rx[self.rx_end..].as_mut_ptr();
        // SAFETY: `rx` is a boxed slice owned by the connection and never
        // reallocated; the reactor drops a connection only once nothing is
        // in flight, and `rx_busy` keeps the rest of the code from
        // touching `rx[rx_end..]` until the receive completes.
        unsafe { io.recv(self.fd, ptr, room as u32, TAG_RECV) };
        self.rx_busy = true;
    }

    /// The data bytes of the PDUs the next send takes, counted up to
    /// `cap`.
    fn queued_data(&self, cap: usize) -> usize {
        let mut n = 0;
        for t in self.txq.iter().take(SEND_BATCH) {
            n += t.data.len();
            if n >= cap {
                break;
            }
        }
        n
    }

    /// Post the receive an entry point asked for, now that its send is
    /// in the ring.
    pub(super) fn post_wanted_recv(&mut self, io: &mut impl IoOps) {
        if std::mem::take(&mut self.rx_wanted) {
            self.post_recv(io);
        }
    }

    /// How many more bytes the staging buffer needs to hold the whole next
    /// header (with what is left of the current PDU before it), if any.
    fn header_gap(&self) -> Option<usize> {
        let avail = self.rx_end - self.rx_start;
        let need = match self.rx_state {
            Rx::Header => match Bhs::parse(&self.rx[self.rx_start..self.rx_end]) {
                Ok(bhs) => self.header_len(&bhs),
                Err(_) => self.bhs_len(),
            },
            Rx::Data {
                total,
                got,
                trailer,
                ..
            } => total - got + trailer + self.bhs_len(),
        };
        need.checked_sub(avail).filter(|&n| n > 0)
    }

    /// A header without AHS, with its digest if there is one.
    fn bhs_len(&self) -> usize {
        BHS_LEN + if self.hd { DIGEST_LEN } else { 0 }
    }

    pub(super) fn header_len(&self, bhs: &Bhs<'_>) -> usize {
        self.bhs_len() + bhs.ahs_len()
    }

    /// Largest data segment we accept now.
    pub(super) fn max_dsl(&self) -> usize {
        if self.phase == Phase::Login {
            // Login text is bounded by our declaration too.
            self.sh.limits.max_recv_data_segment_length.max(8192) as usize
        } else {
            self.params.target_max_recv_dsl.max(512) as usize
        }
    }

    /// Consume whatever complete pieces sit in the staging buffer.
    pub(super) fn process_rx(&mut self, io: &mut impl IoOps) {
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
                            if !self.place(io, sink, got, s, e) {
                                let bytes: &[u8] = &self.rx[s..e];
                                deliver(
                                    &self.tasks,
                                    &mut self.pdu_data,
                                    io.pool_mut(),
                                    sink,
                                    got,
                                    bytes,
                                );
                            }
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
    pub(super) fn data_progress(&mut self, io: &mut impl IoOps, got: usize) -> bool {
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
            if let Some(d) = self.direct_target(io, sink, got, total) {
                self.recv_direct(io, d, total - got);
                return true;
            }
        }
        false
    }

    /// Whether task `id` is a write received straight into its LU's
    /// mapping.
    pub(super) fn placing(&self, id: Option<TaskId>) -> bool {
        id.and_then(|id| self.tasks.get(id))
            .is_some_and(|t| t.in_place)
    }

    /// Receive the next `len` bytes of the data segment straight where
    /// `to` says: a task's pool buffer, or its LU's mapping.
    ///
    /// The same receive may take the rest of the PDU (padding, digest) and
    /// the next header into the staging buffer, if they have arrived.
    pub(super) fn recv_direct(&mut self, io: &mut impl IoOps, to: Direct, len: usize) {
        let spill = self.spill(len);
        let (task, off) = match to {
            Direct::Pool { id, off } => {
                let Some(buf) = self.tasks.get(id).and_then(|t| t.buf.as_ref()) else {
                    return;
                };
                io.recv_pool(self.fd, buf, off, len as u32, spill, TAG_RECV_DIRECT);
                (id, off)
            }
            Direct::Mapped { id, dst } => {
                // SAFETY: `dst` came from `mapped_mut` of the task's
                // backend, which the target's LU table keeps for the life
                // of every connection.
                unsafe { io.recv_mapped(self.fd, dst, len as u32, spill, TAG_RECV_DIRECT) };
                (id, 0)
            }
        };
        self.direct_len = len as u32;
        self.header_next = true;
        self.direct_task = Some(task);
        self.direct_off = off;
        self.rx_busy = true;
    }

    /// The staging buffer's room for what follows the last `len` bytes of
    /// the current data segment, up to the end of the next header; only
    /// when the staging buffer is empty, as it is when a direct receive
    /// starts.
    fn spill(&mut self, len: usize) -> Option<Spill> {
        let Rx::Data {
            total,
            got,
            trailer,
            ..
        } = self.rx_state
        else {
            return None;
        };
        if self.rx_start != self.rx_end || got + len != total {
            return None;
        }
        self.rx_start = 0;
        self.rx_end = 0;
        let n = trailer + self.bhs_len();
        // SAFETY: `rx` is a boxed slice owned by the connection and never
        // reallocated (n is far below RX_CAP); the reactor drops a
        // connection only once nothing is in flight, and `rx_busy`, set
        // with the receive, keeps the rest of the code from touching `rx`
        // until it completes.
        Some(unsafe { Spill::new(self.rx.as_mut_ptr(), n as u32) })
    }

    /// Where a direct recv of the rest of a data segment may land, if the
    /// sink is a task whose current chunk covers all of it: the task's
    /// buffer, or, for a write received in place, the LU's mapping (only
    /// within the blocks that reach the medium).
    pub(super) fn direct_target(
        &mut self,
        io: &mut impl IoOps,
        sink: Sink,
        got: usize,
        total: usize,
    ) -> Option<Direct> {
        if total - got < DIRECT_MIN {
            return None;
        }
        let Sink::Task { id, off } = sink else {
            return None;
        };
        let t = self.tasks.get(id)?;
        let start = off as u64 + got as u64;
        let end = off as u64 + total as u64;
        if t.in_place {
            if !self.may_land(t) {
                return None;
            }
            let len = end - start;
            let (at, skip, n) = t.medium_range(start, len)?;
            if skip != 0 || n != len {
                return None;
            }
            let backend = &*self.sh.luns.get(t.lun)?.backend;
            let dst = io.disk_mapped_mut(backend, at, n as u32)?;
            return Some(Direct::Mapped { id, dst });
        }
        if start < t.chunk_start as u64 || end > (t.chunk_start + t.chunk_len) as u64 {
            return None;
        }
        t.buf.as_ref()?;
        Some(Direct::Pool {
            id,
            off: start as u32 - t.chunk_start,
        })
    }

    /// Staged bytes `rx[s..e]`, at byte `at` of the current data segment,
    /// for a write received in place: write them to the medium now (the
    /// LU lives in memory, so this is a copy, as a receive into the
    /// mapping would be). False: the sink is not such a write.
    fn place(&mut self, io: &mut impl IoOps, sink: Sink, at: usize, s: usize, e: usize) -> bool {
        let Sink::Task { id, off } = sink else {
            return false;
        };
        let Some(t) = self.tasks.get(id).filter(|t| t.in_place) else {
            return false;
        };
        if !self.may_land(t) {
            return true;
        }
        let start = off as u64 + at as u64;
        let Some((pos, skip, n)) = t.medium_range(start, (e - s) as u64) else {
            return true;
        };
        let from = s + skip as usize;
        let bytes = &self.rx[from..from + n as usize];
        let Some(lu) = self.sh.luns.get(t.lun) else {
            return true;
        };
        if let Err(err) = io.disk_write_now(&*lu.backend, bytes, pos) {
            tracing::warn!("connection {}: write failed: {err}", self.peer);
            if let Some(t) = self.tasks.get_mut(id) {
                t.place_failed = true;
            }
        }
        true
    }

    /// Whether data for write `t`, received in place, may still land on
    /// the medium: not once the task has ended, nor once a reset of its
    /// LU (from any session) has aborted it. In a buffer such data is
    /// dropped before the disk write; in place it must not be stored.
    fn may_land(&self, t: &Task) -> bool {
        !t.finished && !t.aborted && !self.reset_since(t)
    }

    /// A reset or CLEAR TASK SET of task `t`'s LU (from any session) came
    /// after it started: its LU's task epoch moved on.
    pub(super) fn reset_since(&self, t: &Task) -> bool {
        self.sh
            .luns
            .get(t.lun)
            .is_some_and(|l| l.info.state.epoch() != t.epoch)
    }

    // ------------------------------------------------------------------
    // PDU dispatch

    /// A header has been received: decide where its data goes. SCSI
    /// Command and Data-Out are acted on here so their data can land in
    /// the task's buffer.
    pub(super) fn on_header(&mut self, io: &mut impl IoOps, dsl: usize) -> Sink {
        let cur = self.cur;
        let Ok(bhs) = Bhs::parse(&cur) else {
            return Sink::Discard;
        };
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
    pub(super) fn on_pdu(&mut self, io: &mut impl IoOps, sink: Sink) {
        let cur = self.cur;
        let Ok(bhs) = Bhs::parse(&cur) else { return };
        match bhs.opcode() {
            Opcode::ScsiCommand => {
                if let Sink::Task { id, .. } = sink {
                    let n = bhs.data_segment_len() as u32;
                    self.data_arrived(io, id, 0, n, None);
                }
            }
            Opcode::DataOut => {
                if let Sink::Task { id, off } = sink {
                    let n = bhs.data_segment_len() as u32;
                    let ttt = DataOut(bhs).ttt();
                    self.data_arrived(io, id, off, n, Some(ttt));
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
    pub(super) fn accept_cmd_sn(&mut self, cmd_sn: u32, immediate: bool) -> bool {
        match self.seq.accept(cmd_sn, immediate, self.tasks.active()) {
            Ok(()) => true,
            Err(w) => {
                tracing::warn!(
                    "connection {}: CmdSN {cmd_sn} outside window {}..{}; ignored",
                    self.peer,
                    w.exp_cmd_sn,
                    w.max_cmd_sn
                );
                false
            }
        }
    }
}

/// Where the rest of a data segment is received directly.
pub(super) enum Direct {
    /// Task `id`'s pool buffer, at byte `off`.
    Pool { id: TaskId, off: u32 },
    /// The LU's mapping, at `dst`, for write `id` received in place.
    Mapped { id: TaskId, dst: *mut u8 },
}

/// Store received data bytes `[at, at+len)` of the current PDU where `sink`
/// says. A free function so the bytes can be borrowed from the
/// connection's staging buffer while the task table is read.
fn deliver(
    tasks: &TaskTable,
    pdu_data: &mut Vec<u8>,
    pool: &mut BufPool,
    sink: Sink,
    at: usize,
    bytes: &[u8],
) {
    match sink {
        Sink::Discard => {}
        Sink::Vec => pdu_data.extend_from_slice(bytes),
        Sink::Task { id, off } => {
            let Some(t) = tasks.get(id) else {
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
