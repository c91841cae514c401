//! Sense data (SPC-4 4.5): keys, additional sense codes and the fixed format.

/// SPC-4 sense keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// Sense data for one CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (valid bit set when present), e.g. the offset of
    /// the first miscompared byte.
    pub info: Option<u64>,
}

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Sense { key, asc, ascq, info: None }
    }
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (20h/00h).
    pub const fn invalid_opcode() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x20, 0x00)
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB (24h/00h).
    pub const fn invalid_field_in_cdb() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x24, 0x00)
    }
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    pub const fn lba_out_of_range() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED (25h/00h).
    pub const fn lun_not_supported() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }
    /// DATA PROTECT / WRITE PROTECTED (27h/00h).
    pub const fn write_protected() -> Self {
        Self::new(SenseKey::DataProtect, 0x27, 0x00)
    }
    /// MEDIUM ERROR / UNRECOVERED READ ERROR (11h/00h).
    pub const fn read_error() -> Self {
        Self::new(SenseKey::MediumError, 0x11, 0x00)
    }
    /// MEDIUM ERROR / WRITE ERROR (0Ch/00h).
    pub const fn write_error() -> Self {
        Self::new(SenseKey::MediumError, 0x0C, 0x00)
    }
    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION (1Dh/00h), with the
    /// byte offset of the first difference in INFORMATION.
    pub const fn miscompare(offset: u64) -> Self {
        Sense { key: SenseKey::Miscompare, asc: 0x1D, ascq: 0x00, info: Some(offset) }
    }
    /// ABORTED COMMAND / no additional sense, used when the transport fails.
    pub const fn aborted() -> Self {
        Self::new(SenseKey::AbortedCommand, 0x00, 0x00)
    }

    /// Fixed-format sense data (response code 70h), 18 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key as u8;
        if let Some(info) = self.info {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&(info.min(u32::MAX as u64) as u32).to_be_bytes());
        }
        b[7] = 10; // additional sense length
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }
}
