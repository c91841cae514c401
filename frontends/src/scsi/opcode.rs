//! SCSI operation codes (SPC-4 / SBC-3) and the table of supported commands
//! that REPORT SUPPORTED OPERATION CODES answers from.
//!
//! The table's CDB USAGE DATA is also what the dispatcher checks reserved
//! CDB bits against, so what is reported and what is accepted never drift.

// SPC-4 and SBC-3 operation codes, in numeric order. Commands not in
// [`SUPPORTED`] are answered with INVALID COMMAND OPERATION CODE; their
// names are here for logging and for the next command someone implements.
pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const FORMAT_UNIT: u8 = 0x04;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0A;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const RESERVE_6: u8 = 0x16;
pub const RELEASE_6: u8 = 0x17;
pub const MODE_SENSE_6: u8 = 0x1A;
pub const START_STOP_UNIT: u8 = 0x1B;
pub const RECEIVE_DIAGNOSTIC_RESULTS: u8 = 0x1C;
pub const SEND_DIAGNOSTIC: u8 = 0x1D;
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
pub const SANITIZE: u8 = 0x48;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2A;
pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
pub const VERIFY_10: u8 = 0x2F;
pub const PRE_FETCH_10: u8 = 0x34;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const READ_DEFECT_DATA_10: u8 = 0x37;
pub const WRITE_BUFFER: u8 = 0x3B;
pub const READ_BUFFER: u8 = 0x3C;
pub const WRITE_SAME_10: u8 = 0x41;
pub const UNMAP: u8 = 0x42;
pub const LOG_SELECT: u8 = 0x4C;
pub const LOG_SENSE: u8 = 0x4D;
pub const MODE_SELECT_10: u8 = 0x55;
pub const RESERVE_10: u8 = 0x56;
pub const RELEASE_10: u8 = 0x57;
pub const MODE_SENSE_10: u8 = 0x5A;
pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
pub const VARIABLE_LENGTH: u8 = 0x7F;
pub const EXTENDED_COPY: u8 = 0x83;
pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
pub const READ_16: u8 = 0x88;
pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const WRITE_16: u8 = 0x8A;
pub const ORWRITE_16: u8 = 0x8B;
pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
pub const VERIFY_16: u8 = 0x8F;
pub const PRE_FETCH_16: u8 = 0x90;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
pub const WRITE_ATOMIC_16: u8 = 0x9C;
pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
pub const SERVICE_ACTION_OUT_16: u8 = 0x9F;
pub const REPORT_LUNS: u8 = 0xA0;
pub const MAINTENANCE_IN: u8 = 0xA3;
pub const MAINTENANCE_OUT: u8 = 0xA4;
pub const READ_12: u8 = 0xA8;
pub const WRITE_12: u8 = 0xAA;
pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
pub const VERIFY_12: u8 = 0xAF;
pub const READ_DEFECT_DATA_12: u8 = 0xB7;

// Service actions.
/// SERVICE ACTION IN(16) / READ CAPACITY(16).
pub const SA_READ_CAPACITY_16: u16 = 0x10;
/// SERVICE ACTION IN(16) / GET LBA STATUS.
pub const SA_GET_LBA_STATUS: u16 = 0x12;
/// MAINTENANCE IN / REPORT TARGET PORT GROUPS.
pub const SA_REPORT_TARGET_PORT_GROUPS: u16 = 0x0A;
/// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u16 = 0x0C;
/// MAINTENANCE IN / REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
pub const SA_REPORT_SUPPORTED_TMFS: u16 = 0x0D;

/// Operation codes whose commands are told apart by a SERVICE ACTION field
/// (byte 1 bits 4..0 for the ones in this list that this layer decodes).
const SERVICE_ACTION_OPCODES: [u8; 10] = [
    SANITIZE,
    PERSISTENT_RESERVE_IN,
    PERSISTENT_RESERVE_OUT,
    VARIABLE_LENGTH,
    EXTENDED_COPY,
    RECEIVE_COPY_RESULTS,
    SERVICE_ACTION_IN_16,
    SERVICE_ACTION_OUT_16,
    MAINTENANCE_IN,
    MAINTENANCE_OUT,
];

/// True when `opcode` uses service actions (REPORT SUPPORTED OPERATION
/// CODES reporting options 001b/010b depend on it).
pub fn has_service_actions(opcode: u8) -> bool {
    SERVICE_ACTION_OPCODES.contains(&opcode)
}

