use super::*;
use crate::iscsi::negotiate::Stage;

impl Conn {
    // ------------------------------------------------------------------
    // Login

    pub(super) fn on_login(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = LoginRequest::new(bhs) else {
            return;
        };
        if self.phase == Phase::FullFeature {
            self.reject_and_close(
                io,
                reject_reason::PROTOCOL_ERROR,
                "Login Request in full feature phase",
            );
            return;
        }
        let data = std::mem::take(&mut self.pdu_data);
        let check = self.login.check(&req, &data, &mut self.seq);
        // After `check`: the first request sets the ISID the response echoes.
        let mut resp = self.login.response(&req);
        let (csg, nsg, text) = match check {
            LoginCheck::Continue => {
                // More text follows: answer with an empty response.
                self.send_status(io, TxData::None, false, |h, sn| {
                    build_login_response(h, &resp, 0, sn)
                });
                return;
            }
            LoginCheck::Fail(st, why) => return self.login_fail(io, resp, st, why),
            LoginCheck::Negotiate { csg, nsg, text, .. } => (csg, nsg, text),
        };
        let mut out = Vec::new();
        let target = self.sh.target_name.clone();
        let exists = move |n: &str| n == target;
        self.neg.set_peer(self.peer.ip());
        match self
            .neg
            .step(csg, req.transit(), nsg, &text, &exists, &mut out)
        {
            Err(f) => {
                let st = f.status();
                // The reason names the key at fault and never a secret.
                let mut why = match self.neg.failure_reason() {
                    Some(r) => format!("{f:?}: {r}"),
                    None => format!("{f:?}"),
                };
                let p = self.neg.params();
                if !p.initiator_name.is_empty() {
                    let name: String = p.initiator_name.chars().take(224).collect();
                    why.push_str(&format!(
                        " [{:?} session, initiator {name:?}]",
                        p.session_type
                    ));
                }
                self.login_fail(io, resp, st, &why)
            }
            Ok(r) => {
                resp.transit = r.transit;
                if r.transit {
                    resp.nsg = nsg as u8;
                }
                let done = r.transit && nsg == Stage::FullFeature;
                if !done {
                    let len = out.len();
                    self.send_status(io, TxData::Owned(out.into()), false, |h, sn| {
                        build_login_response(h, &resp, len, sn)
                    });
                    return;
                }
                self.login.tsih = self.sh.alloc_tsih();
                resp.tsih = self.login.tsih;
                self.params = self.neg.params().clone();
                self.pending_login = Some((resp, out));
                self.finish_login(io);
            }
        }
    }

    /// Send the final Login Response and enter the full feature phase. A
    /// normal session whose InitiatorName and ISID belong to a live session
    /// reinstates it (RFC 7143 6.3.5): the old connection is shut down and
    /// the response waits until it has drained its I/O, so no command of
    /// the old session can land after one of the new.
    pub(super) fn finish_login(&mut self, io: &mut impl IoOps) {
        if self.params.session_type == SessionType::Normal {
            let info = Arc::new(SessionInfo::new(
                self.id,
                self.login.isid,
                self.peer,
                self.reactor,
                self.params.clone(),
            ));
            let claim = self.sh.claim_session(&info, self.fd);
            match reinstate(claim, &mut self.reinstate_polls) {
                Reinstate::Proceed => {
                    self.session_registered = true;
                    self.session = Some(info);
                }
                Reinstate::Wait { first } => {
                    if first {
                        tracing::warn!(
                            "connection {}: session reinstatement: closing the previous connection of {} with this ISID",
                            self.peer,
                            self.params.initiator_name
                        );
                    }
                    io.timeout(
                        Duration::from_millis(REINSTATE_POLL_MS),
                        TAG_REINSTATE_TIMER,
                    );
                    self.reinstate_timer_armed = true;
                    return;
                }
                Reinstate::TooManySessions => {
                    let Some((resp, _)) = self.pending_login.take() else {
                        return;
                    };
                    let why = format!("{} sessions already (--max-sessions)", self.sh.max_sessions);
                    return self.login_fail(io, resp, login_status::OUT_OF_RESOURCES, &why);
                }
                Reinstate::GiveUp => {
                    let Some((resp, _)) = self.pending_login.take() else {
                        return;
                    };
                    return self.login_fail(
                        io,
                        resp,
                        login_status::TARGET_ERROR,
                        "previous session did not end",
                    );
                }
            }
        }
        let Some((resp, out)) = self.pending_login.take() else {
            return;
        };
        let len = out.len();
        // The last Login Response goes out without digests; everything
        // after it uses them.
        self.send_status(io, TxData::Owned(out.into()), false, |h, sn| {
            build_login_response(h, &resp, len, sn)
        });
        tracing::info!(
            "connection {}: login complete ({:?} session, initiator {}, digests {}/{}, MaxRecvDataSegmentLength {}/{}, burst {}/{}, InitialR2T {}, ImmediateData {})",
            self.peer,
            self.params.session_type,
            self.params.initiator_name,
            self.params.header_digest,
            self.params.data_digest,
            self.params.initiator_max_recv_dsl,
            self.params.target_max_recv_dsl,
            self.params.first_burst_length,
            self.params.max_burst_length,
            self.params.initial_r2t,
            self.params.immediate_data,
        );
        self.phase = Phase::FullFeature;
        self.hd = self.params.header_digest;
        self.dd = self.params.data_digest;
        self.post_recv(io);
    }

