//! Login-phase text negotiation (RFC 7143 sections 6, 12 and 13).
//!
//! [`Negotiator`] is pure: each Login Request's text goes in, the Login
//! Response's text comes out, together with whether the target agrees to
//! the requested stage transition. The transport owns the PDU framing.
//!
//! Rules applied, in short:
//! * text is NUL-terminated `key=value` items (see [`parse_text`]);
//!   malformed text, a key sent twice during the login, keys only the
//!   target may send, or keys sent in the wrong stage fail the login with
//!   [`LoginFailure::InitiatorError`];
//! * the first request must carry InitiatorName, and TargetName for a
//!   Normal session; the first response carries TargetPortalGroupTag;
//! * the security stage negotiates AuthMethod (None, or CHAP when a secret
//!   is configured) and runs CHAP over several steps;
//! * the operational stage answers every key in the order received, then
//!   declares the target's MaxRecvDataSegmentLength once.
//!
//! CHAP: algorithms 5 (MD5) and 7 (SHA-256), numbered as in the PPP
//! authentication algorithm registry; the initiator's order of preference
//! decides. Mutual CHAP is answered only after
//! [`Negotiator::with_mutual_chap`].
//!
//! For the transport: call [`Negotiator::step`] once per complete Login
//! Request. `Ok` with `transit == false` means "stay in this stage" (for
//! example while CHAP is still running, see
//! [`Negotiator::auth_in_progress`]): answer with T=0 and the same CSG.
//! `Ok` with `transit == true` means answer T=1 with the requested NSG;
//! once NSG is full feature phase, [`Negotiator::is_complete`] is true and
//! [`Negotiator::params`] is final. `Err` maps to the Login Response status
//! via [`LoginFailure::status`]; nothing is appended to the text then, and
//! the connection should be closed after the reject.

#[path = "keys/chap.rs"]
pub mod chap;
#[path = "keys/text.rs"]
pub mod text;

pub use text::{format_key, parse_text, TextError};

use super::wire::{login_stage, login_status};
use chap::ChapAlgorithm;
use std::collections::HashSet;
use text::{bool_text, decode_binary, encode_hex, parse_bool, parse_list, parse_number_in};

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

/// CHAP credentials: the name (CHAP_N) and the shared secret.
#[derive(Clone)]
pub struct ChapSecret {
    pub user: String,
    pub secret: Vec<u8>,
}

/// Keeps the secret out of logs.
impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecret")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Login stages (CSG / NSG field values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Security = login_stage::SECURITY as isize,
    Operational = login_stage::OPERATIONAL as isize,
    FullFeature = login_stage::FULL_FEATURE as isize,
}

impl Stage {
    /// A CSG or NSG field; `None` for the reserved value 2.
    pub fn from_wire(v: u8) -> Option<Stage> {
        match v {
            login_stage::SECURITY => Some(Stage::Security),
            login_stage::OPERATIONAL => Some(Stage::Operational),
            login_stage::FULL_FEATURE => Some(Stage::FullFeature),
            _ => None,
        }
    }
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
    /// 02/09 session type not supported.
    SessionTypeUnsupported,
    /// 03/00 target error.
    TargetError,
}

impl LoginFailure {
    /// (status class, status detail) for the Login Response.
    pub fn status(self) -> (u8, u8) {
        match self {
            LoginFailure::InitiatorError => login_status::INITIATOR_ERROR,
            LoginFailure::AuthFailed => login_status::AUTH_FAILED,
            LoginFailure::TargetNotFound => login_status::TARGET_NOT_FOUND,
            LoginFailure::MissingParameter => login_status::MISSING_PARAMETER,
            LoginFailure::SessionTypeUnsupported => login_status::SESSION_TYPE_UNSUPPORTED,
            LoginFailure::TargetError => login_status::TARGET_ERROR,
        }
    }
}

/// Result of one negotiation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepResult {
    /// The target agrees to move to the requested next stage (T bit).
    pub transit: bool,
}

/// Largest value of the data segment length keys (2**24 - 1).
const MAX_DSL: u64 = (1 << 24) - 1;
/// DefaultTime2Retain the target offers; the result is the minimum.
const OUR_TIME2RETAIN: u32 = 20;
/// Largest CHAP challenge accepted from the initiator (mutual CHAP).
const MAX_CHAP_CHALLENGE: usize = 1024;
/// Login Requests one login may take. Real initiators need fewer than ten.
const MAX_LOGIN_STEPS: u32 = 64;
/// Text bytes one login may send in total (the RFC asks targets to accept
/// at least 8192 per negotiation sequence).
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// Keys the RFC marks "Irrelevant when: SessionType=Discovery".
const IRRELEVANT_IN_DISCOVERY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "TaskReporting",
];

/// Operational keys (RFC 7143 section 13 and 13.25): never valid in the
/// security stage.
const OPERATIONAL_KEYS: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "TaskReporting",
    "iSCSIProtocolLevel",
    "IFMarker",
    "OFMarker",
    "IFMarkInt",
    "OFMarkInt",
];

/// Keys only the target sends.
const TARGET_ONLY_KEYS: &[&str] = &["TargetAlias", "TargetAddress", "TargetPortalGroupTag"];

/// Keys that must first appear in the first Login Request; later requests
/// may only repeat them unchanged.
const LEADING_KEYS: &[&str] = &["InitiatorName", "TargetName", "SessionType"];

/// Where authentication stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// No AuthMethod agreed yet.
    Pending,
    /// The target answered AuthMethod=Reject: nothing it can accept.
    Rejected,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapWaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N / CHAP_R.
    ChapWaitResponse {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    /// Authentication finished (or none needed).
    Done,
}

/// CHAP keys of one request, gathered before acting on them.
#[derive(Debug, Default)]
struct ChapKeys<'a> {
    a: Option<&'a str>,
    i: Option<&'a str>,
    c: Option<&'a str>,
    n: Option<&'a str>,
    r: Option<&'a str>,
}

impl ChapKeys<'_> {
    fn any(&self) -> bool {
        self.a.is_some()
            || self.i.is_some()
            || self.c.is_some()
            || self.n.is_some()
            || self.r.is_some()
    }
}

/// Drives the text negotiation of one connection's login.
#[derive(Debug)]
pub struct Negotiator {
    limits: Limits,
    params: SessionParams,
    /// Credentials the target answers with when the initiator asks for
    /// mutual CHAP; `None` = mutual CHAP refused.
    mutual_chap: Option<ChapSecret>,
    /// Discovery sessions must authenticate too when CHAP is configured.
    discovery_auth: bool,
    /// Stage of the last request; `None` before the first.
    stage: Option<Stage>,
    /// Stage the target agreed to move to in its last response.
    next_stage: Option<Stage>,
    /// Every key received during this login.
    seen: HashSet<String>,
    /// Login Requests and text bytes received so far.
    steps: u32,
    text_bytes: usize,
    auth: Auth,
    /// MaxRecvDataSegmentLength has been declared to the initiator.
    mrdsl_declared: bool,
    /// Transition to full feature phase agreed.
    complete: bool,
    /// A step failed; the login is over.
    failed: bool,
    /// Test hook: identifier and challenge to use instead of random ones.
    #[cfg(test)]
    fixed_challenge: Option<(u8, Vec<u8>)>,
}

impl Negotiator {
    pub fn new(limits: Limits) -> Self {
        Negotiator {
            limits,
            params: SessionParams::default(),
            mutual_chap: None,
            discovery_auth: true,
            stage: None,
            next_stage: None,
            seen: HashSet::new(),
            steps: 0,
            text_bytes: 0,
            auth: Auth::Pending,
            mrdsl_declared: false,
            complete: false,
            failed: false,
            #[cfg(test)]
            fixed_challenge: None,
        }
    }

