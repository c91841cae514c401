use super::*;

impl Conn {
    /// Sequence numbers for a PDU that does not carry status.
    pub(super) fn sn(&self) -> Sn {
        self.seq.sn(self.tasks.active())
    }

    /// Queue a PDU that carries status (it advances StatSN), built by
    /// `build` from the sequence numbers, and start sending. With `close`,
    /// nothing more is read and the connection closes once it is out.
    pub(super) fn send_status(
        &mut self,
        io: &mut impl IoOps,
        data: TxData,
        close: bool,
        build: impl FnOnce(&mut [u8; BHS_LEN], Sn),
    ) {
        let sn = self.sn_status();
        let mut hdr = [0u8; BHS_LEN];
        build(&mut hdr, sn);
        self.queue(hdr, data, None, false, close);
        if close {
            self.close_after_send = true;
        }
        self.flush_tx(io);
    }

    /// Sequence numbers for a PDU that carries status (advances StatSN).
    pub(super) fn sn_status(&mut self) -> Sn {
        self.seq.status(self.tasks.active())
    }

    // ------------------------------------------------------------------
    // Closing

    pub(super) fn close(&mut self, why: &str) {
        if !self.closing {
            tracing::info!(
                "connection {} (reactor {}): closing: {why}",
                self.peer,
                self.reactor
            );
            self.closing = true;
            // Ends the receive and send in flight; the socket itself is
            // closed when the connection is dropped.
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
            self.txq.clear();
        }
    }

    /// Reject the PDU in `cur` and close the connection once the Reject is
    /// out (ERL 0 has no way to resynchronise).
    pub(super) fn reject_and_close(&mut self, io: &mut impl IoOps, reason: u8, why: &str) {
        tracing::warn!(
            "connection {}: rejecting PDU ({why}), reason {reason:#x}",
            self.peer
        );
        let rejected = TxData::Owned(Bytes::copy_from_slice(&self.cur));
        self.send_status(io, rejected, true, |h, sn| build_reject(h, reason, sn));
    }

    /// Reject the PDU in `cur` and carry on.
    pub(super) fn reject(&mut self, io: &mut impl IoOps, reason: u8, why: &str) {
        tracing::warn!(
            "connection {}: rejecting PDU ({why}), reason {reason:#x}",
            self.peer
        );
        let rejected = TxData::Owned(Bytes::copy_from_slice(&self.cur));
        self.send_status(io, rejected, false, |h, sn| build_reject(h, reason, sn));
    }

    // ------------------------------------------------------------------
    // Responses

    pub(super) fn respond_status(
        &mut self,
        io: &mut impl IoOps,
        itt: u32,
        status: Status,
        residual: Residual,
        exp_data_sn: u32,
    ) {
        self.send_status(io, TxData::None, false, |h, sn| {
            build_scsi_response(h, itt, status as u8, residual, exp_data_sn, 0, sn)
        });
    }

    pub(super) fn respond_check(
        &mut self,
        io: &mut impl IoOps,
        itt: u32,
        sense: Sense,
        residual: Residual,
    ) {
        let fixed = sense.fixed();
        let mut data = Vec::with_capacity(2 + fixed.len());
        data.extend_from_slice(&(fixed.len() as u16).to_be_bytes());
        data.extend_from_slice(&fixed);
        let len = data.len();
        self.send_status(io, TxData::Owned(data.into()), false, |h, sn| {
            build_scsi_response(h, itt, Status::CheckCondition as u8, residual, 0, len, sn)
        });
    }

    /// GOOD status with Data-In from the emulation (INQUIRY and friends).
    pub(super) fn respond_data(&mut self, io: &mut impl IoOps, bhs: Bhs<'_>, data: &[u8]) {
        let cmd = ScsiCommand(bhs);
        let edtl = cmd.expected_len();
        let itt = bhs.itt();
        let n = if cmd.read() {
            data.len().min(edtl as usize)
        } else {
            0
        };
        let residual = Residual::of(edtl, data.len() as u64);
        if n == 0 {
            return self.respond_status(io, itt, Status::Good, residual, 0);
        }
        let mrdsl = self.params.initiator_max_recv_dsl.max(512) as usize;
        // One copy of the answer; each Data-In PDU holds a slice of it.
        let all = Bytes::copy_from_slice(&data[..n]);
        let mut pos = 0;
        let mut data_sn = 0;
        while pos < n {
            let len = (n - pos).min(mrdsl);
            let last = pos + len >= n;
            let sn = if last { self.sn_status() } else { self.sn() };
            let mut hdr = [0u8; BHS_LEN];
            build_data_in(
                &mut hdr,
                itt,
                bhs.lun_raw(),
                data_sn,
                pos as u32,
                len,
                last,
                last.then_some((Status::Good as u8, residual)),
                sn,
            );
            self.queue(
                hdr,
                TxData::Owned(all.slice(pos..pos + len)),
                None,
                false,
                false,
            );
            pos += len;
            data_sn += 1;
        }
        self.flush_tx(io);
    }

    // ------------------------------------------------------------------
    // Send path

