use super::*;
use crate::scsi::SenseKey;

/// ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR: the iSCSI condition a task
/// ends with when its data went missing (RFC 7143 11.4.7.2).
const PROTOCOL_CRC_ERROR: Sense = Sense::new(SenseKey::AbortedCommand, 0x47, 0x05);

impl Conn {
    // ------------------------------------------------------------------
    // SCSI commands

    pub(super) fn on_scsi_command(
        &mut self,
        io: &mut impl IoOps,
        bhs: Bhs<'_>,
        dsl: usize,
    ) -> Sink {
        let Some(cmd) = ScsiCommand::new(bhs) else {
            return Sink::Discard;
        };
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
        if self.tasks.active() >= 2 * self.sh.queue_depth as usize {
            // Only immediate commands can get here (the CmdSN window holds
            // the rest back): refuse instead of growing without bound.
            self.respond_status(io, itt, Status::TaskSetFull, Residual::None, 0);
            return Sink::Discard;
        }
        if self.tasks.find(itt).is_some() {
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
        if self.nexus.is_none() {
            let n = self.make_nexus();
            for l in &self.sh.luns {
                l.info.state.nexus_seen(&n);
            }
            self.nexus = Some(n);
        }
        let lu = self.sh.luns.get(lun as usize);
        // A pending unit attention ends the command (SPC-4 5.14).
        let ua = lu.zip(self.nexus.as_ref()).and_then(|(l, n)| {
            let op = cmd.cdb().first().copied().unwrap_or(0);
            l.info.state.take_ua(n, op)
        });
        if let Some(sense) = ua {
            self.respond_check(io, itt, sense, Residual::None);
            return Sink::Discard;
        }
        // REQUEST SENSE reports (and clears) a pending unit attention as
        // its parameter data, in the format the DESC bit asks for.
        let cdb = cmd.cdb();
        if cdb.first() == Some(&0x03) && cdb.len() >= 5 {
            let pending = lu
                .zip(self.nexus.as_ref())
                .and_then(|(l, n)| l.info.state.take_pending_ua(n));
            if let Some(sense) = pending {
                let mut data = if cdb[1] & 0x01 != 0 {
                    sense.descriptor()
                } else {
                    sense.fixed().to_vec()
                };
                data.truncate(cdb[4] as usize);
                self.respond_data(io, bhs, &data);
                return Sink::Discard;
            }
        }
        let ctx = CommandCtx {
            lun,
            lu: lu.map(|l| &l.info),
            luns: &self.sh.lun_numbers,
            expected_len: edtl,
            nexus: self.nexus.as_ref(),
            backend: lu.map(|l| &*l.backend),
        };
        let lu = ctx.lu;
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut outcome = scsi::execute(cmd.cdb(), &ctx, &mut scratch);
        if matches!(outcome, Outcome::Conflict) && self.release_closed_holder(lun as usize) {
            outcome = scsi::execute(cmd.cdb(), &ctx, &mut scratch);
        }
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
                let t = Task::new(
                    itt,
                    lun as usize,
                    bhs.lun_raw(),
                    Kind::Read,
                    lba,
                    fua,
                    bs,
                    wanted,
                    edtl,
                );
                let empty = t.xfer == 0;
                let id = self.insert_task(t);
                if empty {
                    self.finish_good(io, id);
                } else {
                    self.run_task(io, id);
                }
                Sink::Discard
            }
            Outcome::Write { lba, blocks, fua } => {
                let wanted = blocks as u64 * bs as u64;
                let kind = Kind::Write;
                self.start_data_out_task(io, bhs, kind, lba, fua, bs, wanted, edtl, dsl, true)
            }
            Outcome::WriteAtomic { lba, blocks, fua } => {
                // One buffer, one disk write: larger cannot be atomic here.
                let wanted = blocks as u64 * bs as u64;
                if wanted > io.pool().buf_size() as u64 {
                    self.respond_check(io, itt, Sense::invalid_field_in_cdb(), Residual::None);
                    self.scratch = scratch;
                    return Sink::Discard;
                }
                // Not in place: an atomic write is all or nothing.
                let kind = Kind::Write;
                self.start_data_out_task(io, bhs, kind, lba, fua, bs, wanted, edtl, dsl, false)
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
                    false,
                )
            }
            Outcome::Verify { bytchk: false, .. } => {
                self.respond_status(io, itt, Status::Good, Residual::of(edtl, 0), 0);
                Sink::Discard
            }
            Outcome::Conflict => {
                self.respond_status(io, itt, Status::ReservationConflict, Residual::None, 0);
                Sink::Discard
            }
            Outcome::DataOut { len } => {
                if len > io.pool().buf_size() as u32 {
                    self.respond_check(io, itt, Sense::invalid_field_in_cdb(), Residual::None);
                    self.scratch = scratch;
                    return Sink::Discard;
                }
                if edtl == 0 || !cmd.write() {
                    // No Data-Out will come: the command gets an empty list.
                    let mut t = Task::new(
                        itt,
                        lun as usize,
                        bhs.lun_raw(),
                        Kind::Param,
                        0,
                        false,
                        1,
                        len as u64,
                        edtl,
                    );
                    copy_cdb(&mut t.cdb, cmd.cdb());
                    let id = self.insert_task(t);
                    self.scratch = scratch;
                    self.run_param(io, id, &[]);
                    return Sink::Discard;
                }
                let sink = self.start_data_out_task(
                    io,
                    bhs,
                    Kind::Param,
                    0,
                    false,
                    1,
                    len as u64,
                    edtl,
                    dsl,
                    false,
                );
                if let Some(t) = self.tasks.find(itt).and_then(|id| self.tasks.get_mut(id)) {
                    copy_cdb(&mut t.cdb, cmd.cdb());
                }
                sink
            }
            Outcome::Job(job) => {
                let t = Task::new(
                    itt,
                    lun as usize,
                    bhs.lun_raw(),
                    Kind::Job,
                    0,
                    false,
                    bs,
                    0,
                    edtl,
                );
                let id = self.insert_task(t);
                self.start_job(io, id, job);
                Sink::Discard
            }
            Outcome::Flush => {
                let t = Task::new(
                    itt,
                    lun as usize,
                    bhs.lun_raw(),
                    Kind::Flush,
                    0,
                    false,
                    bs,
                    0,
                    edtl,
                );
                let id = self.insert_task(t);
                self.run_task(io, id);
                Sink::Discard
            }
        };
        self.scratch = scratch;
        sink
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_data_out_task(
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
        place: bool,
    ) -> Sink {
        let itt = bhs.itt();
        // With EDTL below what the CDB describes (overflow) only the whole
        // blocks the initiator sends are written; with EDTL above it
        // (underflow) the extra data is dropped. Both report a residual.
        let lun = bhs.lun() as usize;
        let mut t = Task::new(itt, lun, bhs.lun_raw(), kind, lba, fua, bs, wanted, edtl);
        t.in_place = place && self.may_place(io, &t);
        let too_short = t.xfer < bs;
        t.begin_unsolicited(
            self.params.initial_r2t,
            self.params.first_burst_length,
            dsl as u32,
        );
        let unsol_limit = t.unsol_limit;
        let id = self.insert_task(t);
        if too_short {
            self.finish_good(io, id);
            return Sink::Discard;
        }
        if !self.can_take(io, self.tasks.get(id).map_or(0, Task::buffers)) {
            if unsol_limit > 0 {
                // Data is on its way and there is nowhere to put it.
                io.stats().buffer_waits.fetch_add(1, Relaxed);
                self.drop_task(io, id);
                self.respond_status(io, itt, Status::TaskSetFull, Residual::None, 0);
                return Sink::Discard;
            }
            // Nothing comes before our R2T: wait for a buffer.
            self.park_for_buffer(io, id);
            return Sink::Discard;
        }
        self.start_data_out(io, id);
        if dsl > 0 {
            Sink::Task { id, off: 0 }
        } else {
            Sink::Discard
        }
    }

    /// Whether write `t` can be received straight into its LU's mapping
    /// (see `BlockBackend::mapped_mut`): a LU whose data lives in memory,
    /// a transfer of at least `PLACE_MIN`, and no data digest (the data
    /// must be checked before it may land on the medium, and user space
    /// must not read the mapping to check it).
    fn may_place(&self, io: &mut impl IoOps, t: &Task) -> bool {
        if self.dd || t.kind != Kind::Write || t.xfer < PLACE_MIN {
            return false;
        }
        let Some(lu) = self.sh.luns.get(t.lun) else {
            return false;
        };
        let Some(start) = t.lba.checked_mul(t.bs as u64) else {
            return false;
        };
        io.disk_mapped_mut(&*lu.backend, start, t.xfer).is_some()
    }

    /// A write or verify task got its buffers: ask for the data.
    pub(super) fn start_data_out(&mut self, io: &mut impl IoOps, id: TaskId) {
        self.take_buffers(io, id);
        if let Some(t) = self.tasks.get_mut(id) {
            t.open_data_window();
        }
        self.send_r2t(id);
        self.flush_tx(io);
    }

    /// Most buffers one connection may hold: a quarter of the reactor's
    /// pool, and at least four.
    pub(super) fn buf_limit(io: &impl IoOps) -> usize {
        (io.pool().count() / 4).max(4)
    }

    pub(super) fn can_take(&self, io: &impl IoOps, n: usize) -> bool {
        io.pool().available() >= n && self.bufs_held + n <= Self::buf_limit(io)
    }

    /// Queue task `id` until a buffer can be had.
    pub(super) fn park_for_buffer(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if !t.waiting_buf {
            t.waiting_buf = true;
            io.stats().buffer_waits.fetch_add(1, Relaxed);
            self.buf_waiters.push_back(id);
        }
        // Buffers held by other connections: hear when they come back.
        // (Our own come back through `maybe_free`.)
        if io.pool().available() < 2 {
            io.wait_for_buffers();
        }
    }

    /// Give task `id` its pool buffers and make its first chunk current.
    pub(super) fn take_buffers(&mut self, io: &mut impl IoOps, id: TaskId) {
        let buf_size = io.pool().buf_size() as u32;
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        debug_assert!(t.buf.is_none(), "task given buffers twice");
        t.waiting_buf = false;
        if t.in_place {
            t.set_chunk(0, buf_size);
            return;
        }
        t.buf = io.pool_mut().alloc();
        if t.kind == Kind::VerifyCompare {
            t.cmp_buf = io.pool_mut().alloc();
        }
        self.bufs_held += t.buf.is_some() as usize + t.cmp_buf.is_some() as usize;
        t.set_chunk(0, buf_size);
    }

    /// Move a task forward: get its buffers, start the next medium
    /// operation of a read or flush, or ask for a write's data.
    pub(super) fn run_task(&mut self, io: &mut impl IoOps, id: TaskId) {
        if self.aborted_elsewhere(io, id) {
            return;
        }
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if t.finished || t.io_busy {
            return;
        }
        let (kind, has_buf, nbuf) = (t.kind, t.buf.is_some() || t.in_place, t.buffers());
        match kind {
            Kind::Job => return,
            Kind::Flush => {}
            Kind::Read if !has_buf => {
                if self.read_mapped(io, id) {
                    return;
                }
                if !self.can_take(io, 1) {
                    return self.park_for_buffer(io, id);
                }
                self.take_buffers(io, id);
            }
            Kind::Read => {}
            Kind::Write | Kind::VerifyCompare | Kind::Param => {
                if !has_buf {
                    if !self.can_take(io, nbuf) {
                        return self.park_for_buffer(io, id);
                    }
                    self.start_data_out(io, id);
                }
                return;
            }
        }
        let buf_size = io.pool().buf_size() as u32;
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        // The backend is borrowed, not cloned: an Arc clone per I/O would
        // bounce one refcount cache line between every reactor.
        let backend = &*self.sh.luns[t.lun].backend;
        t.io_busy = true;
        let tag = TAG_DISK | id.index();
        let issued = if kind == Kind::Flush {
            io.disk_flush(backend, tag)
        } else {
            t.set_chunk(t.done, buf_size);
            let Some(b) = t.buf.as_ref() else { return };
            io.disk_read(backend, b, t.read_len(), t.disk_offset(), tag)
        };
        self.disk_issued(io, id, issued);
    }

    /// The next chunk of read `id`, when the LU's data is mapped: queue its
    /// Data-In straight from the mapping, with no pool buffer and no copy.
    /// False: read it into a buffer instead.
    fn read_mapped(&mut self, io: &mut impl IoOps, id: TaskId) -> bool {
        // A data digest is computed here, in user space, which must not
        // read the mapping (a page past the end of a shrunk file is SIGBUS
        // here, where a send only fails with EFAULT).
        if self.dd {
            return false;
        }
        let buf_size = io.pool().buf_size() as u32;
        let Some(t) = self.tasks.get_mut(id) else {
            return false;
        };
        t.set_chunk(t.done, buf_size);
        let backend = &*self.sh.luns[t.lun].backend;
        let Some(p) = io.disk_mapped(backend, t.disk_offset(), t.read_len()) else {
            return false;
        };
        t.mapped = Some(p);
        io.stats().read_ops.fetch_add(1, Relaxed);
        io.stats().mapped_reads.fetch_add(1, Relaxed);
        self.queue_data_in(io, id);
        true
    }

    pub(super) fn disk_issued(&mut self, io: &mut impl IoOps, id: TaskId, issued: Issued) {
        if let Issued::Done(res) = issued {
            self.disk_done(io, id, res);
        }
    }

    /// Data bytes `[off, off+n)` of task `id` have been stored; `ttt` is
    /// the Data-Out's tag (`None` for immediate data).
    pub(super) fn data_arrived(
        &mut self,
        io: &mut impl IoOps,
        id: TaskId,
        off: u32,
        n: u32,
        ttt: Option<u32>,
    ) {
        if self.aborted_elsewhere(io, id) {
            return;
        }
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.finished {
            return;
        }
        if t.data_arrived(off, n, ttt) {
            self.chunk_received(io, id);
        } else {
            self.send_r2t(id);
            self.flush_tx(io);
        }
    }

    /// The current chunk of a write or verify has all its data.
    pub(super) fn chunk_received(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.kind == Kind::Param {
            // Parameter data fits one buffer: all of it is here.
            let data = match t.buf.as_ref() {
                Some(b) => io.pool().slice(b, t.chunk_len as usize).to_vec(),
                None => Vec::new(),
            };
            return self.run_param(io, id, &data);
        }
        let len = t.write_len();
        if len == 0 {
            return self.next_chunk(io, id);
        }
        if t.in_place {
            // The data is on the medium already: received into the
            // mapping, or written as it came (`Conn::place`). The LU lives
            // in memory, so there is nothing to make durable for FUA.
            if t.place_failed {
                return self.finish_check(io, id, Sense::write_error());
            }
            t.io_busy = true;
            io.stats().write_ops.fetch_add(1, Relaxed);
            return self.disk_done(io, id, len as i32);
        }
        let (off, fua) = (t.disk_offset(), t.fua);
        let backend = &*self.sh.luns[t.lun].backend;
        let tag = TAG_DISK | id.index();
        t.io_busy = true;
        let issued = if t.kind == Kind::Write {
            let Some(b) = t.buf.as_ref() else { return };
            io.stats().write_ops.fetch_add(1, Relaxed);
            io.disk_write(backend, b, len, off, fua, tag)
        } else {
            // Verify: read the medium into the second buffer to compare.
            let Some(b) = t.cmp_buf.as_ref() else { return };
            io.disk_read(backend, b, len, off, tag)
        };
        self.disk_issued(io, id, issued);
    }

    /// Send the next R2T of a write if none is outstanding
    /// (MaxOutstandingR2T is 1) and the chunk still lacks data.
    pub(super) fn send_r2t(&mut self, id: TaskId) {
        let max_burst = self.params.max_burst_length.max(512);
        let sn = self.sn();
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(r) = t.next_r2t(max_burst, self.next_ttt) else {
            return;
        };
        let (itt, lun_raw) = (t.itt, t.lun_raw);
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        let mut hdr = [0u8; BHS_LEN];
        build_r2t(&mut hdr, itt, lun_raw, r.ttt, r.r2t_sn, r.offset, r.len, sn);
        self.queue(hdr, TxData::None, None, false, false);
    }

    pub(super) fn on_data_out_header(
        &mut self,
        io: &mut impl IoOps,
        bhs: Bhs<'_>,
        dsl: usize,
    ) -> Sink {
        let Some(d) = DataOut::new(bhs) else {
            return Sink::Discard;
        };
        let Some(id) = self.tasks.find(bhs.itt()) else {
            // Data for a task that was aborted or already answered.
            tracing::debug!(
                "connection {}: Data-Out for unknown ITT {:#x} dropped",
                self.peer,
                bhs.itt()
            );
            return Sink::Discard;
        };
        let initial_r2t = self.params.initial_r2t;
        let Some(t) = self.tasks.get_mut(id) else {
            return Sink::Discard;
        };
        let off = d.buffer_offset();
        match t.accept_data_out(
            d.ttt(),
            off,
            dsl as u32,
            bhs.final_bit(),
            d.data_sn(),
            initial_r2t,
        ) {
            Ok(()) => Sink::Task { id, off },
            Err(e) => {
                let why = match e {
                    DataOutError::NoData => "Data-Out for a command without data".to_string(),
                    DataOutError::OutOfOrder => {
                        "Data-Out out of order or outside the solicited range".to_string()
                    }
                    DataOutError::DataSn { got, want } => {
                        format!("Data-Out DataSN {got} where {want} was due")
                    }
                    DataOutError::Failed => String::new(),
                };
                let verdict = t.data_out_refused(e, bhs.final_bit());
                match verdict {
                    None => self.reject_and_close(io, reject_reason::PROTOCOL_ERROR, &why),
                    Some(end_now) => {
                        if !why.is_empty() {
                            tracing::warn!(
                                "connection {}: {why}; ITT {:#x} ends with CHECK CONDITION",
                                self.peer,
                                bhs.itt()
                            );
                        }
                        if end_now {
                            self.buf_waiters.retain(|&w| w != id);
                            self.finish_check(io, id, PROTOCOL_CRC_ERROR);
                        }
                    }
                }
                Sink::Discard
            }
        }
    }

    /// A medium operation of task `id` finished with `res`.
    pub(super) fn disk_done(&mut self, io: &mut impl IoOps, id: TaskId, res: i32) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        debug_assert!(t.io_busy, "disk completion for a task without disk I/O");
        t.io_busy = false;
        if t.finished {
            self.maybe_free(io, id);
            return;
        }
        if self.aborted_elsewhere(io, id) {
            return;
        }
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        match t.kind {
            Kind::Job => self.step_job(io, id),
            // Parameter data never goes to the disk.
            Kind::Param => {}
            Kind::Flush => {
                if res < 0 {
                    tracing::warn!("flush failed: {}", std::io::Error::from_raw_os_error(-res));
                    self.finish_check(io, id, Sense::write_error());
                } else {
                    self.finish_good(io, id);
                }
            }
            Kind::Read => {
                if res < 0 {
                    tracing::warn!("read failed: {}", std::io::Error::from_raw_os_error(-res));
                    return self.finish_check(io, id, Sense::read_error());
                }
                if (res as u32) < t.chunk_len {
                    // Short read past the end of a shrinking file: zeros.
                    if let Some(b) = t.buf.as_ref() {
                        io.pool_mut().slice_mut(b, t.chunk_len as usize)[res as usize..].fill(0);
                    }
                }
                io.stats().read_ops.fetch_add(1, Relaxed);
                self.queue_data_in(io, id);
            }
            Kind::Write => {
                if res < 0 || (res as u32) < t.write_len() {
                    tracing::warn!("write failed: {res}");
                    return self.finish_check(io, id, Sense::write_error());
                }
                let n = t.chunk_len as u64;
                io.stats().write_bytes.fetch_add(n, Relaxed);
                self.sh.luns[t.lun]
                    .counters
                    .write_bytes
                    .fetch_add(n, Relaxed);
                if let Some(s) = &self.session {
                    s.write_bytes.fetch_add(n, Relaxed);
                }
                self.next_chunk(io, id);
            }
            Kind::VerifyCompare => {
                if res < 0 {
                    return self.finish_check(io, id, Sense::read_error());
                }
                let len = t.write_len() as usize;
                let (Some(a), Some(b)) = (t.buf.as_ref(), t.cmp_buf.as_ref()) else {
                    return self.finish_check(io, id, Sense::read_error());
                };
                let (sa, sb) = io.pool().pair(a, b, len);
                if let Some(pos) = sa.iter().zip(sb).position(|(x, y)| x != y) {
                    let at = t.chunk_start as u64 + pos as u64;
                    return self.finish_check(io, id, Sense::miscompare(at));
                }
                self.next_chunk(io, id);
            }
        }
    }

    /// After a write or verify chunk: the next chunk, or the status.
    pub(super) fn next_chunk(&mut self, io: &mut impl IoOps, id: TaskId) {
        let buf_size = io.pool().buf_size() as u32;
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if !t.advance_chunk(buf_size) {
            return self.finish_good(io, id);
        }
        self.send_r2t(id);
        self.flush_tx(io);
    }

    /// Queue the Data-In PDUs of the chunk just read.
    pub(super) fn queue_data_in(&mut self, io: &mut impl IoOps, id: TaskId) {
        let mrdsl = self.params.initiator_max_recv_dsl.max(512);
        let max_burst = self.params.max_burst_length.max(512);
        let mut segs = std::mem::take(&mut self.data_in);
        segs.clear();
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let base: *const u8 = match (t.mapped.take(), t.buf.as_ref()) {
            (Some(p), _) => p,
            (None, Some(buf)) => io.pool().ptr(buf),
            (None, None) => return,
        };
        let n = t.chunk_len as u64;
        io.stats().read_bytes.fetch_add(n, Relaxed);
        let lun = &self.sh.luns[t.lun].counters;
        lun.read_bytes.fetch_add(n, Relaxed);
        if let Some(s) = &self.session {
            s.read_bytes.fetch_add(n, Relaxed);
        }
        let last_chunk = t.data_in(mrdsl, max_burst, &mut segs);
        if last_chunk {
            lun.read_cmds.fetch_add(1, Relaxed);
            let d = t.started.elapsed();
            t.latency = Some(d);
            lun.read_latency.record(d);
            if let Some(s) = &self.session {
                s.commands.fetch_add(1, Relaxed);
            }
        }
        let (itt, lun_raw, residual) = (t.itt, t.lun_raw, Residual::of(t.edtl, t.wanted));
        let n = segs.len();
        for (i, s) in segs.iter().enumerate() {
            let sn = if s.status {
                self.sn_status()
            } else {
                self.sn()
            };
            let mut hdr = [0u8; BHS_LEN];
            build_data_in(
                &mut hdr,
                itt,
                lun_raw,
                s.data_sn,
                s.offset,
                s.len as usize,
                s.fin,
                s.status.then_some((Status::Good as u8, residual)),
                sn,
            );
            let data = TxData::Buf {
                ptr: base.wrapping_add(s.pos as usize),
                len: s.len,
            };
            // The chunk's last PDU tells the task its buffer is free again.
            self.queue(hdr, data, Some(id), i + 1 == n, false);
        }
        self.data_in = segs;
        if last_chunk {
            self.retire(io, id);
        }
        self.flush_tx(io);
    }

    /// A send of task `id`'s data finished: read the next chunk.
    pub(super) fn chunk_sent(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if t.finished {
            self.maybe_free(io, id);
        } else if t.kind == Kind::Read {
            self.run_task(io, id);
        }
    }

    pub(super) fn finish_good(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let (itt, residual, exp_data_sn) = (t.itt, Residual::of(t.edtl, t.wanted), t.data_sn);
        if t.kind == Kind::Write {
            if let Some(l) = self.sh.luns.get(t.lun) {
                l.counters.write_cmds.fetch_add(1, Relaxed);
                let d = t.started.elapsed();
                l.counters.write_latency.record(d);
                if let Some(t) = self.tasks.get_mut(id) {
                    t.latency = Some(d);
                }
            }
        }
        if let Some(s) = &self.session {
            s.commands.fetch_add(1, Relaxed);
        }
        self.retire(io, id);
        self.respond_status(io, itt, Status::Good, residual, exp_data_sn);
        self.maybe_free(io, id);
    }

    pub(super) fn finish_check(&mut self, io: &mut impl IoOps, id: TaskId, sense: Sense) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let itt = t.itt;
        if let Some(l) = self.sh.luns.get(t.lun) {
            l.counters.errors.fetch_add(1, Relaxed);
        }
        if let Some(s) = &self.session {
            s.commands.fetch_add(1, Relaxed);
        }
        self.retire(io, id);
        self.respond_check(io, itt, sense, Residual::None);
        self.maybe_free(io, id);
    }

    /// Task `id` has its status queued: its ITT is free again, and its
    /// latency goes into the reactor's histogram.
    pub(super) fn retire(&mut self, io: &mut impl IoOps, id: TaskId) {
        if let Some(t) = self.tasks.get(id) {
            if !t.finished {
                io.stats()
                    .record_latency(t.latency.unwrap_or_else(|| t.started.elapsed()));
            }
        }
        self.tasks.retire(id);
    }

    /// Add a task, stamped with its LU's task epoch.
    pub(super) fn insert_task(&mut self, mut t: Task) -> TaskId {
        if let Some(l) = self.sh.luns.get(t.lun) {
            t.epoch = l.info.state.epoch();
        }
        self.tasks.insert(t)
    }

    /// Task `id` started before a reset or CLEAR TASK SET of its LU, from
    /// this session or another: it ends here without status (SAM-5: the
    /// initiator learns of it from the unit attention). True when so.
    pub(super) fn aborted_elsewhere(&mut self, io: &mut impl IoOps, id: TaskId) -> bool {
        let Some(t) = self.tasks.get(id) else {
            return false;
        };
        let stale = !t.finished && self.reset_since(t);
        if stale {
            tracing::debug!(
                "connection {}: ITT {:#x} aborted by a reset of LUN {}",
                self.peer,
                t.itt,
                t.lun
            );
            self.abort_task(io, id);
        }
        stale
    }

    /// Remove a task that never started.
    pub(super) fn drop_task(&mut self, io: &mut impl IoOps, id: TaskId) {
        self.retire(io, id);
        self.maybe_free(io, id);
    }

    /// Give a finished task's buffers back once nothing refers to them.
    pub(super) fn maybe_free(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if !t.finished || t.io_busy || t.sends > 0 || self.direct_task == Some(id) {
            return;
        }
        self.release_task(io, id);
        // A buffer came back: wake a waiting read.
        self.run_buffer_waiters(io);
    }

    /// Start reads that were waiting for a pool buffer, while there are
    /// buffers.
    pub(super) fn run_buffer_waiters(&mut self, io: &mut impl IoOps) {
        // Each waiter is tried once: one that still cannot get a buffer
        // goes back to the end of the queue.
        for _ in 0..self.buf_waiters.len() {
            if !self.can_take(io, 1) {
                break;
            }
            let Some(w) = self.buf_waiters.pop_front() else {
                break;
            };
            if let Some(wt) = self.tasks.get_mut(w) {
                wt.waiting_buf = false;
            }
            self.run_task(io, w);
        }
    }
}

