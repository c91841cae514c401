//! Checked decoding of CDB fields.
//!
//! A [`Cdb`] is only built once the byte slice is known to be at least as
//! long as its operation code requires, and the field accessors never index
//! past the slice anyway (a missing byte reads as zero), so no CDB, however
//! short or malformed, can make the emulation panic.

use super::Sense;

/// NACA bit of the CONTROL byte (SAM-5 5.2).
pub const CONTROL_NACA: u8 = 0x04;
/// Obsolete LINK bit of the CONTROL byte; linked commands are not supported.
pub const CONTROL_LINK: u8 = 0x01;

/// Length of the CDB implied by the operation code's group (SPC-4 4.2.5.1).
/// `None` for the variable-length and vendor-specific groups.
pub const fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// A CDB whose length has been checked against its operation code.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a> {
    bytes: &'a [u8],
    len: usize,
}

impl<'a> Cdb<'a> {
    /// Check the CDB length and the CONTROL byte.
    ///
    /// * empty CDB or an opcode of an unsupported group:
    ///   INVALID COMMAND OPERATION CODE;
    /// * shorter than its opcode needs: INVALID FIELD IN CDB;
    /// * NACA or LINK set in CONTROL: INVALID FIELD IN CDB.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Sense> {
        let opcode = *bytes.first().ok_or(Sense::invalid_opcode())?;
        let len = cdb_len(opcode).ok_or(Sense::invalid_opcode())?;
        if bytes.len() < len {
            return Err(Sense::invalid_field_in_cdb());
        }
        let cdb = Cdb { bytes, len };
        let bad = cdb.control() & (CONTROL_NACA | CONTROL_LINK);
        if bad != 0 {
            return Err(Sense::invalid_field_in_cdb_at(len as u16 - 1, top_bit(bad)));
        }
        Ok(cdb)
    }

    /// The CDB length implied by the opcode (trailing transport padding,
    /// e.g. iSCSI's 16-byte CDB field, is not part of it).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a parsed CDB holds at least 6 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CDB bytes, `len()` of them.
    pub fn bytes(&self) -> &'a [u8] {
        &self.bytes[..self.len.min(self.bytes.len())]
    }

    pub fn opcode(&self) -> u8 {
        self.byte(0)
    }

    /// SERVICE ACTION field of byte 1 (bits 4..0).
    pub fn service_action(&self) -> u8 {
        self.byte(1) & 0x1F
    }

    /// The CONTROL byte (the last byte of the CDB).
    pub fn control(&self) -> u8 {
        self.byte(self.len.wrapping_sub(1))
    }

    /// Byte `i`, or 0 when `i` is past the end of the CDB.
    pub fn byte(&self, i: usize) -> u8 {
        if i < self.len {
            self.bytes.get(i).copied().unwrap_or(0)
        } else {
            0
        }
    }

    /// Big-endian field of `n` bytes starting at `i` (n <= 8).
    pub fn be(&self, i: usize, n: usize) -> u64 {
        (0..n.min(8)).fold(0u64, |acc, k| (acc << 8) | u64::from(self.byte(i + k)))
    }

    pub fn be16(&self, i: usize) -> u16 {
        self.be(i, 2) as u16
    }

    pub fn be32(&self, i: usize) -> u32 {
        self.be(i, 4) as u32
    }

    pub fn be64(&self, i: usize) -> u64 {
        self.be(i, 8)
    }

    /// Check that no bit outside `usage` is set, byte by byte, except in the
    /// opcode and CONTROL bytes (checked by [`Cdb::parse`]). `usage` is the
    /// CDB USAGE DATA of REPORT SUPPORTED OPERATION CODES, so every bit the
    /// device server reports as unused is a reserved bit that must be zero.
    pub fn check_reserved(&self, usage: &[u8]) -> Result<(), Sense> {
        let last = self.len.saturating_sub(1);
        for i in 1..last {
            let allowed = usage.get(i).copied().unwrap_or(0);
            let bad = self.byte(i) & !allowed;
            if bad != 0 {
                return Err(Sense::invalid_field_in_cdb_at(i as u16, top_bit(bad)));
            }
        }
        Ok(())
    }
}

/// Position (7..=0) of the most significant set bit of a nonzero byte.
pub const fn top_bit(b: u8) -> u8 {
    7 - b.leading_zeros() as u8
}

/// The fields of a READ or WRITE CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RwFields {
    pub lba: u64,
    pub blocks: u32,
    /// RDPROTECT / WRPROTECT (3 bits).
    pub protect: u8,
    pub dpo: bool,
    pub fua: bool,
    /// CDB byte where TRANSFER LENGTH starts (for the field pointer).
    pub length_byte: u16,
}

