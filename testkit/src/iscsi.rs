//! A minimal raw iSCSI initiator for the protocol-level tests.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::COUNTER;

pub const OP_NOP_OUT: u8 = 0x00;
pub const OP_SCSI_CMD: u8 = 0x01;
pub const OP_LOGIN_REQ: u8 = 0x03;
pub const OP_LOGOUT_REQ: u8 = 0x06;
pub const OP_NOP_IN: u8 = 0x20;
pub const OP_SCSI_RSP: u8 = 0x21;
pub const OP_LOGIN_RSP: u8 = 0x23;
pub const OP_DATA_IN: u8 = 0x25;
pub const OP_LOGOUT_RSP: u8 = 0x26;
pub const OP_R2T: u8 = 0x31;
pub const OP_REJECT: u8 = 0x3f;

pub const BHS_LEN: usize = 48;

/// One received PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().unwrap())
    }
}

/// Why no PDU could be read.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed (EOF or reset).
    Closed(String),
    /// Nothing (complete) arrived within the read timeout.
    Timeout,
    Other(std::io::Error),
}

/// Outcome of a SCSI command.
#[derive(Debug)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
}

/// Encodes `key=value\0` pairs.
pub fn text_keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Decodes `key=value\0` pairs.
pub fn parse_keys(data: &[u8]) -> HashMap<String, String> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn put_dsl(bhs: &mut [u8; BHS_LEN], len: usize) {
    assert!(len <= 0xff_ffff);
    bhs[5] = (len >> 16) as u8;
    bhs[6] = (len >> 8) as u8;
    bhs[7] = len as u8;
}

fn is_closed_kind(k: ErrorKind) -> bool {
    matches!(
        k,
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected
    )
}

/// A raw iSCSI connection (no digests, ERL 0, one connection per session).
pub struct IscsiConn {
    pub stream: TcpStream,
    pub itt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub tsih: u16,
    /// The target's declared MaxRecvDataSegmentLength (8192 if it declared none).
    pub target_mrdsl: u32,
    pub isid: [u8; 6],
    /// Keys the target sent during login.
    pub target_keys: HashMap<String, String>,
}