/// The CDB bytes a `Param` task keeps for the SCSI layer's second call.
fn copy_cdb(dst: &mut [u8; 16], cdb: &[u8]) {
    let n = cdb.len().min(16);
    dst[..n].copy_from_slice(&cdb[..n]);
}

impl Conn {
    // ------------------------------------------------------------------
    // SCSI layer plumbing: the I_T nexus, parameter data, stepped jobs.

    /// This session's I_T nexus: the initiator port is the initiator name
    /// with the ISID (RFC 7143 names iSCSI initiator ports that way), the
    /// target port is the single portal group.
    fn make_nexus(&self) -> scsi::Nexus {
        let isid: String = self.login.isid.iter().map(|b| format!("{b:02x}")).collect();
        let port = format!(
            "{},i,0x{isid}",
            self.params.initiator_name.to_ascii_lowercase()
        );
        // TransportID, iSCSI, FORMAT CODE 01b (SPC-4 7.6.4.6): the port
        // name, NUL terminated, padded to a multiple of four.
        let mut tid = vec![0x45, 0, 0, 0];
        tid.extend_from_slice(port.as_bytes());
        tid.push(0);
        while tid.len() % 4 != 0 || tid.len() < 24 {
            tid.push(0);
        }
        let add = (tid.len() - 4) as u16;
        tid[2..4].copy_from_slice(&add.to_be_bytes());
        scsi::Nexus {
            initiator_port: port,
            transport_id: tid,
            target_port: 1,
        }
    }

