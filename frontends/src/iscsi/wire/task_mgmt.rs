//! Task Management Function Request (0x02) and Response (0x22),
//! RFC 7143 11.5-11.6.

use super::*;

/// Task management functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    Unknown(u8),
}

/// TMF response codes.
pub mod tmf_response {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

#[derive(Debug, Clone, Copy)]
pub struct TaskMgmtRequest<'a>(pub Bhs<'a>);

impl<'a> TaskMgmtRequest<'a> {
    pub fn new(b: Bhs<'a>) -> Option<Self> {
        (b.opcode() == Opcode::TaskMgmtRequest).then_some(TaskMgmtRequest(b))
    }
    pub fn function(&self) -> TmfFunction {
        match self.0.flags() & 0x7f {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            x => TmfFunction::Unknown(x),
        }
    }
    pub fn referenced_task_tag(&self) -> u32 {
        self.0.u32_at(20)
    }
    pub fn cmd_sn(&self) -> u32 {
        self.0.u32_at(24)
    }
    pub fn ref_cmd_sn(&self) -> u32 {
        self.0.u32_at(32)
    }
}

pub fn build_tmf_response(out: &mut [u8; BHS_LEN], itt: u32, response: u8, sn: Sn) {
    BhsBuilder::new(out, Opcode::TaskMgmtResponse, 0x80)
        .byte(2, response)
        .itt(itt)
        .sn(sn.stat_sn, sn.exp_cmd_sn, sn.max_cmd_sn);
}
