//! Session state that is not I/O: sequence numbers, login sequencing and
//! the session reinstatement decision.
//!
//! * [`SeqNums`]: StatSN, ExpCmdSN and the MaxCmdSN window (RFC 7143
//!   4.2.2): a non-immediate command outside the window is ignored, and
//!   the window shrinks while commands are outstanding.
//! * [`LoginSeq`]: the checks every Login Request goes through before its
//!   text reaches negotiation (version, TSIH, stages and transitions,
//!   continued text).
//! * [`reinstate`]: what a new login does when its InitiatorName + ISID
//!   belong to a live session (RFC 7143 6.3.5).
//!
//! The connection driver (`conn`) feeds these from PDUs and acts on what
//! they return; the tests below drive them directly.

use std::cell::Cell;

use super::negotiate::Stage;
use super::target::SessionClaim;
use super::wire::{login_status, sn_in_window, sn_lt, LoginRequest, LoginResponse, Sn};

/// StatSN and the command window of a session (one connection).
#[derive(Debug, Clone)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    /// Commands the session may have outstanding.
    queue_depth: u32,
    /// The highest MaxCmdSN put on the wire so far. The window a command
    /// is checked against ends here: the computed window narrows while
    /// commands are outstanding, but an initiator may rightly use what it
    /// was told in an earlier PDU. A `Cell` because every PDU that
    /// carries sequence numbers advertises one, including the `&self`
    /// builders.
    max_advertised: Cell<u32>,
}

/// A command's CmdSN was outside the window: it is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfWindow {
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl SeqNums {
    pub fn new(queue_depth: u32) -> SeqNums {
        let queue_depth = queue_depth.max(1);
        SeqNums {
            stat_sn: 0,
            exp_cmd_sn: 0,
            queue_depth,
            max_advertised: Cell::new(queue_depth - 1),
        }
    }

    /// The first Login Request sets both counters.
    pub fn start(&mut self, exp_stat_sn: u32, cmd_sn: u32) {
        self.stat_sn = exp_stat_sn;
        self.exp_cmd_sn = cmd_sn;
        self.max_advertised
            .set(cmd_sn.wrapping_add(self.queue_depth - 1));
    }

    /// The end of the window commands are checked against: the highest
    /// MaxCmdSN advertised, never before ExpCmdSN - 1 (an empty window).
    pub fn max_cmd_sn(&self) -> u32 {
        let m = self.max_advertised.get();
        if sn_lt(m, self.exp_cmd_sn.wrapping_sub(1)) {
            self.exp_cmd_sn.wrapping_sub(1)
        } else {
            m
        }
    }

    /// Sequence numbers for a PDU that does not carry status, with
    /// `active` commands outstanding (they narrow the window; it never
    /// closes entirely).
    pub fn sn(&self, active: usize) -> Sn {
        let active = u32::try_from(active).unwrap_or(u32::MAX);
        let window = self.queue_depth.saturating_sub(active).max(1);
        let max_cmd_sn = self.exp_cmd_sn.wrapping_add(window - 1);
        if sn_lt(self.max_advertised.get(), max_cmd_sn) {
            self.max_advertised.set(max_cmd_sn);
        }
        Sn {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn,
        }
    }

    /// Sequence numbers for a PDU that carries status: StatSN advances.
    pub fn status(&mut self, active: usize) -> Sn {
        let s = self.sn(active);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    /// CmdSN bookkeeping for a command (RFC 7143 4.2.2.1). Immediate
    /// commands are always taken and do not advance ExpCmdSN. A command
    /// before ExpCmdSN or after the highest MaxCmdSN advertised is
    /// dropped without an answer (RFC 7143 3.2.2.1); `active` is kept in
    /// the signature for the window the caller advertises next.
    pub fn accept(
        &mut self,
        cmd_sn: u32,
        immediate: bool,
        _active: usize,
    ) -> Result<(), OutOfWindow> {
        if immediate {
            return Ok(());
        }
        let max = self.max_cmd_sn();
        if !sn_in_window(cmd_sn, self.exp_cmd_sn, max) {
            return Err(OutOfWindow {
                cmd_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: max,
            });
        }
        if !sn_lt(cmd_sn, self.exp_cmd_sn) {
            self.exp_cmd_sn = cmd_sn.wrapping_add(1);
        }
        Ok(())
    }
}

/// Keepalive of one connection: the target pings a connection that has
/// been silent for an interval with a NOP-In that asks for an answer, and
/// gives up on it when nothing at all arrives within the timeout. Driven
/// by a timer that ticks every interval; any received byte counts as a
/// sign of life (a busy initiator need not answer pings).
///
/// Some initiators never answer pings (iPXE ignores NOP-Ins with a target
/// transfer tag): silence after a ping only counts against an initiator
/// that has answered one before. For the others a dead peer is found by
/// TCP keepalive on the socket, set up with the same interval and
/// timeout.
#[derive(Debug, Clone)]
pub struct Keepalive {
    interval_secs: u64,
    timeout_secs: u64,
    heard: bool,
    ping_out: bool,
    waited_secs: u64,
    /// The initiator has answered a ping: it can be expected to.
    answers: bool,
}

/// What a keepalive tick asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Nothing,
    /// Send a NOP-In with a target transfer tag (an answer is due).
    Ping,
    /// Nothing arrived for the timeout after a ping: close.
    Dead,
}