/// One supported command.
#[derive(Debug)]
pub struct CommandInfo {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub name: &'static str,
    /// CDB USAGE DATA (SPC-4 6.35.3): byte 0 is the opcode, the service
    /// action field holds the service action, every other bit is 1 when the
    /// device server evaluates it. Its length is the CDB length.
    pub usage: &'static [u8],
    /// Recommended command timeout in seconds (command timeouts descriptor).
    pub recommended_timeout: u32,
}

const fn cmd(
    opcode: u8,
    service_action: Option<u16>,
    name: &'static str,
    usage: &'static [u8],
    recommended_timeout: u32,
) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action,
        name,
        usage,
        recommended_timeout,
    }
}

/// Timeout we recommend for commands that touch the medium.
const MEDIUM_TIMEOUT: u32 = 30;
/// Timeout we recommend for commands answered from memory.
const QUICK_TIMEOUT: u32 = 5;
/// Timeout we recommend for commands that may cover the whole medium.
const SANITIZE_TIMEOUT: u32 = 3600;

// CONTROL byte usage: NACA is evaluated (and rejected when set).
const C: u8 = 0x04;

/// Every command this layer implements, in opcode order. READ and WRITE
/// report DPO, FUA and the obsolete FUA_NV; WRITE AND VERIFY reports DPO and
/// BYTCHK; RDPROTECT / WRPROTECT / VRPROTECT are evaluated (nonzero is
/// rejected: no protection information).
pub static SUPPORTED: &[CommandInfo] = &[
    cmd(
        TEST_UNIT_READY,
        None,
        "TEST UNIT READY",
        &[0x00, 0, 0, 0, 0, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        REQUEST_SENSE,
        None,
        "REQUEST SENSE",
        &[0x03, 0x01, 0, 0, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        READ_6,
        None,
        "READ(6)",
        &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_6,
        None,
        "WRITE(6)",
        &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        INQUIRY,
        None,
        "INQUIRY",
        &[0x12, 0x01, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        MODE_SELECT_6,
        None,
        "MODE SELECT(6)",
        &[0x15, 0x11, 0x00, 0x00, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        RESERVE_6,
        None,
        "RESERVE(6)",
        &[0x16, 0x00, 0x00, 0x00, 0x00, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        RELEASE_6,
        None,
        "RELEASE(6)",
        &[0x17, 0x00, 0x00, 0x00, 0x00, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        MODE_SENSE_6,
        None,
        "MODE SENSE(6)",
        &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        START_STOP_UNIT,
        None,
        "START STOP UNIT",
        &[0x1B, 0x01, 0x00, 0x0F, 0xF7, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        PREVENT_ALLOW_MEDIUM_REMOVAL,
        None,
        "PREVENT ALLOW MEDIUM REMOVAL",
        &[0x1E, 0x00, 0x00, 0x00, 0x03, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        READ_CAPACITY_10,
        None,
        "READ CAPACITY(10)",
        &[0x25, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        READ_10,
        None,
        "READ(10)",
        &[0x28, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_10,
        None,
        "WRITE(10)",
        &[0x2A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_AND_VERIFY_10,
        None,
        "WRITE AND VERIFY(10)",
        &[0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        VERIFY_10,
        None,
        "VERIFY(10)",
        &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        PRE_FETCH_10,
        None,
        "PRE-FETCH(10)",
        &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        SYNCHRONIZE_CACHE_10,
        None,
        "SYNCHRONIZE CACHE(10)",
        &[0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        READ_DEFECT_DATA_10,
        None,
        "READ DEFECT DATA(10)",
        &[0x37, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        WRITE_SAME_10,
        None,
        "WRITE SAME(10)",
        &[0x41, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        UNMAP,
        None,
        "UNMAP",
        &[0x42, 0x01, 0x00, 0x00, 0x00, 0x00, 0x1F, 0xFF, 0xFF, C],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        SANITIZE,
        Some(0x01),
        "SANITIZE OVERWRITE",
        &[0x48, 0xA1, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        SANITIZE,
        Some(0x02),
        "SANITIZE BLOCK ERASE",
        &[0x48, 0xA2, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        SANITIZE,
        Some(0x1f),
        "SANITIZE EXIT FAILURE MODE",
        &[0x48, 0xBF, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        MODE_SELECT_10,
        None,
        "MODE SELECT(10)",
        &[0x55, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        RESERVE_10,
        None,
        "RESERVE(10)",
        &[0x56, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        RELEASE_10,
        None,
        "RELEASE(10)",
        &[0x57, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        MODE_SENSE_10,
        None,
        "MODE SENSE(10)",
        &[0x5A, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_IN,
        Some(0x00),
        "PERSISTENT RESERVE IN / READ KEYS",
        &[0x5E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_IN,
        Some(0x01),
        "PERSISTENT RESERVE IN / READ RESERVATION",
        &[0x5E, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_IN,
        Some(0x02),
        "PERSISTENT RESERVE IN / REPORT CAPABILITIES",
        &[0x5E, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_IN,
        Some(0x03),
        "PERSISTENT RESERVE IN / READ FULL STATUS",
        &[0x5E, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x00),
        "PERSISTENT RESERVE OUT / REGISTER",
        &[0x5F, 0x00, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x01),
        "PERSISTENT RESERVE OUT / RESERVE",
        &[0x5F, 0x01, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x02),
        "PERSISTENT RESERVE OUT / RELEASE",
        &[0x5F, 0x02, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x03),
        "PERSISTENT RESERVE OUT / CLEAR",
        &[0x5F, 0x03, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x04),
        "PERSISTENT RESERVE OUT / PREEMPT",
        &[0x5F, 0x04, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x05),
        "PERSISTENT RESERVE OUT / PREEMPT AND ABORT",
        &[0x5F, 0x05, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x06),
        "PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY",
        &[0x5F, 0x06, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        PERSISTENT_RESERVE_OUT,
        Some(0x07),
        "PERSISTENT RESERVE OUT / REGISTER AND MOVE",
        &[0x5F, 0x07, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, C],
        QUICK_TIMEOUT,
    ),
    cmd(
        EXTENDED_COPY,
        Some(0x00),
        "EXTENDED COPY(LID1)",
        &[
            0x83, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, C,
        ],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        RECEIVE_COPY_RESULTS,
        Some(0x00),
        "RECEIVE COPY RESULTS / COPY STATUS(LID1)",
        &[
            0x84, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        RECEIVE_COPY_RESULTS,
        Some(0x03),
        "RECEIVE COPY RESULTS / OPERATING PARAMETERS",
        &[
            0x84, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        READ_16,
        None,
        "READ(16)",
        &[
            0x88, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        COMPARE_AND_WRITE,
        None,
        "COMPARE AND WRITE",
        &[
            0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_16,
        None,
        "WRITE(16)",
        &[
            0x8A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        ORWRITE_16,
        None,
        "ORWRITE(16)",
        &[
            0x8B, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_AND_VERIFY_16,
        None,
        "WRITE AND VERIFY(16)",
        &[
            0x8E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        VERIFY_16,
        None,
        "VERIFY(16)",
        &[
            0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        PRE_FETCH_16,
        None,
        "PRE-FETCH(16)",
        &[
            0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        SYNCHRONIZE_CACHE_16,
        None,
        "SYNCHRONIZE CACHE(16)",
        &[
            0x91, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_SAME_16,
        None,
        "WRITE SAME(16)",
        &[
            0x93, 0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, C,
        ],
        SANITIZE_TIMEOUT,
    ),
    cmd(
        WRITE_ATOMIC_16,
        None,
        "WRITE ATOMIC(16)",
        &[
            0x9C, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0xFF, 0xFF,
            0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        SERVICE_ACTION_IN_16,
        Some(SA_READ_CAPACITY_16),
        "READ CAPACITY(16)",
        &[
            0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x01, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        SERVICE_ACTION_IN_16,
        Some(SA_GET_LBA_STATUS),
        "GET LBA STATUS",
        &[
            0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        REPORT_LUNS,
        None,
        "REPORT LUNS",
        &[
            0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        MAINTENANCE_IN,
        Some(SA_REPORT_SUPPORTED_OPERATION_CODES),
        "REPORT SUPPORTED OPERATION CODES",
        &[
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, C,
        ],
        QUICK_TIMEOUT,
    ),
    cmd(
        READ_12,
        None,
        "READ(12)",
        &[
            0xA8, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_12,
        None,
        "WRITE(12)",
        &[
            0xAA, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        WRITE_AND_VERIFY_12,
        None,
        "WRITE AND VERIFY(12)",
        &[
            0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        VERIFY_12,
        None,
        "VERIFY(12)",
        &[
            0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C,
        ],
        MEDIUM_TIMEOUT,
    ),
    cmd(
        READ_DEFECT_DATA_12,
        None,
        "READ DEFECT DATA(12)",
        &[
            0xB7, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, C,
        ],
        QUICK_TIMEOUT,
    ),
];

/// The supported command with this opcode and service action (`None` for
/// opcodes without service actions).
pub fn lookup(opcode: u8, service_action: Option<u16>) -> Option<&'static CommandInfo> {
    SUPPORTED
        .iter()
        .find(|c| c.opcode == opcode && c.service_action == service_action)
}

/// The supported command a raw CDB names.
///
/// * unknown opcode (or empty CDB): INVALID COMMAND OPERATION CODE;
/// * known service-action opcode with an unsupported service action (or a
///   CDB too short to hold one): INVALID FIELD IN CDB.
pub fn command_for_cdb(cdb: &[u8]) -> Result<&'static CommandInfo, super::Sense> {
    use super::Sense;
    let opcode = *cdb.first().ok_or(Sense::invalid_opcode())?;
    if !SUPPORTED.iter().any(|c| c.opcode == opcode) {
        return Err(Sense::invalid_opcode());
    }
    if has_service_actions(opcode) {
        let sa = cdb.get(1).ok_or(Sense::invalid_field_in_cdb())? & 0x1F;
        // SERVICE ACTION is byte 1, bits 4..0
        lookup(opcode, Some(u16::from(sa))).ok_or(Sense::invalid_field_in_cdb_at(1, 4))
    } else {
        lookup(opcode, None).ok_or(Sense::invalid_opcode())
    }
}

#[cfg(test)]
mod tests {
    use super::super::cdb::cdb_len;
    use super::*;

    #[test]
    fn table_is_consistent() {
        for c in SUPPORTED {
            assert_eq!(c.usage[0], c.opcode, "{}", c.name);
            assert_eq!(Some(c.usage.len()), cdb_len(c.opcode), "{}", c.name);
            assert_eq!(*c.usage.last().unwrap(), C, "{}", c.name);
            assert_eq!(
                c.service_action.is_some(),
                has_service_actions(c.opcode),
                "{}",
                c.name
            );
            if let Some(sa) = c.service_action {
                assert_eq!(u16::from(c.usage[1] & 0x1F), sa, "{}", c.name);
            }
        }
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for w in SUPPORTED.windows(2) {
            let a = (w[0].opcode, w[0].service_action);
            let b = (w[1].opcode, w[1].service_action);
            assert!(a < b, "{} / {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn dpo_fua_reported_for_read_write_verify() {
        for op in [READ_10, WRITE_10, READ_12, WRITE_12, READ_16, WRITE_16] {
            assert_eq!(lookup(op, None).unwrap().usage[1] & 0x18, 0x18);
        }
        for op in [VERIFY_10, VERIFY_12, VERIFY_16] {
            assert_eq!(lookup(op, None).unwrap().usage[1] & 0x10, 0x10);
        }
    }

    #[test]
    fn command_for_cdb_errors() {
        use super::super::Sense;
        assert_eq!(command_for_cdb(&[]).unwrap_err(), Sense::invalid_opcode());
        assert_eq!(
            command_for_cdb(&[0xFF; 16]).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(
            command_for_cdb(&[WRITE_BUFFER]).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(
            command_for_cdb(&[0x9E]).unwrap_err(),
            Sense::invalid_field_in_cdb()
        );
        assert_eq!(
            command_for_cdb(&[0x9E, 0x13]).unwrap_err(),
            Sense::invalid_field_in_cdb_at(1, 4)
        );
        assert_eq!(
            command_for_cdb(&[0x9E, 0x10]).unwrap().name,
            "READ CAPACITY(16)"
        );
        assert_eq!(
            command_for_cdb(&[0xA3, 0xEC]).unwrap().name,
            "REPORT SUPPORTED OPERATION CODES"
        );
        assert_eq!(command_for_cdb(&[0x28]).unwrap().name, "READ(10)");
    }
}
