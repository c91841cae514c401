//! SCSI tasks of a session and the rules that move their data, without I/O.
//!
//! A [`Task`] is one SCSI command that touches the medium. It moves its
//! data through one pool buffer in *chunks* of at most a buffer: a read
//! chunk is read from disk and then sent as Data-In; a write chunk is
//! filled by immediate data, unsolicited Data-Out and R2T-solicited
//! Data-Out, and then written. The methods here decide everything about
//! that flow that is not I/O: the chunk window, the next R2T, whether a
//! Data-Out may be accepted (offsets, DataSN, overlaps) and how a chunk is
//! cut into Data-In PDUs. The connection driver (`conn`) does the I/O and
//! calls them; the unit tests below drive them directly.
//!
//! [`TaskTable`] holds the tasks of a connection by [`TaskId`] and finds
//! the ones still answerable by their Initiator Task Tag.

use bootlun_engine::PoolBuf;
use hashbrown::HashMap;

use super::wire::RESERVED_TAG;

/// A task's place in its [`TaskTable`]; also carried in disk I/O tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(u32);

impl TaskId {
    /// Largest index a task may have (it shares a 32-bit I/O tag with a
    /// 4-bit kind).
    pub const MAX: u32 = (1 << 28) - 1;

    pub fn index(self) -> u32 {
        self.0
    }

    pub fn from_index(i: u32) -> TaskId {
        debug_assert!(i <= Self::MAX);
        TaskId(i)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    VerifyCompare,
    Flush,
    /// Data-Out for the SCSI layer itself (a parameter list, COMPARE AND
    /// WRITE data): gathered in one buffer, then handed back with the CDB.
    Param,
    /// Medium work the SCSI layer does in steps (`scsi::Job`).
    Job,
}

impl Kind {
    /// Pool buffers a task of this kind holds.
    pub fn buffers(self) -> usize {
        match self {
            Kind::VerifyCompare => 2,
            Kind::Job => 0,
            _ => 1,
        }
    }

    /// Whether the initiator sends data (Data-Out) for it.
    pub fn takes_data(self) -> bool {
        matches!(self, Kind::Write | Kind::VerifyCompare | Kind::Param)
    }
}

/// The R2T outstanding for a task (MaxOutstandingR2T is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tOut {
    pub ttt: u32,
    pub off: u32,
    pub len: u32,
    pub got: u32,
    /// DataSN the next Data-Out of this burst must carry.
    pub data_sn: u32,
}

/// An R2T to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub ttt: u32,
    pub r2t_sn: u32,
    pub offset: u32,
    pub len: u32,
}

/// Why a Data-Out was refused. Either way the data cannot be trusted and
/// the connection is closed (ErrorRecoveryLevel 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutError {
    /// The task's command carries no data.
    NoData,
    /// Not the next bytes of the unsolicited or solicited burst: a gap, an
    /// overlap, a repeat, bytes past the burst, or an unknown TTT.
    OutOfOrder,
    /// DataSN is not the one due.
    DataSn { got: u32, want: u32 },
    /// An earlier Data-Out of this task broke the sequence: the data is
    /// dropped while the initiator finishes the burst.
    Failed,
}

/// One Data-In PDU of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInSeg {
    pub data_sn: u32,
    /// Offset in the command's data (BufferOffset).
    pub offset: u32,
    /// Offset in the task's buffer.
    pub pos: u32,
    pub len: u32,
    /// F bit: end of a burst or of the data.
    pub fin: bool,
    /// This PDU carries the status (the last of the command).
    pub status: bool,
}

