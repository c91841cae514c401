//! Logout Request (0x06) and Logout Response (0x26), RFC 7143 11.14-11.15.

use super::*;

#[derive(Debug, Clone, Copy)]
pub struct LogoutRequest<'a>(pub Bhs<'a>);

impl<'a> LogoutRequest<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::LogoutRequest).then_some(LogoutRequest(b))
    }
    /// 0 close the session, 1 close the connection, 2 remove the connection
    /// for recovery.
    pub fn reason(&self) -> u8 {
        self.0.flags() & 0x7f
    }
    pub fn cmd_sn(&self) -> u32 {
        self.0.u32_at(24)
    }
}

/// Logout response codes.
pub const LOGOUT_OK: u8 = 0;
pub const LOGOUT_CID_NOT_FOUND: u8 = 1;
pub const LOGOUT_RECOVERY_UNSUPPORTED: u8 = 2;

pub fn build_logout_response(out: &mut [u8; BHS_LEN], itt: u32, response: u8, sn: Sn) {
    BhsBuilder::new(out, Opcode::LogoutResponse, 0x80)
        .byte(2, response)
        .itt(itt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn);
}