    /// A command met an SPC-2 reservation: if the holder's initiator has
    /// already closed its connection (its reactor just has not got to it
    /// yet), the nexus is lost and so is the reservation (SPC-2 5.5.1).
    /// True when a reservation was released this way.
    fn release_closed_holder(&self, lun: usize) -> bool {
        let Some(l) = self.sh.luns.get(lun) else {
            return false;
        };
        let Some(holder) = l.info.state.spc2_holder() else {
            return false;
        };
        if self.nexus.as_ref() == Some(&holder) {
            return false;
        }
        if !self.sh.peer_closed(&holder.initiator_port) {
            tracing::debug!(
                "connection {}: reserved by {}, whose connection is open",
                self.peer,
                holder.initiator_port
            );
            return false;
        }
        tracing::info!(
            "connection {}: reservation of {} released: its connection is closed",
            self.peer,
            holder.initiator_port
        );
        l.info.state.nexus_lost(&holder);
        true
    }

    /// The connection (and with it the I_T nexus) is gone: its SPC-2
    /// reservations go too.
    pub(super) fn scsi_nexus_lost(&mut self) {
        if let Some(n) = self.nexus.take() {
            for l in &self.sh.luns {
                l.info.state.nexus_lost(&n);
            }
        }
    }

    /// LOGICAL UNIT RESET (`Some(lun)`) or a target reset (`None`): acts
    /// on every session of the LU(s) and raises the unit attention `why`
    /// on each.
    pub(super) fn scsi_lu_reset(&mut self, lun: Option<usize>, why: Sense) {
        for (i, l) in self.sh.luns.iter().enumerate() {
            if lun.is_none_or(|n| n == i) {
                l.info.state.reset_with(why);
            }
        }
    }