    pub(super) fn login_fail(
        &mut self,
        io: &mut impl IoOps,
        mut resp: LoginResponse,
        st: (u8, u8),
        why: &str,
    ) {
        tracing::warn!(
            "connection {}: login failed: {why} (status {:02x}{:02x})",
            self.peer,
            st.0,
            st.1
        );
        resp.status_class = st.0;
        resp.status_detail = st.1;
        resp.transit = false;
        self.send_status(io, TxData::None, true, |h, sn| {
            build_login_response(h, &resp, 0, sn)
        });
    }

    // ------------------------------------------------------------------
    // Text, NOP, Logout

    pub(super) fn on_text(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = TextRequest::new(bhs) else {
            return;
        };
        if !self.accept_cmd_sn(req.cmd_sn(), bhs.immediate()) {
            return;
        }
        if req.cont() || (req.ttt() != RESERVED_TAG && self.pdu_data.is_empty()) {
            // Multi-PDU text exchanges are not needed for the keys we
            // answer; say so instead of guessing.
            self.reject(
                io,
                reject_reason::COMMAND_NOT_SUPPORTED,
                "continued Text Request",
            );
            return;
        }
        let portals = portal_list(&self.sh.portals, self.local);
        let rec = [TargetRecord {
            name: &self.sh.target_name,
            portals: &portals,
        }];
        let session_target = match self.params.session_type {
            SessionType::Discovery => None,
            SessionType::Normal => Some(self.sh.target_name.as_str()),
        };
        let mut out = Vec::new();
        answer_text(&self.pdu_data, &rec, session_target, &mut out);
        let limit = self.params.initiator_max_recv_dsl as usize;
        if out.len() > limit {
            // Cut at a key boundary so the initiator gets whole records.
            let cut = out[..limit]
                .iter()
                .rposition(|&b| b == 0)
                .map(|p| p + 1)
                .unwrap_or(0);
            out.truncate(cut);
        }
        let (itt, len) = (bhs.itt(), out.len());
        self.send_status(io, TxData::Owned(out.into()), false, |h, sn| {
            build_text_response(h, itt, RESERVED_TAG, true, false, len, sn)
        });
    }

    pub(super) fn on_nop_out(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(nop) = NopOut::new(bhs) else { return };
        if !self.accept_cmd_sn(nop.cmd_sn(), bhs.immediate()) {
            return;
        }
        if bhs.itt() == RESERVED_TAG {
            if nop.ttt() != RESERVED_TAG {
                self.keepalive.answered();
            }
            // A reply to our NOP-In, or a one-way ping: nothing to send.
            return;
        }
        let data = std::mem::take(&mut self.pdu_data);
        let limit = self.params.initiator_max_recv_dsl as usize;
        let data = if data.len() > limit {
            data[..limit].to_vec()
        } else {
            data
        };
        let (itt, lun, len) = (bhs.itt(), bhs.lun_raw(), data.len());
        self.send_status(io, TxData::Owned(data.into()), false, |h, sn| {
            build_nop_in(h, itt, RESERVED_TAG, lun, len, sn)
        });
    }

