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
    CopyAborted = 0xA,
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
    /// Sense-key specific FIELD POINTER (SKSV set when present): which CDB
    /// or parameter-list field an ILLEGAL REQUEST is about. Initiators use
    /// it, e.g. to tell an unsupported service action (byte 1) from a bad
    /// field of a supported command.
    pub field: Option<FieldPointer>,
    /// Sense-key specific PROGRESS INDICATION (SPC-4 4.5.2.4.4), in
    /// 65536ths, for NOT READY while an operation (SANITIZE) is under way.
    pub progress: Option<u16>,
}

/// The FIELD POINTER sense-key specific data (SPC-4 4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: the field is in the CDB (`true`) or in the parameter data.
    pub in_cdb: bool,
    /// The byte holding the field (its first byte for multi-byte fields).
    pub byte: u16,
    /// The field's most significant bit within `byte` (BPV set when given).
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// The 3 SENSE KEY SPECIFIC bytes: SKSV, C/D, BPV, BIT POINTER, FIELD
    /// POINTER.
    pub const fn bytes(&self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
            progress: None,
        }
    }
    /// (SENSE KEY, ASC, ASCQ), without INFORMATION and field pointer.
    pub const fn code(&self) -> (SenseKey, u8, u8) {
        (self.key, self.asc, self.ascq)
    }
    /// The same sense data with a field pointer into the CDB.
    pub const fn at_cdb(self, byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..self
        }
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at CDB byte `byte`,
    /// bit `bit` (the field's most significant bit).
    pub const fn invalid_field_in_cdb_at(byte: u16, bit: u8) -> Self {
        Self::invalid_field_in_cdb().at_cdb(byte, Some(bit))
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
        Sense {
            key: SenseKey::Miscompare,
            asc: 0x1D,
            ascq: 0x00,
            info: Some(offset),
            field: None,
            progress: None,
        }
    }
    /// ABORTED COMMAND / no additional sense, used when the transport fails.
    pub const fn aborted() -> Self {
        Self::new(SenseKey::AbortedCommand, 0x00, 0x00)
    }
    /// NO SENSE / NO ADDITIONAL SENSE INFORMATION (00h/00h), the answer of
    /// REQUEST SENSE when nothing is pending.
    pub const fn no_sense() -> Self {
        Self::new(SenseKey::NoSense, 0x00, 0x00)
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST (26h/00h).
    pub const fn invalid_field_in_parameter_list() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x26, 0x00)
    }
    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const fn parameter_list_length_error() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x1A, 0x00)
    }
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED (39h/00h), e.g.
    /// MODE SENSE asking for saved values.
    pub const fn saving_parameters_not_supported() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x39, 0x00)
    }
    /// UNIT ATTENTION / POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
    /// (29h/00h), e.g. after a LOGICAL UNIT RESET task management function.
    pub const fn power_on_reset() -> Self {
        Self::new(SenseKey::UnitAttention, 0x29, 0x00)
    }
    /// UNIT ATTENTION / CAPACITY DATA HAS CHANGED (2Ah/09h).
    pub const fn capacity_changed() -> Self {
        Self::new(SenseKey::UnitAttention, 0x2A, 0x09)
    }
    /// UNIT ATTENTION / REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh).
    pub const fn reported_luns_changed() -> Self {
        Self::new(SenseKey::UnitAttention, 0x3F, 0x0E)
    }
    /// NOT READY / LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (04h/1Bh)
    /// with how far it has got (SBC-3 4.11).
    pub const fn sanitize_in_progress(progress: u16) -> Self {
        Sense {
            progress: Some(progress),
            ..Self::new(SenseKey::NotReady, 0x04, 0x1B)
        }
    }
    /// MEDIUM ERROR / SANITIZE COMMAND FAILED (31h/03h): the last
    /// SANITIZE failed and the LU stays unusable until one succeeds or
    /// EXIT FAILURE MODE.
    pub const fn sanitize_failed() -> Self {
        Self::new(SenseKey::MediumError, 0x31, 0x03)
    }
    /// NOT READY / MEDIUM NOT PRESENT (3Ah/00h).
    pub const fn medium_not_present() -> Self {
        Self::new(SenseKey::NotReady, 0x3A, 0x00)
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
        if let Some(sks) = self.sks() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// The 3 SENSE KEY SPECIFIC bytes, when there are any: a field
    /// pointer, or a progress indication (SKSV, reserved, PROGRESS).
    fn sks(&self) -> Option<[u8; 3]> {
        if let Some(f) = self.field {
            return Some(f.bytes());
        }
        let [hi, lo] = self.progress?.to_be_bytes();
        Some([0x80, hi, lo])
    }

    /// Descriptor-format sense data (response code 72h): an 8-byte header,
    /// followed by an Information descriptor when INFORMATION is present and
    /// a Sense key specific descriptor when a field pointer is.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = 0x72;
        b[1] = self.key as u8;
        b[2] = self.asc;
        b[3] = self.ascq;
        if let Some(info) = self.info {
            // Information descriptor (SPC-4 4.5.2.2): type 00h, length 0Ah,
            // VALID bit, reserved byte, 8-byte INFORMATION.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks() {
            // Sense key specific descriptor (SPC-4 4.5.2.3): type 02h,
            // length 06h, 2 reserved bytes, 3 SKS bytes, 1 reserved byte.
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks);
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8; // additional sense length
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let b = Sense::invalid_field_in_cdb().fixed();
        assert_eq!(
            b,
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn fixed_format_with_information() {
        let b = Sense::miscompare(0x1234).fixed();
        assert_eq!(b[0], 0xF0);
        assert_eq!(b[2], 0x0E);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!((b[12], b[13]), (0x1D, 0x00));
    }

    #[test]
    fn descriptor_format_without_information() {
        let b = Sense::saving_parameters_not_supported().descriptor();
        assert_eq!(b, vec![0x72, 0x05, 0x39, 0x00, 0, 0, 0, 0]);
        assert_eq!(
            Sense::no_sense().descriptor(),
            vec![0x72, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn descriptor_format_with_information() {
        let b = Sense::miscompare(0x0102_0304_0506).descriptor();
        assert_eq!(b.len(), 20);
        assert_eq!(&b[..8], &[0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 12]);
        assert_eq!(&b[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&b[12..], &[0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06]);
    }

    #[test]
    fn field_pointer_fixed_format() {
        let b = Sense::invalid_field_in_cdb_at(2, 2).fixed();
        assert_eq!(&b[12..14], &[0x24, 0x00]);
        assert_eq!(&b[15..18], &[0xCA, 0x00, 0x02]);
        let b = Sense::invalid_field_in_cdb().at_cdb(0x0123, None).fixed();
        assert_eq!(&b[15..18], &[0xC0, 0x01, 0x23]);
        let mut s = Sense::invalid_field_in_parameter_list();
        s.field = Some(FieldPointer {
            in_cdb: false,
            byte: 4,
            bit: Some(7),
        });
        assert_eq!(&s.fixed()[15..18], &[0x8F, 0x00, 0x04]);
        assert_eq!(&Sense::invalid_field_in_cdb().fixed()[15..18], &[0, 0, 0]);
    }

    #[test]
    fn field_pointer_descriptor_format() {
        let b = Sense::invalid_field_in_cdb_at(1, 4).descriptor();
        assert_eq!(
            b,
            vec![0x72, 0x05, 0x24, 0x00, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xCC, 0, 1, 0]
        );
    }

    #[test]
    fn progress_indication() {
        let b = Sense::sanitize_in_progress(0x8000).fixed();
        assert_eq!((b[2], b[12], b[13]), (0x02, 0x04, 0x1B));
        assert_eq!(&b[15..18], &[0x80, 0x80, 0x00]);
        let d = Sense::sanitize_in_progress(0x0102).descriptor();
        assert_eq!(&d[8..], &[0x02, 0x06, 0, 0, 0x80, 0x01, 0x02, 0]);
    }

    #[test]
    fn code_ignores_pointer_and_information() {
        assert_eq!(
            Sense::invalid_field_in_cdb_at(9, 1).code(),
            Sense::invalid_field_in_cdb().code()
        );
        assert_eq!(Sense::miscompare(5).code(), (SenseKey::Miscompare, 0x1D, 0));
    }

    #[test]
    fn new_constructors() {
        let k = |s: Sense| (s.key, s.asc, s.ascq);
        assert_eq!(
            k(Sense::invalid_field_in_parameter_list()),
            (SenseKey::IllegalRequest, 0x26, 0)
        );
        assert_eq!(
            k(Sense::parameter_list_length_error()),
            (SenseKey::IllegalRequest, 0x1A, 0)
        );
        assert_eq!(
            k(Sense::medium_not_present()),
            (SenseKey::NotReady, 0x3A, 0)
        );
    }
}
