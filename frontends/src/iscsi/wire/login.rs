//! Login Request (0x03) and Login Response (0x23), RFC 7143 11.12-11.13.

use super::*;

#[derive(Debug, Clone, Copy)]
pub struct LoginRequest<'a>(pub Bhs<'a>);

impl<'a> LoginRequest<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::LoginRequest).then_some(LoginRequest(b))
    }
    /// T bit: the initiator wants to go to `nsg`.
    pub fn transit(&self) -> bool {
        self.0.flags() & 0x80 != 0
    }
    /// C bit: more text follows in the next PDU.
    pub fn cont(&self) -> bool {
        self.0.flags() & 0x40 != 0
    }
    pub fn csg(&self) -> u8 {
        (self.0.flags() >> 2) & 3
    }
    pub fn nsg(&self) -> u8 {
        self.0.flags() & 3
    }
    pub fn version_max(&self) -> u8 {
        self.0.bytes()[2]
    }
    pub fn version_min(&self) -> u8 {
        self.0.bytes()[3]
    }
    pub fn isid(&self) -> [u8; 6] {
        self.0.bytes()[8..14].try_into().unwrap()
    }
    pub fn tsih(&self) -> u16 {
        self.0.u16_at(14)
    }
    pub fn cid(&self) -> u16 {
        self.0.u16_at(20)
    }
    pub fn cmd_sn(&self) -> u32 {
        self.0.u32_at(24)
    }
    pub fn exp_stat_sn(&self) -> u32 {
        self.0.u32_at(28)
    }
}

/// Login Response fields beyond the sequence numbers.
#[derive(Debug, Clone, Copy)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

pub fn build_login_response(out: &mut [u8; BHS_LEN], r: &LoginResponse, data_len: usize, sn: Sn) {
    let flags = (if r.transit { 0x80 } else { 0 })
        | (if r.cont { 0x40 } else { 0 })
        | ((r.csg & 3) << 2)
        | (r.nsg & 3);
    let b = BhsBuilder::new(out, Opcode::LoginResponse, flags)
        .byte(2, 0) // VersionMax
        .byte(3, 0) // VersionActive
        .data_len(data_len)
        .itt(r.itt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn)
        .byte(36, r.status_class)
        .byte(37, r.status_detail)
        .u16_at(14, r.tsih);
    b.0[8..14].copy_from_slice(&r.isid);
}

/// Login stages: the CSG and NSG fields (RFC 7143 11.12.3).
pub mod login_stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

/// Login Response status class and detail (RFC 7143 11.13.5).
pub mod login_status {
    pub type Status = (u8, u8);
    pub const SUCCESS: Status = (0, 0x00);
    pub const INITIATOR_ERROR: Status = (2, 0x00);
    pub const AUTH_FAILED: Status = (2, 0x01);
    pub const TARGET_NOT_FOUND: Status = (2, 0x03);
    pub const UNSUPPORTED_VERSION: Status = (2, 0x05);
    pub const MISSING_PARAMETER: Status = (2, 0x07);
    pub const SESSION_TYPE_UNSUPPORTED: Status = (2, 0x09);
    pub const SESSION_DOES_NOT_EXIST: Status = (2, 0x0a);
    pub const TARGET_ERROR: Status = (3, 0x00);
    pub const OUT_OF_RESOURCES: Status = (3, 0x02);
}
