//! SCSI Command (0x01), SCSI Response (0x21), SCSI Data-Out (0x05),
//! SCSI Data-In (0x25) and Ready To Transfer (R2T, 0x31).

use super::*;

/// SCSI Command PDU (RFC 7143 11.3).
#[derive(Debug, Clone, Copy)]
pub struct ScsiCommand<'a>(pub Bhs<'a>);

impl<'a> ScsiCommand<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::ScsiCommand).then_some(ScsiCommand(b))
    }
    /// R bit: the command expects Data-In.
    pub fn read(&self) -> bool {
        self.0.flags() & 0x40 != 0
    }
    /// W bit: the command carries Data-Out.
    pub fn write(&self) -> bool {
        self.0.flags() & 0x20 != 0
    }
    pub fn attr(&self) -> u8 {
        self.0.flags() & 0x07
    }
    pub fn expected_len(&self) -> u32 {
        self.0.u32_at(20)
    }
    pub fn cmd_sn(&self) -> u32 {
        self.0.u32_at(24)
    }
    pub fn exp_stat_sn(&self) -> u32 {
        self.0.u32_at(28)
    }
    /// The 16-byte CDB field (commands longer than 16 bytes need an
    /// extended-CDB AHS, which bootlun does not accept).
    pub fn cdb(&self) -> &'a [u8; 16] {
        self.0.bytes()[32..48].try_into().unwrap()
    }
}

/// SCSI Data-Out PDU (RFC 7143 11.7).
#[derive(Debug, Clone, Copy)]
pub struct DataOut<'a>(pub Bhs<'a>);

impl<'a> DataOut<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::DataOut).then_some(DataOut(b))
    }
    pub fn ttt(&self) -> u32 {
        self.0.u32_at(20)
    }
    pub fn data_sn(&self) -> u32 {
        self.0.u32_at(36)
    }
    pub fn buffer_offset(&self) -> u32 {
        self.0.u32_at(40)
    }
}

/// Residual bits and count, shared by SCSI Response and Data-In.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Residual {
    #[default]
    None,
    /// Fewer bytes moved than the initiator expected.
    Underflow(u32),
    /// The command wanted more than the initiator expected.
    Overflow(u32),
}

impl Residual {
    /// From the expected transfer length and the length the command wanted.
    pub fn of(expected: u32, wanted: u64) -> Residual {
        let e = expected as u64;
        if wanted > e {
            Residual::Overflow((wanted - e).min(u32::MAX as u64) as u32)
        } else if wanted < e {
            Residual::Underflow((e - wanted) as u32)
        } else {
            Residual::None
        }
    }
    fn bits(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Underflow(_) => 0x02,
            Residual::Overflow(_) => 0x04,
        }
    }
    fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Underflow(n) | Residual::Overflow(n) => n,
        }
    }
}

/// SCSI Response PDU (RFC 7143 11.4). The data segment, if any, is the
/// sense data preceded by its 2-byte length.
pub fn build_scsi_response(
    out: &mut [u8; BHS_LEN],
    itt: u32,
    status: u8,
    residual: Residual,
    exp_data_sn: u32,
    data_len: usize,
    sn: Sn,
) {
    BhsBuilder::new(out, Opcode::ScsiResponse, 0x80 | residual.bits())
        .byte(2, 0) // response: command completed at target
        .byte(3, status)
        .data_len(data_len)
        .itt(itt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn)
        .u32_at(36, exp_data_sn)
        .u32_at(44, residual.count());
}

/// SCSI Data-In PDU (RFC 7143 11.7). With `status` the PDU is final and
/// carries the command status (S bit), so no SCSI Response follows.
#[allow(clippy::too_many_arguments)]
pub fn build_data_in(
    out: &mut [u8; BHS_LEN],
    itt: u32,
    lun_raw: u64,
    data_sn: u32,
    offset: u32,
    len: usize,
    final_pdu: bool,
    status: Option<(u8, Residual)>,
    sn: Sn,
) {
    let mut flags = if final_pdu { 0x80 } else { 0 };
    let (st, res) = match status {
        Some((s, r)) => {
            flags |= 0x01 | r.bits();
            (s, r)
        }
        None => (0, Residual::None),
    };
    BhsBuilder::new(out, Opcode::DataIn, flags)
        .byte(3, st)
        .data_len(len)
        .lun(lun_raw)
        .itt(itt)
        .u32_at(20, RESERVED_TAG)
        .sn(
            if status.is_some() { sn.stat_sn } else { 0 },
            sn.exp_cmd_sn,
            sn.max_cmd_sn,
        )
        .u32_at(36, data_sn)
        .u32_at(40, offset)
        .u32_at(44, res.count());
}

/// Ready To Transfer PDU (RFC 7143 11.8).
#[allow(clippy::too_many_arguments)]
pub fn build_r2t(
    out: &mut [u8; BHS_LEN],
    itt: u32,
    lun_raw: u64,
    ttt: u32,
    r2t_sn: u32,
    offset: u32,
    len: u32,
    sn: Sn,
) {
    BhsBuilder::new(out, Opcode::ReadyToTransfer, 0x80)
        .lun(lun_raw)
        .itt(itt)
        .u32_at(20, ttt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn)
        .u32_at(36, r2t_sn)
        .u32_at(40, offset)
        .u32_at(44, len);
}