    /// CLEAR TASK SET on `lun`: the tasks of every session end; the other
    /// I_T nexuses learn of it by a unit attention.
    pub(super) fn scsi_clear_task_set(&mut self, lun: usize) {
        if let Some(l) = self.sh.luns.get(lun) {
            l.info.state.abort_all();
            l.info
                .state
                .raise_ua(scsi::state::ua::COMMANDS_CLEARED, self.nexus.as_ref());
        }
    }

    /// Hand a `Param` task's Data-Out to the SCSI layer and act on its
    /// answer.
    fn run_param(&mut self, io: &mut impl IoOps, id: TaskId, data: &[u8]) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let (cdb, lun, edtl) = (t.cdb, t.lun, t.edtl);
        let lu = self.sh.luns.get(lun);
        let ctx = CommandCtx {
            lun: lun as u64,
            lu: lu.map(|l| &l.info),
            luns: &self.sh.lun_numbers,
            expected_len: edtl,
            nexus: self.nexus.as_ref(),
            backend: lu.map(|l| &*l.backend),
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut outcome = scsi::execute_with_data(&cdb, &ctx, data, &mut scratch);
        if matches!(outcome, Outcome::Conflict) && self.release_closed_holder(lun) {
            outcome = scsi::execute_with_data(&cdb, &ctx, data, &mut scratch);
        }
        self.scratch = scratch;
        self.task_outcome(io, id, outcome);
    }

