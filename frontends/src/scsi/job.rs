//! Long medium work done in bounded steps: WRITE SAME over many blocks,
//! UNMAP of large ranges, SANITIZE, EXTENDED COPY.
//!
//! A command that would touch much of the medium answers [`Outcome::Job`].
//! The transport calls [`Job::step`] repeatedly, giving other work (other
//! connections on the same reactor) a turn between steps, until a step
//! returns the final outcome. One step moves at most [`STEP_BYTES`] of data
//! through the backend's blocking calls, or deallocates / zeroes at most
//! [`STEP_RANGE`] bytes, so no step holds a reactor for long.
//!
//! [`Outcome::Job`]: super::Outcome::Job

use std::collections::VecDeque;
use std::sync::Arc;

use bootlun_engine::BlockBackend;

use super::state::{CopyResult, LuState};
use super::{Outcome, Sense};

/// Data written or copied per step.
pub const STEP_BYTES: usize = 1 << 20;
/// Bytes deallocated or zeroed (without data transfer) per step.
pub const STEP_RANGE: u64 = 64 << 20;

/// What a range job does to each range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOp {
    /// Give the space back (UNMAP, WRITE SAME with UNMAP, BLOCK ERASE).
    Discard,
    /// Make it read as zeros.
    Zero,
    /// Write this chunk over and over; its length is a whole number of
    /// blocks, at most [`STEP_BYTES`].
    Fill(Vec<u8>),
}

/// One EXTENDED COPY block-to-block segment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySeg {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

#[derive(Debug)]
enum Work {
    Ranges {
        op: RangeOp,
        /// (byte offset, byte length), consumed from the front.
        ranges: VecDeque<(u64, u64)>,
        /// Flush once the last range is done.
        fua: bool,
    },
    Copy {
        segs: VecDeque<CopySeg>,
        seg_done: u16,
        bytes_done: u64,
        block_size: u32,
        list_id: Option<u8>,
        initiator_port: String,
        state: Arc<LuState>,
        buf: Vec<u8>,
    },
    /// Wait for the LU's background SANITIZE to end (SANITIZE without
    /// IMMED): nothing to do but look.
    WaitSanitize { state: Arc<LuState> },
}

/// Medium work in progress. See the module documentation.
#[derive(Debug)]
pub struct Job {
    work: Work,
    /// `Some(immed)`: a SANITIZE, which runs in the background on its own
    /// thread (`scsi::sanitize`) and outlives its command; `immed`: status
    /// is returned as soon as it has started.
    background: Option<bool>,
}

impl PartialEq for Job {
    /// Jobs are never equal: an outcome holding one is compared only in
    /// tests, which look inside with [`Job::describe`].
    fn eq(&self, _other: &Job) -> bool {
        false
    }
}

impl Eq for Job {}

impl Job {
    pub fn ranges(op: RangeOp, ranges: Vec<(u64, u64)>, fua: bool) -> Job {
        Job {
            work: Work::Ranges {
                op,
                ranges: ranges.into_iter().filter(|r| r.1 > 0).collect(),
                fua,
            },
            background: None,
        }
    }

    /// This job as a SANITIZE: run in the background, with the CDB's IMMED
    /// bit.
    pub fn sanitize(mut self, immed: bool) -> Job {
        self.background = Some(immed);
        self
    }

    /// `Some(immed)` for a SANITIZE (see [`Job::sanitize`]).
    pub fn background(&self) -> Option<bool> {
        self.background
    }

    /// A job that ends when the LU's background SANITIZE does: GOOD, or
    /// SANITIZE COMMAND FAILED.
    pub fn wait_sanitize(state: Arc<LuState>) -> Job {
        Job {
            work: Work::WaitSanitize { state },
            background: None,
        }
    }

    /// How long the transport lets pass before the next step: none for
    /// work, a little for waiting.
    pub fn delay(&self) -> std::time::Duration {
        match self.work {
            Work::WaitSanitize { .. } => std::time::Duration::from_millis(50),
            _ => std::time::Duration::ZERO,
        }
    }

    /// Bytes still to process.
    pub fn remaining(&self) -> u64 {
        match &self.work {
            Work::Ranges { ranges, .. } => ranges.iter().map(|r| r.1).sum(),
            Work::Copy { segs, .. } => segs.iter().map(|s| s.len).sum(),
            Work::WaitSanitize { .. } => 0,
        }
    }

    /// The work writes data (rather than deallocating), so a rate limit
    /// applies to it.
    pub fn writes_data(&self) -> bool {
        !matches!(
            self.work,
            Work::Ranges {
                op: RangeOp::Discard,
                ..
            } | Work::WaitSanitize { .. }
        )
    }

