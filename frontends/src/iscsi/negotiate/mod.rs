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
//! CHAP: algorithms 5 (MD5), 6 (SHA-1), 7 (SHA-256) and 8 (SHA3-256),
//! numbered as in the PPP authentication algorithm registry; the
//! initiator's order of preference decides. Mutual CHAP is answered only
//! when [`Limits::mutual_chap`] (or [`Negotiator::with_mutual_chap`]) gives
//! the target's own credentials. [`Limits::acl`] refuses initiators by
//! name and address with "authorization failure" (0202).
//!
//! Every failure also leaves a one-line reason naming the key involved
//! ([`Negotiator::failure_reason`]); reasons never contain a secret.
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

pub mod chap;
pub mod text;

pub use text::{format_key, parse_text, TextError};

use super::wire::{login_stage, login_status};
use chap::ChapAlgorithm;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
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
    /// One-way CHAP credentials the initiator must present in normal
    /// sessions; `None` = no auth.
    pub chap: Option<ChapSecret>,
    /// The target's credentials for mutual CHAP (the initiator checks the
    /// target); `None` = an initiator asking for mutual CHAP is refused.
    pub mutual_chap: Option<ChapSecret>,
    /// Credentials discovery sessions must present. `None`: the same as
    /// normal sessions ([`Limits::chap`]).
    pub discovery_chap: Option<ChapSecret>,
    /// Which initiators may log in at all.
    pub acl: Arc<Acl>,
}

/// Initiators allowed to log in, by name and by source address. An empty
/// list allows everyone on that criterion.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Initiator names (compared without regard to ASCII case, as iSCSI
    /// names are normalised to lower case).
    pub initiators: Vec<String>,
    /// Source address prefixes.
    pub addresses: Vec<ipnet::IpNet>,
}

/// `ADDRESS/PREFIX`, or a bare address meaning that one host.
pub fn parse_prefix(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
}

impl Acl {
    pub fn allows_initiator(&self, name: &str) -> bool {
        self.initiators.is_empty() || self.initiators.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn allows_address(&self, addr: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let addr = addr.to_canonical();
        self.addresses.is_empty() || self.addresses.iter().any(|n| n.contains(&addr))
    }
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
            mutual_chap: None,
            discovery_chap: None,
            acl: Arc::new(Acl::default()),
        }
    }
}

/// CHAP credentials: the name (CHAP_N) and the shared secret.
#[derive(Clone)]
pub struct ChapSecret {
    pub user: String,
    pub secret: Vec<u8>,
}

impl ChapSecret {
    /// (user, secret) as text, for the boot menu. The secret came from text.
    pub fn pair(&self) -> (String, String) {
        (
            self.user.clone(),
            String::from_utf8_lossy(&self.secret).into_owned(),
        )
    }
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
    /// 02/02 authorization failure: the initiator is not allowed (ACL).
    NotAllowed,
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
            LoginFailure::NotAllowed => (2, 0x02),
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
    /// Why the login failed, naming the key (never a secret).
    why: Option<String>,
    /// The initiator's address, for the ACL; `None` = not checked.
    peer: Option<IpAddr>,
    /// Test hook: identifier and challenge to use instead of random ones.
    #[cfg(test)]
    fixed_challenge: Option<(u8, Vec<u8>)>,
}