impl Keepalive {
    /// `interval_secs` 0 turns keepalive off.
    pub fn new(interval_secs: u64, timeout_secs: u64) -> Keepalive {
        Keepalive {
            interval_secs,
            timeout_secs: timeout_secs.max(1),
            heard: false,
            ping_out: false,
            waited_secs: 0,
            answers: false,
        }
    }

    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs
    }

    /// A NOP-Out answered one of our pings.
    pub fn answered(&mut self) {
        self.answers = true;
        self.heard = true;
    }

    pub fn interval(&self) -> Option<std::time::Duration> {
        (self.interval_secs > 0).then(|| std::time::Duration::from_secs(self.interval_secs))
    }

    /// Bytes arrived from the initiator.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// The timer fired (one interval went by).
    pub fn tick(&mut self) -> Tick {
        if std::mem::take(&mut self.heard) {
            self.ping_out = false;
            self.waited_secs = 0;
            return Tick::Nothing;
        }
        if !self.ping_out {
            self.ping_out = true;
            self.waited_secs = 0;
            return Tick::Ping;
        }
        self.waited_secs += self.interval_secs;
        if self.waited_secs >= self.timeout_secs && self.answers {
            Tick::Dead
        } else {
            // Not answering is all this initiator does: no more pings
            // until it is heard from again.
            Tick::Nothing
        }
    }
}

/// Longest login text (all PDUs of one request) accepted.
pub const LOGIN_TEXT_MAX: usize = 64 * 1024;

/// Login sequencing of one connection.
#[derive(Debug, Default)]
pub struct LoginSeq {
    started: bool,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// Text of a request continued over several PDUs (C bit).
    text: Vec<u8>,
}

/// What to do with a Login Request.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// More text follows (C bit): answer with an empty response.
    Continue,
    /// Refuse the login with this status and close.
    Fail(login_status::Status, &'static str),
    /// Negotiate `text` in stage `csg`, possibly moving to `nsg`.
    Negotiate {
        csg: Stage,
        nsg: Stage,
        transit: bool,
        text: Vec<u8>,
    },
}