    pub fn copy(
        segs: Vec<CopySeg>,
        block_size: u32,
        list_id: Option<u8>,
        initiator_port: String,
        state: Arc<LuState>,
    ) -> Job {
        if let Some(id) = list_id {
            state.record_copy(CopyResult {
                initiator_port: initiator_port.clone(),
                list_id: id,
                status: 0,
                segments_processed: 0,
                blocks_copied: 0,
            });
        }
        Job {
            work: Work::Copy {
                segs: segs.into(),
                seg_done: 0,
                bytes_done: 0,
                block_size,
                list_id,
                initiator_port,
                state,
                buf: Vec::new(),
            },
            background: None,
        }
    }

    /// A short description for tests and logs.
    pub fn describe(&self) -> String {
        match &self.work {
            Work::Ranges { op, ranges, .. } => {
                let op = match op {
                    RangeOp::Discard => "discard".to_string(),
                    RangeOp::Zero => "zero".to_string(),
                    RangeOp::Fill(c) => format!("fill {}", c.len()),
                };
                format!("{op} {:?}", ranges)
            }
            Work::Copy { segs, .. } => format!("copy {:?}", segs),
            Work::WaitSanitize { .. } => "wait for sanitize".to_string(),
        }
    }

    /// Do one bounded piece of the work. `None`: more to do; otherwise the
    /// command's final outcome (`Good`, or `Check` on a backend error).
    pub fn step(&mut self, backend: &dyn BlockBackend) -> Option<Outcome> {
        match &mut self.work {
            Work::WaitSanitize { state } => {
                if state.sanitize_progress().is_some() {
                    None
                } else if state.sanitize_failed() {
                    Some(Outcome::Check(Sense::sanitize_failed()))
                } else {
                    Some(Outcome::Good)
                }
            }
            Work::Ranges { op, ranges, fua } => {
                let Some((off, len)) = ranges.front().copied() else {
                    return Some(Outcome::Good);
                };
                let n = match op {
                    RangeOp::Discard => len.min(STEP_RANGE),
                    // Zeroing may write data (block devices without an
                    // unmapping write-zeroes): smaller steps.
                    RangeOp::Zero => len.min(STEP_RANGE / 8),
                    RangeOp::Fill(chunk) => len.min(chunk.len() as u64),
                };
                let r = match op {
                    RangeOp::Discard => backend.discard(off, n),
                    RangeOp::Zero => backend.write_zeroes(off, n),
                    RangeOp::Fill(chunk) => backend.write_at(&chunk[..n as usize], off, false),
                };
                if let Err(e) = r {
                    tracing::warn!("{}: {e}", backend.describe());
                    return Some(Outcome::Check(Sense::write_error()));
                }
                if let Some(front) = ranges.front_mut() {
                    *front = (off + n, len - n);
                    if front.1 == 0 {
                        ranges.pop_front();
                    }
                }
                if ranges.is_empty() {
                    if *fua {
                        if let Err(e) = backend.flush_blocking() {
                            tracing::warn!("{}: {e}", backend.describe());
                            return Some(Outcome::Check(Sense::write_error()));
                        }
                    }
                    return Some(Outcome::Good);
                }
                None
            }
            Work::Copy {
                segs,
                seg_done,
                bytes_done,
                block_size,
                list_id,
                initiator_port,
                state,
                buf,
            } => {
                let bs = u64::from(*block_size).max(1);
                let finish = |status: u8, segs: u16, bytes: u64| {
                    if let Some(id) = *list_id {
                        state.record_copy(CopyResult {
                            initiator_port: initiator_port.clone(),
                            list_id: id,
                            status,
                            segments_processed: segs,
                            blocks_copied: bytes / bs,
                        });
                    }
                };
                let Some(seg) = segs.front().copied() else {
                    finish(1, *seg_done, *bytes_done);
                    return Some(Outcome::Good);
                };
                let n = seg.len.min(STEP_BYTES as u64) as usize;
                buf.resize(n, 0);
                let r = backend
                    .read_at(buf, seg.src)
                    .map_err(|e| (e, Sense::read_error()))
                    .and_then(|()| {
                        backend
                            .write_at(buf, seg.dst, false)
                            .map_err(|e| (e, Sense::write_error()))
                    });
                if let Err((e, sense)) = r {
                    tracing::warn!("{}: copy: {e}", backend.describe());
                    finish(2, *seg_done, *bytes_done);
                    return Some(Outcome::Check(sense));
                }
                *bytes_done += n as u64;
                let n = n as u64;
                if let Some(front) = segs.front_mut() {
                    *front = CopySeg {
                        src: seg.src + n,
                        dst: seg.dst + n,
                        len: seg.len - n,
                    };
                    if front.len == 0 {
                        segs.pop_front();
                        *seg_done = seg_done.saturating_add(1);
                    }
                }
                if segs.is_empty() {
                    finish(1, *seg_done, *bytes_done);
                    return Some(Outcome::Good);
                }
                None
            }
        }
    }

    /// Run every step at once: for tests and for callers that are not on a
    /// reactor.
    pub fn run(mut self, backend: &dyn BlockBackend) -> Outcome {
        loop {
            if let Some(o) = self.step(backend) {
                return o;
            }
        }
    }
}
