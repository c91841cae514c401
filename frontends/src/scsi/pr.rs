//! Reservations: SPC-2 RESERVE/RELEASE(6/10) and SPC-4 persistent
//! reservations (PERSISTENT RESERVE IN / OUT), and the conflict check every
//! command passes through.
//!
//! Registrations are per I_T nexus ([`Nexus`]). With APTPL set, the
//! registrations and the reservation are written to a small file beside a
//! file backend after every change, and read back at start-up.

use super::cdb::Cdb;
use super::opcode as op;
use super::state::{Inner, LuState, Nexus};
use super::{Outcome, Sense, SenseKey};

/// PERSISTENT RESERVE OUT service actions.
pub const SA_REGISTER: u8 = 0x00;
pub const SA_RESERVE: u8 = 0x01;
pub const SA_RELEASE: u8 = 0x02;
pub const SA_CLEAR: u8 = 0x03;
pub const SA_PREEMPT: u8 = 0x04;
pub const SA_PREEMPT_AND_ABORT: u8 = 0x05;
pub const SA_REGISTER_AND_IGNORE: u8 = 0x06;
pub const SA_REGISTER_AND_MOVE: u8 = 0x07;

/// PERSISTENT RESERVE IN service actions.
pub const SA_READ_KEYS: u8 = 0x00;
pub const SA_READ_RESERVATION: u8 = 0x01;
pub const SA_REPORT_CAPABILITIES: u8 = 0x02;
pub const SA_READ_FULL_STATUS: u8 = 0x03;

/// Persistent reservation types.
pub const TYPE_WE: u8 = 1;
pub const TYPE_EA: u8 = 3;
pub const TYPE_WE_RO: u8 = 5;
pub const TYPE_EA_RO: u8 = 6;
pub const TYPE_WE_AR: u8 = 7;
pub const TYPE_EA_AR: u8 = 8;

fn valid_type(t: u8) -> bool {
    matches!(
        t,
        TYPE_WE | TYPE_EA | TYPE_WE_RO | TYPE_EA_RO | TYPE_WE_AR | TYPE_EA_AR
    )
}

fn all_registrants(t: u8) -> bool {
    matches!(t, TYPE_WE_AR | TYPE_EA_AR)
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

/// The persistent reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The holder; for the all-registrants types every registrant holds it
    /// and this is the nexus that reserved.
    pub holder: Nexus,
    pub rtype: u8,
}

/// Persistent reservation state of one LU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pr {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub reservation: Option<Reservation>,
    pub aptpl: bool,
}

/// Most registrations kept; a REGISTER beyond it gets INSUFFICIENT
/// REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 256;

impl Pr {
    fn reg(&self, n: &Nexus) -> Option<&Registration> {
        self.regs.iter().find(|r| &r.nexus == n)
    }

    fn is_holder(&self, n: &Nexus) -> bool {
        match &self.reservation {
            Some(r) if all_registrants(r.rtype) => self.reg(n).is_some(),
            Some(r) => &r.holder == n,
            None => false,
        }
    }

    /// Drop `n`'s registration, and the reservation with it when `n` held
    /// it (for the all-registrants types: when it was the last registrant).
    fn unregister(&mut self, n: &Nexus) {
        self.regs.retain(|r| &r.nexus != n);
        let release = match &self.reservation {
            Some(r) if all_registrants(r.rtype) => self.regs.is_empty(),
            Some(r) => &r.holder == n,
            None => false,
        };
        if release {
            self.reservation = None;
        }
    }

    /// The APTPL file: one line per item, fields separated by spaces.
    pub fn save(&self) -> String {
        let mut s = format!("bootlun-pr 1\ngeneration {}\n", self.generation);
        for r in &self.regs {
            s += &format!(
                "reg {:016x} {} {} {}\n",
                r.key,
                r.nexus.target_port,
                hex(&r.nexus.transport_id),
                hex(r.nexus.initiator_port.as_bytes())
            );
        }
        if let Some(res) = &self.reservation {
            s += &format!(
                "res {} {} {} {}\n",
                res.rtype,
                res.holder.target_port,
                hex(&res.holder.transport_id),
                hex(res.holder.initiator_port.as_bytes())
            );
        }
        s
    }

