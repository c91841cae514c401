//! The iSCSI transport (RFC 7143).
//!
//! * [`wire`]: every PDU as a checked, zero-copy view over bytes, plus the
//!   builders that emit them. Nothing here keeps state.
//! * [`negotiate`]: login-phase key negotiation (security and operational
//!   stages), pure: text in, text out.
//! * [`discovery`]: SendTargets answers for Text requests.
//! * [`conn`]: the per-connection state machine (login, full feature
//!   phase, command table, R2T, Data-In, task management) running on an
//!   engine reactor.

pub mod conn;
pub mod discovery;
pub mod negotiate;
pub mod session;
pub mod target;
pub mod task;
pub mod wire;

pub use target::{IscsiService, Lun, TargetShared};
