//! Text Request (0x04) and Text Response (0x24), RFC 7143 11.10-11.11.

use super::*;

#[derive(Debug, Clone, Copy)]
pub struct TextRequest<'a>(pub Bhs<'a>);

impl<'a> TextRequest<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::TextRequest).then_some(TextRequest(b))
    }
    pub fn cont(&self) -> bool {
        self.0.flags() & 0x40 != 0
    }
    pub fn ttt(&self) -> u32 {
        self.0.u32_at(20)
    }
    pub fn cmd_sn(&self) -> u32 {
        self.0.u32_at(24)
    }
}

pub fn build_text_response(
    out: &mut [u8; BHS_LEN],
    itt: u32,
    ttt: u32,
    final_pdu: bool,
    cont: bool,
    data_len: usize,
    sn: Sn,
) {
    let flags = (if final_pdu { 0x80 } else { 0 }) | (if cont { 0x40 } else { 0 });
    BhsBuilder::new(out, Opcode::TextResponse, flags)
        .data_len(data_len)
        .itt(itt)
        .u32_at(20, ttt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn);
}
