//! NOP-Out (0x00) and NOP-In (0x20), RFC 7143 11.18-11.19.

use super::*;

#[derive(Debug, Clone, Copy)]
pub struct NopOut<'a>(pub Bhs<'a>);

impl<'a> NopOut<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::NopOut).then_some(NopOut(b))
    }
    pub fn ttt(&self) -> u32 {
        self.0.u32_at(20)
    }
    pub fn cmd_sn(&self) -> u32 {
        self.0.u32_at(24)
    }
}

pub fn build_nop_in(
    out: &mut [u8; BHS_LEN],
    itt: u32,
    ttt: u32,
    lun_raw: u64,
    data_len: usize,
    sn: Sn,
) {
    BhsBuilder::new(out, Opcode::NopIn, 0x80)
        .data_len(data_len)
        .lun(lun_raw)
        .itt(itt)
        .u32_at(20, ttt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn);
}