    /// Finish task `id` with an outcome of the SCSI layer's second call or
    /// of a job's last step.
    fn task_outcome(&mut self, io: &mut impl IoOps, id: TaskId, outcome: Outcome) {
        match outcome {
            Outcome::Good => self.finish_good(io, id),
            Outcome::Check(sense) => self.finish_check(io, id, sense),
            Outcome::Conflict => {
                let Some(t) = self.tasks.get(id) else {
                    return;
                };
                let itt = t.itt;
                self.retire(io, id);
                self.respond_status(io, itt, Status::ReservationConflict, Residual::None, 0);
                self.maybe_free(io, id);
            }
            Outcome::Job(job) => {
                if let Some(t) = self.tasks.get_mut(id) {
                    t.kind = Kind::Job;
                }
                self.start_job(io, id, job);
            }
            // Nothing else comes after Data-Out.
            _ => self.finish_check(io, id, Sense::invalid_field_in_cdb()),
        }
    }

    /// Give task `id` its job. A SANITIZE runs on its own thread and
    /// belongs to the LU (`scsi::sanitize`): the task ends at once (IMMED)
    /// or waits for it; any other job runs here in steps.
    fn start_job(&mut self, io: &mut impl IoOps, id: TaskId, job: Box<scsi::Job>) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let job = match (job.background(), self.sh.luns.get(t.lun)) {
            (Some(immed), Some(l)) => {
                let state = l.info.state.clone();
                match scsi::sanitize::start(&state, l.backend.clone(), *job) {
                    Err(sense) => return self.finish_check(io, id, sense),
                    Ok(()) if immed => return self.finish_good(io, id),
                    Ok(()) => Box::new(scsi::Job::wait_sanitize(state)),
                }
            }
            _ => job,
        };
        t.job = Some(job);
        self.schedule_job(io, id);
    }

    /// Run the next step of a job once the reactor has had a turn: a zero
    /// timeout completes after everything already queued; a job that only
    /// waits asks for a longer one.
    fn schedule_job(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let delay = t.job.as_ref().map_or(Duration::ZERO, |j| j.delay());
        t.io_busy = true;
        io.timeout(delay, TAG_DISK | id.index());
    }

    fn step_job(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(mut job) = t.job.take() else {
            return self.finish_check(io, id, Sense::aborted());
        };
        let Some(l) = self.sh.luns.get(t.lun) else {
            return self.finish_check(io, id, Sense::lun_not_supported());
        };
        match job.step(&*l.backend) {
            None => {
                t.job = Some(job);
                self.schedule_job(io, id);
            }
            Some(outcome) => self.task_outcome(io, id, outcome),
        }
    }
}