/// Default per-read timeout of [`IscsiConn`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl IscsiConn {
    pub fn connect(addr: SocketAddr) -> IscsiConn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let isid = [
            0x80,
            0x00,
            (pid >> 8) as u8,
            pid as u8,
            (n >> 8) as u8,
            n as u8,
        ];
        IscsiConn {
            stream,
            itt: 1,
            cmdsn: 1,
            exp_statsn: 0,
            tsih: 0,
            target_mrdsl: 8192,
            isid,
            target_keys: HashMap::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Writes one PDU (BHS + padded data segment; DataSegmentLength is set
    /// from `data` unless `keep_dsl`).
    pub fn send_raw(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(BHS_LEN + data.len() + 3);
        buf.extend_from_slice(bhs);
        buf.extend_from_slice(data);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
        self.stream.write_all(&buf)
    }

    pub fn send_pdu(&mut self, mut bhs: [u8; BHS_LEN], data: &[u8]) -> std::io::Result<()> {
        put_dsl(&mut bhs, data.len());
        self.send_raw(&bhs, data)
    }

    /// Reads one PDU (discarding AHS), honouring the read timeout.
    pub fn recv_pdu(&mut self) -> Result<Pdu, RecvError> {
        let mut bhs = [0u8; BHS_LEN];
        self.read_exact_classified(&mut bhs)?;
        let ahs = bhs[4] as usize * 4;
        let dsl = ((bhs[5] as usize) << 16) | ((bhs[6] as usize) << 8) | bhs[7] as usize;
        let padded = (dsl + 3) & !3;
        let mut rest = vec![0u8; ahs + padded];
        self.read_exact_classified(&mut rest)?;
        let data = rest[ahs..ahs + dsl].to_vec();
        Ok(Pdu { bhs, data })
    }

    fn read_exact_classified(&mut self, buf: &mut [u8]) -> Result<(), RecvError> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if is_closed_kind(e.kind()) => Err(RecvError::Closed(e.to_string())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(RecvError::Timeout)
            }
            Err(e) => Err(RecvError::Other(e)),
        }
    }

    fn login_bhs(&self, csg: u8, nsg: u8, transit: bool) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x40 | OP_LOGIN_REQ;
        b[1] = (if transit { 0x80 } else { 0 }) | (csg << 2) | nsg;
        b[8..14].copy_from_slice(&self.isid);
        b[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        b[16..20].copy_from_slice(&self.itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        b
    }

    fn login_exchange(&mut self, csg: u8, nsg: u8, keys: &[u8]) -> Result<Pdu, String> {
        let bhs = self.login_bhs(csg, nsg, true);
        self.send_pdu(bhs, keys)
            .map_err(|e| format!("sending login request: {e}"))?;
        let rsp = self
            .recv_pdu()
            .map_err(|e| format!("waiting for login response: {e:?}"))?;
        if rsp.opcode() != OP_LOGIN_RSP {
            return Err(format!(
                "expected Login Response, got opcode {:#04x}",
                rsp.opcode()
            ));
        }
        if rsp.bhs[36] != 0 {
            return Err(format!(
                "login rejected: status class {:#04x} detail {:#04x}",
                rsp.bhs[36], rsp.bhs[37]
            ));
        }
        self.exp_statsn = rsp.u32_at(24).wrapping_add(1);
        self.target_keys.extend(parse_keys(&rsp.data));
        Ok(rsp)
    }

    /// Logs in (security stage with AuthMethod=None, then operational stage)
    /// and returns once the target has moved to full feature phase.
    pub fn login(&mut self, initiator: &str, target: &str) -> Result<(), String> {
        // Security negotiation → operational.
        let keys = text_keys(&[
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", target),
            ("AuthMethod", "None"),
        ]);
        let mut rsp = self.login_exchange(0, 1, &keys)?;
        let mut rounds = 0;
        while rsp.bhs[1] & 0x80 == 0 || (rsp.bhs[1] & 0x03) != 1 && (rsp.bhs[1] & 0x03) != 3 {
            rounds += 1;
            if rounds > 4 {
                return Err("target never completed the security stage".into());
            }
            rsp = self.login_exchange(0, 1, &[])?;
        }
        if rsp.bhs[1] & 0x03 == 3 {
            return self.enter_ffp(&rsp);
        }
        // Operational negotiation → full feature phase.
        let keys = text_keys(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
        ]);
        let mut rsp = self.login_exchange(1, 3, &keys)?;
        let mut rounds = 0;
        while !(rsp.bhs[1] & 0x80 != 0 && rsp.bhs[1] & 0x03 == 3) {
            rounds += 1;
            if rounds > 4 {
                return Err(format!(
                    "target never moved to full feature phase; keys {:?}",
                    self.target_keys
                ));
            }
            rsp = self.login_exchange(1, 3, &[])?;
        }
        self.enter_ffp(&rsp)
    }

    fn enter_ffp(&mut self, rsp: &Pdu) -> Result<(), String> {
        // A new session's TSIH is assigned in the final response; every
        // request of this (leading) login carries 0.
        self.tsih = u16::from_be_bytes([rsp.bhs[14], rsp.bhs[15]]);
        // The first command carries the ExpCmdSN the target announced.
        self.cmdsn = rsp.u32_at(28);
        if let Some(v) = self.target_keys.get("MaxRecvDataSegmentLength") {
            self.target_mrdsl = v
                .parse()
                .map_err(|_| format!("bad MaxRecvDataSegmentLength {v:?}"))?;
        }
        self.itt = self.itt.wrapping_add(1);
        Ok(())
    }

    /// A SCSI Command BHS (simple task attribute) for `lun`.
    pub fn scsi_bhs(&self, lun: u32, cdb: &[u8], read_len: u32, write_len: u32) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b[0] = OP_SCSI_CMD;
        b[1] = 0x80
            | if read_len > 0 { 0x40 } else { 0 }
            | if write_len > 0 { 0x20 } else { 0 }
            | 0x01;
        // Single-level LUN, peripheral (LUN < 256) or flat addressing.
        if lun < 256 {
            b[9] = lun as u8;
        } else {
            b[8] = 0x40 | ((lun >> 8) as u8 & 0x3f);
            b[9] = lun as u8;
        }
        b[16..20].copy_from_slice(&self.itt.to_be_bytes());
        b[20..24].copy_from_slice(&read_len.max(write_len).to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        b
    }

    /// The outcome a SCSI Response PDU carries (`data`: the Data-In
    /// gathered before it), its sense data unwrapped.
    fn scsi_response(&mut self, pdu: &Pdu, data: Vec<u8>) -> Result<ScsiResult, String> {
        self.exp_statsn = pdu.u32_at(24).wrapping_add(1);
        if pdu.bhs[2] != 0 {
            return Err(format!("iSCSI response code {:#04x}", pdu.bhs[2]));
        }
        let sense = if pdu.data.len() > 2 {
            let n = u16::from_be_bytes([pdu.data[0], pdu.data[1]]) as usize;
            pdu.data[2..(2 + n).min(pdu.data.len())].to_vec()
        } else {
            Vec::new()
        };
        Ok(ScsiResult {
            status: pdu.bhs[3],
            data,
            sense,
        })
    }

    /// Runs a SCSI command without data-out and collects Data-In and status.
    pub fn scsi_command(
        &mut self,
        lun: u32,
        cdb: &[u8],
        read_len: u32,
    ) -> Result<ScsiResult, String> {
        let bhs = self.scsi_bhs(lun, cdb, read_len, 0);
        let itt = self.itt;
        self.send_pdu(bhs, &[])
            .map_err(|e| format!("sending SCSI command: {e}"))?;
        self.itt = self.itt.wrapping_add(1);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        let mut data = Vec::new();
        for _ in 0..10_000 {
            let pdu = self
                .recv_pdu()
                .map_err(|e| format!("waiting for SCSI response: {e:?}"))?;
            match pdu.opcode() {
                OP_DATA_IN => {
                    if pdu.u32_at(16) != itt {
                        return Err(format!("Data-In for unknown ITT {:#x}", pdu.u32_at(16)));
                    }
                    data.extend_from_slice(&pdu.data);
                    if pdu.bhs[1] & 0x01 != 0 {
                        self.exp_statsn = pdu.u32_at(24).wrapping_add(1);
                        return Ok(ScsiResult {
                            status: pdu.bhs[3],
                            data,
                            sense: Vec::new(),
                        });
                    }
                }
                OP_SCSI_RSP => return self.scsi_response(&pdu, data),
                OP_NOP_IN => {
                    // Answer target pings so the session stays up.
                    let ttt = pdu.u32_at(20);
                    if ttt != 0xffff_ffff {
                        let mut b = [0u8; BHS_LEN];
                        b[0] = 0x40 | OP_NOP_OUT;
                        b[1] = 0x80;
                        b[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                        b[20..24].copy_from_slice(&ttt.to_be_bytes());
                        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
                        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
                        self.send_pdu(b, &pdu.data)
                            .map_err(|e| format!("NOP-Out: {e}"))?;
                    }
                }
                OP_REJECT => return Err("target sent Reject".into()),
                op => {
                    return Err(format!(
                        "unexpected opcode {op:#04x} while waiting for SCSI response"
                    ))
                }
            }
        }
        Err("too many PDUs for one command".into())
    }

    /// Runs a SCSI command that writes `data`: no immediate data, every
    /// byte sent in answer to the target's R2Ts (Data-Out PDUs no longer
    /// than its MaxRecvDataSegmentLength), then the status.
    pub fn scsi_write(&mut self, lun: u32, cdb: &[u8], data: &[u8]) -> Result<ScsiResult, String> {
        let bhs = self.scsi_bhs(lun, cdb, 0, data.len() as u32);
        let itt = self.itt;
        self.send_pdu(bhs, &[])
            .map_err(|e| format!("sending SCSI command: {e}"))?;
        self.itt = self.itt.wrapping_add(1);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        for _ in 0..10_000 {
            let pdu = self
                .recv_pdu()
                .map_err(|e| format!("waiting for R2T or SCSI response: {e:?}"))?;
            match pdu.opcode() {
                OP_R2T => {
                    let (ttt, off, len) = (pdu.u32_at(20), pdu.u32_at(40), pdu.u32_at(44));
                    let end = off as usize + len as usize;
                    if end > data.len() {
                        return Err(format!("R2T for bytes {off}..{end} of {}", data.len()));
                    }
                    let seg = self.target_mrdsl.max(512) as usize;
                    let mut at = off as usize;
                    let mut data_sn = 0u32;
                    while at < end {
                        let n = seg.min(end - at);
                        let mut b = [0u8; BHS_LEN];
                        b[0] = 0x05;
                        b[1] = if at + n == end { 0x80 } else { 0 };
                        b[8..16].copy_from_slice(&bhs[8..16]);
                        b[16..20].copy_from_slice(&itt.to_be_bytes());
                        b[20..24].copy_from_slice(&ttt.to_be_bytes());
                        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
                        b[36..40].copy_from_slice(&data_sn.to_be_bytes());
                        b[40..44].copy_from_slice(&(at as u32).to_be_bytes());
                        self.send_pdu(b, &data[at..at + n])
                            .map_err(|e| format!("Data-Out: {e}"))?;
                        at += n;
                        data_sn += 1;
                    }
                }
                OP_SCSI_RSP => return self.scsi_response(&pdu, Vec::new()),
                OP_REJECT => return Err("target sent Reject".into()),
                op => {
                    return Err(format!(
                        "unexpected opcode {op:#04x} while waiting for R2T or SCSI response"
                    ))
                }
            }
        }
        Err("too many PDUs for one command".into())
    }

    /// TEST UNIT READY, retried over unit attentions (bounded).
    pub fn test_unit_ready(&mut self, lun: u32) -> Result<(), String> {
        let mut last = None;
        for _ in 0..4 {
            let r = self.scsi_command(lun, &[0x00, 0, 0, 0, 0, 0], 0)?;
            if r.status == 0 {
                return Ok(());
            }
            last = Some(r);
        }
        Err(format!("TEST UNIT READY kept failing: {last:?}"))
    }

    /// Standard INQUIRY (36 bytes), retried over unit attentions (bounded).
    pub fn inquiry(&mut self, lun: u32) -> Result<Vec<u8>, String> {
        let mut last = None;
        for _ in 0..4 {
            let r = self.scsi_command(lun, &[0x12, 0, 0, 0, 36, 0], 36)?;
            if r.status == 0 {
                return Ok(r.data);
            }
            last = Some(r);
        }
        Err(format!("INQUIRY kept failing: {last:?}"))
    }

    /// READ CAPACITY (16): (number of blocks, block size).
    pub fn read_capacity16(&mut self, lun: u32) -> Result<(u64, u32), String> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        for _ in 0..4 {
            let r = self.scsi_command(lun, &cdb, 32)?;
            if r.status == 0 && r.data.len() >= 12 {
                let last = u64::from_be_bytes(r.data[0..8].try_into().unwrap());
                let bs = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
                return Ok((last + 1, bs));
            }
        }
        Err("READ CAPACITY(16) failed".into())
    }

    /// Logout (best effort, bounded by the read timeout).
    pub fn logout(&mut self) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x40 | OP_LOGOUT_REQ;
        b[1] = 0x80;
        b[16..20].copy_from_slice(&self.itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        if self.send_pdu(b, &[]).is_ok() {
            for _ in 0..8 {
                match self.recv_pdu() {
                    Ok(p) if p.opcode() == OP_LOGOUT_RSP => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// After sending something invalid: waits (bounded by `limit`) for the
    /// target to answer with a Reject PDU or close the connection. Returns a
    /// description of what happened, or Err if it hung or answered otherwise.
    pub fn expect_reject_or_close(&mut self, limit: Duration) -> Result<String, String> {
        self.set_read_timeout(limit);
        let start = Instant::now();
        loop {
            match self.recv_pdu() {
                Ok(p) if p.opcode() == OP_REJECT => {
                    return Ok(format!(
                        "Reject PDU (reason {:#04x}) after {:?}",
                        p.bhs[2],
                        start.elapsed()
                    ))
                }
                Ok(p) if p.opcode() == OP_NOP_IN && start.elapsed() < limit => continue,
                Ok(p) => {
                    return Err(format!(
                        "expected Reject or close, got opcode {:#04x} (bhs {:02x?})",
                        p.opcode(),
                        &p.bhs[..8]
                    ))
                }
                Err(RecvError::Closed(why)) => {
                    return Ok(format!(
                        "connection closed ({why}) after {:?}",
                        start.elapsed()
                    ))
                }
                Err(RecvError::Timeout) => {
                    return Err(format!(
                        "no Reject and no close within {limit:?}: the target hung"
                    ))
                }
                Err(RecvError::Other(e)) => {
                    return Ok(format!("connection error {e} after {:?}", start.elapsed()))
                }
            }
        }
    }
}

/// Initiator name used by the raw client.
pub fn initiator_name(tag: &str) -> String {
    format!("iqn.2026-11.org.bootlun:test-{tag}")
}