    pub(super) fn on_logout(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = LogoutRequest::new(bhs) else {
            return;
        };
        if !self.accept_cmd_sn(req.cmd_sn(), bhs.immediate()) {
            return;
        }
        let response = match req.reason() {
            0 | 1 => LOGOUT_OK,
            _ => LOGOUT_RECOVERY_UNSUPPORTED,
        };
        tracing::info!(
            "connection {}: logout of initiator {} (reason {})",
            self.peer,
            self.params.initiator_name,
            req.reason()
        );
        if response == LOGOUT_OK {
            // The session ends with this answer: release what its I_T
            // nexus held (SPC-2 reservations) before the initiator hears
            // it, not when the connection has drained.
            self.scsi_nexus_lost();
        }
        let itt = bhs.itt();
        self.send_status(io, TxData::None, true, |h, sn| {
            build_logout_response(h, itt, response, sn)
        });
    }

    // ------------------------------------------------------------------
    // Task management

    pub(super) fn on_tmf(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>) {
        let Some(req) = TaskMgmtRequest::new(bhs) else {
            return;
        };
        if !self.accept_cmd_sn(req.cmd_sn(), bhs.immediate()) {
            return;
        }
        use tmf_response::*;
        let lun = bhs.lun() as usize;
        let response = match req.function() {
            TmfFunction::AbortTask => match self.tasks.find(req.referenced_task_tag()) {
                Some(id) => {
                    self.abort_task(io, id);
                    FUNCTION_COMPLETE
                }
                None => TASK_DOES_NOT_EXIST,
            },
            TmfFunction::AbortTaskSet
            | TmfFunction::ClearTaskSet
            | TmfFunction::LogicalUnitReset => {
                if lun >= self.sh.luns.len() {
                    LUN_DOES_NOT_EXIST
                } else {
                    // This session's tasks end now; those of other
                    // sessions of the LU (CLEAR TASK SET, LU RESET) see
                    // the LU's task epoch move on at their next step.
                    self.abort_where(io, |t| t.lun == lun);
                    match req.function() {
                        TmfFunction::LogicalUnitReset => {
                            self.scsi_lu_reset(Some(lun), scsi::state::ua::RESET)
                        }
                        TmfFunction::ClearTaskSet => self.scsi_clear_task_set(lun),
                        _ => {}
                    }
                    FUNCTION_COMPLETE
                }
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                self.abort_where(io, |_| true);
                let why = if req.function() == TmfFunction::TargetColdReset {
                    // All connections end; this one after its response.
                    self.sh.shutdown_other_sessions(self.id);
                    scsi::state::ua::POWER_ON
                } else {
                    scsi::state::ua::RESET
                };
                self.scsi_lu_reset(None, why);
                FUNCTION_COMPLETE
            }
            TmfFunction::TaskReassign => REASSIGNMENT_NOT_SUPPORTED,
            TmfFunction::ClearAca | TmfFunction::Unknown(_) => NOT_SUPPORTED,
        };
        tracing::info!(
            "connection {}: task management {:?} -> {response}",
            self.peer,
            req.function()
        );
        let (itt, cold) = (bhs.itt(), req.function() == TmfFunction::TargetColdReset);
        self.send_status(io, TxData::None, cold, |h, sn| {
            build_tmf_response(h, itt, response, sn)
        });
    }

    pub(super) fn abort_where(&mut self, io: &mut impl IoOps, f: impl Fn(&Task) -> bool) {
        for id in self.tasks.active_where(f) {
            self.abort_task(io, id);
        }
    }

    /// Forget a task: no status will be sent for it. Its buffers return
    /// once its I/O and queued sends have drained.
    pub(super) fn abort_task(&mut self, io: &mut impl IoOps, id: TaskId) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.aborted = true;
        self.tasks.retire(id);
        self.buf_waiters.retain(|&w| w != id);
        self.maybe_free(io, id);
    }
}