/// A SCSI command in progress.
#[derive(Debug)]
pub struct Task {
    pub itt: u32,
    pub lun: usize,
    pub lun_raw: u64,
    pub kind: Kind,
    pub lba: u64,
    pub fua: bool,
    pub bs: u32,
    /// Bytes the CDB asks for.
    pub wanted: u64,
    /// Expected data transfer length from the initiator.
    pub edtl: u32,
    /// Bytes that move (min of both).
    pub xfer: u32,
    /// Bytes finished on the medium.
    pub done: u32,
    pub buf: Option<PoolBuf>,
    pub cmp_buf: Option<PoolBuf>,
    pub chunk_start: u32,
    pub chunk_len: u32,
    pub chunk_got: u32,
    /// Unsolicited data ends here as far as the medium is concerned
    /// (clipped to what moves and to the first chunk).
    pub unsol_end: u32,
    /// Wire offsets of unsolicited data: the next one due, and the end the
    /// initiator may send up to (RFC 7143: immediate data, plus
    /// FirstBurstLength when InitialR2T=No).
    pub unsol_next: u32,
    pub unsol_limit: u32,
    pub r2t_next: u32,
    pub r2t: Option<R2tOut>,
    pub r2t_sn: u32,
    /// DataSN the next unsolicited Data-Out must carry.
    pub unsol_data_sn: u32,
    /// DataSN of the next Data-In.
    pub data_sn: u32,
    /// Bytes of Data-In queued in the current burst (F bits at
    /// MaxBurstLength).
    pub burst: u32,
    /// PDUs pointing into this task's buffer not yet sent.
    pub sends: u32,
    /// The current read chunk is sent from the LU's mapped memory, here,
    /// instead of a pool buffer (see `BlockBackend::mapped`).
    pub mapped: Option<*const u8>,
    /// A write whose data is received straight into its LU's mapping
    /// (`BlockBackend::mapped_mut`): it holds no pool buffer, and its
    /// chunks need no disk write.
    pub in_place: bool,
    /// Such a write's data could not all be stored (a staged piece's
    /// write failed): it ends with CHECK CONDITION once its data is in.
    pub place_failed: bool,
    pub io_busy: bool,
    pub waiting_buf: bool,
    /// The status has been queued (or the task was aborted): only waiting
    /// for I/O and sends to drain before the buffers go back.
    pub finished: bool,
    pub aborted: bool,
    /// A Data-Out broke the sequence (offset, TTT or DataSN): the task
    /// ends with CHECK CONDITION once the burst's last PDU is in.
    pub data_failed: bool,
    /// The LU's task epoch when the task started: a reset or CLEAR TASK
    /// SET from any session moves the LU's epoch on and aborts the task.
    pub epoch: u64,
    /// The CDB of a `Param` task, for the SCSI layer's second call.
    pub cdb: [u8; 16],
    /// The steps left of a `Job` task.
    pub job: Option<Box<crate::scsi::Job>>,
    /// When the command arrived (for the latency histograms).
    pub started: std::time::Instant,
    /// Its latency, once measured for the LUN's histogram, so that the
    /// reactor's histogram reuses it instead of reading the clock again.
    pub latency: Option<std::time::Duration>,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        itt: u32,
        lun: usize,
        lun_raw: u64,
        kind: Kind,
        lba: u64,
        fua: bool,
        bs: u32,
        wanted: u64,
        edtl: u32,
    ) -> Task {
        Task {
            itt,
            lun,
            lun_raw,
            kind,
            lba,
            fua,
            bs,
            wanted,
            edtl,
            xfer: wanted.min(edtl as u64) as u32,
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
            mapped: None,
            in_place: false,
            place_failed: false,
            io_busy: false,
            waiting_buf: false,
            finished: false,
            aborted: false,
            data_failed: false,
            epoch: 0,
            cdb: [0; 16],
            job: None,
            started: std::time::Instant::now(),
            latency: None,
        }
    }

    /// Pool buffers this task holds once it runs.
    pub fn buffers(&self) -> usize {
        if self.in_place {
            0
        } else {
            self.kind.buffers()
        }
    }

    /// Byte offset of the current chunk on the medium.
    pub fn disk_offset(&self) -> u64 {
        self.lba * self.bs as u64 + self.chunk_start as u64
    }

    /// Make the chunk starting at data byte `start` current: as much of
    /// the rest as fits a buffer of `buf_size`, in whole blocks.
    pub fn set_chunk(&mut self, start: u32, buf_size: u32) {
        let chunk_max = buf_size - buf_size % self.bs;
        debug_assert!(chunk_max > 0, "buffer smaller than a block");
        debug_assert!(start <= self.xfer);
        self.chunk_start = start;
        self.chunk_len = (self.xfer - start).min(chunk_max);
        self.chunk_got = 0;
    }

    /// Bytes of the current read chunk to read from the medium: whole
    /// blocks, even when the initiator asked for less (overflow).
    pub fn read_len(&self) -> u32 {
        self.chunk_len.div_ceil(self.bs) * self.bs
    }

    /// Bytes of the current write chunk that reach the medium: whole blocks
    /// only (an overflowing EDTL can end mid-block).
    pub fn write_len(&self) -> u32 {
        self.chunk_len - self.chunk_len % self.bs
    }

    /// The part of data bytes `[start, start + len)` that lands on the
    /// medium in the current chunk: its medium byte offset, where that
    /// part begins within the given range, and its length. `None` when
    /// none of it does.
    pub fn medium_range(&self, start: u64, len: u64) -> Option<(u64, u64, u64)> {
        let ws = self.chunk_start as u64;
        let we = ws + self.write_len() as u64;
        let s = start.max(ws);
        let e = (start + len).min(we);
        (s < e).then(|| (self.lba * self.bs as u64 + s, s - start, e - s))
    }

    /// A write's command PDU arrived with `dsl` bytes of immediate data:
    /// note how much unsolicited data may follow.
    pub fn begin_unsolicited(&mut self, initial_r2t: bool, first_burst: u32, dsl: u32) {
        self.unsol_limit = if initial_r2t {
            dsl
        } else {
            first_burst.min(self.edtl)
        };
        self.unsol_next = dsl;
    }

    /// The first chunk has a buffer: solicited data starts where the
    /// unsolicited data ends.
    pub fn open_data_window(&mut self) {
        self.unsol_end = self.unsol_limit.min(self.xfer).min(self.chunk_len);
        self.r2t_next = self.unsol_end;
    }

    /// The R2T to send next, if none is outstanding and the current chunk
    /// still lacks data. `ttt` is the tag it will carry.
    pub fn next_r2t(&mut self, max_burst: u32, ttt: u32) -> Option<R2t> {
        if self.finished || self.r2t.is_some() {
            return None;
        }
        let chunk_end = self.chunk_start + self.chunk_len;
        if self.r2t_next < self.chunk_start {
            self.r2t_next = self.chunk_start;
        }
        if self.r2t_next >= chunk_end {
            return None;
        }
        let len = (chunk_end - self.r2t_next).min(max_burst.max(1));
        let offset = self.r2t_next;
        self.r2t = Some(R2tOut {
            ttt,
            off: offset,
            len,
            got: 0,
            data_sn: 0,
        });
        self.r2t_next += len;
        let r2t_sn = self.r2t_sn;
        self.r2t_sn += 1;
        Some(R2t {
            ttt,
            r2t_sn,
            offset,
            len,
        })
    }

    /// Check a Data-Out header (TTT, BufferOffset, data length, F bit,
    /// DataSN) against what this task expects, and count it when it fits.
    ///
    /// DataPDUInOrder and DataSequenceInOrder are Yes: every burst's data
    /// comes in order, each byte once. Anything else (overlaps, repeats,
    /// gaps, bytes past the burst) would let a chunk look complete with
    /// bytes missing.
    pub fn accept_data_out(
        &mut self,
        ttt: u32,
        off: u32,
        len: u32,
        fin: bool,
        data_sn: u32,
        initial_r2t: bool,
    ) -> Result<(), DataOutError> {
        if !self.kind.takes_data() {
            return Err(DataOutError::NoData);
        }
        if self.data_failed {
            return Err(DataOutError::Failed);
        }
        let end = off as u64 + len as u64;
        let expected = if ttt == RESERVED_TAG {
            if initial_r2t || off != self.unsol_next || end > self.unsol_limit as u64 {
                return Err(DataOutError::OutOfOrder);
            }
            self.unsol_next = end as u32;
            &mut self.unsol_data_sn
        } else {
            match self.r2t.as_mut() {
                Some(r)
                    if r.ttt == ttt
                        && off == r.off + r.got
                        && end <= (r.off + r.len) as u64
                        && (!fin || end == (r.off + r.len) as u64) =>
                {
                    r.got += len;
                    &mut r.data_sn
                }
                _ => return Err(DataOutError::OutOfOrder),
            }
        };
        // DataSN counts the Data-Out PDUs of each burst from 0 (RFC 7143
        // 11.7.5); a gap or repeat means lost or duplicated data.
        if data_sn != *expected {
            return Err(DataOutError::DataSn {
                got: data_sn,
                want: *expected,
            });
        }
        *expected += 1;
        Ok(())
    }

    /// A Data-Out of this task was refused with `e` (F bit `fin`). True
    /// when the task must now end with CHECK CONDITION; false when the
    /// connection cannot continue (`NoData`) or more PDUs of the burst
    /// are still to come and are dropped first.
    ///
    /// At ErrorRecoveryLevel 0 a DataSN gap or a wrong offset stands for
    /// a PDU lost to a digest error (RFC 7143 7.8): the target may not ask
    /// for it again (no recovery R2T below ERL 1), so it ends the task
    /// with CHECK CONDITION, ABORTED COMMAND, "protocol service CRC
    /// error", after the last PDU of the burst (RFC 7143 7.7). The
    /// session stays up.
    pub fn data_out_refused(&mut self, e: DataOutError, fin: bool) -> Option<bool> {
        match e {
            DataOutError::NoData => None,
            DataOutError::OutOfOrder | DataOutError::DataSn { .. } | DataOutError::Failed => {
                self.data_failed = true;
                Some(fin)
            }
        }
    }

    /// Data bytes `[off, off+n)` were stored (those inside the current
    /// chunk count). `ttt` is the Data-Out's tag, `None` for immediate
    /// data. Returns true when the chunk has all its data and can go to
    /// the medium.
    pub fn data_arrived(&mut self, off: u32, n: u32, ttt: Option<u32>) -> bool {
        if self.finished {
            return false;
        }
        let ws = self.chunk_start as u64;
        let we = ws + self.chunk_len as u64;
        let s = (off as u64).max(ws);
        let e = (off as u64 + n as u64).min(we);
        if e > s {
            self.chunk_got += (e - s) as u32;
        }
        debug_assert!(
            self.chunk_got <= self.chunk_len,
            "chunk counted past its end"
        );
        if let (Some(ttt), Some(r)) = (ttt, self.r2t.as_ref()) {
            if ttt == r.ttt && r.got >= r.len {
                self.r2t = None;
            }
        }
        self.chunk_got >= self.chunk_len && !self.io_busy
    }

    /// A write or verify chunk went to the medium: move to the next one.
    /// Returns false when that was the last.
    pub fn advance_chunk(&mut self, buf_size: u32) -> bool {
        self.done += self.chunk_len;
        if self.done >= self.xfer {
            return false;
        }
        self.set_chunk(self.done, buf_size);
        true
    }

    /// Cut the chunk just read into Data-In PDUs of at most `mrdsl` bytes
    /// that end at every `max_burst` bytes (F bit), appending them to
    /// `out`. Counts them as sends of the buffer and moves `done` past the
    /// chunk. Returns true when this was the last chunk (its last PDU
    /// carries the status).
    pub fn data_in(&mut self, mrdsl: u32, max_burst: u32, out: &mut Vec<DataInSeg>) -> bool {
        let (mrdsl, max_burst) = (mrdsl.max(1), max_burst.max(1));
        let (start, len) = (self.chunk_start, self.chunk_len);
        let last_chunk = start + len >= self.xfer;
        let mut pos = 0u32;
        while pos < len {
            debug_assert!(self.burst < max_burst);
            let n = (len - pos).min(mrdsl).min(max_burst - self.burst);
            let end_of_data = pos + n >= len;
            self.burst += n;
            let end_of_burst = self.burst >= max_burst;
            if end_of_burst {
                self.burst = 0;
            }
            let status = end_of_data && last_chunk;
            out.push(DataInSeg {
                data_sn: self.data_sn,
                offset: start + pos,
                pos,
                len: n,
                fin: end_of_burst || status,
                status,
            });
            self.data_sn += 1;
            self.sends += 1;
            pos += n;
        }
        self.done += len;
        last_chunk
    }
}

