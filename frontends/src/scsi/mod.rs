//! SCSI command emulation (SPC-4 / SBC-3) for a direct-access block device.
//!
//! This layer is transport independent: it sees a CDB and a description of
//! the logical unit, and answers with an [`Outcome`]. Commands that touch the
//! medium (READ, WRITE, VERIFY, SYNCHRONIZE CACHE) are not executed here;
//! they come back as [`Outcome::Read`] and friends, for the transport to run
//! on the engine with zero-copy buffers. Everything else is answered here,
//! writing the Data-In bytes into a caller-owned `Vec`.
//!
//! Layout: `cdb` decodes CDB fields, `sense` builds sense data, `opcode`
//! names every operation code and holds the supported-command table (with
//! the CDB USAGE DATA that REPORT SUPPORTED OPERATION CODES reports and the
//! dispatcher enforces), `vpd` answers INQUIRY (standard data and VPD
//! pages), `mode` answers MODE SENSE, `emulate` dispatches and answers the
//! rest (READ CAPACITY, REPORT LUNS, REQUEST SENSE, ...).
//!
//! Notes for the transport:
//! * WRITE AND VERIFY(10/12/16) come back as [`Outcome::Write`] with `fua`
//!   set: a durable write is its verification.
//! * VERIFY with BYTCHK 00b comes back as `Verify { bytchk: false }`; the
//!   transport may read the blocks back or simply answer GOOD.
//! * Transfer lengths above [`LuInfo::max_transfer_blocks`] (when nonzero)
//!   are refused with INVALID FIELD IN CDB, as SBC-3 requires.
//! * Sense data is fixed format ([`Sense::fixed`]): the Control mode page
//!   reports D_SENSE 0.

// CDB decoding and emulation is byte arithmetic on slices; the only
// memory the layer touches is what the transport hands it safely.
#![forbid(unsafe_code)]

pub mod cdb;
pub mod emulate;
pub mod job;
pub mod lbp;
pub mod mode;
pub mod opcode;
pub mod pr;
pub mod sanitize;
pub mod sense;
pub mod state;
pub mod vpd;
pub mod xcopy;

use bootlun_engine::BlockBackend;

pub use emulate::{execute, execute_with_data};
pub use job::Job;
pub use sense::{FieldPointer, Sense, SenseKey};
pub use state::{LuState, Nexus};

/// SAM status codes returned in a SCSI Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// What the emulation knows about one logical unit.
#[derive(Debug, Clone)]
pub struct LuInfo {
    /// Logical block length in bytes (512 or 4096).
    pub block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// Write protected: writes fail with DATA PROTECT / WRITE PROTECTED and
    /// MODE SENSE sets the WP bit.
    pub read_only: bool,
    /// The write cache is enabled (MODE SENSE caching page WCE bit).
    pub write_cache: bool,
    /// 16 bytes that identify the LU, stable across restarts for the same
    /// backing path. Used for the NAA / EUI-64 designators (VPD 0x83) and
    /// the unit serial number (VPD 0x80).
    pub ident: [u8; 16],
    /// T10 vendor identification (8 bytes, space padded when emitted).
    pub vendor: &'static str,
    /// Product identification (16 bytes, space padded when emitted).
    pub product: &'static str,
    /// Product revision level (4 bytes, space padded when emitted).
    pub revision: &'static str,
    /// Largest transfer in blocks the transport accepts in one command
    /// (VPD 0xB0 MAXIMUM TRANSFER LENGTH); 0 = no limit reported.
    pub max_transfer_blocks: u32,
    /// Preferred transfer in blocks (VPD 0xB0 OPTIMAL TRANSFER LENGTH).
    pub optimal_transfer_blocks: u32,
    /// The device is rotational (VPD 0xB1 MEDIUM ROTATION RATE = 0 unknown,
    /// 1 = non rotating).
    pub rotational: bool,
    /// What changes while the LU runs and is shared by every I_T nexus:
    /// reservations, software write protect, provisioning, copy results.
    pub state: std::sync::Arc<LuState>,
}

impl LuInfo {
    /// Writes refused: the backend is read-only or an initiator set the
    /// Control mode page's SWP bit.
    pub fn write_protected(&self) -> bool {
        self.read_only || self.state.swp()
    }
}

/// Context of one command beside its CDB.
#[derive(Clone, Copy)]
pub struct CommandCtx<'a> {
    /// The LUN addressed by the command (already decoded to a flat number).
    pub lun: u64,
    /// The logical unit, or `None` when `lun` is not configured. REPORT LUNS,
    /// INQUIRY and REQUEST SENSE still work on a missing LUN (INQUIRY then
    /// answers PERIPHERAL QUALIFIER 011b / device type 1Fh); other commands
    /// fail with ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub lu: Option<&'a LuInfo>,
    /// Every configured LUN, for REPORT LUNS.
    pub luns: &'a [u64],
    /// Expected data transfer length from the transport (bytes), for
    /// commands where it matters; the transport itself computes residuals.
    pub expected_len: u32,
    /// The I_T nexus the command came through (reservations). `None` only
    /// in tests: such commands act as one anonymous nexus.
    pub nexus: Option<&'a Nexus>,
    /// The logical unit's backend, for the commands that manage the medium
    /// themselves (UNMAP, WRITE SAME, COMPARE AND WRITE, ...). Without it
    /// they fail with ABORTED COMMAND.
    pub backend: Option<&'a dyn BlockBackend>,
}

impl std::fmt::Debug for CommandCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCtx")
            .field("lun", &self.lun)
            .field("luns", &self.luns)
            .field("expected_len", &self.expected_len)
            .field("nexus", &self.nexus)
            .finish()
    }
}

/// The result of emulating one CDB.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done with GOOD status. The Data-In bytes (possibly none) are in the
    /// caller's buffer, already cut to the CDB's allocation length.
    Good,
    /// Done with CHECK CONDITION and this sense data; no Data-In.
    Check(Sense),
    /// Read `blocks` blocks from `lba` and return them as Data-In.
    /// Range already checked. `blocks` is never 0 (zero-length transfers are
    /// answered `Good` here).
    Read { lba: u64, blocks: u32, fua: bool },
    /// Write `blocks` blocks at `lba` from Data-Out. Range and write
    /// protection already checked; `blocks` is never 0.
    Write { lba: u64, blocks: u32, fua: bool },
    /// WRITE ATOMIC: as `Write`, but the data must reach the medium with
    /// one write from one buffer; a transport whose buffers are smaller
    /// than the data answers INVALID FIELD IN CDB.
    WriteAtomic { lba: u64, blocks: u32, fua: bool },
    /// VERIFY: with `bytchk` the Data-Out (`blocks` blocks) must be compared
    /// with the medium, and a mismatch answered with MISCOMPARE /
    /// MISCOMPARE DURING VERIFY OPERATION ([`Sense::miscompare`]). Without it
    /// the medium is only read back (or the command is simply Good).
    Verify { lba: u64, blocks: u32, bytchk: bool },
    /// SYNCHRONIZE CACHE: flush the backend (range already checked).
    Flush,
    /// Done with RESERVATION CONFLICT status; no Data-In, no sense.
    Conflict,
    /// The command needs its Data-Out first: receive `len` bytes (cut to
    /// the transport's expected length) and hand them with the same CDB to
    /// [`execute_with_data`]. `len` is never 0.
    DataOut { len: u32 },
    /// Long medium work (WRITE SAME over many blocks, SANITIZE, EXTENDED
    /// COPY): call [`Job::step`] until it returns the final outcome,
    /// letting other work run between steps. Each step is bounded.
    Job(Box<Job>),
}
