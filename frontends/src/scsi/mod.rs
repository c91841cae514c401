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
pub mod mode;
pub mod opcode;
pub mod sense;
pub mod vpd;

pub use emulate::execute;
pub use sense::{FieldPointer, Sense, SenseKey};

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
}

/// Context of one command beside its CDB.
#[derive(Debug, Clone, Copy)]
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
}

/// The result of emulating one CDB.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// VERIFY: with `bytchk` the Data-Out (`blocks` blocks) must be compared
    /// with the medium, and a mismatch answered with MISCOMPARE /
    /// MISCOMPARE DURING VERIFY OPERATION ([`Sense::miscompare`]). Without it
    /// the medium is only read back (or the command is simply Good).
    Verify { lba: u64, blocks: u32, bytchk: bool },
    /// SYNCHRONIZE CACHE: flush the backend (range already checked).
    Flush,
}
