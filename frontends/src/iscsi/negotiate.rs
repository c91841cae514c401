//! Login-phase text negotiation (RFC 7143 section 6 and 13).
//! (Placeholder: the full negotiator is being written.)

/// What the target is able and willing to accept.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest data segment the target can receive (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    /// Upper bound for MaxBurstLength.
    pub max_burst_length: u32,
    /// Upper bound for FirstBurstLength.
    pub first_burst_length: u32,
    /// Upper bound for MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// Whether CRC32C header / data digests may be chosen.
    pub allow_digests: bool,
    /// Target portal group tag sent in the first Login Response.
    pub target_portal_group_tag: u16,
    /// One-way CHAP credentials the initiator must present; `None` = no auth.
    pub chap: Option<ChapSecret>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 1,
            allow_digests: true,
            target_portal_group_tag: 1,
            chap: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChapSecret {
    pub user: String,
    pub secret: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Login stages (CSG / NSG field values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

/// Operational parameters in force after login. Starts at RFC 7143 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: String,
    pub target_name: String,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment
    /// the target may send.
    pub initiator_max_recv_dsl: u32,
    /// The target's declared MaxRecvDataSegmentLength.
    pub target_max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub error_recovery_level: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: String::new(),
            target_name: String::new(),
            header_digest: false,
            data_digest: false,
            initiator_max_recv_dsl: 8192,
            target_max_recv_dsl: 8192,
            max_burst_length: 262144,
            first_burst_length: 65536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// Why a login fails: maps to Login Response status class / detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// 02/00 initiator error (malformed text, bad stage, ...).
    InitiatorError,
    /// 02/01 authentication failure.
    AuthFailed,
    /// 02/03 target not found.
    TargetNotFound,
    /// 02/07 missing parameter (InitiatorName, TargetName).
    MissingParameter,
    /// 02/0A session type not supported.
    SessionTypeUnsupported,
    /// 03/00 target error.
    TargetError,
}

impl LoginFailure {
    /// (status class, status detail) for the Login Response.
    pub fn status(self) -> (u8, u8) {
        match self {
            LoginFailure::InitiatorError => (2, 0x00),
            LoginFailure::AuthFailed => (2, 0x01),
            LoginFailure::TargetNotFound => (2, 0x03),
            LoginFailure::MissingParameter => (2, 0x07),
            LoginFailure::SessionTypeUnsupported => (2, 0x0A),
            LoginFailure::TargetError => (3, 0x00),
        }
    }
}

/// Result of one negotiation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepResult {
    /// The target agrees to move to the requested next stage (T bit).
    pub transit: bool,
}

/// Drives the text negotiation of one connection's login.
#[derive(Debug)]
pub struct Negotiator {
    limits: Limits,
    params: SessionParams,
}

impl Negotiator {
    pub fn new(limits: Limits) -> Self {
        Negotiator { limits, params: SessionParams::default() }
    }

    /// The parameters negotiated so far.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Process the complete key=value text of one Login Request (already
    /// joined across C-bit continuations) received in stage `csg`, with the
    /// initiator asking to go to `nsg` when `transit` is set. Appends the
    /// response text to `out`. `target_exists` says whether a TargetName
    /// names a target this portal serves.
    pub fn step(
        &mut self,
        csg: Stage,
        transit: bool,
        nsg: Stage,
        text: &[u8],
        target_exists: &dyn Fn(&str) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<StepResult, LoginFailure> {
        let _ = (csg, nsg, text, target_exists, out, &self.limits);
        Ok(StepResult { transit })
    }
}
