//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.3, 6.20):
//! block-to-block copies inside the logical unit, as hypervisors use to
//! clone disks without moving the data over the network.
//!
//! Target descriptors must be identification descriptors (E4h) naming this
//! LU by one of the designators of its Device Identification VPD page;
//! segments must be block device to block device (02h).

use std::sync::Arc;

use super::cdb::Cdb;
use super::job::{CopySeg, Job};
use super::{vpd, FieldPointer, LuInfo, Outcome, Sense, SenseKey};

/// RECEIVE COPY RESULTS service actions.
pub const SA_COPY_STATUS: u8 = 0x00;
pub const SA_OPERATING_PARAMETERS: u8 = 0x03;

pub const MAX_TARGET_DESCRIPTORS: u16 = 2;
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
const TARGET_DESC_LEN: usize = 32;
const SEGMENT_DESC_LEN: usize = 28;
/// MAXIMUM DESCRIPTOR LIST LENGTH in bytes.
pub const MAX_DESCRIPTOR_LIST: u32 =
    (MAX_TARGET_DESCRIPTORS as u32) * 32 + (MAX_SEGMENT_DESCRIPTORS as u32) * 28;
/// MAXIMUM SEGMENT LENGTH in bytes (a segment is copied in bounded steps,
/// so this only bounds one command).
pub const MAX_SEGMENT_BYTES: u32 = 64 << 20;
/// The descriptor type codes implemented.
const IMPLEMENTED: [u8; 2] = [0x02, 0xE4];

fn param_err(asc: u8, ascq: u8, byte: u16) -> Sense {
    Sense {
        field: Some(FieldPointer {
            in_cdb: false,
            byte,
            bit: None,
        }),
        ..Sense::new(SenseKey::IllegalRequest, asc, ascq)
    }
}