    /// Parse [`save`](Self::save)'s output. The file may have been edited
    /// or damaged: anything unexpected is an error, never a panic.
    pub fn load(text: &str) -> Result<Pr, String> {
        let mut lines = text.lines();
        if lines.next() != Some("bootlun-pr 1") {
            return Err("not a bootlun persistent reservation file".into());
        }
        let mut pr = Pr {
            aptpl: true,
            ..Pr::default()
        };
        let nexus = |port: &str, tid: &str, name: &str| -> Result<Nexus, String> {
            let initiator_port = String::from_utf8(unhex(name)?)
                .map_err(|_| "initiator port name is not UTF-8".to_string())?;
            Ok(Nexus {
                initiator_port,
                transport_id: unhex(tid)?,
                target_port: port.parse().map_err(|_| format!("bad port {port:?}"))?,
            })
        };
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            let bad = || format!("line {}: cannot parse {line:?}", i + 2);
            match f.as_slice() {
                ["generation", g] => pr.generation = g.parse().map_err(|_| bad())?,
                ["reg", key, port, tid, name] => {
                    if pr.regs.len() >= MAX_REGISTRATIONS {
                        return Err(bad());
                    }
                    pr.regs.push(Registration {
                        key: u64::from_str_radix(key, 16).map_err(|_| bad())?,
                        nexus: nexus(port, tid, name)?,
                    })
                }
                ["res", t, port, tid, name] => {
                    let rtype: u8 = t.parse().map_err(|_| bad())?;
                    if !valid_type(rtype) {
                        return Err(bad());
                    }
                    pr.reservation = Some(Reservation {
                        rtype,
                        holder: nexus(port, tid, name)?,
                    });
                }
                [""] => {}
                _ => return Err(bad()),
            }
        }
        Ok(pr)
    }
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s == "-" {
        return Ok(Vec::new());
    }
    if !s.len().is_multiple_of(2) || s.len() > 1024 {
        return Err(format!("bad hex field of {} characters", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad hex digit".to_string())
        })
        .collect()
}

/// How a command touches the medium, for the conflict check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed under every reservation (SPC-4 table 48: INQUIRY, TEST UNIT
    /// READY, READ CAPACITY, PERSISTENT RESERVE IN/OUT, ...).
    Free,
    /// Reads: conflicts only with the exclusive-access types.
    Read,
    /// Writes and anything that changes the LU.
    Write,
}

fn access(opcode: u8) -> Access {
    match opcode {
        op::TEST_UNIT_READY
        | op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::READ_CAPACITY_10
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::MAINTENANCE_IN
        | op::RECEIVE_COPY_RESULTS => Access::Free,
        op::SERVICE_ACTION_IN_16 => Access::Free,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12
        | op::PREVENT_ALLOW_MEDIUM_REMOVAL => Access::Read,
        _ => Access::Write,
    }
}

/// RESERVATION CONFLICT when a reservation held through another nexus
/// forbids `cdb` to `nexus` (SPC-2 7.21, SPC-4 5.9.1.3).
pub fn conflicts(state: &LuState, nexus: &Nexus, cdb: &Cdb) -> bool {
    if !state.any_reservation() {
        return false;
    }
    let opcode = cdb.opcode();
    let g = state.lock();
    if let Some(holder) = &g.spc2 {
        if holder == nexus {
            return false;
        }
        // An SPC-2 reservation leaves others only what identifies the LU
        // and RELEASE (answered GOOD without effect).
        return !matches!(
            opcode,
            op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::RELEASE_6 | op::RELEASE_10
        );
    }
    let Some(res) = &g.pr.reservation else {
        return false;
    };
    // SPC-2 RESERVE and RELEASE meet a persistent reservation: conflict.
    if matches!(
        opcode,
        op::RESERVE_6 | op::RESERVE_10 | op::RELEASE_6 | op::RELEASE_10
    ) {
        return true;
    }
    if g.pr.is_holder(nexus) {
        return false;
    }
    // SERVICE ACTION IN(16): READ CAPACITY is free, GET LBA STATUS reads.
    let a = if opcode == op::SERVICE_ACTION_IN_16
        && u16::from(cdb.service_action()) == op::SA_GET_LBA_STATUS
    {
        Access::Read
    } else {
        access(opcode)
    };
    let registered = g.pr.reg(nexus).is_some();
    match (res.rtype, a) {
        (_, Access::Free) => false,
        (TYPE_WE, Access::Read) => false,
        (TYPE_WE, Access::Write) | (TYPE_EA, _) => true,
        (TYPE_WE_RO | TYPE_WE_AR, Access::Read) => false,
        (TYPE_WE_RO | TYPE_WE_AR, Access::Write) => !registered,
        (TYPE_EA_RO | TYPE_EA_AR, _) => !registered,
        _ => true,
    }
}

