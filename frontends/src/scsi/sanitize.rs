//! SANITIZE in the background (SBC-3 4.11).
//!
//! A sanitize operation belongs to the logical unit, not to the command
//! that started it: it goes on after ABORT TASK, resets and the loss of the
//! I_T nexus, and until it ends every command but the few SBC-3 allows
//! (INQUIRY, REPORT LUNS, REQUEST SENSE, LOG SENSE) gets NOT READY,
//! SANITIZE IN PROGRESS with how far it has got. So it runs on a thread of
//! its own, writing at most [`LuState::sanitize_rate`] bytes per second so
//! that the disk keeps serving the other LUNs' sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootlun_engine::BlockBackend;

use super::job::Job;
use super::state::LuState;
use super::{Outcome, Sense};

/// Commands a LU answers while it is being sanitized (SBC-3 4.11.2).
pub fn allowed_during(opcode: u8) -> bool {
    use super::opcode as op;
    matches!(
        opcode,
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::LOG_SENSE
    )
}

/// The sense a command gets instead of running, when the LU is being
/// sanitized or the last sanitize failed.
pub fn refusal(state: &LuState, opcode: u8) -> Option<Sense> {
    if allowed_during(opcode) {
        return None;
    }
    if let Some(p) = state.sanitize_progress() {
        return Some(Sense::sanitize_in_progress(p));
    }
    if state.sanitize_failed() && opcode != super::opcode::SANITIZE {
        return Some(Sense::sanitize_failed());
    }
    None
}

/// Start `job` (a SANITIZE's work) on its own thread. Fails with SANITIZE
/// IN PROGRESS if one already runs on this LU.
pub fn start(
    state: &Arc<LuState>,
    backend: Arc<dyn BlockBackend>,
    mut job: Job,
) -> Result<(), Sense> {
    let total = job.remaining();
    if !state.sanitize_begin(total) {
        return Err(Sense::sanitize_in_progress(
            state.sanitize_progress().unwrap_or(0),
        ));
    }
    tracing::info!(
        "{}: sanitize started ({} MiB)",
        backend.describe(),
        total >> 20
    );
    let st = Arc::clone(state);
    let spawned = std::thread::Builder::new()
        .name("bootlun-sanitize".into())
        .spawn(move || {
            let started = Instant::now();
            let ok = loop {
                let step = job.step(&*backend);
                let done = total - job.remaining().min(total);
                st.sanitize_advance(done);
                match step {
                    Some(Outcome::Good) => break true,
                    Some(_) => break false,
                    None => {}
                }
                let rate = st.sanitize_rate();
                if rate > 0 && job.writes_data() {
                    let due = Duration::from_secs_f64(done as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            };
            if ok {
                tracing::info!(
                    "{}: sanitize done in {:.1} s",
                    backend.describe(),
                    started.elapsed().as_secs_f64()
                );
            } else {
                tracing::warn!(
                    "{}: sanitize failed; the LU answers SANITIZE COMMAND FAILED until the next SANITIZE",
                    backend.describe()
                );
            }
            st.sanitize_end(ok);
        });
    if let Err(e) = spawned {
        tracing::warn!("sanitize: cannot start a thread: {e}");
        state.sanitize_end(false);
        return Err(Sense::sanitize_failed());
    }
    Ok(())
}
