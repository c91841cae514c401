//! Command dispatch, and the commands that are neither INQUIRY ([`vpd`])
//! nor MODE SENSE ([`mode`]).
//!
//! Every CDB goes through the same checks before its command runs:
//! 1. the opcode (and service action) must be in [`SUPPORTED`]:
//!    INVALID COMMAND OPERATION CODE otherwise (INVALID FIELD IN CDB for an
//!    unsupported service action);
//! 2. the CDB must be as long as its opcode requires, with NACA and LINK
//!    clear in CONTROL: INVALID FIELD IN CDB otherwise;
//! 3. no bit outside the command's CDB USAGE DATA may be set: INVALID FIELD
//!    IN CDB otherwise;
//! 4. commands other than INQUIRY, REPORT LUNS and REQUEST SENSE need a
//!    logical unit: LOGICAL UNIT NOT SUPPORTED otherwise.
//!
//! [`vpd`]: super::vpd
//! [`mode`]: super::mode
//! [`SUPPORTED`]: super::opcode::SUPPORTED

use super::cdb::{self, Cdb, RwFields, VerifyFields};
use super::opcode::{self as op, CommandInfo};
use super::{lbp, mode, pr, vpd, xcopy, CommandCtx, LuInfo, Nexus, Outcome, Sense};

type CmdResult = Result<Outcome, Sense>;

/// Emulate one CDB. Data-In bytes go to `data_in` (cleared first), already
/// cut to the CDB's allocation length; after a CHECK CONDITION it is empty.
/// A command that needs Data-Out answers [`Outcome::DataOut`]: call
/// [`execute_with_data`] with the data.
pub fn execute(cdb: &[u8], ctx: &CommandCtx<'_>, data_in: &mut Vec<u8>) -> Outcome {
    run(cdb, ctx, None, data_in)
}

/// The second half of a command that answered [`Outcome::DataOut`]: the
/// same CDB and context with the Data-Out bytes (possibly fewer than asked
/// for, when the initiator's expected length was shorter).
pub fn execute_with_data(
    cdb: &[u8],
    ctx: &CommandCtx<'_>,
    data_out: &[u8],
    data_in: &mut Vec<u8>,
) -> Outcome {
    run(cdb, ctx, Some(data_out), data_in)
}

fn run(cdb: &[u8], ctx: &CommandCtx<'_>, data: Option<&[u8]>, data_in: &mut Vec<u8>) -> Outcome {
    data_in.clear();
    match dispatch(cdb, ctx, data, data_in) {
        Ok(outcome) => outcome,
        Err(sense) => {
            data_in.clear();
            Outcome::Check(sense)
        }
    }
}

/// The nexus of commands issued without one (unit tests).
fn anonymous() -> &'static Nexus {
    static ANON: std::sync::OnceLock<Nexus> = std::sync::OnceLock::new();
    ANON.get_or_init(Nexus::default)
}