/// READ(6) / WRITE(6): 21-bit LBA, TRANSFER LENGTH 0 means 256 blocks.
pub fn rw6(cdb: &Cdb) -> RwFields {
    let lba = cdb.be(1, 3) & 0x1F_FFFF;
    let blocks = match cdb.byte(4) {
        0 => 256,
        n => u32::from(n),
    };
    RwFields {
        lba,
        blocks,
        protect: 0,
        dpo: false,
        fua: false,
        length_byte: 4,
    }
}

fn rw_flags(cdb: &Cdb, lba: u64, blocks: u32, length_byte: u16) -> RwFields {
    let b1 = cdb.byte(1);
    RwFields {
        lba,
        blocks,
        protect: b1 >> 5,
        dpo: b1 & 0x10 != 0,
        fua: b1 & 0x08 != 0,
        length_byte,
    }
}

/// READ(10) / WRITE(10).
pub fn rw10(cdb: &Cdb) -> RwFields {
    rw_flags(cdb, u64::from(cdb.be32(2)), u32::from(cdb.be16(7)), 7)
}

/// READ(12) / WRITE(12).
pub fn rw12(cdb: &Cdb) -> RwFields {
    rw_flags(cdb, u64::from(cdb.be32(2)), cdb.be32(6), 6)
}

/// READ(16) / WRITE(16).
pub fn rw16(cdb: &Cdb) -> RwFields {
    rw_flags(cdb, cdb.be64(2), cdb.be32(10), 10)
}

/// The fields of a VERIFY CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyFields {
    pub lba: u64,
    pub blocks: u32,
    pub vrprotect: u8,
    /// BYTCHK (2 bits).
    pub bytchk: u8,
    /// CDB byte where VERIFICATION LENGTH starts (for the field pointer).
    pub length_byte: u16,
}

fn verify_fields(cdb: &Cdb, lba: u64, blocks: u32, length_byte: u16) -> VerifyFields {
    let b1 = cdb.byte(1);
    VerifyFields {
        lba,
        blocks,
        vrprotect: b1 >> 5,
        bytchk: (b1 >> 1) & 0x03,
        length_byte,
    }
}

/// VERIFY(10).
pub fn verify10(cdb: &Cdb) -> VerifyFields {
    verify_fields(cdb, u64::from(cdb.be32(2)), u32::from(cdb.be16(7)), 7)
}

/// VERIFY(12).
pub fn verify12(cdb: &Cdb) -> VerifyFields {
    verify_fields(cdb, u64::from(cdb.be32(2)), cdb.be32(6), 6)
}

/// VERIFY(16).
pub fn verify16(cdb: &Cdb) -> VerifyFields {
    verify_fields(cdb, cdb.be64(2), cdb.be32(10), 10)
}

/// SYNCHRONIZE CACHE(10) and PRE-FETCH(10), which share a layout: (LBA,
/// NUMBER OF LOGICAL BLOCKS / PREFETCH LENGTH); 0 blocks means "through the
/// last LBA".
pub fn sync10(cdb: &Cdb) -> (u64, u32) {
    (u64::from(cdb.be32(2)), u32::from(cdb.be16(7)))
}

