//! iSCSI PDU wire formats (RFC 7143 section 11).
//!
//! Every PDU starts with a 48-byte Basic Header Segment. [`Bhs`] is a
//! checked, zero-copy view over one: [`Bhs::parse`] refuses short input
//! instead of panicking, and the typed views ([`ScsiCommand`],
//! [`DataOut`], [`LoginRequest`], ...) only add named accessors. Target
//! PDUs are emitted by the `build_*` functions straight into a caller-owned
//! 48-byte array. Nothing here keeps state; sequencing lives in `session`.
//!
//! Why not nom: every iSCSI header is a fixed 48-byte layout whose fields
//! sit at fixed offsets, so a bounds-checked array view reads a field with
//! one load and no parser state; combinators would add work on the hottest
//! path without catching anything the single length check does not.
//!
//! One file per PDU family: `scsi` (SCSI Command/Response, Data-In,
//! Data-Out, R2T), `login`, `text`, `nop`, `logout`, `task_mgmt`, `reject`.

// Parsing and building PDUs is byte arithmetic on slices: nothing here
// needs unsafe, and peer input must never meet any.
#![forbid(unsafe_code)]

mod login;
mod logout;
mod nop;
mod reject;
mod scsi;
mod task_mgmt;
mod text;

pub use login::*;
pub use logout::*;
pub use nop::*;
pub use reject::*;
pub use scsi::*;
pub use task_mgmt::*;
pub use text::*;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Length of a CRC32C digest.
pub const DIGEST_LEN: usize = 4;
/// The reserved tag value ("no tag").
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// PDU opcodes (RFC 7143 11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    // Initiator opcodes
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    // Target opcodes
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    ReadyToTransfer,
    AsyncMessage,
    Reject,
    /// Anything else, with its raw value.
    Unknown(u8),
}

impl Opcode {
    pub fn from_u8(v: u8) -> Opcode {
        match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::ReadyToTransfer,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            x => Opcode::Unknown(x),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::SnackRequest => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::ReadyToTransfer => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(x) => x,
        }
    }
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than 48 bytes.
    Truncated,
}

/// A checked view over a 48-byte Basic Header Segment.
#[derive(Clone, Copy)]
pub struct Bhs<'a>(&'a [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs({:?} itt={:#x} dsl={})",
            self.opcode(),
            self.itt(),
            self.data_segment_len()
        )
    }
}

impl<'a> Bhs<'a> {
    /// View the first 48 bytes of `b`; `Truncated` if there are fewer.
    pub fn parse(b: &'a [u8]) -> Result<Bhs<'a>, WireError> {
        b.get(..BHS_LEN)
            .and_then(|s| <&[u8; BHS_LEN]>::try_from(s).ok())
            .map(Bhs)
            .ok_or(WireError::Truncated)
    }

    pub fn bytes(&self) -> &'a [u8; BHS_LEN] {
        self.0
    }
    pub fn opcode(&self) -> Opcode {
        Opcode::from_u8(self.0[0])
    }
    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    /// The F (final) bit of byte 1.
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_segment_len(&self) -> usize {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]]) as usize
    }
    pub fn lun_raw(&self) -> u64 {
        u64::from_be_bytes(self.0[8..16].try_into().unwrap())
    }
    /// The LUN field decoded from SAM single-level peripheral or flat
    /// addressing to a plain number.
    pub fn lun(&self) -> u64 {
        decode_lun(self.lun_raw())
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.0[off..off + 4].try_into().unwrap())
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes(self.0[off..off + 2].try_into().unwrap())
    }
}

/// Decode a SAM LUN (first level only: peripheral or flat addressing).
pub fn decode_lun(raw: u64) -> u64 {
    let b0 = (raw >> 56) as u8;
    let b1 = (raw >> 48) as u8;
    match b0 >> 6 {
        0b00 => b1 as u64 | (((b0 & 0x3f) as u64) << 8),
        0b01 => (((b0 & 0x3f) as u64) << 8) | b1 as u64,
        _ => u64::MAX,
    }
}

/// Encode a LUN number with peripheral (<256) or flat addressing.
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// Padding bytes after a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// CRC32C as used for header and data digests.
pub fn digest(parts: &[&[u8]]) -> u32 {
    let mut c = 0;
    for p in parts {
        c = crc32c::crc32c_append(c, p);
    }
    c
}

/// Digests go on the wire little-endian (RFC 7143 11.1: the CRC is sent
/// with the least significant byte first, as computed).
pub fn digest_bytes(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// A BHS under construction. `new` zeroes it and sets opcode and flags.
pub struct BhsBuilder<'a>(pub &'a mut [u8; BHS_LEN]);

impl<'a> BhsBuilder<'a> {
    pub fn new(b: &'a mut [u8; BHS_LEN], op: Opcode, flags: u8) -> Self {
        b.fill(0);
        b[0] = op.as_u8();
        b[1] = flags;
        BhsBuilder(b)
    }
    pub fn byte(self, off: usize, v: u8) -> Self {
        self.0[off] = v;
        self
    }
    pub fn data_len(self, len: usize) -> Self {
        let l = (len as u32).to_be_bytes();
        self.0[5..8].copy_from_slice(&l[1..4]);
        self
    }
    pub fn lun(self, raw: u64) -> Self {
        self.0[8..16].copy_from_slice(&raw.to_be_bytes());
        self
    }
    pub fn u32_at(self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u16_at(self, off: usize, v: u16) -> Self {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
        self
    }
    pub fn itt(self, v: u32) -> Self {
        self.u32_at(16, v)
    }
    /// StatSN, ExpCmdSN, MaxCmdSN at their common offsets (24, 28, 32).
    pub fn sn(self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> Self {
        self.u32_at(24, stat_sn)
            .u32_at(28, exp_cmd_sn)
            .u32_at(32, max_cmd_sn)
    }
}

/// Sequence numbers every target response carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sn {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Serial number arithmetic (RFC 1982, 32-bit): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `lo <= x <= hi` in serial number arithmetic.
pub fn sn_in_window(x: u32, lo: u32, hi: u32) -> bool {
    !sn_lt(x, lo) && !sn_lt(hi, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        assert_eq!(Bhs::parse(&[0u8; 47]).unwrap_err(), WireError::Truncated);
        assert!(Bhs::parse(&[0u8; 48]).is_ok());
    }

    #[test]
    fn lun_encoding_round_trips() {
        for l in [0u64, 1, 255, 256, 1000, 16383] {
            assert_eq!(decode_lun(encode_lun(l)), l);
        }
        assert_eq!(encode_lun(3), 0x0003_0000_0000_0000);
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(sn_in_window(2, 0xffff_fffe, 10));
        assert!(!sn_in_window(11, 0xffff_fffe, 10));
    }

    #[test]
    fn crc32c_known_vector() {
        // 32 bytes of zeros: RFC 3720 B.4 test vector.
        assert_eq!(digest(&[&[0u8; 32]]), 0x8a9136aa);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = Bhs::parse(&b) {
                let _ = (h.opcode(), h.ahs_len(), h.data_segment_len(), h.lun(), h.itt());
                let _ = ScsiCommand::new(h).map(|c| (c.cdb(), c.expected_len(), c.cmd_sn()));
                let _ = DataOut::new(h).map(|d| (d.buffer_offset(), d.ttt()));
                let _ = LoginRequest::new(h).map(|l| (l.csg(), l.nsg(), l.isid(), l.tsih()));
                let _ = TaskMgmtRequest::new(h).map(|t| (t.function(), t.referenced_task_tag()));
            }
        }
    }
}