impl LoginSeq {
    /// Check a Login Request with data segment `data`. The first request
    /// of the connection starts `seq`.
    pub fn check(&mut self, req: &LoginRequest<'_>, data: &[u8], seq: &mut SeqNums) -> LoginCheck {
        if !self.started {
            self.started = true;
            self.isid = req.isid();
            self.tsih = req.tsih();
            seq.start(req.exp_stat_sn(), req.cmd_sn());
        }
        if req.version_min() > 0 {
            return LoginCheck::Fail(
                login_status::UNSUPPORTED_VERSION,
                "unsupported iSCSI version",
            );
        }
        if self.tsih != 0 {
            // Adding a connection to (or reinstating) a session by TSIH:
            // bootlun sessions have exactly one connection.
            return LoginCheck::Fail(
                login_status::SESSION_DOES_NOT_EXIST,
                "session does not exist",
            );
        }
        if self.text.len() + data.len() > LOGIN_TEXT_MAX {
            return LoginCheck::Fail(login_status::INITIATOR_ERROR, "login text too long");
        }
        self.text.extend_from_slice(data);
        if req.cont() {
            return LoginCheck::Continue;
        }
        let (Some(csg), Some(nsg)) = (Stage::from_wire(req.csg()), Stage::from_wire(req.nsg()))
        else {
            return LoginCheck::Fail(login_status::INITIATOR_ERROR, "invalid login stage");
        };
        if csg == Stage::FullFeature || (req.transit() && (nsg as u8) <= (csg as u8)) {
            return LoginCheck::Fail(
                login_status::INITIATOR_ERROR,
                "invalid login stage transition",
            );
        }
        LoginCheck::Negotiate {
            csg,
            nsg,
            transit: req.transit(),
            text: std::mem::take(&mut self.text),
        }
    }

    /// The response header fields for `req` before negotiation decides.
    pub fn response(&self, req: &LoginRequest<'_>) -> LoginResponse {
        LoginResponse {
            transit: false,
            cont: false,
            csg: req.csg(),
            nsg: req.csg(),
            isid: self.isid,
            tsih: 0,
            itt: req.0.itt(),
            status_class: 0,
            status_detail: 0,
        }
    }
}

/// Session reinstatement waits for the old connection in steps of
/// `REINSTATE_POLL_MS`, at most this many.
pub const REINSTATE_MAX_POLLS: u32 = 3000;
pub const REINSTATE_POLL_MS: u64 = 10;

/// What a login that completed negotiation does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reinstate {
    /// The session is ours: send the final Login Response.
    Proceed,
    /// An older connection holds the session and is closing: poll again
    /// after `REINSTATE_POLL_MS`. `first` on the first wait.
    Wait { first: bool },
    /// The older connection did not go away in time: fail the login.
    GiveUp,
    /// The target has `--max-sessions` sessions already: fail the login.
    TooManySessions,
}

