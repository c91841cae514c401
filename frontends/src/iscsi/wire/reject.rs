//! Reject (0x3f), RFC 7143 11.17. The data segment is the rejected
//! PDU's header.

use super::*;

/// Reject reasons.
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

pub fn build_reject(out: &mut [u8; BHS_LEN], reason: u8, sn: Sn) {
    BhsBuilder::new(out, Opcode::Reject, 0x80)
        .byte(2, reason)
        .data_len(BHS_LEN)
        .itt(RESERVED_TAG)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn);
}