/// EXTENDED COPY: the PARAMETER LIST LENGTH (bytes 10-13); 0 is GOOD.
pub fn extended_copy(cdb: &Cdb, lu: &LuInfo) -> Result<Outcome, Sense> {
    let len = cdb.be32(10);
    if len == 0 {
        return Ok(Outcome::Good);
    }
    if lu.write_protected() {
        return Err(Sense::write_protected());
    }
    if len > 16 + MAX_DESCRIPTOR_LIST {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(Outcome::DataOut { len })
}

/// EXTENDED COPY with its parameter list: check every descriptor, then
/// copy as a job; the result is kept for RECEIVE COPY RESULTS.
pub fn extended_copy_data(
    cdb: &Cdb,
    lu: &LuInfo,
    state: &Arc<super::LuState>,
    nexus: &super::Nexus,
    data: &[u8],
) -> Result<Outcome, Sense> {
    let plen = (cdb.be32(10) as usize).min(data.len());
    let data = &data[..plen];
    if data.len() < 16 {
        return Err(Sense::parameter_list_length_error());
    }
    let list_id = data[0];
    let usage = (data[1] >> 3) & 0x03;
    if data[1] & 0x20 != 0 {
        // STR: a sequential striped copy is not supported.
        return Err(param_err(0x26, 0x00, 1));
    }
    // LIST ID USAGE 11b needs LIST IDENTIFIER 0; 01b is reserved.
    if usage == 0x01 || (usage == 0x03 && list_id != 0) {
        return Err(param_err(0x26, 0x00, 1));
    }
    let tlen = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let slen = u32::from_be_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let inline = u32::from_be_bytes([data[12], data[13], data[14], data[15]]);
    if inline != 0 {
        return Err(param_err(0x26, 0x00, 12));
    }
    if tlen % TARGET_DESC_LEN != 0 {
        return Err(param_err(0x26, 0x00, 2));
    }
    if tlen / TARGET_DESC_LEN > usize::from(MAX_TARGET_DESCRIPTORS) {
        return Err(param_err(0x26, 0x06, 2)); // TOO MANY TARGET DESCRIPTORS
    }
    if slen / SEGMENT_DESC_LEN > usize::from(MAX_SEGMENT_DESCRIPTORS) {
        return Err(param_err(0x26, 0x08, 8)); // TOO MANY SEGMENT DESCRIPTORS
    }
    if 16 + tlen + slen > data.len() {
        return Err(Sense::parameter_list_length_error());
    }
    let in_use = usage != 0x03
        && state
            .copy_result(nexus, list_id)
            .is_some_and(|r| r.status == 0);
    if in_use {
        // OPERATION IN PROGRESS (00h/16h)
        return Err(param_err(0x00, 0x16, 0));
    }
    // Target descriptors: each must name this LU.
    let mut targets = Vec::new();
    for (i, d) in data[16..16 + tlen]
        .chunks_exact(TARGET_DESC_LEN)
        .enumerate()
    {
        let at = (16 + i * TARGET_DESC_LEN) as u16;
        if d[0] != 0xE4 {
            // UNSUPPORTED TARGET DESCRIPTOR TYPE CODE
            return Err(param_err(0x26, 0x07, at));
        }
        if d[1] & 0x1F != 0 {
            // Only direct-access block devices.
            return Err(param_err(0x26, 0x00, at + 1));
        }
        if d[1] & 0x20 != 0 {
            // NUL: a null device target is not supported.
            return Err(param_err(0x26, 0x00, at + 1));
        }
        let bs = u32::from_be_bytes([0, d[29], d[30], d[31]]);
        if bs != lu.block_size {
            return Err(param_err(0x26, 0x00, at + 29));
        }
        if !names_this_lu(&d[4..24], lu) {
            // COPY ABORTED / COPY TARGET DEVICE NOT REACHABLE
            return Err(Sense::new(SenseKey::CopyAborted, 0x0D, 0x02));
        }
        targets.push(());
    }
    // Segment descriptors.
    let mut segs = Vec::new();
    let mut pos = 16 + tlen;
    let end = 16 + tlen + slen;
    let bs = u64::from(lu.block_size);
    while pos < end {
        let d = &data[pos..end];
        if d.len() < 4 {
            return Err(Sense::parameter_list_length_error());
        }
        let at = pos as u16;
        if d[0] != 0x02 {
            // UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE
            return Err(param_err(0x26, 0x09, at));
        }
        let dlen = usize::from(u16::from_be_bytes([d[2], d[3]]));
        if dlen != 0x18 || d.len() < 4 + dlen {
            return Err(param_err(0x26, 0x00, at + 2));
        }
        let src = usize::from(u16::from_be_bytes([d[4], d[5]]));
        let dst = usize::from(u16::from_be_bytes([d[6], d[7]]));
        if src >= targets.len() || dst >= targets.len() {
            // COPY ABORTED / UNREACHABLE COPY TARGET
            return Err(Sense::new(SenseKey::CopyAborted, 0x08, 0x04));
        }
        let n = u64::from(u16::from_be_bytes([d[10], d[11]]));
        let src_lba = u64::from_be_bytes(d[12..20].try_into().unwrap_or([0; 8]));
        let dst_lba = u64::from_be_bytes(d[20..28].try_into().unwrap_or([0; 8]));
        if n * bs > u64::from(MAX_SEGMENT_BYTES) {
            return Err(param_err(0x26, 0x00, at + 10));
        }
        for lba in [src_lba, dst_lba] {
            if lba >= lu.num_blocks || lu.num_blocks - lba < n {
                // COPY ABORTED, no additional sense: the segment does not
                // fit the device (what copy managers report for it).
                return Err(Sense::new(SenseKey::CopyAborted, 0x00, 0x00));
            }
        }
        if n > 0 {
            segs.push(CopySeg {
                src: src_lba * bs,
                dst: dst_lba * bs,
                len: n * bs,
            });
        }
        pos += 4 + dlen;
    }
    let id = (usage != 0x03).then_some(list_id);
    Ok(Outcome::Job(Box::new(Job::copy(
        segs,
        lu.block_size,
        id,
        nexus.initiator_port.clone(),
        Arc::clone(state),
    ))))
}

/// Whether a designation descriptor (code set, type, length, designator)
/// names this LU: its NAA designator, or its T10 vendor ID designator.
fn names_this_lu(desc: &[u8], lu: &LuInfo) -> bool {
    let mut page = Vec::new();
    if vpd::vpd_page(vpd::PAGE_DEVICE_IDENTIFICATION, lu, &mut page).is_err() {
        return false;
    }
    let len = usize::from(desc[3]);
    let Some(want) = desc.get(4..4 + len) else {
        return false;
    };
    let mut p = 4;
    while p + 4 <= page.len() {
        let dl = usize::from(page[p + 3]);
        let Some(d) = page.get(p + 4..p + 4 + dl) else {
            break;
        };
        let same_type = page[p + 1] & 0x0F == desc[1] & 0x0F;
        if same_type && d == want {
            return true;
        }
        p += 4 + dl;
    }
    false
}

/// RECEIVE COPY RESULTS: COPY STATUS of a list identifier (byte 2), or the
/// OPERATING PARAMETERS; cut to ALLOCATION LENGTH (bytes 10-13).
pub fn receive_copy_results(
    cdb: &Cdb,
    state: &super::LuState,
    nexus: &super::Nexus,
    out: &mut Vec<u8>,
) -> Result<Outcome, Sense> {
    let alloc = cdb.be32(10) as usize;
    match cdb.service_action() {
        SA_COPY_STATUS => {
            let r = state
                .copy_result(nexus, cdb.byte(2))
                .ok_or(Sense::invalid_field_in_cdb_at(2, 7))?;
            out.extend_from_slice(&8u32.to_be_bytes());
            out.push(r.status);
            out.extend_from_slice(&r.segments_processed.to_be_bytes());
            out.push(0xF1); // TRANSFER COUNT UNITS: logical blocks
            let blocks = u32::try_from(r.blocks_copied).unwrap_or(u32::MAX);
            out.extend_from_slice(&blocks.to_be_bytes());
        }
        SA_OPERATING_PARAMETERS => {
            let mut p = vec![0u8; 44];
            p[4] = 0x01; // SNLID: list identifiers are kept
            p[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
            p[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            p[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST.to_be_bytes());
            p[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
            // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM
            // DEVICE TRANSFER SIZE: 0.
            p[34..36].copy_from_slice(&1u16.to_be_bytes()); // TOTAL CONCURRENT COPIES
            p[36] = 1; // MAXIMUM CONCURRENT COPIES
            p[37] = 9; // DATA SEGMENT GRANULARITY: 512 bytes (log2)
            p[43] = IMPLEMENTED.len() as u8;
            p.extend_from_slice(&IMPLEMENTED);
            let avail = (p.len() - 4) as u32;
            p[0..4].copy_from_slice(&avail.to_be_bytes());
            out.extend_from_slice(&p);
        }
        _ => return Err(Sense::invalid_field_in_cdb_at(1, 4)),
    }
    out.truncate(alloc);
    Ok(Outcome::Good)
}
