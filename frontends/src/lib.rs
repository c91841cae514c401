//! Front ends: the SCSI command layer and the transports that carry it.
//!
//! * [`scsi`] emulates an SBC-3 direct-access block device on top of a
//!   logical unit description. It knows nothing about iSCSI.
//! * [`iscsi`] is the RFC 7143 transport: wire formats in [`iscsi::wire`],
//!   login negotiation and session/connection state machines beside it.

pub mod iscsi;
pub mod scsi;