// ----------------------------------------------------------------------
// SPC-2 RESERVE / RELEASE

/// RESERVE(6) and RESERVE(10) (SPC-2 7.21): reserve the whole LU for this
/// nexus. Third-party and extent reservations are not supported (the CDB
/// USAGE DATA rejects their bits). Reserving again from the holder is GOOD.
pub fn reserve(state: &LuState, nexus: &Nexus) -> Result<Outcome, Sense> {
    let mut g = state.lock();
    if !g.pr.regs.is_empty() || g.pr.reservation.is_some() {
        return Ok(Outcome::Conflict);
    }
    match &g.spc2 {
        Some(h) if h != nexus => return Ok(Outcome::Conflict),
        _ => g.spc2 = Some(nexus.clone()),
    }
    state.update_reserved(&g);
    Ok(Outcome::Good)
}

/// RELEASE(6) and RELEASE(10): drop this nexus's reservation; from another
/// nexus (or with none held) a no-op with GOOD status.
pub fn release(state: &LuState, nexus: &Nexus) -> Result<Outcome, Sense> {
    let mut g = state.lock();
    if g.spc2.as_ref() == Some(nexus) {
        g.spc2 = None;
    }
    state.update_reserved(&g);
    Ok(Outcome::Good)
}

// ----------------------------------------------------------------------
// PERSISTENT RESERVE IN

/// PERSISTENT RESERVE IN (SPC-4 6.15): READ KEYS, READ RESERVATION, REPORT
/// CAPABILITIES, READ FULL STATUS; cut to ALLOCATION LENGTH.
pub fn persistent_reserve_in(
    cdb: &Cdb,
    state: &LuState,
    out: &mut Vec<u8>,
) -> Result<Outcome, Sense> {
    let alloc = usize::from(cdb.be16(7));
    let g = state.lock();
    let pr = &g.pr;
    match cdb.service_action() {
        SA_READ_KEYS => {
            out.extend_from_slice(&pr.generation.to_be_bytes());
            out.extend_from_slice(&((pr.regs.len() * 8) as u32).to_be_bytes());
            for r in &pr.regs {
                out.extend_from_slice(&r.key.to_be_bytes());
            }
        }
        SA_READ_RESERVATION => {
            out.extend_from_slice(&pr.generation.to_be_bytes());
            match &pr.reservation {
                None => out.extend_from_slice(&0u32.to_be_bytes()),
                Some(res) => {
                    out.extend_from_slice(&16u32.to_be_bytes());
                    // The all-registrants types report key 0.
                    let key = if all_registrants(res.rtype) {
                        0
                    } else {
                        pr.reg(&res.holder).map_or(0, |r| r.key)
                    };
                    out.extend_from_slice(&key.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 0, 0, res.rtype & 0x0F, 0, 0]);
                }
            }
        }
        SA_REPORT_CAPABILITIES => {
            let ptpl_c = u8::from(state.aptpl_supported());
            let ptpl_a = u8::from(pr.aptpl);
            out.extend_from_slice(&[
                0x00,
                0x08,
                // CRH: RESERVE(6/10) give way to persistent reservations
                // (RESERVATION CONFLICT when any registration exists);
                // ATP_C: ALL_TG_PT is accepted (one target port);
                // PTPL_C: APTPL can be kept across power loss.
                0x10 | 0x04 | ptpl_c,
                // TMV: the type mask is valid; ALLOW COMMANDS 000b.
                0x80 | ptpl_a,
                // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
                0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                // EX_AC_AR
                0x01,
                0,
                0,
            ]);
        }
        SA_READ_FULL_STATUS => {
            out.extend_from_slice(&pr.generation.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            for r in &pr.regs {
                let holder = pr.is_holder(&r.nexus);
                let rtype = pr.reservation.as_ref().map_or(0, |x| x.rtype);
                out.extend_from_slice(&r.key.to_be_bytes());
                out.extend_from_slice(&[0; 4]);
                out.push(u8::from(holder)); // ALL_TG_PT 0, R_HOLDER
                out.push(if holder { rtype & 0x0F } else { 0 });
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&r.nexus.target_port.to_be_bytes());
                let tid = &r.nexus.transport_id;
                out.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                out.extend_from_slice(tid);
            }
            let len = (out.len() - 8) as u32;
            out[4..8].copy_from_slice(&len.to_be_bytes());
        }
        // The opcode table only lets the four service actions through.
        _ => return Err(Sense::invalid_field_in_cdb_at(1, 4)),
    }
    out.truncate(alloc);
    Ok(Outcome::Good)
}