/// The tasks of one connection.
#[derive(Default)]
pub struct TaskTable {
    slots: Vec<Option<Task>>,
    free: Vec<u32>,
    /// Tasks still owed a status, by Initiator Task Tag.
    by_itt: HashMap<u32, TaskId>,
}

impl TaskTable {
    /// Add `t`; it is answerable by its ITT until [`retire`](Self::retire).
    pub fn insert(&mut self, t: Task) -> TaskId {
        let itt = t.itt;
        let id = match self.free.pop() {
            Some(i) => {
                debug_assert!(self.slots[i as usize].is_none());
                self.slots[i as usize] = Some(t);
                TaskId(i)
            }
            None => {
                self.slots.push(Some(t));
                TaskId::from_index((self.slots.len() - 1) as u32)
            }
        };
        self.by_itt.insert(itt, id);
        id
    }

    pub fn get(&self, id: TaskId) -> Option<&Task> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.slots.get_mut(id.0 as usize)?.as_mut()
    }

    /// The task owed a status under `itt`.
    pub fn find(&self, itt: u32) -> Option<TaskId> {
        self.by_itt.get(&itt).copied()
    }

    /// Tasks owed a status (the CmdSN window counts these).
    pub fn active(&self) -> usize {
        self.by_itt.len()
    }

    /// Mark `id` finished: its status is out (or it was aborted), so its
    /// ITT is free again. It stays in the table until its I/O drains.
    pub fn retire(&mut self, id: TaskId) {
        if let Some(t) = self.get_mut(id) {
            t.finished = true;
            let itt = t.itt;
            if self.by_itt.get(&itt) == Some(&id) {
                self.by_itt.remove(&itt);
            }
        }
    }

    /// Take `id` out of the table (its buffers go back to the caller).
    pub fn remove(&mut self, id: TaskId) -> Option<Task> {
        let t = self.slots.get_mut(id.0 as usize)?.take()?;
        if self.by_itt.get(&t.itt) == Some(&id) {
            self.by_itt.remove(&t.itt);
        }
        self.free.push(id.0);
        Some(t)
    }

    /// Every task in the table, answered or not.
    pub fn ids(&self) -> Vec<TaskId> {
        (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].is_some())
            .map(TaskId)
            .collect()
    }

    /// Tasks owed a status for which `f` holds.
    pub fn active_where(&self, f: impl Fn(&Task) -> bool) -> Vec<TaskId> {
        self.by_itt
            .values()
            .copied()
            .filter(|&id| self.get(id).is_some_and(&f))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|t| t.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUF: u32 = 64 * 1024;

    /// A WRITE of `len` bytes (512-byte blocks) whose first chunk has a
    /// buffer, with `imm` bytes of immediate data and the given
    /// InitialR2T / FirstBurstLength.
    fn write_task(len: u32, imm: u32, initial_r2t: bool, first_burst: u32) -> Task {
        let mut t = Task::new(7, 0, 0, Kind::Write, 0, false, 512, len as u64, len);
        t.begin_unsolicited(initial_r2t, first_burst, imm);
        t.set_chunk(0, BUF);
        t.open_data_window();
        if imm > 0 {
            t.data_arrived(0, imm, None);
        }
        t
    }

    #[test]
    fn r2t_sequence_covers_a_chunk_in_bursts() {
        let mut t = write_task(40960, 0, true, 0);
        let r = t.next_r2t(16384, 100).unwrap();
        assert_eq!((r.r2t_sn, r.offset, r.len), (0, 0, 16384));
        // One outstanding R2T at a time.
        assert_eq!(t.next_r2t(16384, 101), None);
        for (sn, off) in [(0, 0), (1, 8192)] {
            t.accept_data_out(100, off, 8192, off == 8192, sn, true)
                .unwrap();
            assert!(!t.data_arrived(off, 8192, Some(100)));
        }
        let r = t.next_r2t(16384, 101).unwrap();
        assert_eq!((r.r2t_sn, r.offset, r.len), (1, 16384, 16384));
        t.accept_data_out(101, 16384, 16384, true, 0, true).unwrap();
        assert!(!t.data_arrived(16384, 16384, Some(101)));
        let r = t.next_r2t(16384, 102).unwrap();
        assert_eq!((r.r2t_sn, r.offset, r.len), (2, 32768, 8192));
        t.accept_data_out(102, 32768, 8192, true, 0, true).unwrap();
        assert!(t.data_arrived(32768, 8192, Some(102)));
        assert_eq!(t.next_r2t(16384, 103), None);
    }

    #[test]
    fn r2ts_follow_chunks_larger_than_the_buffer() {
        let mut t = write_task(3 * BUF, 0, true, 0);
        let r = t.next_r2t(BUF, 1).unwrap();
        assert_eq!((r.offset, r.len), (0, BUF));
        t.accept_data_out(1, 0, BUF, true, 0, true).unwrap();
        assert!(t.data_arrived(0, BUF, Some(1)));
        // Nothing beyond the chunk is asked for until it is on disk.
        assert_eq!(t.next_r2t(BUF, 2), None);
        assert!(t.advance_chunk(BUF));
        let r = t.next_r2t(BUF, 2).unwrap();
        assert_eq!((r.r2t_sn, r.offset, r.len), (1, BUF, BUF));
        t.accept_data_out(2, BUF, BUF, true, 0, true).unwrap();
        assert!(t.data_arrived(BUF, BUF, Some(2)));
        assert!(t.advance_chunk(BUF));
        let r = t.next_r2t(BUF, 3).unwrap();
        assert_eq!(r.offset, 2 * BUF);
        t.accept_data_out(3, 2 * BUF, BUF, true, 0, true).unwrap();
        assert!(t.data_arrived(2 * BUF, BUF, Some(3)));
        assert!(!t.advance_chunk(BUF));
        assert_eq!(t.done, 3 * BUF);
    }

    #[test]
    fn immediate_unsolicited_and_solicited_data_mix() {
        // 4 KiB immediate, unsolicited up to FirstBurstLength 16 KiB, the
        // rest by R2T.
        let mut t = write_task(32768, 4096, false, 16384);
        assert_eq!(t.unsol_end, 16384);
        // Unsolicited Data-Out continues right after the immediate data.
        t.accept_data_out(RESERVED_TAG, 4096, 8192, false, 0, false)
            .unwrap();
        assert!(!t.data_arrived(4096, 8192, Some(RESERVED_TAG)));
        t.accept_data_out(RESERVED_TAG, 12288, 4096, true, 1, false)
            .unwrap();
        assert!(!t.data_arrived(12288, 4096, Some(RESERVED_TAG)));
        // Past FirstBurstLength is not unsolicited any more.
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 16384, 512, false, 2, false),
            Err(DataOutError::OutOfOrder)
        );
        let r = t.next_r2t(262144, 9).unwrap();
        assert_eq!((r.offset, r.len), (16384, 16384));
        t.accept_data_out(9, 16384, 16384, true, 0, false).unwrap();
        assert!(t.data_arrived(16384, 16384, Some(9)));
    }

    #[test]
    fn immediate_data_only_when_initial_r2t() {
        let mut t = write_task(8192, 4096, true, 65536);
        // InitialR2T=Yes: no unsolicited Data-Out at all.
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 4096, 4096, true, 0, true),
            Err(DataOutError::OutOfOrder)
        );
        let r = t.next_r2t(65536, 1).unwrap();
        assert_eq!((r.offset, r.len), (4096, 4096));
    }

    #[test]
    fn unsolicited_data_over_immediate_data_is_refused() {
        let mut t = write_task(4096, 2048, false, 65536);
        // Offset 0 again: the same bytes a second time.
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 0, 2048, false, 0, false),
            Err(DataOutError::OutOfOrder)
        );
        assert_eq!(t.chunk_got, 2048);
    }

    #[test]
    fn overlapping_duplicate_and_out_of_order_data_out_is_refused() {
        let mut t = write_task(16384, 0, true, 0);
        let r = t.next_r2t(16384, 5).unwrap();
        t.accept_data_out(5, 0, 4096, false, 0, true).unwrap();
        t.data_arrived(0, 4096, Some(5));
        // A repeat of the first PDU.
        assert_eq!(
            t.accept_data_out(5, 0, 4096, false, 1, true),
            Err(DataOutError::OutOfOrder)
        );
        // Overlapping the first PDU.
        assert_eq!(
            t.accept_data_out(5, 2048, 4096, false, 1, true),
            Err(DataOutError::OutOfOrder)
        );
        // A gap.
        assert_eq!(
            t.accept_data_out(5, 8192, 4096, false, 1, true),
            Err(DataOutError::OutOfOrder)
        );
        // Past the burst.
        assert_eq!(
            t.accept_data_out(5, 4096, r.len, false, 1, true),
            Err(DataOutError::OutOfOrder)
        );
        // F bit before the burst's end.
        assert_eq!(
            t.accept_data_out(5, 4096, 4096, true, 1, true),
            Err(DataOutError::OutOfOrder)
        );
        // A TTT we never sent.
        assert_eq!(
            t.accept_data_out(6, 4096, 4096, false, 1, true),
            Err(DataOutError::OutOfOrder)
        );
        // None of that counted.
        assert_eq!(t.chunk_got, 4096);
        t.accept_data_out(5, 4096, 12288, true, 1, true).unwrap();
        assert!(t.data_arrived(4096, 12288, Some(5)));
    }

    #[test]
    fn data_sn_gaps_and_repeats_are_refused() {
        let mut t = write_task(16384, 0, true, 0);
        t.next_r2t(16384, 5).unwrap();
        assert_eq!(
            t.accept_data_out(5, 0, 4096, false, 1, true),
            Err(DataOutError::DataSn { got: 1, want: 0 })
        );
        let mut t = write_task(16384, 0, true, 0);
        t.next_r2t(16384, 5).unwrap();
        t.accept_data_out(5, 0, 4096, false, 0, true).unwrap();
        assert_eq!(
            t.accept_data_out(5, 4096, 4096, false, 0, true),
            Err(DataOutError::DataSn { got: 0, want: 1 })
        );
        // Each burst counts from 0 again.
        let mut t = write_task(16384, 0, true, 0);
        t.next_r2t(8192, 5).unwrap();
        t.accept_data_out(5, 0, 8192, true, 0, true).unwrap();
        t.data_arrived(0, 8192, Some(5));
        t.next_r2t(8192, 6).unwrap();
        t.accept_data_out(6, 8192, 8192, true, 0, true).unwrap();
    }

    #[test]
    fn data_out_for_a_read_is_refused() {
        let mut t = Task::new(1, 0, 0, Kind::Read, 0, false, 512, 4096, 4096);
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 0, 512, true, 0, false),
            Err(DataOutError::NoData)
        );
    }

    #[test]
    fn data_in_segments_respect_mrdsl_and_bursts() {
        let mut t = Task::new(1, 0, 0, Kind::Read, 0, false, 512, 20480, 20480);
        t.set_chunk(0, BUF);
        let mut segs = Vec::new();
        assert!(t.data_in(8192, 12288, &mut segs));
        let got: Vec<_> = segs
            .iter()
            .map(|s| (s.data_sn, s.offset, s.len, s.fin, s.status))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 8192, false, false),
                (1, 8192, 4096, true, false),
                (2, 12288, 8192, true, true),
            ]
        );
        assert_eq!(t.sends, 3);
        assert_eq!(t.done, 20480);
    }

    #[test]
    fn data_in_over_several_chunks_carries_status_once() {
        let mut t = Task::new(1, 0, 0, Kind::Read, 0, false, 512, 2 * BUF as u64, 2 * BUF);
        let mut segs = Vec::new();
        t.set_chunk(0, BUF);
        assert!(!t.data_in(BUF, 1 << 20, &mut segs));
        t.set_chunk(t.done, BUF);
        assert!(t.data_in(BUF, 1 << 20, &mut segs));
        assert_eq!(segs.iter().filter(|s| s.status).count(), 1);
        assert_eq!(
            segs.iter().map(|s| s.data_sn).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(segs[1].offset, BUF);
    }

    #[test]
    fn overflow_reads_whole_blocks_and_writes_whole_blocks() {
        let mut t = Task::new(1, 0, 0, Kind::Read, 0, false, 512, 4096, 1000);
        t.set_chunk(0, BUF);
        assert_eq!((t.chunk_len, t.read_len()), (1000, 1024));
        let mut w = Task::new(1, 0, 0, Kind::Write, 0, false, 512, 4096, 1000);
        w.set_chunk(0, BUF);
        assert_eq!(w.write_len(), 512);
    }

    #[test]
    fn table_finds_by_itt_until_retired() {
        let mut tt = TaskTable::default();
        let a = tt.insert(Task::new(10, 0, 0, Kind::Read, 0, false, 512, 512, 512));
        let b = tt.insert(Task::new(11, 1, 0, Kind::Write, 0, false, 512, 512, 512));
        assert_eq!(tt.find(10), Some(a));
        assert_eq!(tt.active(), 2);
        assert_eq!(tt.active_where(|t| t.lun == 1), vec![b]);
        tt.retire(a);
        assert_eq!(tt.find(10), None);
        assert!(tt.get(a).unwrap().finished);
        assert_eq!(tt.active(), 1);
        assert!(tt.remove(a).is_some());
        assert!(tt.get(a).is_none());
        // The slot is reused.
        let c = tt.insert(Task::new(12, 0, 0, Kind::Flush, 0, false, 512, 0, 0));
        assert_eq!(c, a);
        assert_eq!(tt.ids().len(), 2);
        tt.remove(b);
        tt.remove(c);
        assert!(tt.is_empty());
    }
}