fn dispatch(
    bytes: &[u8],
    ctx: &CommandCtx<'_>,
    data: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> CmdResult {
    let info = op::command_for_cdb(bytes)?;
    let cdb = Cdb::parse(bytes)?;
    cdb.check_reserved(info.usage)?;
    // A LU being sanitized answers only the commands SBC-3 4.11.2 allows.
    if let Some(sense) = ctx
        .lu
        .and_then(|lu| super::sanitize::refusal(&lu.state, cdb.opcode()))
    {
        return Err(sense);
    }
    match cdb.opcode() {
        op::INQUIRY => return vpd::inquiry(&cdb, ctx.lu, out),
        op::REPORT_LUNS => return report_luns(&cdb, ctx.luns, out),
        op::REQUEST_SENSE => return request_sense(&cdb, ctx.lu, out),
        _ => {}
    }
    let lu = ctx.lu.ok_or(Sense::lun_not_supported())?;
    let nexus: &Nexus = match ctx.nexus {
        Some(n) => n,
        None => anonymous(),
    };
    if pr::conflicts(&lu.state, nexus, &cdb) {
        // RELEASE from a non-holder is answered GOOD in `pr::release`.
        return Ok(Outcome::Conflict);
    }
    if let Some(data) = data {
        return with_data(&cdb, lu, ctx, nexus, data);
    }
    let sa = info.service_action;
    match cdb.opcode() {
        op::TEST_UNIT_READY => Ok(Outcome::Good),
        op::START_STOP_UNIT => start_stop_unit(&cdb),
        op::READ_CAPACITY_10 => read_capacity_10(&cdb, lu, out),
        op::SERVICE_ACTION_IN_16 if sa == Some(op::SA_READ_CAPACITY_16) => {
            read_capacity_16(&cdb, lu, out)
        }
        op::SERVICE_ACTION_IN_16 if sa == Some(op::SA_GET_LBA_STATUS) => {
            lbp::get_lba_status(&cdb, lu, ctx, out)
        }
        op::MODE_SENSE_6 => mode::mode_sense_6(&cdb, lu, out),
        op::MODE_SENSE_10 => mode::mode_sense_10(&cdb, lu, out),
        op::MODE_SELECT_6 => mode::mode_select(&cdb, false),
        op::MODE_SELECT_10 => mode::mode_select(&cdb, true),
        op::READ_6 => read(lu, cdb::rw6(&cdb)),
        op::READ_10 => read(lu, cdb::rw10(&cdb)),
        op::READ_12 => read(lu, cdb::rw12(&cdb)),
        op::READ_16 => read(lu, cdb::rw16(&cdb)),
        op::WRITE_6 => write(lu, cdb::rw6(&cdb)),
        op::WRITE_10 => write(lu, cdb::rw10(&cdb)),
        op::WRITE_12 => write(lu, cdb::rw12(&cdb)),
        op::WRITE_16 => write(lu, cdb::rw16(&cdb)),
        op::WRITE_ATOMIC_16 => lbp::write_atomic(&cdb, lu),
        op::WRITE_AND_VERIFY_10 => write_and_verify(lu, cdb::rw10(&cdb)),
        op::WRITE_AND_VERIFY_12 => write_and_verify(lu, cdb::rw12(&cdb)),
        op::WRITE_AND_VERIFY_16 => write_and_verify(lu, cdb::rw16(&cdb)),
        op::VERIFY_10 => verify(lu, cdb::verify10(&cdb)),
        op::VERIFY_12 => verify(lu, cdb::verify12(&cdb)),
        op::VERIFY_16 => verify(lu, cdb::verify16(&cdb)),
        op::PRE_FETCH_10 => pre_fetch(lu, cdb::sync10(&cdb)),
        op::PRE_FETCH_16 => pre_fetch(lu, cdb::sync16(&cdb)),
        op::SYNCHRONIZE_CACHE_10 => synchronize_cache(lu, cdb::sync10(&cdb)),
        op::SYNCHRONIZE_CACHE_16 => synchronize_cache(lu, cdb::sync16(&cdb)),
        op::WRITE_SAME_10 => lbp::write_same(&cdb, lu, ctx, false),
        op::WRITE_SAME_16 => lbp::write_same(&cdb, lu, ctx, true),
        op::UNMAP => lbp::unmap(&cdb, lu),
        op::COMPARE_AND_WRITE => lbp::compare_and_write(&cdb, lu, ctx),
        op::ORWRITE_16 => lbp::orwrite(&cdb, lu),
        op::SANITIZE => lbp::sanitize(&cdb, lu),
        op::RESERVE_6 | op::RESERVE_10 => pr::reserve(&lu.state, nexus),
        op::RELEASE_6 | op::RELEASE_10 => pr::release(&lu.state, nexus),
        op::PERSISTENT_RESERVE_IN => pr::persistent_reserve_in(&cdb, &lu.state, out),
        op::PERSISTENT_RESERVE_OUT => match pr::prout_param_len(&cdb) {
            // Every service action needs at least the 24-byte list.
            n if n < 24 => Err(Sense::parameter_list_length_error()),
            n => Ok(Outcome::DataOut {
                len: n.min(lbp::MAX_DATA_OUT),
            }),
        },
        op::EXTENDED_COPY => xcopy::extended_copy(&cdb, lu),
        op::RECEIVE_COPY_RESULTS => xcopy::receive_copy_results(&cdb, &lu.state, nexus, out),
        op::READ_DEFECT_DATA_10 => read_defect_data(&cdb, false, out),
        op::READ_DEFECT_DATA_12 => read_defect_data(&cdb, true, out),
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => Ok(Outcome::Good),
        op::MAINTENANCE_IN if sa == Some(op::SA_REPORT_SUPPORTED_OPERATION_CODES) => {
            report_supported_operation_codes(&cdb, out)
        }
        _ => Err(Sense::invalid_opcode()),
    }
}

/// The Data-Out half of the commands that take a parameter list or data
/// they process themselves.
fn with_data(
    cdb: &Cdb,
    lu: &LuInfo,
    ctx: &CommandCtx<'_>,
    nexus: &Nexus,
    data: &[u8],
) -> CmdResult {
    match cdb.opcode() {
        op::MODE_SELECT_6 => mode::mode_select_data(false, lu, nexus, data),
        op::MODE_SELECT_10 => mode::mode_select_data(true, lu, nexus, data),
        op::WRITE_SAME_10 => lbp::write_same_data(cdb, lu, false, data),
        op::WRITE_SAME_16 => lbp::write_same_data(cdb, lu, true, data),
        op::UNMAP => lbp::unmap_data(cdb, lu, data),
        op::COMPARE_AND_WRITE => lbp::compare_and_write_data(cdb, lu, ctx, data),
        op::ORWRITE_16 => lbp::orwrite_data(cdb, lu, ctx, data),
        op::SANITIZE => lbp::sanitize_data(cdb, lu, data),
        op::PERSISTENT_RESERVE_OUT => pr::persistent_reserve_out(cdb, &lu.state, nexus, data),
        op::EXTENDED_COPY => xcopy::extended_copy_data(cdb, lu, &lu.state, nexus, data),
        // No other command asked for Data-Out.
        _ => Err(Sense::invalid_field_in_cdb()),
    }
}

/// READ DEFECT DATA(10/12) (SBC-3 5.12, 5.13): no defects are known, so
/// the header with the requested list flags and format and an empty list.
fn read_defect_data(cdb: &Cdb, twelve: bool, out: &mut Vec<u8>) -> CmdResult {
    if twelve {
        let flags = cdb.byte(1) & 0x1F;
        let alloc = cdb.be32(6) as usize;
        out.extend_from_slice(&[0, flags, 0, 0, 0, 0, 0, 0]);
        out.truncate(alloc);
    } else {
        let flags = cdb.byte(2) & 0x1F;
        let alloc = usize::from(cdb.be16(7));
        out.extend_from_slice(&[0, flags, 0, 0]);
        out.truncate(alloc);
    }
    Ok(Outcome::Good)
}

/// LOGICAL BLOCK ADDRESS OUT OF RANGE unless `lba` is a valid LBA and the
/// `blocks` blocks from it all lie within the medium.
pub fn check_range(lu: &LuInfo, lba: u64, blocks: u32) -> Result<(), Sense> {
    if lba >= lu.num_blocks || lu.num_blocks - lba < u64::from(blocks) {
        return Err(Sense::lba_out_of_range());
    }
    Ok(())
}

/// TRANSFER LENGTH above the Block Limits MAXIMUM TRANSFER LENGTH: INVALID
/// FIELD IN CDB (SBC-3 6.5.3).
fn check_transfer_length(lu: &LuInfo, blocks: u32, length_byte: u16) -> Result<(), Sense> {
    if lu.max_transfer_blocks != 0 && blocks > lu.max_transfer_blocks {
        return Err(Sense::invalid_field_in_cdb_at(length_byte, 7));
    }
    Ok(())
}

/// READ(6/10/12/16). RDPROTECT must be 0 (no protection information).
/// DPO is accepted and ignored.
fn read(lu: &LuInfo, f: RwFields) -> CmdResult {
    if f.protect != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    check_range(lu, f.lba, f.blocks)?;
    check_transfer_length(lu, f.blocks, f.length_byte)?;
    if f.blocks == 0 {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::Read {
        lba: f.lba,
        blocks: f.blocks,
        fua: f.fua,
    })
}

/// WRITE(6/10/12/16). WRPROTECT must be 0; a read-only LU answers DATA
/// PROTECT / WRITE PROTECTED.
fn write(lu: &LuInfo, f: RwFields) -> CmdResult {
    if f.protect != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    if lu.write_protected() {
        return Err(Sense::write_protected());
    }
    check_range(lu, f.lba, f.blocks)?;
    check_transfer_length(lu, f.blocks, f.length_byte)?;
    if f.blocks == 0 {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::Write {
        lba: f.lba,
        blocks: f.blocks,
        fua: f.fua,
    })
}

/// WRITE AND VERIFY(10/12/16): a WRITE forced to stable storage. Once the
/// backend has durably written the Data-Out, reading it back can only
/// return the same bytes, so the verification (with or without BYTCHK) is
/// the FUA write itself. The FUA bit position holds BYTCHK's neighbour and
/// is reserved here, so `f.fua` is ignored.
fn write_and_verify(lu: &LuInfo, f: RwFields) -> CmdResult {
    match write(lu, f)? {
        Outcome::Write { lba, blocks, .. } => Ok(Outcome::Write {
            lba,
            blocks,
            fua: true,
        }),
        other => Ok(other),
    }
}

/// VERIFY(10/12/16). BYTCHK 00b: medium verification only
/// (`Verify { bytchk: false }`); 01b: compare with Data-Out
/// (`Verify { bytchk: true }`); 10b and 11b: INVALID FIELD IN CDB.
/// VRPROTECT must be 0.
fn verify(lu: &LuInfo, f: VerifyFields) -> CmdResult {
    if f.vrprotect != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    if f.bytchk > 1 {
        return Err(Sense::invalid_field_in_cdb_at(1, 2));
    }
    check_range(lu, f.lba, f.blocks)?;
    if f.bytchk == 1 {
        check_transfer_length(lu, f.blocks, f.length_byte)?;
    }
    if f.blocks == 0 {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::Verify {
        lba: f.lba,
        blocks: f.blocks,
        bytchk: f.bytchk == 1,
    })
}

/// SYNCHRONIZE CACHE(10/16). NUMBER OF LOGICAL BLOCKS 0 means "through the
/// last LBA". IMMED is accepted; the flush still completes before status.
fn synchronize_cache(lu: &LuInfo, (lba, blocks): (u64, u32)) -> CmdResult {
    check_range(lu, lba, blocks)?;
    Ok(Outcome::Flush)
}

/// PRE-FETCH(10/16) (SBC-3 5.7, 5.8): a cache hint with the same LBA and
/// length layout as SYNCHRONIZE CACHE. Nothing is staged, which SBC-3
/// answers with GOOD (CONDITION MET would promise cached blocks).
fn pre_fetch(lu: &LuInfo, (lba, blocks): (u64, u32)) -> CmdResult {
    check_range(lu, lba, blocks)?;
    Ok(Outcome::Good)
}

/// START STOP UNIT: the medium is always ready and not removable, so every
/// power condition, START and LOEJ combination is simply acknowledged.
fn start_stop_unit(_cdb: &Cdb) -> CmdResult {
    Ok(Outcome::Good)
}

/// The last LBA, or 0 for an empty medium.
fn last_lba(lu: &LuInfo) -> u64 {
    lu.num_blocks.saturating_sub(1)
}

/// READ CAPACITY(10) (SBC-3 5.15): RETURNED LOGICAL BLOCK ADDRESS (FFFFFFFFh
/// when it does not fit) and LOGICAL BLOCK LENGTH. With PMI 0 the LBA field
/// must be 0.
fn read_capacity_10(cdb: &Cdb, lu: &LuInfo, out: &mut Vec<u8>) -> CmdResult {
    let pmi = cdb.byte(8) & 0x01 != 0;
    if !pmi && cdb.be32(2) != 0 {
        return Err(Sense::invalid_field_in_cdb_at(2, 7));
    }
    let lba = u32::try_from(last_lba(lu)).unwrap_or(u32::MAX);
    out.extend_from_slice(&lba.to_be_bytes());
    out.extend_from_slice(&lu.block_size.to_be_bytes());
    Ok(Outcome::Good)
}

/// READ CAPACITY(16) (SBC-3 5.16), 32 bytes cut to ALLOCATION LENGTH: no
/// protection; LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0 (deallocation
/// and GET LBA STATUS work per logical block); LBPME and LBPRZ on thin
/// LUs; LOWEST ALIGNED LBA 0.
fn read_capacity_16(cdb: &Cdb, lu: &LuInfo, out: &mut Vec<u8>) -> CmdResult {
    let pmi = cdb.byte(14) & 0x01 != 0;
    if !pmi && cdb.be64(2) != 0 {
        return Err(Sense::invalid_field_in_cdb_at(2, 7));
    }
    let alloc = cdb.be32(10) as usize;
    out.extend_from_slice(&last_lba(lu).to_be_bytes());
    out.extend_from_slice(&lu.block_size.to_be_bytes());
    out.resize(32, 0);
    if lu.state.thin() {
        out[14] = 0x80 | if lu.state.lbprz() { 0x40 } else { 0 };
    }
    out.truncate(alloc);
    Ok(Outcome::Good)
}

/// REQUEST SENSE (SPC-4 6.29): nothing is ever pending, so NO SENSE, in
/// descriptor format when DESC is set. For a LUN that does not exist the
/// parameter data is LOGICAL UNIT NOT SUPPORTED (SPC-4 6.29, GOOD status).
fn request_sense(cdb: &Cdb, lu: Option<&LuInfo>, out: &mut Vec<u8>) -> CmdResult {
    let desc = cdb.byte(1) & 0x01 != 0;
    let alloc = usize::from(cdb.byte(4));
    // The sense data of a LU that is not ready tells why, with progress
    // (SPC-4 6.39); otherwise there is nothing to report.
    let sense = match lu {
        Some(lu) => match lu.state.sanitize_progress() {
            Some(p) => Sense::sanitize_in_progress(p),
            None if lu.state.sanitize_failed() => Sense::sanitize_failed(),
            None => Sense::no_sense(),
        },
        None => Sense::lun_not_supported(),
    };
    if desc {
        out.extend_from_slice(&sense.descriptor());
    } else {
        out.extend_from_slice(&sense.fixed());
    }
    out.truncate(alloc);
    Ok(Outcome::Good)
}

/// One 8-byte LUN list entry (SAM-5 4.7): peripheral device addressing for
/// LUN < 256, flat space addressing below 16384, extended flat space
/// (long form, 24 bits) beyond. `None` when the LUN cannot be encoded.
pub fn encode_lun(lun: u64) -> Option<[u8; 8]> {
    let mut e = [0u8; 8];
    if lun < 256 {
        e[1] = lun as u8;
    } else if lun < 0x4000 {
        e[0] = 0x40 | (lun >> 8) as u8;
        e[1] = lun as u8;
    } else if lun < 0x100_0000 {
        e[0] = 0xD2;
        e[1..4].copy_from_slice(&(lun as u32).to_be_bytes()[1..]);
    } else {
        return None;
    }
    Some(e)
}

/// REPORT LUNS (SPC-4 6.33). SELECT REPORT 00h and 02h list every
/// configured LUN, 01h (well-known LUs only) lists none; ALLOCATION LENGTH
/// below 16 is INVALID FIELD IN CDB.
fn report_luns(cdb: &Cdb, luns: &[u64], out: &mut Vec<u8>) -> CmdResult {
    let select = cdb.byte(2);
    let alloc = cdb.be32(6) as usize;
    if select > 2 {
        return Err(Sense::invalid_field_in_cdb_at(2, 7));
    }
    if alloc < 16 {
        return Err(Sense::invalid_field_in_cdb_at(6, 7));
    }
    out.extend_from_slice(&[0; 8]);
    if select != 1 {
        for e in luns.iter().filter_map(|&l| encode_lun(l)) {
            out.extend_from_slice(&e);
        }
    }
    let list_len = (out.len() - 8) as u32;
    out[0..4].copy_from_slice(&list_len.to_be_bytes());
    out.truncate(alloc);
    Ok(Outcome::Good)
}

/// Command timeouts descriptor (SPC-4 6.35.4), 12 bytes.
fn timeouts_descriptor(info: &CommandInfo, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x00, 0x0A, 0x00, 0x00]);
    out.extend_from_slice(&0u32.to_be_bytes()); // nominal: not specified
    out.extend_from_slice(&info.recommended_timeout.to_be_bytes());
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), MAINTENANCE IN service
/// action 0Ch. REPORTING OPTIONS 000b: all commands; 001b: one opcode
/// without service actions; 010b: opcode + service action; 011b: either.
/// RCTD adds command timeouts descriptors.
fn report_supported_operation_codes(cdb: &Cdb, out: &mut Vec<u8>) -> CmdResult {
    let rctd = cdb.byte(2) & 0x80 != 0;
    let options = cdb.byte(2) & 0x07;
    let opcode = cdb.byte(3);
    let sa = cdb.be16(4);
    let alloc = cdb.be32(6) as usize;
    let has_sa = op::has_service_actions(opcode);
    // REPORTING OPTIONS is byte 2, bits 2..0
    let bad_options = Sense::invalid_field_in_cdb_at(2, 2);
    match options {
        0 => report_all_commands(rctd, out),
        1 if has_sa => return Err(bad_options),
        1 => report_one_command(op::lookup(opcode, None), rctd, out),
        2 if !has_sa => return Err(bad_options),
        2 => report_one_command(op::lookup(opcode, Some(sa)), rctd, out),
        3 => report_one_command(op::lookup(opcode, has_sa.then_some(sa)), rctd, out),
        _ => return Err(bad_options),
    }
    out.truncate(alloc);
    Ok(Outcome::Good)
}

/// All-commands parameter data: COMMAND DATA LENGTH, then one 8-byte
/// command descriptor (plus timeouts descriptor with RCTD) per command.
fn report_all_commands(rctd: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]);
    for c in op::SUPPORTED {
        let flags = (u8::from(rctd) << 1) | u8::from(c.service_action.is_some());
        out.extend_from_slice(&[c.opcode, 0]);
        out.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&[0, flags]);
        out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
        if rctd {
            timeouts_descriptor(c, out);
        }
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
}

/// One-command parameter data: SUPPORT 011b with the CDB USAGE DATA, or
/// 001b (not supported) with no usage data.
fn report_one_command(info: Option<&CommandInfo>, rctd: bool, out: &mut Vec<u8>) {
    match info {
        Some(c) => {
            out.extend_from_slice(&[0, (u8::from(rctd) << 7) | 0x03]);
            out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            out.extend_from_slice(c.usage);
            if rctd {
                timeouts_descriptor(c, out);
            }
        }
        None => out.extend_from_slice(&[0, 0x01, 0, 0]),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_medium;
