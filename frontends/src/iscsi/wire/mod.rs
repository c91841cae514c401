//! PDU wire formats (in progress).