// ----------------------------------------------------------------------
// PERSISTENT RESERVE OUT

/// PARAMETER LIST LENGTH of a PERSISTENT RESERVE OUT CDB.
pub fn prout_param_len(cdb: &Cdb) -> u32 {
    cdb.be32(5)
}

/// ILLEGAL REQUEST / INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h).
fn invalid_release() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x26, 0x04)
}

/// ILLEGAL REQUEST / INSUFFICIENT REGISTRATION RESOURCES (55h/04h).
fn no_registration_resources() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x55, 0x04)
}

/// PERSISTENT RESERVE OUT (SPC-4 6.16) with its parameter list.
pub fn persistent_reserve_out(
    cdb: &Cdb,
    state: &LuState,
    nexus: &Nexus,
    data: &[u8],
) -> Result<Outcome, Sense> {
    let sa = cdb.service_action();
    let scope = cdb.byte(2) >> 4;
    let rtype = cdb.byte(2) & 0x0F;
    let len = prout_param_len(cdb) as usize;
    if sa != SA_REGISTER_AND_MOVE && len != 24 {
        return Err(Sense::parameter_list_length_error());
    }
    if data.len() < 24 || data.len() < len {
        return Err(Sense::parameter_list_length_error());
    }
    let key = u64::from_be_bytes(data[0..8].try_into().unwrap_or([0; 8]));
    let sa_key = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
    let flags = data[20];
    let spec_i_pt = flags & 0x08 != 0;
    let aptpl = flags & 0x01 != 0;
    let param_bit = |byte: u16, bit: u8| Sense {
        field: Some(super::FieldPointer {
            in_cdb: false,
            byte,
            bit: Some(bit),
        }),
        ..Sense::invalid_field_in_parameter_list()
    };
    if spec_i_pt {
        // Registering other I_T nexuses is not supported (SIP_C 0).
        return Err(param_bit(20, 3));
    }
    if aptpl && !state.aptpl_supported() && sa != SA_REGISTER_AND_MOVE {
        return Err(param_bit(20, 0));
    }
    let mut g = state.lock();
    let before = g.pr.clone();
    let r = prout_locked(&mut g, sa, scope, rtype, nexus, key, sa_key, aptpl, data);
    let mut uas = Vec::new();
    if r.is_ok() && g.pr != before {
        persist(state, &g);
        uas = unit_attentions(sa, nexus, &before, &g.pr);
    }
    state.update_reserved(&g);
    drop(g);
    for (sense, to) in uas {
        state.raise_ua_for(sense, &to);
    }
    r
}