/// SYNCHRONIZE CACHE(16) and PRE-FETCH(16).
pub fn sync16(cdb: &Cdb) -> (u64, u32) {
    (cdb.be64(2), cdb.be32(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lengths() {
        assert_eq!(cdb_len(0x00), Some(6));
        assert_eq!(cdb_len(0x28), Some(10));
        assert_eq!(cdb_len(0x5A), Some(10));
        assert_eq!(cdb_len(0x7F), None);
        assert_eq!(cdb_len(0x88), Some(16));
        assert_eq!(cdb_len(0xA8), Some(12));
        assert_eq!(cdb_len(0xC0), None);
        assert_eq!(cdb_len(0xE0), None);
    }

    #[test]
    fn parse_rejects_short_and_empty() {
        assert_eq!(Cdb::parse(&[]).unwrap_err(), Sense::invalid_opcode());
        assert_eq!(
            Cdb::parse(&[0x28, 0, 0]).unwrap_err(),
            Sense::invalid_field_in_cdb()
        );
        assert_eq!(
            Cdb::parse(&[0xC0; 16]).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert!(Cdb::parse(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn parse_checks_control_byte() {
        let mut c = [0u8; 6];
        c[5] = CONTROL_NACA;
        assert_eq!(
            Cdb::parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb_at(5, 2)
        );
        c[5] = CONTROL_LINK;
        assert_eq!(
            Cdb::parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb_at(5, 0)
        );
        c[5] = 0xC0; // vendor-specific bits are ignored
        assert!(Cdb::parse(&c).is_ok());
    }

    #[test]
    fn padding_is_ignored() {
        // A 6-byte CDB in a 16-byte transport field: CONTROL is byte 5.
        let mut c = [0u8; 16];
        c[15] = 0xFF;
        let cdb = Cdb::parse(&c).unwrap();
        assert_eq!(cdb.len(), 6);
        assert_eq!(cdb.bytes().len(), 6);
        assert_eq!(cdb.byte(15), 0);
    }

    #[test]
    fn big_endian_fields() {
        let c = [0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xA, 0xB, 0xC, 0xD, 0, 0];
        let cdb = Cdb::parse(&c).unwrap();
        assert_eq!(cdb.be64(2), 0x0102_0304_0506_0708);
        assert_eq!(cdb.be32(10), 0x0A0B_0C0D);
        assert_eq!(cdb.be16(10), 0x0A0B);
        assert_eq!(cdb.be32(14), 0); // past the end reads as zero
    }

    #[test]
    fn reserved_bits() {
        let usage = [0x28, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04];
        let mut c = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(Cdb::parse(&c).unwrap().check_reserved(&usage).is_ok());
        c[1] = 0x01;
        assert_eq!(
            Cdb::parse(&c).unwrap().check_reserved(&usage),
            Err(Sense::invalid_field_in_cdb_at(1, 0))
        );
        c[1] = 0x00;
        c[6] = 0x25;
        assert_eq!(
            Cdb::parse(&c).unwrap().check_reserved(&usage),
            Err(Sense::invalid_field_in_cdb_at(6, 5))
        );
    }

    #[test]
    fn top_bit_positions() {
        assert_eq!(top_bit(0x01), 0);
        assert_eq!(top_bit(0x06), 2);
        assert_eq!(top_bit(0x80), 7);
        assert_eq!(top_bit(0xFF), 7);
    }

    #[test]
    fn read6_fields() {
        let c = [0x08, 0xFF, 0x12, 0x34, 0, 0];
        let f = rw6(&Cdb::parse(&c).unwrap());
        assert_eq!(f.lba, 0x1F_1234);
        assert_eq!(f.blocks, 256);
        let c = [0x08, 0, 0, 7, 9, 0];
        assert_eq!(rw6(&Cdb::parse(&c).unwrap()).blocks, 9);
    }

    #[test]
    fn rw10_12_16_fields() {
        let c = [0x28, 0xF8, 0, 0, 1, 0, 0, 0, 2, 0];
        let f = rw10(&Cdb::parse(&c).unwrap());
        assert_eq!(
            f,
            RwFields {
                lba: 256,
                blocks: 2,
                protect: 7,
                dpo: true,
                fua: true,
                length_byte: 7,
            }
        );
        let c = [0xA8, 0x08, 0, 0, 0, 5, 0, 1, 0, 0, 0, 0];
        let f = rw12(&Cdb::parse(&c).unwrap());
        assert_eq!((f.lba, f.blocks, f.fua, f.dpo), (5, 65536, true, false));
        let mut c = [0u8; 16];
        c[0] = 0x88;
        c[2] = 0x80;
        c[13] = 3;
        let f = rw16(&Cdb::parse(&c).unwrap());
        assert_eq!((f.lba, f.blocks), (1 << 63, 3));
    }

    #[test]
    fn verify_and_sync_fields() {
        let c = [0x2F, 0x02 | 0x20, 0, 0, 0, 9, 0, 0, 4, 0];
        let f = verify10(&Cdb::parse(&c).unwrap());
        assert_eq!(
            f,
            VerifyFields {
                lba: 9,
                blocks: 4,
                vrprotect: 1,
                bytchk: 1,
                length_byte: 7,
            }
        );
        let mut c = [0u8; 16];
        c[0] = 0x8F;
        c[1] = 0x06;
        c[9] = 1;
        c[13] = 8;
        let f = verify16(&Cdb::parse(&c).unwrap());
        assert_eq!((f.lba, f.blocks, f.bytchk), (1, 8, 3));
        let c = [0xAF, 0x04, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0];
        let f = verify12(&Cdb::parse(&c).unwrap());
        assert_eq!((f.lba, f.blocks, f.bytchk), (2, 3, 2));
        let c = [0x35, 0, 0, 0, 0, 7, 0, 0, 5, 0];
        assert_eq!(sync10(&Cdb::parse(&c).unwrap()), (7, 5));
        let mut c = [0u8; 16];
        c[0] = 0x91;
        c[9] = 7;
        c[13] = 5;
        assert_eq!(sync16(&Cdb::parse(&c).unwrap()), (7, 5));
    }
}