    /// Allow mutual CHAP: when the initiator sends its own CHAP_I/CHAP_C,
    /// the target answers with these credentials. The secret must differ
    /// from the one the initiator uses.
    pub fn with_mutual_chap(mut self, credentials: ChapSecret) -> Self {
        self.mutual_chap = Some(credentials);
        self
    }

    /// Whether discovery sessions must pass CHAP too when a secret is
    /// configured (the default). With `false`, discovery sessions log in
    /// with AuthMethod=None while normal sessions still need CHAP.
    pub fn with_discovery_auth(mut self, required: bool) -> Self {
        self.discovery_auth = required;
        self
    }

    /// The parameters negotiated so far.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The stage of the last Login Request processed.
    pub fn stage(&self) -> Option<Stage> {
        self.stage
    }

    /// The target agreed to enter the full feature phase: `params()` is final.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// A CHAP exchange has started and is not finished yet.
    pub fn auth_in_progress(&self) -> bool {
        matches!(
            self.auth,
            Auth::ChapWaitAlgorithm | Auth::ChapWaitResponse { .. }
        )
    }

    /// Authentication succeeded (CHAP verified, or none required).
    pub fn authenticated(&self) -> bool {
        self.auth == Auth::Done
    }

    /// Process the complete key=value text of one Login Request (already
    /// joined across C-bit continuations) received in stage `csg`, with the
    /// initiator asking to go to `nsg` when `transit` is set. Appends the
    /// response text to `out`. `target_exists` says whether a TargetName
    /// names a target this portal serves.
    ///
    /// On error nothing is appended, and every later step fails too.
    pub fn step(
        &mut self,
        csg: Stage,
        transit: bool,
        nsg: Stage,
        text: &[u8],
        target_exists: &dyn Fn(&str) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<StepResult, LoginFailure> {
        if self.failed {
            return Err(LoginFailure::InitiatorError);
        }
        let start = out.len();
        let result = self.step_inner(csg, transit, nsg, text, target_exists, out);
        if result.is_err() {
            self.failed = true;
            out.truncate(start);
        }
        result
    }

    fn step_inner(
        &mut self,
        csg: Stage,
        transit: bool,
        nsg: Stage,
        text: &[u8],
        target_exists: &dyn Fn(&str) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<StepResult, LoginFailure> {
        use LoginFailure::*;

        // Stage sequencing.
        if self.complete || csg == Stage::FullFeature {
            return Err(InitiatorError);
        }
        let first = self.stage.is_none();
        if let Some(current) = self.stage {
            if csg != self.next_stage.unwrap_or(current) {
                return Err(InitiatorError);
            }
        }
        if transit && (nsg as u8) <= (csg as u8) {
            return Err(InitiatorError);
        }
        self.stage = Some(csg);
        self.next_stage = None;

        // Bound the work one login can cause.
        self.steps += 1;
        self.text_bytes = self.text_bytes.saturating_add(text.len());
        if self.steps > MAX_LOGIN_STEPS || self.text_bytes > MAX_LOGIN_TEXT {
            return Err(InitiatorError);
        }

        let pairs = parse_text(text).map_err(|_| InitiatorError)?;

        // No key may be sent twice during the login, except for
        // declarations repeated without change of meaning.
        for (i, (key, value)) in pairs.iter().enumerate() {
            let earlier = self.seen.contains(*key);
            if pairs[..i].iter().any(|(k, _)| k == key)
                || (earlier && !self.may_redeclare(key, value))
                || (!first && !earlier && LEADING_KEYS.contains(key))
            {
                return Err(InitiatorError);
            }
        }
        for (key, _) in &pairs {
            self.seen.insert((*key).to_owned());
        }

        if first {
            let find = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let initiator = find("InitiatorName")
                .filter(|v| !v.is_empty())
                .ok_or(MissingParameter)?;
            let session_type = match find("SessionType") {
                None | Some("Normal") => SessionType::Normal,
                Some("Discovery") => SessionType::Discovery,
                Some(_) => return Err(SessionTypeUnsupported),
            };
            if session_type == SessionType::Normal {
                let target = find("TargetName")
                    .filter(|v| !v.is_empty())
                    .ok_or(MissingParameter)?;
                if !target_exists(target) {
                    return Err(TargetNotFound);
                }
                self.params.target_name = target.to_owned();
            }
            self.params.initiator_name = initiator.to_owned();
            self.params.session_type = session_type;
            if csg == Stage::Operational {
                // The initiator skipped the security stage.
                if self.auth_required() {
                    return Err(AuthFailed);
                }
                self.auth = Auth::Done;
            }
        }

        // The burst limit FirstBurstLength is checked against: this
        // request's MaxBurstLength result if it has one, else the current.
        let burst_cap = pairs
            .iter()
            .find(|(k, _)| *k == "MaxBurstLength")
            .and_then(|(_, v)| parse_number_in(v, 512, MAX_DSL))
            .map_or(self.params.max_burst_length, |n| self.burst_result(n));

        let mut chap = ChapKeys::default();
        for &(key, value) in &pairs {
            self.answer(csg, key, value, burst_cap, &mut chap, out)?;
        }
        if csg == Stage::Security {
            self.run_chap(&chap, out)?;
        } else if chap.any() {
            return Err(InitiatorError);
        }

        if first {
            format_key(
                out,
                "TargetPortalGroupTag",
                &self.limits.target_portal_group_tag.to_string(),
            );
        }
        if csg == Stage::Operational && !self.mrdsl_declared {
            let ours =
                u64::from(self.limits.max_recv_data_segment_length).clamp(512, MAX_DSL) as u32;
            format_key(out, "MaxRecvDataSegmentLength", &ours.to_string());
            self.params.target_max_recv_dsl = ours;
            self.mrdsl_declared = true;
        }

        let agree = transit
            && match csg {
                Stage::Security => match self.auth {
                    Auth::Done => true,
                    Auth::ChapWaitAlgorithm | Auth::ChapWaitResponse { .. } => false,
                    Auth::Rejected => return Err(AuthFailed),
                    Auth::Pending => {
                        if self.auth_required() {
                            return Err(AuthFailed);
                        }
                        self.auth = Auth::Done;
                        true
                    }
                },
                _ => true,
            };
        if agree {
            self.next_stage = Some(nsg);
            if nsg == Stage::FullFeature {
                self.finish();
            }
        }
        Ok(StepResult { transit: agree })
    }

    /// Whether a key sent earlier in the login may appear again: repeated
    /// declarations that do not change anything, and the initiator's
    /// MaxRecvDataSegmentLength (which simply takes the new value).
    fn may_redeclare(&self, key: &str, value: &str) -> bool {
        let p = &self.params;
        match key {
            "MaxRecvDataSegmentLength" | "InitiatorAlias" => true,
            "InitiatorName" => value == p.initiator_name,
            "TargetName" => p.session_type == SessionType::Discovery || value == p.target_name,
            "SessionType" => {
                value
                    == match p.session_type {
                        SessionType::Normal => "Normal",
                        SessionType::Discovery => "Discovery",
                    }
            }
            _ => false,
        }
    }

    /// CHAP must succeed before the login may leave the security stage.
    fn auth_required(&self) -> bool {
        self.limits.chap.is_some()
            && (self.discovery_auth || self.params.session_type == SessionType::Normal)
    }

    /// Final consistency once the full feature phase is agreed.
    fn finish(&mut self) {
        let p = &mut self.params;
        if p.first_burst_length > p.max_burst_length {
            p.first_burst_length = p.max_burst_length;
        }
        self.complete = true;
    }

    fn burst_result(&self, offered: u64) -> u32 {
        let ours = u64::from(self.limits.max_burst_length).clamp(512, MAX_DSL);
        offered.min(ours) as u32
    }

    /// Answer one key of a request (CHAP keys are only collected).
    fn answer<'a>(
        &mut self,
        csg: Stage,
        key: &'a str,
        value: &'a str,
        burst_cap: u32,
        chap: &mut ChapKeys<'a>,
        out: &mut Vec<u8>,
    ) -> Result<(), LoginFailure> {
        match key {
            // Checked with the first request; declarative, no answer.
            "InitiatorName" | "TargetName" | "SessionType" => {}
            "InitiatorAlias" => self.params.initiator_alias = value.to_owned(),
            k if TARGET_ONLY_KEYS.contains(&k) => return Err(LoginFailure::InitiatorError),
            "AuthMethod" => {
                if csg != Stage::Security {
                    return Err(LoginFailure::InitiatorError);
                }
                self.answer_auth_method(value, out)?;
            }
            "CHAP_A" => chap.a = Some(value),
            "CHAP_I" => chap.i = Some(value),
            "CHAP_C" => chap.c = Some(value),
            "CHAP_N" => chap.n = Some(value),
            "CHAP_R" => chap.r = Some(value),
            k if OPERATIONAL_KEYS.contains(&k) => {
                if csg != Stage::Operational {
                    return Err(LoginFailure::InitiatorError);
                }
                self.answer_operational(key, value, burst_cap, out);
            }
            // Full feature phase only.
            "SendTargets" => format_key(out, key, "Irrelevant"),
            // X- and X# extensions, other authentication methods' keys and
            // anything unknown.
            _ => format_key(out, key, "NotUnderstood"),
        }
        Ok(())
    }

    fn answer_auth_method(&mut self, value: &str, out: &mut Vec<u8>) -> Result<(), LoginFailure> {
        let Some(offered) = parse_list(value) else {
            format_key(out, "AuthMethod", "Reject");
            self.auth = Auth::Rejected;
            return Ok(());
        };
        if self.auth_required() {
            if !offered.contains(&"CHAP") {
                return Err(LoginFailure::AuthFailed);
            }
            format_key(out, "AuthMethod", "CHAP");
            self.auth = Auth::ChapWaitAlgorithm;
        } else if offered.contains(&"None") {
            format_key(out, "AuthMethod", "None");
            self.auth = Auth::Done;
        } else {
            format_key(out, "AuthMethod", "Reject");
            self.auth = Auth::Rejected;
        }
        Ok(())
    }

    fn new_challenge(&mut self, alg: ChapAlgorithm) -> Result<(u8, Vec<u8>), LoginFailure> {
        #[cfg(test)]
        if let Some(fixed) = self.fixed_challenge.clone() {
            return Ok(fixed);
        }
        let mut buf = vec![0u8; alg.digest_len() + 1];
        if !chap::random_bytes(&mut buf) {
            return Err(LoginFailure::TargetError);
        }
        let id = buf.pop().unwrap_or(0);
        Ok((id, buf))
    }

    /// Advance the CHAP exchange with the CHAP keys of one request.
    fn run_chap(&mut self, keys: &ChapKeys<'_>, out: &mut Vec<u8>) -> Result<(), LoginFailure> {
        use LoginFailure::*;
        match std::mem::replace(&mut self.auth, Auth::Pending) {
            Auth::ChapWaitAlgorithm => {
                let Some(a) = keys.a else {
                    if keys.any() {
                        return Err(AuthFailed);
                    }
                    self.auth = Auth::ChapWaitAlgorithm;
                    return Ok(());
                };
                if keys.i.is_some() || keys.c.is_some() || keys.n.is_some() || keys.r.is_some() {
                    return Err(AuthFailed);
                }
                let alg = parse_list(a)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|v| text::parse_number(v).and_then(ChapAlgorithm::from_code))
                    .ok_or(AuthFailed)?;
                let (id, challenge) = self.new_challenge(alg)?;
                format_key(out, "CHAP_A", &alg.code().to_string());
                format_key(out, "CHAP_I", &id.to_string());
                format_key(out, "CHAP_C", &encode_hex(&challenge));
                self.auth = Auth::ChapWaitResponse { alg, id, challenge };
                Ok(())
            }
            Auth::ChapWaitResponse { alg, id, challenge } => {
                if !keys.any() {
                    self.auth = Auth::ChapWaitResponse { alg, id, challenge };
                    return Ok(());
                }
                let secret = self.limits.chap.as_ref().ok_or(TargetError)?;
                let (Some(name), Some(response)) = (keys.n, keys.r) else {
                    return Err(AuthFailed);
                };
                if keys.a.is_some() {
                    return Err(AuthFailed);
                }
                let response = decode_binary(response).ok_or(AuthFailed)?;
                let expected = alg.response(id, &secret.secret, &challenge);
                // Evaluate both checks before deciding.
                let name_ok = chap::constant_time_eq(name.as_bytes(), secret.user.as_bytes());
                let response_ok = chap::constant_time_eq(&response, &expected);
                if !(name_ok & response_ok) {
                    return Err(AuthFailed);
                }
                match (keys.i, keys.c) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let mutual = self.mutual_chap.as_ref().ok_or(AuthFailed)?;
                        let their_id = parse_number_in(i, 0, 255).ok_or(AuthFailed)? as u8;
                        let their_challenge = decode_binary(c)
                            .filter(|c| !c.is_empty() && c.len() <= MAX_CHAP_CHALLENGE)
                            .ok_or(AuthFailed)?;
                        // A reflected challenge, or one secret used in both
                        // directions, would let one side answer for the other.
                        if their_challenge == challenge || mutual.secret == secret.secret {
                            return Err(AuthFailed);
                        }
                        let answer = alg.response(their_id, &mutual.secret, &their_challenge);
                        format_key(out, "CHAP_N", &mutual.user);
                        format_key(out, "CHAP_R", &encode_hex(&answer));
                    }
                    _ => return Err(AuthFailed),
                }
                self.auth = Auth::Done;
                Ok(())
            }
            other => {
                let any = keys.any();
                self.auth = other;
                if any {
                    Err(InitiatorError)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Answer one operational key (the stage has been checked).
    fn answer_operational(&mut self, key: &str, value: &str, burst_cap: u32, out: &mut Vec<u8>) {
        if self.params.session_type == SessionType::Discovery
            && IRRELEVANT_IN_DISCOVERY.contains(&key)
        {
            format_key(out, key, "Irrelevant");
            return;
        }
        let p = &mut self.params;
        let answer: Option<String> = match key {
            "HeaderDigest" | "DataDigest" => {
                let allow = self.limits.allow_digests;
                let pick = parse_list(value).and_then(|list| {
                    list.into_iter().find_map(|v| match v {
                        "CRC32C" if allow => Some(true),
                        "None" => Some(false),
                        _ => None,
                    })
                });
                pick.map(|crc| {
                    if key == "HeaderDigest" {
                        p.header_digest = crc;
                    } else {
                        p.data_digest = crc;
                    }
                    (if crc { "CRC32C" } else { "None" }).to_owned()
                })
            }
            "MaxRecvDataSegmentLength" => match parse_number_in(value, 512, MAX_DSL) {
                // Declarative: our own declaration follows the answers.
                Some(n) => {
                    p.initiator_max_recv_dsl = n as u32;
                    return;
                }
                None => None,
            },
            "MaxBurstLength" => parse_number_in(value, 512, MAX_DSL).map(|n| {
                let ours = u64::from(self.limits.max_burst_length).clamp(512, MAX_DSL);
                p.max_burst_length = n.min(ours) as u32;
                p.max_burst_length.to_string()
            }),
            "FirstBurstLength" => parse_number_in(value, 512, MAX_DSL).map(|n| {
                let ours = u64::from(self.limits.first_burst_length).clamp(512, MAX_DSL);
                p.first_burst_length = n.min(ours).min(u64::from(burst_cap)) as u32;
                p.first_burst_length.to_string()
            }),
            "InitialR2T" => parse_bool(value).map(|b| {
                // Result is OR; the target accepts No (unsolicited data).
                p.initial_r2t = b;
                bool_text(b).to_owned()
            }),
            "ImmediateData" => parse_bool(value).map(|b| {
                // Result is AND; the target accepts Yes.
                p.immediate_data = b;
                bool_text(b).to_owned()
            }),
            "MaxOutstandingR2T" => parse_number_in(value, 1, 65535).map(|n| {
                let ours = u64::from(self.limits.max_outstanding_r2t).clamp(1, 65535);
                p.max_outstanding_r2t = n.min(ours) as u32;
                p.max_outstanding_r2t.to_string()
            }),
            "MaxConnections" => parse_number_in(value, 1, 65535).map(|_| {
                p.max_connections = 1;
                "1".to_owned()
            }),
            "ErrorRecoveryLevel" => parse_number_in(value, 0, 2).map(|_| {
                p.error_recovery_level = 0;
                "0".to_owned()
            }),
            "DefaultTime2Wait" => parse_number_in(value, 0, 3600).map(|n| {
                // The result is the maximum and the target's own value is
                // 0, so the initiator's value stands.
                p.default_time2wait = n as u32;
                p.default_time2wait.to_string()
            }),
            "DefaultTime2Retain" => parse_number_in(value, 0, 3600).map(|n| {
                p.default_time2retain = (n as u32).min(OUR_TIME2RETAIN);
                p.default_time2retain.to_string()
            }),
            "DataPDUInOrder" | "DataSequenceInOrder" => parse_bool(value).map(|_| {
                // Result is OR and the target requires Yes.
                "Yes".to_owned()
            }),
            "TaskReporting" => parse_list(value)
                .filter(|l| l.contains(&"RFC3720"))
                .map(|_| "RFC3720".to_owned()),
            // RFC 7143 (level 1) and later; the result is the minimum.
            "iSCSIProtocolLevel" => parse_number_in(value, 0, 31).map(|n| n.min(1).to_string()),
            // Obsolete markers: RFC 7143 section 13.25 asks for Reject.
            _ => None,
        };
        match answer {
            Some(v) => format_key(out, key, &v),
            None => format_key(out, key, "Reject"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LoginFailure::*;
    use Stage::{FullFeature as FF, Operational as Op, Security as Sec};

    const TGT: &str = "iqn.2026-01.org.example:boot";
    const INI: &str = "iqn.2004-10.com.ubuntu:01:f00d";

    fn exists(name: &str) -> bool {
        name == TGT
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut t = Vec::new();
        for (k, v) in pairs {
            format_key(&mut t, k, v);
        }
        t
    }

    type Answer = Result<(bool, Vec<(String, String)>), LoginFailure>;

    fn step(
        n: &mut Negotiator,
        csg: Stage,
        transit: bool,
        nsg: Stage,
        pairs: &[(&str, &str)],
    ) -> Answer {
        step_raw(n, csg, transit, nsg, &text(pairs))
    }

    fn step_raw(n: &mut Negotiator, csg: Stage, transit: bool, nsg: Stage, raw: &[u8]) -> Answer {
        let mut out = b"prefix".to_vec();
        let r = n.step(csg, transit, nsg, raw, &exists, &mut out);
        assert!(out.starts_with(b"prefix"));
        let body = &out[6..];
        match r {
            Ok(s) => {
                let pairs = parse_text(body).expect("response text must parse");
                Ok((
                    s.transit,
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                ))
            }
            Err(e) => {
                assert!(body.is_empty(), "no text on failure");
                Err(e)
            }
        }
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn leading<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("InitiatorName", INI),
            ("TargetName", TGT),
            ("SessionType", "Normal"),
        ];
        v.extend_from_slice(extra);
        v
    }

    fn chap_limits() -> Limits {
        Limits {
            chap: Some(ChapSecret {
                user: "ipxe-user".to_owned(),
                secret: b"verysecretpw".to_vec(),
            }),
            ..Limits::default()
        }
    }

    fn chap_negotiator() -> Negotiator {
        let mut n = Negotiator::new(chap_limits());
        n.fixed_challenge = Some((0x2a, (1..=16).collect()));
        n
    }

    /// Security stage with AuthMethod=None, operational stage with the values
    /// open-iscsi sends by default.
    #[test]
    fn open_iscsi_login() {
        let mut n = Negotiator::new(Limits::default());
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("InitiatorName", INI),
                ("InitiatorAlias", "host1"),
                ("TargetName", TGT),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")])
            ))
        );
        assert!(n.authenticated());
        let ops = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("MaxRecvDataSegmentLength", "262144"),
        ];
        let r = step(&mut n, Op, true, FF, &ops);
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[
                    ("HeaderDigest", "None"),
                    ("DataDigest", "None"),
                    ("DefaultTime2Wait", "2"),
                    ("DefaultTime2Retain", "0"),
                    ("IFMarker", "Reject"),
                    ("OFMarker", "Reject"),
                    ("ErrorRecoveryLevel", "0"),
                    ("InitialR2T", "No"),
                    ("ImmediateData", "Yes"),
                    ("MaxBurstLength", "1048576"),
                    ("FirstBurstLength", "262144"),
                    ("MaxOutstandingR2T", "1"),
                    ("MaxConnections", "1"),
                    ("DataPDUInOrder", "Yes"),
                    ("DataSequenceInOrder", "Yes"),
                    ("MaxRecvDataSegmentLength", "262144"),
                ])
            ))
        );
        assert!(n.is_complete());
        let p = n.params();
        assert_eq!(p.session_type, SessionType::Normal);
        assert_eq!(p.initiator_name, INI);
        assert_eq!(p.initiator_alias, "host1");
        assert_eq!(p.target_name, TGT);
        assert!(!p.header_digest && !p.data_digest);
        assert_eq!(p.initiator_max_recv_dsl, 262144);
        assert_eq!(p.target_max_recv_dsl, 262144);
        assert_eq!(p.max_burst_length, 1048576);
        assert_eq!(p.first_burst_length, 262144);
        assert!(!p.initial_r2t && p.immediate_data);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert_eq!(p.error_recovery_level, 0);
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
        // Nothing may follow the transition to full feature phase.
        assert_eq!(step(&mut n, FF, false, FF, &[]), Err(InitiatorError));
    }

    const IPXE_OPS: [(&str, &str); 14] = [
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxRecvDataSegmentLength", "8192"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("DefaultTime2Wait", "0"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
    ];

    /// iPXE: CHAP (MD5) in the security stage, then its operational values.
    #[test]
    fn ipxe_login_with_chap() {
        let mut n = chap_negotiator();
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                (
                    "InitiatorName",
                    "iqn.2010-04.org.ipxe:00000000-0000-0000-0000-000000000000",
                ),
                ("TargetName", TGT),
                ("SessionType", "Normal"),
                ("AuthMethod", "CHAP,None"),
            ],
        );
        // Authentication has only started: no transit yet.
        assert_eq!(
            r,
            Ok((
                false,
                owned(&[("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "1")])
            ))
        );
        assert!(n.auth_in_progress());
        let r = step(&mut n, Sec, true, Op, &[("CHAP_A", "5")]);
        assert_eq!(
            r,
            Ok((
                false,
                owned(&[
                    ("CHAP_A", "5"),
                    ("CHAP_I", "42"),
                    ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
                ])
            ))
        );
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("CHAP_N", "ipxe-user"),
                ("CHAP_R", "0xdcff8b6a836896fa609ec24c742b0517"),
            ],
        );
        assert_eq!(r, Ok((true, vec![])));
        assert!(n.authenticated() && !n.auth_in_progress());
        let r = step(&mut n, Op, true, FF, &IPXE_OPS);
        let mut expected: Vec<(&str, &str)> = IPXE_OPS
            .iter()
            .copied()
            .filter(|(k, _)| *k != "MaxRecvDataSegmentLength")
            .collect();
        expected.push(("MaxRecvDataSegmentLength", "262144"));
        assert_eq!(r, Ok((true, owned(&expected))));
        let p = n.params();
        assert_eq!(p.initiator_max_recv_dsl, 8192);
        assert_eq!(p.target_max_recv_dsl, 262144);
        assert_eq!((p.max_burst_length, p.first_burst_length), (262144, 65536));
        assert!(p.initial_r2t && !p.immediate_data);
        assert_eq!((p.default_time2wait, p.default_time2retain), (0, 0));
        assert!(n.is_complete());
    }

    /// Agree on CHAP and get the (fixed) challenge.
    fn to_challenge(n: &mut Negotiator) {
        let r = step(n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")]));
        assert!(matches!(r, Ok((false, _))));
        let r = step(n, Sec, false, Op, &[("CHAP_A", "5")]);
        assert!(matches!(r, Ok((false, _))));
    }

    #[test]
    fn chap_failures() {
        let good_r = "0xdcff8b6a836896fa609ec24c742b0517";
        let bad_r = "0xdcff8b6a836896fa609ec24c742b0518";
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![("CHAP_N", "ipxe-user"), ("CHAP_R", bad_r)],
            vec![("CHAP_N", "other-user"), ("CHAP_R", good_r)],
            vec![
                ("CHAP_N", "ipxe-user"),
                ("CHAP_R", "dcff8b6a836896fa609ec24c742b0517"),
            ],
            vec![("CHAP_N", "ipxe-user"), ("CHAP_R", "0xdcff")],
            vec![("CHAP_N", "ipxe-user")],
            vec![("CHAP_R", good_r)],
            // Mutual CHAP without target credentials configured.
            vec![
                ("CHAP_N", "ipxe-user"),
                ("CHAP_R", good_r),
                ("CHAP_I", "7"),
                ("CHAP_C", "0xa0a1"),
            ],
        ];
        for case in cases {
            let mut n = chap_negotiator();
            to_challenge(&mut n);
            assert_eq!(
                step(&mut n, Sec, true, Op, &case),
                Err(AuthFailed),
                "{case:?}"
            );
            assert!(!n.authenticated());
            // The login is over.
            assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(InitiatorError));
        }
    }

    #[test]
    fn chap_negotiation_failures() {
        // Initiator offers only None while a secret is configured.
        let mut n = chap_negotiator();
        assert_eq!(
            step(&mut n, Sec, true, Op, &leading(&[("AuthMethod", "None")])),
            Err(AuthFailed)
        );
        // No AuthMethod at all, asking to move on.
        let mut n = chap_negotiator();
        assert_eq!(step(&mut n, Sec, true, Op, &leading(&[])), Err(AuthFailed));
        // Skipping the security stage.
        let mut n = chap_negotiator();
        assert_eq!(step(&mut n, Op, true, FF, &leading(&[])), Err(AuthFailed));
        // Only unsupported algorithms (SHA-1).
        let mut n = chap_negotiator();
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
        assert_eq!(
            step(&mut n, Sec, false, Op, &[("CHAP_A", "6")]),
            Err(AuthFailed)
        );
        // Response before the challenge.
        let mut n = chap_negotiator();
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
        assert_eq!(
            step(
                &mut n,
                Sec,
                true,
                Op,
                &[("CHAP_N", "ipxe-user"), ("CHAP_R", "0x00")]
            ),
            Err(AuthFailed)
        );
        // CHAP keys without CHAP agreed.
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step(
                &mut n,
                Sec,
                false,
                Op,
                &leading(&[("AuthMethod", "None"), ("CHAP_A", "5")])
            ),
            Err(InitiatorError)
        );
        // Without a secret, CHAP alone is rejected, and transit then fails.
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])),
            Ok((
                false,
                owned(&[("AuthMethod", "Reject"), ("TargetPortalGroupTag", "1")])
            ))
        );
        assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(AuthFailed));
    }

    #[test]
    fn chap_steps_without_keys_keep_waiting() {
        let mut n = chap_negotiator();
        step(
            &mut n,
            Sec,
            true,
            Op,
            &leading(&[("AuthMethod", "CHAP,None")]),
        )
        .unwrap();
        assert_eq!(step(&mut n, Sec, true, Op, &[]), Ok((false, vec![])));
        step(&mut n, Sec, true, Op, &[("CHAP_A", "5")]).unwrap();
        assert_eq!(step(&mut n, Sec, true, Op, &[]), Ok((false, vec![])));
        assert!(n.auth_in_progress());
    }

    #[test]
    fn chap_algorithm_in_first_request_and_sha256() {
        let mut n = Negotiator::new(chap_limits());
        n.fixed_challenge = Some((0x2a, (1..=32).collect()));
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &leading(&[("AuthMethod", "CHAP"), ("CHAP_A", "8,7,5")]),
        );
        let challenge: Vec<u8> = (1..=32).collect();
        assert_eq!(
            r,
            Ok((
                false,
                owned(&[
                    ("AuthMethod", "CHAP"),
                    ("CHAP_A", "7"),
                    ("CHAP_I", "42"),
                    ("CHAP_C", &encode_hex(&challenge)),
                    ("TargetPortalGroupTag", "1"),
                ])
            ))
        );
        let r = step(
            &mut n,
            Sec,
            true,
            FF,
            &[
                ("CHAP_N", "ipxe-user"),
                (
                    "CHAP_R",
                    "0xb22c82574ceb2c3ad6ac41f868697e6dfe3485001e2128dbebd96599ba4ac8a6",
                ),
            ],
        );
        // Straight from security to full feature phase.
        assert_eq!(r, Ok((true, vec![])));
        assert!(n.is_complete());
        // No operational stage: the RFC defaults stay.
        assert_eq!(n.params().target_max_recv_dsl, 8192);
        assert_eq!(n.params().initiator_max_recv_dsl, 8192);
    }

    #[test]
    fn mutual_chap() {
        let target_creds = ChapSecret {
            user: "target-user".to_owned(),
            secret: b"targetsecret12".to_vec(),
        };
        let good_r = "0xdcff8b6a836896fa609ec24c742b0517";
        let mut n = chap_negotiator().with_mutual_chap(target_creds.clone());
        to_challenge(&mut n);
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("CHAP_N", "ipxe-user"),
                ("CHAP_R", good_r),
                ("CHAP_I", "7"),
                ("CHAP_C", "0xa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
            ],
        );
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[
                    ("CHAP_N", "target-user"),
                    ("CHAP_R", "0x30a9511cafc012c47f7f69c424fe4ac3")
                ])
            ))
        );
        // The initiator reflecting the target's own challenge.
        let mut n = chap_negotiator().with_mutual_chap(target_creds.clone());
        to_challenge(&mut n);
        let reflected = [
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", good_r),
            ("CHAP_I", "42"),
            ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
        ];
        assert_eq!(step(&mut n, Sec, true, Op, &reflected), Err(AuthFailed));
        // CHAP_I without CHAP_C, and a bad identifier.
        for extra in [
            vec![("CHAP_I", "7")],
            vec![("CHAP_I", "256"), ("CHAP_C", "0xa0")],
        ] {
            let mut n = chap_negotiator().with_mutual_chap(target_creds.clone());
            to_challenge(&mut n);
            let mut keys = vec![("CHAP_N", "ipxe-user"), ("CHAP_R", good_r)];
            keys.extend(extra);
            assert_eq!(step(&mut n, Sec, true, Op, &keys), Err(AuthFailed));
        }
        // The same secret in both directions is refused.
        let mut n = chap_negotiator().with_mutual_chap(ChapSecret {
            user: "t".to_owned(),
            secret: b"verysecretpw".to_vec(),
        });
        to_challenge(&mut n);
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("CHAP_N", "ipxe-user"),
                ("CHAP_R", good_r),
                ("CHAP_I", "7"),
                ("CHAP_C", "0xa0a1"),
            ],
        );
        assert_eq!(r, Err(AuthFailed));
    }

    #[test]
    fn random_challenge_round_trip() {
        let mut n = Negotiator::new(chap_limits());
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
        let (_, resp) = step(&mut n, Sec, false, Op, &[("CHAP_A", "5")]).unwrap();
        let id: u8 = resp[1].1.parse().unwrap();
        let challenge = decode_binary(&resp[2].1).unwrap();
        assert_eq!(challenge.len(), 16);
        let r = ChapAlgorithm::Md5.response(id, b"verysecretpw", &challenge);
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[("CHAP_N", "ipxe-user"), ("CHAP_R", &encode_hex(&r))],
        );
        assert_eq!(r, Ok((true, vec![])));
    }

    #[test]
    fn leading_keys() {
        let cases: Vec<(Vec<(&str, &str)>, LoginFailure)> = vec![
            (
                vec![("TargetName", TGT), ("AuthMethod", "None")],
                MissingParameter,
            ),
            (
                vec![("InitiatorName", ""), ("TargetName", TGT)],
                MissingParameter,
            ),
            (
                vec![("InitiatorName", INI), ("AuthMethod", "None")],
                MissingParameter,
            ),
            (
                vec![("InitiatorName", INI), ("SessionType", "Normal")],
                MissingParameter,
            ),
            (
                vec![("InitiatorName", INI), ("TargetName", "iqn.x:other")],
                TargetNotFound,
            ),
            (
                vec![
                    ("InitiatorName", INI),
                    ("SessionType", "Bogus"),
                    ("TargetName", TGT),
                ],
                SessionTypeUnsupported,
            ),
        ];
        for (pairs, fail) in cases {
            for stage in [Sec, Op] {
                let mut n = Negotiator::new(Limits::default());
                assert_eq!(
                    step(&mut n, stage, true, FF, &pairs),
                    Err(fail),
                    "{pairs:?}"
                );
            }
        }
        // SessionType defaults to Normal.
        let mut n = Negotiator::new(Limits::default());
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[("InitiatorName", INI), ("TargetName", TGT)],
        );
        assert_eq!(r, Ok((true, owned(&[("TargetPortalGroupTag", "1")]))));
        assert_eq!(n.params().session_type, SessionType::Normal);
        // Leading keys repeated later: fine unchanged, fatal when changed.
        for (key, same, changed) in [
            ("InitiatorName", INI, "iqn.x:other"),
            ("TargetName", TGT, "iqn.x:other"),
            ("SessionType", "Normal", "Discovery"),
        ] {
            let mut n = Negotiator::new(Limits::default());
            step(&mut n, Sec, false, Op, &leading(&[])).unwrap();
            assert_eq!(
                step(&mut n, Sec, false, Op, &[(key, same)]),
                Ok((false, vec![]))
            );
            assert_eq!(
                step(&mut n, Sec, true, Op, &[(key, changed)]),
                Err(InitiatorError)
            );
        }
        // Leading keys first sent after the first request.
        let mut n = Negotiator::new(Limits::default());
        step(
            &mut n,
            Sec,
            false,
            Op,
            &[("InitiatorName", INI), ("TargetName", TGT)],
        )
        .unwrap();
        assert_eq!(
            step(&mut n, Sec, true, Op, &[("SessionType", "Normal")]),
            Err(InitiatorError)
        );
    }

    #[test]
    fn discovery_session() {
        let mut n = Negotiator::new(Limits::default());
        // TargetName is ignored in a discovery session.
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("InitiatorName", INI),
                ("SessionType", "Discovery"),
                ("TargetName", "iqn.x:unknown"),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")])
            ))
        );
        let r = step(
            &mut n,
            Op,
            true,
            FF,
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("MaxBurstLength", "262144"),
                ("InitialR2T", "No"),
                ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("DefaultTime2Wait", "2"),
                ("MaxRecvDataSegmentLength", "32768"),
            ],
        );
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[
                    ("HeaderDigest", "CRC32C"),
                    ("DataDigest", "None"),
                    ("MaxBurstLength", "Irrelevant"),
                    ("InitialR2T", "Irrelevant"),
                    ("MaxConnections", "Irrelevant"),
                    ("ErrorRecoveryLevel", "0"),
                    ("DefaultTime2Wait", "2"),
                    ("MaxRecvDataSegmentLength", "262144"),
                ])
            ))
        );
        let p = n.params();
        assert_eq!(p.session_type, SessionType::Discovery);
        assert_eq!(p.target_name, "");
        assert!(p.header_digest && !p.data_digest);
        assert_eq!(p.initiator_max_recv_dsl, 32768);
        assert_eq!(
            p.max_burst_length,
            SessionParams::default().max_burst_length
        );
    }

    fn op_answers(limits: Limits, pairs: &[(&str, &str)]) -> (Negotiator, Vec<(String, String)>) {
        let mut n = Negotiator::new(limits);
        let mut all = leading(&[]);
        all.extend_from_slice(pairs);
        let (_, mut resp) = step(&mut n, Op, false, FF, &all).unwrap();
        assert_eq!(resp.remove(resp.len() - 1).0, "MaxRecvDataSegmentLength");
        assert_eq!(resp.remove(resp.len() - 1).0, "TargetPortalGroupTag");
        (n, resp)
    }

    #[test]
    fn digests() {
        let (n, r) = op_answers(
            Limits::default(),
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None,CRC32C"),
            ],
        );
        assert_eq!(
            r,
            owned(&[("HeaderDigest", "CRC32C"), ("DataDigest", "None")])
        );
        assert!(n.params().header_digest && !n.params().data_digest);
        let (_, r) = op_answers(
            Limits::default(),
            &[("HeaderDigest", "X-foo,CRC32C"), ("DataDigest", "CRC32C")],
        );
        assert_eq!(
            r,
            owned(&[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")])
        );
        let no = Limits {
            allow_digests: false,
            ..Limits::default()
        };
        let (n, r) = op_answers(
            no,
            &[("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")],
        );
        assert_eq!(
            r,
            owned(&[("HeaderDigest", "None"), ("DataDigest", "Reject")])
        );
        assert!(!n.params().header_digest && !n.params().data_digest);
        let (_, r) = op_answers(
            Limits::default(),
            &[("HeaderDigest", ""), ("DataDigest", "CRC32C,,None")],
        );
        assert_eq!(
            r,
            owned(&[("HeaderDigest", "Reject"), ("DataDigest", "Reject")])
        );
    }

    #[test]
    fn rejects_bad_values_and_unknown_keys() {
        let (n, r) = op_answers(
            Limits::default(),
            &[
                ("MaxBurstLength", "100"),
                ("FirstBurstLength", "16777216"),
                ("InitialR2T", "yes"),
                ("ImmediateData", "Maybe"),
                ("ErrorRecoveryLevel", "3"),
                ("MaxConnections", "0"),
                ("MaxOutstandingR2T", "65536"),
                ("DefaultTime2Wait", "3601"),
                ("DefaultTime2Retain", "-1"),
                ("DataPDUInOrder", ""),
                ("MaxRecvDataSegmentLength", "511"),
                ("IFMarkInt", "2048"),
                ("OFMarkInt", "2048~4096"),
                ("TaskReporting", "FastAbort"),
                ("iSCSIProtocolLevel", "32"),
                ("X-com.example.Tuning", "1"),
                ("X#Vendor", "2"),
                ("FancyNewKey", "Yes"),
                ("SendTargets", "All"),
            ],
        );
        let expected: Vec<(&str, &str)> = vec![
            ("MaxBurstLength", "Reject"),
            ("FirstBurstLength", "Reject"),
            ("InitialR2T", "Reject"),
            ("ImmediateData", "Reject"),
            ("ErrorRecoveryLevel", "Reject"),
            ("MaxConnections", "Reject"),
            ("MaxOutstandingR2T", "Reject"),
            ("DefaultTime2Wait", "Reject"),
            ("DefaultTime2Retain", "Reject"),
            ("DataPDUInOrder", "Reject"),
            ("MaxRecvDataSegmentLength", "Reject"),
            ("IFMarkInt", "Reject"),
            ("OFMarkInt", "Reject"),
            ("TaskReporting", "Reject"),
            ("iSCSIProtocolLevel", "Reject"),
            ("X-com.example.Tuning", "NotUnderstood"),
            ("X#Vendor", "NotUnderstood"),
            ("FancyNewKey", "NotUnderstood"),
            ("SendTargets", "Irrelevant"),
        ];
        assert_eq!(r, owned(&expected));
        // Nothing changed.
        let d = SessionParams {
            initiator_name: INI.to_owned(),
            target_name: TGT.to_owned(),
            target_max_recv_dsl: 262144,
            ..SessionParams::default()
        };
        assert_eq!(n.params(), &d);
    }

    #[test]
    fn negotiation_results() {
        let limits = Limits {
            max_burst_length: 131072,
            first_burst_length: 65536,
            max_outstanding_r2t: 4,
            ..Limits::default()
        };
        let (n, r) = op_answers(
            limits.clone(),
            &[
                ("MaxBurstLength", "0x100000"),
                ("FirstBurstLength", "4096"),
                ("MaxOutstandingR2T", "8"),
                ("MaxConnections", "4"),
                ("ErrorRecoveryLevel", "2"),
                ("DefaultTime2Wait", "5"),
                ("DefaultTime2Retain", "60"),
                ("DataPDUInOrder", "No"),
                ("DataSequenceInOrder", "No"),
                ("TaskReporting", "ResponseFence,RFC3720"),
                ("iSCSIProtocolLevel", "2"),
            ],
        );
        assert_eq!(
            r,
            owned(&[
                ("MaxBurstLength", "131072"),
                ("FirstBurstLength", "4096"),
                ("MaxOutstandingR2T", "4"),
                ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("DefaultTime2Wait", "5"),
                ("DefaultTime2Retain", "20"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("TaskReporting", "RFC3720"),
                ("iSCSIProtocolLevel", "1"),
            ])
        );
        let p = n.params();
        assert_eq!((p.max_burst_length, p.first_burst_length), (131072, 4096));
        assert_eq!((p.max_outstanding_r2t, p.max_connections), (4, 1));
        assert_eq!((p.default_time2wait, p.default_time2retain), (5, 20));
        assert!(p.data_pdu_in_order && p.data_sequence_in_order);
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        // FirstBurstLength before MaxBurstLength in the same request.
        let (n, r) = op_answers(
            Limits::default(),
            &[("FirstBurstLength", "262144"), ("MaxBurstLength", "131072")],
        );
        assert_eq!(
            r,
            owned(&[("FirstBurstLength", "131072"), ("MaxBurstLength", "131072")])
        );
        assert_eq!(n.params().first_burst_length, 131072);
        // Without MaxBurstLength its default (262144) bounds FirstBurstLength.
        let limits = Limits {
            first_burst_length: 1 << 20,
            ..Limits::default()
        };
        let (_, r) = op_answers(limits, &[("FirstBurstLength", "1048576")]);
        assert_eq!(r, owned(&[("FirstBurstLength", "262144")]));
        // A small MaxBurstLength alone clamps the default FirstBurstLength
        // once the login completes.
        let mut n = Negotiator::new(Limits::default());
        let mut all = leading(&[]);
        all.push(("MaxBurstLength", "4096"));
        step(&mut n, Op, true, FF, &all).unwrap();
        assert_eq!(n.params().first_burst_length, 4096);
    }

    #[test]
    fn skipping_security_and_operational_steps() {
        let mut n = Negotiator::new(Limits::default());
        let r = step(&mut n, Op, false, FF, &leading(&[("InitialR2T", "No")]));
        assert_eq!(
            r,
            Ok((
                false,
                owned(&[
                    ("InitialR2T", "No"),
                    ("TargetPortalGroupTag", "1"),
                    ("MaxRecvDataSegmentLength", "262144"),
                ])
            ))
        );
        assert!(n.authenticated());
        // Second operational request: no repeated declarations.
        let r = step(&mut n, Op, true, FF, &[("ImmediateData", "No")]);
        assert_eq!(r, Ok((true, owned(&[("ImmediateData", "No")]))));
        assert!(n.is_complete());
    }

    #[test]
    fn stage_sequencing() {
        // Full feature is not a login stage.
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step(&mut n, FF, true, FF, &leading(&[])),
            Err(InitiatorError)
        );
        // Transit must move forward.
        for (csg, nsg) in [(Sec, Sec), (Op, Op), (Op, Sec)] {
            let mut n = Negotiator::new(Limits::default());
            assert_eq!(
                step(&mut n, csg, true, nsg, &leading(&[])),
                Err(InitiatorError)
            );
        }
        // Changing stage without the target agreeing.
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "None")])).unwrap();
        assert_eq!(step(&mut n, Op, true, FF, &[]), Err(InitiatorError));
        // Staying in the stage after the target agreed to leave it.
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Sec, true, Op, &leading(&[("AuthMethod", "None")])).unwrap();
        assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(InitiatorError));
        // Going back to security.
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Op, false, FF, &leading(&[])).unwrap();
        assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(InitiatorError));
        // Security without AuthMethod and no secret: straight through.
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step(&mut n, Sec, true, FF, &leading(&[])),
            Ok((true, owned(&[("TargetPortalGroupTag", "1")])))
        );
        assert!(n.is_complete());
    }

    #[test]
    fn keys_in_wrong_stage_or_from_wrong_party() {
        let cases: Vec<(Stage, Vec<(&str, &str)>)> = vec![
            (
                Sec,
                vec![("AuthMethod", "None"), ("MaxBurstLength", "4096")],
            ),
            (Sec, vec![("AuthMethod", "None"), ("IFMarker", "No")]),
            (Op, vec![("AuthMethod", "None")]),
            (Op, vec![("CHAP_A", "5")]),
            (Sec, vec![("AuthMethod", "None"), ("TargetAlias", "x")]),
            (Op, vec![("TargetPortalGroupTag", "1")]),
            (Op, vec![("TargetAddress", "10.0.0.1:3260,1")]),
        ];
        for (stage, extra) in cases {
            let mut n = Negotiator::new(Limits::default());
            assert_eq!(
                step(&mut n, stage, true, FF, &leading(&extra)),
                Err(InitiatorError),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn max_recv_data_segment_length_may_be_redeclared() {
        let mut n = Negotiator::new(Limits::default());
        let first = leading(&[("MaxRecvDataSegmentLength", "8192")]);
        step(&mut n, Op, false, FF, &first).unwrap();
        let r = step(
            &mut n,
            Op,
            true,
            FF,
            &[("MaxRecvDataSegmentLength", "65536")],
        );
        assert_eq!(r, Ok((true, vec![])));
        assert_eq!(n.params().initiator_max_recv_dsl, 65536);
    }

    #[test]
    fn discovery_without_auth() {
        let discovery = [
            ("InitiatorName", INI),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ];
        // By default a configured secret applies to discovery too.
        let mut n = chap_negotiator();
        assert_eq!(step(&mut n, Sec, true, Op, &discovery), Err(AuthFailed));
        let mut n = chap_negotiator().with_discovery_auth(false);
        assert_eq!(
            step(&mut n, Sec, true, Op, &discovery),
            Ok((
                true,
                owned(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")])
            ))
        );
        // Normal sessions still need CHAP.
        let mut n = chap_negotiator().with_discovery_auth(false);
        let normal = leading(&[("AuthMethod", "None")]);
        assert_eq!(step(&mut n, Sec, true, Op, &normal), Err(AuthFailed));
        let mut n = chap_negotiator().with_discovery_auth(false);
        assert_eq!(step(&mut n, Op, true, FF, &leading(&[])), Err(AuthFailed));
    }

    /// libiscsi: mutual CHAP with upper-case hex, then an operational stage
    /// that repeats InitiatorName, TargetName and SessionType.
    #[test]
    fn libiscsi_style_login() {
        let mut n = chap_negotiator().with_mutual_chap(ChapSecret {
            user: "target-user".to_owned(),
            secret: b"targetsecret12".to_vec(),
        });
        let first = leading(&[("InitiatorAlias", "libiscsi"), ("AuthMethod", "CHAP,None")]);
        assert!(matches!(
            step(&mut n, Sec, true, Op, &first),
            Ok((false, _))
        ));
        assert!(matches!(
            step(&mut n, Sec, false, Op, &[("CHAP_A", "5")]),
            Ok((false, _))
        ));
        let their_challenge: Vec<u8> = (100..132).collect();
        let challenge_hex = encode_hex(&their_challenge)
            .to_uppercase()
            .replacen("0X", "0x", 1);
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("CHAP_N", "ipxe-user"),
                ("CHAP_R", "0xDCFF8B6A836896FA609EC24C742B0517"),
                ("CHAP_I", "1"),
                ("CHAP_C", &challenge_hex),
            ],
        );
        let expected = ChapAlgorithm::Md5.response(1, b"targetsecret12", &their_challenge);
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[
                    ("CHAP_N", "target-user"),
                    ("CHAP_R", &encode_hex(&expected))
                ])
            ))
        );
        let ops = leading(&[
            ("InitiatorAlias", "libiscsi"),
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "None"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("MaxConnections", "1"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ]);
        let (transit, resp) = step(&mut n, Op, true, FF, &ops).unwrap();
        assert!(transit && n.is_complete());
        assert_eq!(resp[0], ("HeaderDigest".to_owned(), "None".to_owned()));
        assert!(resp.contains(&("FirstBurstLength".to_owned(), "262144".to_owned())));
        assert!(resp
            .iter()
            .all(|(k, _)| k != "InitiatorName" && k != "TargetName"));
        assert_eq!(n.params().first_burst_length, 262144);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let n = chap_negotiator();
        let text = format!("{n:?}");
        assert!(text.contains("ipxe-user") && text.contains("<redacted>"));
        assert!(!text.contains("118, 101, 114, 121"), "{text}");
    }

    #[test]
    fn login_size_is_bounded() {
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Op, false, FF, &leading(&[])).unwrap();
        let mut failed = false;
        for _ in 0..100 {
            match step(&mut n, Op, false, FF, &[]) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, InitiatorError);
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "endless login accepted");
        // Many distinct private keys adding up to more than 64 KiB.
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Op, false, FF, &leading(&[])).unwrap();
        let value = "v".repeat(200);
        let mut result = Ok((false, vec![]));
        for i in 0..40 {
            let keys: Vec<String> = (0..10).map(|j| format!("X-k{i}-{j}")).collect();
            let pairs: Vec<(&str, &str)> =
                keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
            result = step(&mut n, Op, false, FF, &pairs);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(InitiatorError));
    }

    #[test]
    fn duplicate_keys() {
        let mut n = Negotiator::new(Limits::default());
        let dup = leading(&[("AuthMethod", "None"), ("AuthMethod", "None")]);
        assert_eq!(step(&mut n, Sec, true, Op, &dup), Err(InitiatorError));
        let mut n = Negotiator::new(Limits::default());
        step(
            &mut n,
            Op,
            false,
            FF,
            &leading(&[("MaxBurstLength", "65536")]),
        )
        .unwrap();
        assert_eq!(
            step(&mut n, Op, true, FF, &[("MaxBurstLength", "65536")]),
            Err(InitiatorError)
        );
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Op, false, FF, &leading(&[("X-foo", "1")])).unwrap();
        assert_eq!(
            step(&mut n, Op, true, FF, &[("X-foo", "1")]),
            Err(InitiatorError)
        );
    }

    #[test]
    fn malformed_text_fails_login() {
        let bad: [&[u8]; 7] = [
            b"InitiatorName=iqn.x",
            b"InitiatorName\0",
            b"=x\0",
            b"InitiatorName=\xff\0",
            b"InitiatorName=a\0\0TargetName=b\0",
            b"Initiator Name=a\0",
            b"\0\0x",
        ];
        for raw in bad {
            for stage in [Sec, Op] {
                let mut n = Negotiator::new(Limits::default());
                assert_eq!(
                    step_raw(&mut n, stage, true, FF, raw),
                    Err(InitiatorError),
                    "{raw:?}"
                );
            }
        }
        let long = format!("InitiatorName={}\0TargetName={TGT}\0", "a".repeat(256));
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step_raw(&mut n, Sec, true, Op, long.as_bytes()),
            Err(InitiatorError)
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            "InitiatorName",
            "TargetName",
            "SessionType",
            "AuthMethod",
            "CHAP_A",
            "CHAP_I",
            "CHAP_C",
            "CHAP_N",
            "CHAP_R",
            "HeaderDigest",
            "DataDigest",
            "MaxRecvDataSegmentLength",
            "MaxBurstLength",
            "FirstBurstLength",
            "InitialR2T",
            "ImmediateData",
            "IFMarker",
            "TaskReporting",
            "X-foo",
            "TargetAlias",
        ];
        const VALUES: &[&str] = &[
            "",
            "None",
            "CHAP",
            "CHAP,None",
            "5",
            "7,5",
            "Normal",
            "Discovery",
            TGT,
            INI,
            "ipxe-user",
            "0xdcff8b6a836896fa609ec24c742b0517",
            "0x",
            "0b",
            "0bAAAA",
            "Yes",
            "No",
            "CRC32C,None",
            "512",
            "16777215",
            "16777216",
            "0xffffffffffffffffff",
            "Reject",
            "ä",
        ];

        fn stage() -> impl Strategy<Value = Stage> {
            prop_oneof![Just(Sec), Just(Op), Just(FF)]
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..300),
                prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..12).prop_map(|kv| {
                    let mut t = Vec::new();
                    for (k, v) in kv {
                        format_key(&mut t, KEYS[k], VALUES[v]);
                    }
                    t
                }),
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_steps_never_panic(
                with_chap in any::<bool>(),
                steps in prop::collection::vec((stage(), any::<bool>(), stage(), body()), 1..6),
            ) {
                let limits = if with_chap { chap_limits() } else { Limits::default() };
                let mut n = Negotiator::new(limits);
                for (csg, transit, nsg, raw) in steps {
                    let mut out = Vec::new();
                    if n.step(csg, transit, nsg, &raw, &exists, &mut out).is_ok() {
                        prop_assert!(parse_text(&out).is_ok());
                    } else {
                        prop_assert!(out.is_empty());
                    }
                    let _ = n.params();
                }
            }

            #[test]
            fn arbitrary_text_after_valid_start(
                csg_op in any::<bool>(),
                raw in body(),
            ) {
                let mut n = Negotiator::new(Limits::default());
                let first = leading(&[]);
                let csg = if csg_op { Op } else { Sec };
                step(&mut n, csg, false, FF, &first).unwrap();
                let mut out = Vec::new();
                let _ = n.step(csg, true, FF, &raw, &exists, &mut out);
            }
        }
    }
}