impl Negotiator {
    pub fn new(limits: Limits) -> Self {
        Negotiator {
            mutual_chap: limits.mutual_chap.clone(),
            limits,
            params: SessionParams::default(),
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
            why: None,
            peer: None,
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

    /// The address the initiator connects from, checked against
    /// [`Limits::acl`] with the first Login Request.
    pub fn set_peer(&mut self, addr: IpAddr) {
        self.peer = Some(addr);
    }

    /// Why the last step failed: one line naming the key that caused it.
    /// Contains no secret.
    pub fn failure_reason(&self) -> Option<&str> {
        self.why.as_deref()
    }

    /// Record why the login fails (the first reason wins).
    fn fail(&mut self, f: LoginFailure, why: impl Into<String>) -> LoginFailure {
        if self.why.is_none() {
            self.why = Some(why.into());
        }
        f
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
        if let Err(f) = result {
            self.failed = true;
            out.truncate(start);
            if self.why.is_none() {
                self.why = Some(format!("{f:?}"));
            }
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
            return Err(self.fail(InitiatorError, format!("Login Request with CSG {csg:?}")));
        }
        let first = self.stage.is_none();
        if let Some(current) = self.stage {
            if csg != self.next_stage.unwrap_or(current) {
                return Err(self.fail(
                    InitiatorError,
                    format!("Login Request for stage {csg:?} while in {current:?} (CSG)"),
                ));
            }
        }
        if transit && (nsg as u8) <= (csg as u8) {
            return Err(self.fail(
                InitiatorError,
                format!("transit from {csg:?} back to {nsg:?} (NSG)"),
            ));
        }
        self.stage = Some(csg);
        self.next_stage = None;

        // Bound the work one login can cause.
        self.steps += 1;
        self.text_bytes = self.text_bytes.saturating_add(text.len());
        if self.steps > MAX_LOGIN_STEPS || self.text_bytes > MAX_LOGIN_TEXT {
            return Err(self.fail(
                InitiatorError,
                format!("login longer than {MAX_LOGIN_STEPS} requests or {MAX_LOGIN_TEXT} bytes of text"),
            ));
        }

        let pairs = match parse_text(text) {
            Ok(p) => p,
            Err(e) => return Err(self.fail(InitiatorError, format!("malformed login text: {e:?}"))),
        };

        // No key may be sent twice during the login, except for
        // declarations repeated without change of meaning.
        for (i, (key, value)) in pairs.iter().enumerate() {
            let earlier = self.seen.contains(*key);
            if pairs[..i].iter().any(|(k, _)| k == key)
                || (earlier && !self.may_redeclare(key, value))
            {
                return Err(self.fail(InitiatorError, format!("key {} sent twice", shown(key))));
            }
            if !first && !earlier && LEADING_KEYS.contains(key) {
                return Err(self.fail(
                    InitiatorError,
                    format!("key {key} only allowed in the first Login Request"),
                ));
            }
        }
        for (key, _) in &pairs {
            self.seen.insert((*key).to_owned());
        }

        if first {
            let find = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let Some(initiator) = find("InitiatorName").filter(|v| !v.is_empty()) else {
                return Err(self.fail(
                    MissingParameter,
                    "no InitiatorName in the first Login Request",
                ));
            };
            self.params.initiator_name = initiator.to_owned();
            let session_type = match find("SessionType") {
                None | Some("Normal") => SessionType::Normal,
                Some("Discovery") => SessionType::Discovery,
                Some(v) => {
                    return Err(self.fail(
                        SessionTypeUnsupported,
                        format!("SessionType={} not supported", shown(v)),
                    ))
                }
            };
            self.params.session_type = session_type;
            // The ACL before the target name: a refused initiator learns
            // nothing about which targets exist.
            if let Some(peer) = self.peer {
                if !self.limits.acl.allows_address(peer) {
                    return Err(self.fail(
                        NotAllowed,
                        format!(
                            "initiator {} from {peer}: address not allowed (allow-address)",
                            shown(initiator)
                        ),
                    ));
                }
            }
            if !self.limits.acl.allows_initiator(initiator) {
                let from = self.peer.map(|p| format!(" from {p}")).unwrap_or_default();
                return Err(self.fail(
                    NotAllowed,
                    format!(
                        "initiator {}{from}: InitiatorName not allowed (allow-initiator)",
                        shown(initiator)
                    ),
                ));
            }
            if session_type == SessionType::Normal {
                let Some(target) = find("TargetName").filter(|v| !v.is_empty()) else {
                    return Err(
                        self.fail(MissingParameter, "no TargetName in the first Login Request")
                    );
                };
                if !target_exists(target) {
                    return Err(self.fail(
                        TargetNotFound,
                        format!("TargetName={}: no such target", shown(target)),
                    ));
                }
                self.params.target_name = target.to_owned();
            }
            if csg == Stage::Operational {
                // The initiator skipped the security stage.
                if self.auth_required() {
                    return Err(self.fail(
                        AuthFailed,
                        "initiator skipped the security stage but CHAP is required (AuthMethod)",
                    ));
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
            if let Err((f, why)) = self.run_chap(&chap, out) {
                return Err(self.fail(f, why));
            }
        } else if chap.any() {
            return Err(self.fail(InitiatorError, "CHAP key outside the security stage"));
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
                    Auth::Rejected => {
                        return Err(self.fail(
                            AuthFailed,
                            "AuthMethod: no method offered that the target accepts",
                        ))
                    }
                    Auth::Pending => {
                        if self.auth_required() {
                            return Err(self.fail(
                                AuthFailed,
                                "CHAP is required but no AuthMethod was negotiated",
                            ));
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

    /// The credentials the initiator must present in this session, if any.
    fn required_chap(&self) -> Option<&ChapSecret> {
        match self.params.session_type {
            SessionType::Normal => self.limits.chap.as_ref(),
            SessionType::Discovery if !self.discovery_auth => None,
            SessionType::Discovery => self
                .limits
                .discovery_chap
                .as_ref()
                .or(self.limits.chap.as_ref()),
        }
    }

    /// CHAP must succeed before the login may leave the security stage.
    fn auth_required(&self) -> bool {
        self.required_chap().is_some()
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
            k if TARGET_ONLY_KEYS.contains(&k) => {
                return Err(self.fail(
                    LoginFailure::InitiatorError,
                    format!("key {k} may only be sent by the target"),
                ))
            }
            "AuthMethod" => {
                if csg != Stage::Security {
                    return Err(self.fail(
                        LoginFailure::InitiatorError,
                        "key AuthMethod outside the security stage",
                    ));
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
                    return Err(self.fail(
                        LoginFailure::InitiatorError,
                        format!("operational key {k} in the security stage"),
                    ));
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
                return Err(self.fail(
                    LoginFailure::AuthFailed,
                    format!("AuthMethod={}: CHAP is required", shown(value)),
                ));
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

    /// Advance the CHAP exchange with the CHAP keys of one request. The
    /// error carries the reason, naming the CHAP key at fault.
    fn run_chap(
        &mut self,
        keys: &ChapKeys<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), (LoginFailure, String)> {
        use LoginFailure::*;
        let auth = |why: &str| (AuthFailed, why.to_owned());
        match std::mem::replace(&mut self.auth, Auth::Pending) {
            Auth::ChapWaitAlgorithm => {
                let Some(a) = keys.a else {
                    if keys.any() {
                        return Err(auth("CHAP_N/CHAP_R before CHAP_A"));
                    }
                    self.auth = Auth::ChapWaitAlgorithm;
                    return Ok(());
                };
                if keys.i.is_some() || keys.c.is_some() || keys.n.is_some() || keys.r.is_some() {
                    return Err(auth("CHAP_A sent together with other CHAP keys"));
                }
                let alg = parse_list(a)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|v| text::parse_number(v).and_then(ChapAlgorithm::from_code))
                    .ok_or_else(|| {
                        (
                            AuthFailed,
                            format!(
                                "CHAP_A={}: none of 5 (MD5), 6 (SHA-1), 7 (SHA-256), 8 (SHA3-256)",
                                shown(a)
                            ),
                        )
                    })?;
                let (id, challenge) = self
                    .new_challenge(alg)
                    .map_err(|f| (f, "no random source for the CHAP challenge".to_owned()))?;
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
                let Some(secret) = self.required_chap() else {
                    return Err((TargetError, "CHAP running without credentials".to_owned()));
                };
                let (Some(name), Some(response)) = (keys.n, keys.r) else {
                    return Err(auth("CHAP_N or CHAP_R missing"));
                };
                if keys.a.is_some() {
                    return Err(auth("CHAP_A sent twice"));
                }
                let response = decode_binary(response)
                    .ok_or_else(|| auth("CHAP_R: not a hex or base64 value"))?;
                let expected = alg.response(id, &secret.secret, &challenge);
                // Evaluate both checks before deciding.
                let name_ok = chap::constant_time_eq(name.as_bytes(), secret.user.as_bytes());
                let response_ok = chap::constant_time_eq(&response, &expected);
                if !name_ok {
                    return Err((
                        AuthFailed,
                        format!("CHAP_N={}: not the configured CHAP user", shown(name)),
                    ));
                }
                if !response_ok {
                    return Err(auth(
                        "CHAP_R: wrong response (the initiator's secret differs from ours)",
                    ));
                }
                match (keys.i, keys.c) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let Some(mutual) = self.mutual_chap.as_ref() else {
                            return Err(auth(
                                "CHAP_I/CHAP_C: the initiator wants mutual CHAP but no mutual-chap is configured",
                            ));
                        };
                        let their_id = parse_number_in(i, 0, 255)
                            .ok_or_else(|| auth("CHAP_I: not a number from 0 to 255"))?
                            as u8;
                        let their_challenge = decode_binary(c)
                            .filter(|c| !c.is_empty() && c.len() <= MAX_CHAP_CHALLENGE)
                            .ok_or_else(|| auth("CHAP_C: empty, too long or malformed"))?;
                        // A reflected challenge, or one secret used in both
                        // directions, would let one side answer for the other.
                        if their_challenge == challenge {
                            return Err(auth("CHAP_C: the initiator reflected our own challenge"));
                        }
                        if mutual.secret == secret.secret {
                            return Err(auth(
                                "CHAP_C: mutual-chap secret equals the initiator's secret",
                            ));
                        }
                        let answer = alg.response(their_id, &mutual.secret, &their_challenge);
                        format_key(out, "CHAP_N", &mutual.user);
                        format_key(out, "CHAP_R", &encode_hex(&answer));
                    }
                    _ => return Err(auth("CHAP_I and CHAP_C must come together")),
                }
                self.auth = Auth::Done;
                Ok(())
            }
            other => {
                let any = keys.any();
                self.auth = other;
                if any {
                    Err((
                        InitiatorError,
                        "CHAP key without AuthMethod=CHAP".to_owned(),
                    ))
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

/// A value from the initiator, quoted and cut short for a log line.
fn shown(v: &str) -> String {
    let cut: String = v.chars().take(96).collect();
    let mut q = format!("{cut:?}");
    if cut.len() < v.len() {
        q.push_str("...");
    }
    q
}

#[cfg(test)]
mod tests;