/// Decide on reinstatement after a claim answered `claim`; `polls` counts
/// the waits so far.
pub fn reinstate(claim: SessionClaim, polls: &mut u32) -> Reinstate {
    match claim {
        SessionClaim::Claimed => Reinstate::Proceed,
        SessionClaim::Full => Reinstate::TooManySessions,
        SessionClaim::Reinstating => {
            *polls += 1;
            if *polls > REINSTATE_MAX_POLLS {
                Reinstate::GiveUp
            } else {
                Reinstate::Wait { first: *polls == 1 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::wire::{Bhs, BHS_LEN};

    #[test]
    fn window_edges() {
        let mut s = SeqNums::new(4);
        s.start(0, 10);
        // MaxCmdSN 13 with nothing outstanding; one past it is dropped
        // (RFC 7143 3.2.2.1), as is anything before ExpCmdSN.
        assert_eq!(s.sn(0).max_cmd_sn, 13);
        assert_eq!(
            s.accept(14, false, 0),
            Err(OutOfWindow {
                cmd_sn: 14,
                exp_cmd_sn: 10,
                max_cmd_sn: 13
            })
        );
        assert_eq!(s.exp_cmd_sn, 10);
        assert!(s.accept(9, false, 0).is_err());
        assert_eq!(s.accept(13, false, 0), Ok(()));
        assert_eq!(s.exp_cmd_sn, 14);
        // Outstanding commands narrow the window advertised from now on,
        // never below one...
        assert_eq!(s.sn(3).max_cmd_sn, 14);
        assert_eq!(s.sn(100).max_cmd_sn, 14);
        // ...but what was advertised before stays usable: 13 was the
        // highest MaxCmdSN sent, now passed, so the window is 14..=14.
        assert_eq!(
            s.accept(15, false, 3),
            Err(OutOfWindow {
                cmd_sn: 15,
                exp_cmd_sn: 14,
                max_cmd_sn: 14
            })
        );
        // Immediate commands are outside the window's rules.
        assert_eq!(s.accept(999, true, 100), Ok(()));
        assert_eq!(s.exp_cmd_sn, 14);
    }

    #[test]
    fn a_wider_window_advertised_earlier_stays_valid() {
        let mut s = SeqNums::new(4);
        s.start(0, 0);
        // Nothing outstanding: MaxCmdSN 3 goes out.
        assert_eq!(s.sn(0).max_cmd_sn, 3);
        // An immediate command narrows the next advertisement to 2, but
        // the initiator may already be sending 3.
        assert_eq!(s.sn(1).max_cmd_sn, 2);
        for sn in 0..=3 {
            assert_eq!(s.accept(sn, false, 1), Ok(()), "CmdSN {sn}");
        }
        assert!(s.accept(4, false, 4).is_err());
    }

    #[test]
    fn window_wraps_and_late_commands_do_not_move_it_back() {
        let mut s = SeqNums::new(8);
        s.start(0, u32::MAX - 1);
        assert_eq!(s.accept(u32::MAX, false, 0), Ok(()));
        assert_eq!(s.exp_cmd_sn, 0);
        assert_eq!(s.accept(2, false, 0), Ok(()));
        assert_eq!(s.exp_cmd_sn, 3);
        // Within the window but already passed (the gap's 0 and 1).
        assert!(s.accept(1, false, 0).is_err());
    }

    #[test]
    fn keepalive_pings_an_idle_connection_and_gives_up_after_the_timeout() {
        let mut k = Keepalive::new(5, 15);
        assert!(k.interval().is_some());
        assert!(Keepalive::new(0, 15).interval().is_none(), "0 = off");
        // Traffic: no ping.
        k.heard();
        assert_eq!(k.tick(), Tick::Nothing);
        // Silent for an interval: ping; answered.
        assert_eq!(k.tick(), Tick::Ping);
        assert_eq!(k.tick(), Tick::Nothing);
        k.answered();
        assert_eq!(k.tick(), Tick::Nothing);
        // Silent again: ping, then 15 s more of silence: dead.
        assert_eq!(k.tick(), Tick::Ping);
        assert_eq!(k.tick(), Tick::Nothing);
        assert_eq!(k.tick(), Tick::Nothing);
        assert_eq!(k.tick(), Tick::Dead);
        // A timeout shorter than the interval ends at the first tick.
        let mut k = Keepalive::new(10, 1);
        k.answered();
        assert_eq!(k.tick(), Tick::Nothing);
        assert_eq!(k.tick(), Tick::Ping);
        assert_eq!(k.tick(), Tick::Dead);
    }

    #[test]
    fn an_initiator_that_never_answers_pings_is_not_closed_for_it() {
        let mut k = Keepalive::new(5, 15);
        assert_eq!(k.tick(), Tick::Ping);
        for _ in 0..10 {
            assert_eq!(k.tick(), Tick::Nothing, "closed, or pinged again");
        }
        // Heard from (a command): pinged again on the next silence.
        k.heard();
        assert_eq!(k.tick(), Tick::Nothing);
        assert_eq!(k.tick(), Tick::Ping);
    }

    #[test]
    fn status_advances_stat_sn() {
        let mut s = SeqNums::new(4);
        s.start(100, 1);
        assert_eq!(s.sn(0).stat_sn, 100);
        assert_eq!(s.status(0).stat_sn, 100);
        assert_eq!(s.status(0).stat_sn, 101);
        assert_eq!(s.stat_sn, 102);
    }

    fn login_pdu(flags: u8, version_min: u8, tsih: u16) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x43;
        b[1] = flags;
        b[3] = version_min;
        b[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
        b[14..16].copy_from_slice(&tsih.to_be_bytes());
        b[24..28].copy_from_slice(&5u32.to_be_bytes());
        b[28..32].copy_from_slice(&77u32.to_be_bytes());
        b
    }

    fn check(l: &mut LoginSeq, s: &mut SeqNums, pdu: &[u8; BHS_LEN], data: &[u8]) -> LoginCheck {
        let req = LoginRequest::new(Bhs::parse(pdu).unwrap()).unwrap();
        l.check(&req, data, s)
    }

    #[test]
    fn login_sequencing() {
        let (mut l, mut s) = (LoginSeq::default(), SeqNums::new(4));
        // Security -> Operational, continued text joined.
        let cont = login_pdu(0x40 | 0x80 | 0x01, 0, 0);
        assert_eq!(check(&mut l, &mut s, &cont, b"A=1\0"), LoginCheck::Continue);
        assert_eq!((s.stat_sn, s.exp_cmd_sn), (77, 5));
        assert_eq!(l.isid, [0x80, 0, 0, 0, 0, 1]);
        let last = login_pdu(0x80 | 0x01, 0, 0);
        match check(&mut l, &mut s, &last, b"B=2\0") {
            LoginCheck::Negotiate {
                csg,
                nsg,
                transit,
                text,
            } => {
                assert_eq!(
                    (csg, nsg, transit),
                    (Stage::Security, Stage::Operational, true)
                );
                assert_eq!(text, b"A=1\0B=2\0");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_refusals() {
        let fail = |pdu: [u8; BHS_LEN], data: &[u8]| {
            let (mut l, mut s) = (LoginSeq::default(), SeqNums::new(4));
            match check(&mut l, &mut s, &pdu, data) {
                LoginCheck::Fail(st, _) => st,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            fail(login_pdu(0x81, 1, 0), b""),
            login_status::UNSUPPORTED_VERSION
        );
        assert_eq!(
            fail(login_pdu(0x81, 0, 7), b""),
            login_status::SESSION_DOES_NOT_EXIST
        );
        // Reserved stage 2, going backwards, and "from" full feature.
        assert_eq!(
            fail(login_pdu(0x82, 0, 0), b""),
            login_status::INITIATOR_ERROR
        );
        assert_eq!(
            fail(login_pdu(0x80 | (1 << 2), 0, 0), b""),
            login_status::INITIATOR_ERROR
        );
        assert_eq!(
            fail(login_pdu(0x80 | (3 << 2) | 3, 0, 0), b""),
            login_status::INITIATOR_ERROR
        );
        assert_eq!(
            fail(login_pdu(0x81, 0, 0), &vec![b'a'; LOGIN_TEXT_MAX + 1]),
            login_status::INITIATOR_ERROR
        );
    }

    #[test]
    fn reinstatement_waits_then_gives_up() {
        let mut polls = 0;
        assert_eq!(
            reinstate(SessionClaim::Claimed, &mut polls),
            Reinstate::Proceed
        );
        assert_eq!(
            reinstate(SessionClaim::Reinstating, &mut polls),
            Reinstate::Wait { first: true }
        );
        assert_eq!(
            reinstate(SessionClaim::Reinstating, &mut polls),
            Reinstate::Wait { first: false }
        );
        polls = REINSTATE_MAX_POLLS;
        assert_eq!(
            reinstate(SessionClaim::Reinstating, &mut polls),
            Reinstate::GiveUp
        );
    }
}
