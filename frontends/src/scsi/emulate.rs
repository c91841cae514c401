//! Command dispatch (placeholder until the emulation lands).
use super::{CommandCtx, Outcome, Sense};

/// Emulate one CDB. Data-In bytes go to `data_in` (cleared first).
pub fn execute(cdb: &[u8], ctx: &CommandCtx<'_>, data_in: &mut Vec<u8>) -> Outcome {
    let _ = (cdb, ctx);
    data_in.clear();
    Outcome::Check(Sense::invalid_opcode())
}