/// The unit attentions a PERSISTENT RESERVE OUT that changed `before`
/// into `after` owes the other registered I_T nexuses (SPC-4 5.13.11):
/// CLEAR preempts everyone's reservation; PREEMPT takes registrations
/// away, and releases the others' reservation when its type changes;
/// releasing (or unregistering out of) a registrants-only or
/// all-registrants reservation releases it for every other registrant.
fn unit_attentions(sa: u8, me: &Nexus, before: &Pr, after: &Pr) -> Vec<(Sense, Vec<Nexus>)> {
    use super::state::ua;
    let others = |pr: &Pr| -> Vec<Nexus> {
        pr.regs
            .iter()
            .filter(|r| &r.nexus != me)
            .map(|r| r.nexus.clone())
            .collect()
    };
    let shared_type = |t: u8| matches!(t, 5..=8);
    let mut out = Vec::new();
    match sa {
        SA_CLEAR => out.push((ua::RESERVATIONS_PREEMPTED, others(before))),
        SA_PREEMPT | SA_PREEMPT_AND_ABORT => {
            let gone: Vec<Nexus> = before
                .regs
                .iter()
                .filter(|r| &r.nexus != me && after.reg(&r.nexus).is_none())
                .map(|r| r.nexus.clone())
                .collect();
            out.push((ua::REGISTRATIONS_PREEMPTED, gone));
            let was = before.reservation.as_ref().map(|r| r.rtype);
            let now = after.reservation.as_ref().map(|r| r.rtype);
            if was.is_some() && was != now {
                out.push((ua::RESERVATIONS_RELEASED, others(after)));
            }
        }
        SA_RELEASE | SA_REGISTER | SA_REGISTER_AND_IGNORE => {
            let released = before
                .reservation
                .as_ref()
                .is_some_and(|r| shared_type(r.rtype))
                && after.reservation.is_none();
            if released {
                out.push((ua::RESERVATIONS_RELEASED, others(after)));
            }
        }
        _ => {}
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn prout_locked(
    g: &mut Inner,
    sa: u8,
    scope: u8,
    rtype: u8,
    nexus: &Nexus,
    key: u64,
    sa_key: u64,
    aptpl: bool,
    data: &[u8],
) -> Result<Outcome, Sense> {
    if g.spc2.as_ref().is_some_and(|h| h != nexus) {
        return Ok(Outcome::Conflict);
    }
    let pr = &mut g.pr;
    let mine = pr.reg(nexus).map(|r| r.key);
    // Everything but the REGISTER flavours needs a registration whose key
    // matches RESERVATION KEY.
    let check_key = || -> Option<Outcome> {
        match mine {
            Some(k) if k == key => None,
            _ => Some(Outcome::Conflict),
        }
    };
    let check_type = || -> Result<(), Sense> {
        if scope != 0 {
            return Err(Sense::invalid_field_in_cdb_at(2, 7));
        }
        if !valid_type(rtype) {
            return Err(Sense::invalid_field_in_cdb_at(2, 3));
        }
        Ok(())
    };
    match sa {
        SA_REGISTER | SA_REGISTER_AND_IGNORE => {
            if sa == SA_REGISTER && mine.unwrap_or(0) != key {
                return Ok(Outcome::Conflict);
            }
            match (mine, sa_key) {
                (None, 0) => return Ok(Outcome::Good),
                (None, k) => {
                    if pr.regs.len() >= MAX_REGISTRATIONS {
                        return Err(no_registration_resources());
                    }
                    pr.regs.push(super::pr::Registration {
                        nexus: nexus.clone(),
                        key: k,
                    });
                }
                (Some(_), 0) => pr.unregister(nexus),
                (Some(_), k) => {
                    if let Some(r) = pr.regs.iter_mut().find(|r| &r.nexus == nexus) {
                        r.key = k;
                    }
                }
            }
            pr.aptpl = aptpl;
            pr.generation = pr.generation.wrapping_add(1);
        }
        SA_RESERVE => {
            if let Some(c) = check_key() {
                return Ok(c);
            }
            check_type()?;
            match &pr.reservation {
                Some(res) if pr.is_holder(nexus) && res.rtype == rtype => {}
                Some(_) => return Ok(Outcome::Conflict),
                None => {
                    pr.reservation = Some(Reservation {
                        holder: nexus.clone(),
                        rtype,
                    })
                }
            }
        }
        SA_RELEASE => {
            if let Some(c) = check_key() {
                return Ok(c);
            }
            let Some(res) = &pr.reservation else {
                return Ok(Outcome::Good);
            };
            if !pr.is_holder(nexus) {
                return Ok(Outcome::Good);
            }
            if scope != 0 || res.rtype != rtype {
                return Err(invalid_release());
            }
            pr.reservation = None;
        }
        SA_CLEAR => {
            if let Some(c) = check_key() {
                return Ok(c);
            }
            pr.regs.clear();
            pr.reservation = None;
            pr.generation = pr.generation.wrapping_add(1);
        }
        SA_PREEMPT | SA_PREEMPT_AND_ABORT => {
            if let Some(c) = check_key() {
                return Ok(c);
            }
            check_type()?;
            if !preempt(pr, nexus, rtype, sa_key)? {
                return Ok(Outcome::Conflict);
            }
            if pr.reg(nexus).is_none() {
                // Preempting one's own key removes oneself: impossible to
                // leave a reservation without its holder registered.
                if pr.reservation.as_ref().is_some_and(|r| &r.holder == nexus) {
                    pr.reservation = None;
                }
            }
            pr.generation = pr.generation.wrapping_add(1);
        }
        SA_REGISTER_AND_MOVE => {
            return register_and_move(pr, nexus, key, sa_key, rtype, scope, data)
        }
        _ => return Err(Sense::invalid_field_in_cdb_at(1, 4)),
    }
    Ok(Outcome::Good)
}

/// PREEMPT (SPC-4 5.9.11.4): remove the registrations with SERVICE ACTION
/// RESERVATION KEY and, when they held the reservation, take it over with
/// the new type. `Ok(false)`: no registration has that key (RESERVATION
/// CONFLICT).
fn preempt(pr: &mut Pr, nexus: &Nexus, rtype: u8, sa_key: u64) -> Result<bool, Sense> {
    let bad_key = || Sense {
        field: Some(super::FieldPointer {
            in_cdb: false,
            byte: 8,
            bit: Some(7),
        }),
        ..Sense::invalid_field_in_parameter_list()
    };
    let take = |pr: &mut Pr| {
        pr.reservation = Some(Reservation {
            holder: nexus.clone(),
            rtype,
        })
    };
    match pr.reservation.clone() {
        Some(res) if all_registrants(res.rtype) && sa_key == 0 => {
            pr.regs.retain(|r| &r.nexus == nexus);
            take(pr);
            Ok(true)
        }
        Some(res) if !all_registrants(res.rtype) => {
            let holder_key = pr.reg(&res.holder).map(|r| r.key);
            if holder_key == Some(sa_key) {
                pr.regs.retain(|r| r.key != sa_key || &r.nexus == nexus);
                take(pr);
                return Ok(true);
            }
            if sa_key == 0 {
                return Err(bad_key());
            }
            Ok(remove_key(pr, nexus, sa_key))
        }
        _ => {
            if sa_key == 0 {
                return Err(bad_key());
            }
            Ok(remove_key(pr, nexus, sa_key))
        }
    }
}

/// Remove every other nexus registered with `key`; false when no
/// registration has it.
fn remove_key(pr: &mut Pr, nexus: &Nexus, key: u64) -> bool {
    if !pr.regs.iter().any(|r| r.key == key) {
        return false;
    }
    let gone: Vec<Nexus> = pr
        .regs
        .iter()
        .filter(|r| r.key == key && &r.nexus != nexus)
        .map(|r| r.nexus.clone())
        .collect();
    for n in &gone {
        pr.unregister(n);
    }
    true
}

/// REGISTER AND MOVE (SPC-4 5.9.9): the holder registers another I_T nexus,
/// named by a TransportID, and moves the reservation to it.
fn register_and_move(
    pr: &mut Pr,
    nexus: &Nexus,
    key: u64,
    sa_key: u64,
    rtype: u8,
    scope: u8,
    data: &[u8],
) -> Result<Outcome, Sense> {
    match pr.reg(nexus) {
        Some(r) if r.key == key => {}
        _ => return Ok(Outcome::Conflict),
    }
    if scope != 0 || !valid_type(rtype) {
        return Err(Sense::invalid_field_in_cdb_at(2, 3));
    }
    let Some(res) = pr.reservation.clone() else {
        return Ok(Outcome::Conflict);
    };
    if all_registrants(res.rtype) || res.holder != *nexus {
        return Ok(Outcome::Conflict);
    }
    if sa_key == 0 {
        return Err(Sense::invalid_field_in_parameter_list());
    }
    // Bytes 18-19: RELATIVE TARGET PORT IDENTIFIER, 20-23: TRANSPORTID
    // LENGTH, then the TransportID.
    let port = u16::from_be_bytes([data[18], data[19]]);
    let tid_len = u32::from_be_bytes([data[20], data[21], data[22], data[23]]) as usize;
    let tid = data
        .get(24..24usize.saturating_add(tid_len))
        .ok_or(Sense::parameter_list_length_error())?;
    let Some(dest_port) = initiator_port_of(tid) else {
        return Err(Sense::invalid_field_in_parameter_list());
    };
    let dest = Nexus {
        initiator_port: dest_port,
        transport_id: tid.to_vec(),
        target_port: port,
    };
    if dest == *nexus {
        return Err(Sense::invalid_field_in_parameter_list());
    }
    match pr.regs.iter_mut().find(|r| r.nexus == dest) {
        Some(r) => r.key = sa_key,
        None => {
            if pr.regs.len() >= MAX_REGISTRATIONS {
                return Err(no_registration_resources());
            }
            pr.regs.push(Registration {
                nexus: dest.clone(),
                key: sa_key,
            })
        }
    }
    pr.reservation = Some(Reservation {
        holder: dest,
        rtype,
    });
    // UNREG 0 keeps the mover registered; UNREG 1 (byte 17 bit 1) drops it.
    if data[17] & 0x02 != 0 {
        pr.regs.retain(|r| &r.nexus != nexus);
    }
    pr.generation = pr.generation.wrapping_add(1);
    Ok(Outcome::Good)
}

/// The initiator port name a TransportID carries: for iSCSI (protocol 5)
/// format 01b, the `name,i,0x<ISID>` string (the transport names its ports
/// the same way). Other formats cannot name one port.
pub fn initiator_port_of(tid: &[u8]) -> Option<String> {
    let (&b0, rest) = tid.split_first()?;
    if b0 & 0x0F != 0x05 || b0 >> 6 != 0x01 {
        return None;
    }
    let body = rest.get(3..)?;
    let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
    let s = std::str::from_utf8(&body[..end]).ok()?;
    let (name, isid) = s.split_once(",i,")?;
    let isid = isid
        .strip_prefix("0x")
        .or_else(|| isid.strip_prefix("0X"))?;
    Some(format!(
        "{},i,0x{}",
        name.to_ascii_lowercase(),
        isid.to_ascii_lowercase()
    ))
}

/// Write (or remove) the APTPL file after a change.
fn persist(state: &LuState, g: &Inner) {
    let Some(path) = state.aptpl_path() else {
        return;
    };
    if !g.pr.aptpl {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
        return;
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(g.pr.save().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(
            "{}: cannot keep persistent reservations: {e}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(n: u8) -> Nexus {
        Nexus {
            initiator_port: format!("iqn.x:{n},i,0x00023d000001"),
            transport_id: vec![0x45, 0, 0, 4, b'a', b'b', 0, 0],
            target_port: 1,
        }
    }

    #[test]
    fn save_load_round_trip() {
        let pr = Pr {
            generation: 7,
            regs: vec![
                Registration {
                    nexus: nx(1),
                    key: 0xAB,
                },
                Registration {
                    nexus: nx(2),
                    key: 0xCD,
                },
            ],
            reservation: Some(Reservation {
                holder: nx(2),
                rtype: TYPE_EA_RO,
            }),
            aptpl: true,
        };
        assert_eq!(Pr::load(&pr.save()).unwrap(), pr);
    }

    #[test]
    fn hostile_files_are_errors() {
        assert!(Pr::load("").is_err());
        assert!(Pr::load("bootlun-pr 1\nreg zz 1 - -\n").is_err());
        assert!(Pr::load("bootlun-pr 1\nres 2 1 - -\n").is_err());
        assert!(Pr::load("bootlun-pr 1\nreg 1 1 abc -\n").is_err());
        assert!(Pr::load("bootlun-pr 1\ngarbage\n").is_err());
    }

    #[test]
    fn transport_id_names_a_port() {
        let mut tid = vec![0x45, 0, 0, 0];
        tid.extend_from_slice(b"IQN.A:B,i,0x00023D000001\0\0\0");
        assert_eq!(
            initiator_port_of(&tid).as_deref(),
            Some("iqn.a:b,i,0x00023d000001")
        );
        assert_eq!(initiator_port_of(&[0x05, 0, 0, 4, b'x', 0, 0, 0]), None);
        assert_eq!(initiator_port_of(&[]), None);
    }
}