    pub(super) fn queue(
        &mut self,
        bhs: [u8; BHS_LEN],
        data: TxData,
        task: Option<TaskId>,
        notify: bool,
        close_after: bool,
    ) {
        let mut hdr = [0u8; BHS_LEN + DIGEST_LEN];
        hdr[..BHS_LEN].copy_from_slice(&bhs);
        let mut hlen = BHS_LEN;
        if self.hd {
            hdr[BHS_LEN..].copy_from_slice(&digest_bytes(digest(&[&bhs])));
            hlen += DIGEST_LEN;
        }
        let len = data.len();
        let pad = pad_len(len);
        let mut trailer = [0u8; 8];
        let mut tlen = pad;
        if self.dd && len > 0 {
            let payload: &[u8] = match &data {
                TxData::None => &[],
                TxData::Owned(v) => v,
                // SAFETY: `ptr..ptr+len` lies in a pool buffer of the task
                // this PDU belongs to, held until the PDU is sent. (Never
                // in a LU's mapping: reads do not use it with a data
                // digest, so user space never reads mapped memory.)
                TxData::Buf { ptr, len } => unsafe {
                    std::slice::from_raw_parts(*ptr, *len as usize)
                },
            };
            let crc = digest(&[payload, &[0u8; 3][..pad]]);
            trailer[pad..pad + 4].copy_from_slice(&digest_bytes(crc));
            tlen += DIGEST_LEN;
        }
        self.txq.push_back(Tx {
            hdr,
            hlen: hlen as u8,
            data,
            trailer,
            tlen: tlen as u8,
            task,
            notify,
            close_after,
        });
    }

    pub(super) fn flush_tx(&mut self, io: &mut impl IoOps) {
        if self.tx_busy || self.tx_hold || self.txq.is_empty() || self.closing {
            return;
        }
        self.tx_fly.clear();
        while self.tx_fly.len() < SEND_BATCH {
            let Some(t) = self.txq.pop_front() else { break };
            let stop = t.close_after;
            self.tx_fly.push(t);
            if stop {
                break;
            }
        }
        self.iov.clear();
        for t in &self.tx_fly {
            self.iov.push(libc::iovec {
                iov_base: t.hdr.as_ptr() as *mut _,
                iov_len: t.hlen as usize,
            });
            match &t.data {
                TxData::None => {}
                TxData::Owned(v) => {
                    if !v.is_empty() {
                        self.iov.push(libc::iovec {
                            iov_base: v.as_ptr() as *mut _,
                            iov_len: v.len(),
                        })
                    }
                }
                TxData::Buf { ptr, len } => self.iov.push(libc::iovec {
                    iov_base: *ptr as *mut _,
                    iov_len: *len as usize,
                }),
            }
            if t.tlen > 0 {
                self.iov.push(libc::iovec {
                    iov_base: t.trailer.as_ptr() as *mut _,
                    iov_len: t.tlen as usize,
                });
            }
        }
        self.iov_pos = 0;
        self.submit_send(io);
    }

    pub(super) fn submit_send(&mut self, io: &mut impl IoOps) {
        // SAFETY: the iovecs point into `tx_fly` (headers, trailers and
        // owned data, which stay put until `send_done` drains it) and into
        // pool buffers of tasks whose `sends` count keeps them alive.
        unsafe { io.send(self.fd, &self.iov[self.iov_pos..], TAG_SEND) };
        self.tx_busy = true;
    }

    pub(super) fn send_done(&mut self, io: &mut impl IoOps, res: i32) {
        self.tx_busy = false;
        if res < 0 {
            if res == -libc::EFAULT {
                // Only mapped LU memory can fault (pool buffers and owned
                // bytes stay put): a backing file shrank under its mapping.
                for l in &self.sh.luns {
                    l.backend.mapping_faulted();
                }
            }
            self.close(&format!(
                "send failed: {}",
                std::io::Error::from_raw_os_error(-res)
            ));
        } else {
            // Advance over what was written; resubmit the rest.
            let mut n = res as usize;
            while n > 0 && self.iov_pos < self.iov.len() {
                let v = &mut self.iov[self.iov_pos];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    self.iov_pos += 1;
                } else {
                    v.iov_base = (v.iov_base as *mut u8).wrapping_add(n) as *mut _;
                    v.iov_len -= n;
                    n = 0;
                }
            }
            if self.iov_pos < self.iov.len() && !self.closing {
                self.submit_send(io);
                return;
            }
        }
        // The whole batch is out (or the connection is going away).
        let mut close = false;
        self.notify.clear();
        for t in self.tx_fly.drain(..) {
            close |= t.close_after;
            if let Some(id) = t.task {
                if let Some(task) = self.tasks.get_mut(id) {
                    debug_assert!(task.sends > 0, "send of a task with none queued");
                    task.sends -= 1;
                    if t.notify || task.finished {
                        self.notify.push(id);
                    }
                }
            }
        }
        let notify = std::mem::take(&mut self.notify);
        for &idx in &notify {
            self.chunk_sent(io, idx);
        }
        self.notify = notify;
        if close {
            self.close("done");
            return;
        }
        self.flush_tx(io);
        self.post_recv(io);
    }
}
