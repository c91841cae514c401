//! The iSCSI transport (RFC 7143).
//!
//! * [`wire`]: every PDU as a checked, zero-copy view over bytes, plus the
//!   builders that emit them. Nothing here keeps state.
//! * [`negotiate`]: login-phase key negotiation (security and operational
//!   stages), pure: text in, text out.
//! * [`discovery`]: SendTargets answers for Text requests.
//! * [`session`] and [`task`]: the session core without I/O (sequence
//!   numbers, login checks, reinstatement; chunks, R2Ts, Data-Out
//!   acceptance, Data-In segmentation).
//! * [`conn`]: the per-connection driver running on an engine reactor,
//!   moving bytes between socket, pool and the core.
//! * [`target`]: state shared by all connections; [`service`]: the engine
//!   service that makes connections.

pub mod conn;
pub mod discovery;
pub mod negotiate;
pub mod service;
pub mod session;
pub mod target;
pub mod task;
pub mod wire;

pub use service::IscsiService;
pub use target::{Lun, TargetShared};
