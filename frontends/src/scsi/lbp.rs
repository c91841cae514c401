//! Commands that manage the medium rather than stream data through it:
//! logical block provisioning (UNMAP, WRITE SAME, GET LBA STATUS),
//! COMPARE AND WRITE, ORWRITE, WRITE ATOMIC and SANITIZE.
//!
//! Commands with Data-Out come twice: first without data (CDB checks, then
//! [`Outcome::DataOut`]), then with it. Small read-modify-writes (COMPARE
//! AND WRITE, ORWRITE; at most one pool buffer) run on the spot with the
//! backend's blocking calls; anything that may cover much of the medium is
//! an [`Outcome::Job`] run in bounded steps.

use bootlun_engine::BlockBackend;

use super::cdb::Cdb;
use super::emulate::check_range;
use super::job::{Job, RangeOp, STEP_BYTES};
use super::{CommandCtx, FieldPointer, LuInfo, Outcome, Sense};

type CmdResult = Result<Outcome, Sense>;

/// Largest COMPARE AND WRITE in bytes of one half (compare or write data);
/// both halves travel in one buffer.
pub const MAX_CAW_BYTES: u32 = 128 * 1024;
/// Most UNMAP block descriptors in one command.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest data-out buffer this layer asks for (parameter lists, COMPARE
/// AND WRITE and ORWRITE data).
pub const MAX_DATA_OUT: u32 = 1 << 20;
/// Largest WRITE ATOMIC in bytes. The transport writes an atomic write
/// with one system call from one pool buffer, and refuses one larger than
/// its buffers (only with a `--buffer-size` below this).
pub const MAX_ATOMIC_BYTES: u32 = 1 << 20;

/// MAXIMUM COMPARE AND WRITE LENGTH (Block Limits VPD), in blocks.
pub fn max_caw_blocks(lu: &LuInfo) -> u32 {
    (MAX_CAW_BYTES / lu.block_size.max(1)).clamp(1, 255)
}

/// MAXIMUM UNMAP LBA COUNT: one descriptor may cover the whole LU (it is
/// deallocated in bounded steps).
pub fn max_unmap_blocks(lu: &LuInfo) -> u32 {
    u32::try_from(lu.num_blocks).unwrap_or(u32::MAX)
}

/// MAXIMUM ATOMIC TRANSFER LENGTH, in blocks.
pub fn max_atomic_blocks(lu: &LuInfo) -> u32 {
    let mut n = MAX_ATOMIC_BYTES / lu.block_size.max(1);
    if lu.max_transfer_blocks != 0 {
        n = n.min(lu.max_transfer_blocks);
    }
    n
}

fn backend<'a>(ctx: &CommandCtx<'a>) -> Result<&'a dyn BlockBackend, Sense> {
    ctx.backend.ok_or(Sense::aborted())
}

fn param_field(byte: u16, bit: u8) -> Sense {
    Sense {
        field: Some(FieldPointer {
            in_cdb: false,
            byte,
            bit: Some(bit),
        }),
        ..Sense::invalid_field_in_parameter_list()
    }
}

fn check_writable(lu: &LuInfo) -> Result<(), Sense> {
    if lu.write_protected() {
        return Err(Sense::write_protected());
    }
    Ok(())
}

fn bytes(lu: &LuInfo, lba: u64, blocks: u64) -> (u64, u64) {
    let bs = u64::from(lu.block_size);
    (lba * bs, blocks * bs)
}

// ----------------------------------------------------------------------
// UNMAP

/// UNMAP (SBC-3 5.28): CDB checks; the descriptors come as Data-Out.
/// ANCHOR is refused (ANC_SUP 0); a LU that cannot deallocate (LBPU 0)
/// refuses the command.
pub fn unmap(cdb: &Cdb, lu: &LuInfo) -> CmdResult {
    if !lu.state.thin() {
        return Err(Sense::invalid_opcode());
    }
    if cdb.byte(1) & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 0));
    }
    check_writable(lu)?;
    let len = u32::from(cdb.be16(7));
    if len == 0 {
        return Ok(Outcome::Good);
    }
    if len < 8 {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(Outcome::DataOut {
        len: len.min(8 + 16 * MAX_UNMAP_DESCRIPTORS),
    })
}

/// UNMAP with its parameter list: every descriptor checked first, then one
/// job deallocates them all.
pub fn unmap_data(cdb: &Cdb, lu: &LuInfo, data: &[u8]) -> CmdResult {
    let plen = usize::from(cdb.be16(7));
    if data.len() < 8 || plen < 8 {
        return Err(Sense::parameter_list_length_error());
    }
    let desc_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let avail = data.len().min(plen) - 8;
    let desc_len = desc_len.min(avail) / 16 * 16;
    if desc_len / 16 > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(param_field(2, 7));
    }
    let mut ranges = Vec::new();
    for (i, d) in data[8..8 + desc_len].chunks_exact(16).enumerate() {
        let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
        let n = u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4]));
        if n == 0 {
            continue;
        }
        if n > max_unmap_blocks(lu) {
            return Err(param_field((8 + i * 16 + 8) as u16, 7));
        }
        check_range(lu, lba, n)?;
        ranges.push(bytes(lu, lba, u64::from(n)));
    }
    if ranges.is_empty() {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::Job(Box::new(Job::ranges(
        RangeOp::Discard,
        ranges,
        false,
    ))))
}

// ----------------------------------------------------------------------
// WRITE SAME

/// The fields of WRITE SAME(10/16).
#[derive(Debug, Clone, Copy)]
pub struct WriteSame {
    pub lba: u64,
    pub blocks: u64,
    pub unmap: bool,
}

fn write_same_fields(cdb: &Cdb, sixteen: bool) -> WriteSame {
    let (lba, blocks) = if sixteen {
        (cdb.be64(2), u64::from(cdb.be32(10)))
    } else {
        (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)))
    };
    WriteSame {
        lba,
        blocks,
        unmap: cdb.byte(1) & 0x08 != 0,
    }
}

/// WRITE SAME(10/16) (SBC-3 5.41, 5.42): CDB checks, then one block of
/// Data-Out. NUMBER OF LOGICAL BLOCKS 0 means through the last LBA (WSNZ
/// 0). WRPROTECT and ANCHOR must be 0.
pub fn write_same(cdb: &Cdb, lu: &LuInfo, ctx: &CommandCtx<'_>, sixteen: bool) -> CmdResult {
    let b1 = cdb.byte(1);
    if b1 >> 5 != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    if b1 & 0x10 != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 4));
    }
    // A write-protected LU says so first, UNMAP bit or not (what
    // initiators test to learn that the LU is read-only).
    check_writable(lu)?;
    let f = write_same_fields(cdb, sixteen);
    if f.unmap && !lu.state.thin() {
        return Err(Sense::invalid_field_in_cdb_at(1, 3));
    }
    if f.lba >= lu.num_blocks || lu.num_blocks - f.lba < f.blocks {
        return Err(Sense::lba_out_of_range());
    }
    // NDOB (WRITE SAME(16) only): no Data-Out, the block is all zeros.
    let ndob = sixteen && b1 & 0x01 != 0;
    if ndob {
        if ctx.expected_len != 0 {
            return Err(Sense::invalid_field_in_cdb_at(1, 0));
        }
        let zeros = vec![0u8; lu.block_size as usize];
        return write_same_data(cdb, lu, sixteen, &zeros);
    }
    // Exactly one block of Data-Out: anything else is a malformed command.
    if ctx.expected_len != lu.block_size {
        return Err(Sense::invalid_field_in_cdb());
    }
    Ok(Outcome::DataOut { len: lu.block_size })
}

/// WRITE SAME with its block: deallocate (UNMAP set on a thin LU: the
/// blocks then read as LBPRZ says, whatever the block held), zero, or
/// replicate the block.
pub fn write_same_data(cdb: &Cdb, lu: &LuInfo, sixteen: bool, data: &[u8]) -> CmdResult {
    let bs = lu.block_size as usize;
    if data.len() < bs {
        return Err(Sense::invalid_field_in_cdb());
    }
    let block = &data[..bs];
    let f = write_same_fields(cdb, sixteen);
    let blocks = if f.blocks == 0 {
        lu.num_blocks - f.lba
    } else {
        f.blocks
    };
    let range = bytes(lu, f.lba, blocks);
    let zeros = block.iter().all(|&b| b == 0);
    let op = if f.unmap && lu.state.thin() {
        RangeOp::Discard
    } else if zeros {
        RangeOp::Zero
    } else {
        let per = (STEP_BYTES / bs).max(1);
        let n = per.min(blocks as usize).max(1);
        RangeOp::Fill(block.repeat(n))
    };
    Ok(Outcome::Job(Box::new(Job::ranges(op, vec![range], false))))
}

// ----------------------------------------------------------------------
// GET LBA STATUS

/// Most LBA status descriptors in one answer.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// GET LBA STATUS (SBC-3 5.4): the provisioning status of the blocks from
/// STARTING LOGICAL BLOCK ADDRESS on, one descriptor per run of blocks
/// that are all mapped or all deallocated.
pub fn get_lba_status(
    cdb: &Cdb,
    lu: &LuInfo,
    ctx: &CommandCtx<'_>,
    out: &mut Vec<u8>,
) -> CmdResult {
    let lba = cdb.be64(2);
    let alloc = cdb.be32(10) as usize;
    if lba >= lu.num_blocks {
        return Err(Sense::lba_out_of_range());
    }
    let be = backend(ctx)?;
    let bs = u64::from(lu.block_size);
    out.extend_from_slice(&[0; 8]);
    let wanted = alloc
        .saturating_sub(8)
        .div_ceil(16)
        .clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut at = lba;
    for _ in 0..wanted {
        if at >= lu.num_blocks {
            break;
        }
        let left = (lu.num_blocks - at).min(u64::from(u32::MAX));
        let (mapped, run) = be.allocation(at * bs, left * bs).map_err(|e| {
            tracing::warn!("{}: {e}", be.describe());
            Sense::read_error()
        })?;
        // Runs are reported in whole blocks; a block partly allocated
        // counts as mapped.
        let n = if mapped { run.div_ceil(bs) } else { run / bs };
        let (mapped, n) = if n == 0 { (true, 1) } else { (mapped, n) };
        let n = n.min(left);
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.push(if mapped { 0 } else { 1 });
        out.extend_from_slice(&[0; 3]);
        at += n;
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out.truncate(alloc);
    Ok(Outcome::Good)
}

// ----------------------------------------------------------------------
// COMPARE AND WRITE, ORWRITE

/// COMPARE AND WRITE (SBC-3 5.2): NUMBER OF LOGICAL BLOCKS (byte 13) of
/// verify data followed by as many of write data. WRPROTECT must be 0.
pub fn compare_and_write(cdb: &Cdb, lu: &LuInfo, ctx: &CommandCtx<'_>) -> CmdResult {
    if cdb.byte(1) >> 5 != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    let lba = cdb.be64(2);
    let n = u32::from(cdb.byte(13));
    if n > max_caw_blocks(lu) {
        return Err(Sense::invalid_field_in_cdb_at(13, 7));
    }
    check_writable(lu)?;
    check_range(lu, lba, n)?;
    // The Data-Out must be exactly both halves; a mismatch (including data
    // sent with NUMBER OF LOGICAL BLOCKS 0, e.g. a count that wrapped the
    // one-byte field) is a malformed command.
    let len = 2 * n * lu.block_size;
    if ctx.expected_len != len {
        return Err(Sense::invalid_field_in_cdb_at(13, 7));
    }
    if n == 0 {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::DataOut { len })
}

/// COMPARE AND WRITE with its data: under the LU's read-modify-write lock,
/// read, compare (MISCOMPARE with the offset of the first difference), and
/// write.
pub fn compare_and_write_data(
    cdb: &Cdb,
    lu: &LuInfo,
    ctx: &CommandCtx<'_>,
    data: &[u8],
) -> CmdResult {
    let be = backend(ctx)?;
    let lba = cdb.be64(2);
    let fua = cdb.byte(1) & 0x08 != 0;
    let n = u64::from(cdb.byte(13)) * u64::from(lu.block_size);
    let n = n as usize;
    if data.len() < 2 * n {
        return Err(Sense::invalid_field_in_cdb());
    }
    let (verify, write) = data[..2 * n].split_at(n);
    let off = lba * u64::from(lu.block_size);
    let _rmw = lu.state.rmw_lock();
    let mut cur = vec![0u8; n];
    be.read_at(&mut cur, off).map_err(|e| {
        tracing::warn!("{}: {e}", be.describe());
        Sense::read_error()
    })?;
    if let Some(pos) = cur.iter().zip(verify).position(|(a, b)| a != b) {
        return Err(Sense::miscompare(pos as u64));
    }
    be.write_at(write, off, fua).map_err(|e| {
        tracing::warn!("{}: {e}", be.describe());
        Sense::write_error()
    })?;
    Ok(Outcome::Good)
}

/// ORWRITE(16) (SBC-3 5.9): the fields of WRITE(16); ORPROTECT must be 0.
/// The data must fit one buffer.
pub fn orwrite(cdb: &Cdb, lu: &LuInfo) -> CmdResult {
    if cdb.byte(1) >> 5 != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    let lba = cdb.be64(2);
    let n = cdb.be32(10);
    check_writable(lu)?;
    check_range(lu, lba, n)?;
    if n == 0 {
        return Ok(Outcome::Good);
    }
    let len = u64::from(n) * u64::from(lu.block_size);
    if len > u64::from(MAX_DATA_OUT) {
        return Err(Sense::invalid_field_in_cdb_at(10, 7));
    }
    Ok(Outcome::DataOut { len: len as u32 })
}

/// ORWRITE with its data: each byte on the medium becomes itself OR the
/// byte sent.
pub fn orwrite_data(cdb: &Cdb, lu: &LuInfo, ctx: &CommandCtx<'_>, data: &[u8]) -> CmdResult {
    let be = backend(ctx)?;
    let lba = cdb.be64(2);
    let fua = cdb.byte(1) & 0x08 != 0;
    // Only whole blocks that arrived are written.
    let bs = lu.block_size as usize;
    let want = cdb.be32(10) as usize * bs;
    let n = data.len().min(want) / bs * bs;
    if n == 0 {
        return Ok(Outcome::Good);
    }
    let off = lba * lu.block_size as u64;
    let _rmw = lu.state.rmw_lock();
    let mut cur = vec![0u8; n];
    be.read_at(&mut cur, off).map_err(|_| Sense::read_error())?;
    for (c, d) in cur.iter_mut().zip(&data[..n]) {
        *c |= d;
    }
    be.write_at(&cur, off, fua)
        .map_err(|_| Sense::write_error())?;
    Ok(Outcome::Good)
}

/// WRITE ATOMIC(16) (SBC-4 5.48): a WRITE(16) with a 16-bit TRANSFER
/// LENGTH at byte 12, at most MAXIMUM ATOMIC TRANSFER LENGTH blocks.
/// One pool buffer is written with one call, so readers never see part.
pub fn write_atomic(cdb: &Cdb, lu: &LuInfo) -> CmdResult {
    if cdb.byte(1) >> 5 != 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 7));
    }
    let lba = cdb.be64(2);
    let n = u32::from(cdb.be16(12));
    check_writable(lu)?;
    check_range(lu, lba, n)?;
    if n > max_atomic_blocks(lu) {
        return Err(Sense::invalid_field_in_cdb_at(12, 7));
    }
    if n == 0 {
        return Ok(Outcome::Good);
    }
    Ok(Outcome::WriteAtomic {
        lba,
        blocks: n,
        fua: cdb.byte(1) & 0x08 != 0,
    })
}

// ----------------------------------------------------------------------
// SANITIZE

pub const SANITIZE_OVERWRITE: u8 = 0x01;
pub const SANITIZE_BLOCK_ERASE: u8 = 0x02;
pub const SANITIZE_EXIT_FAILURE_MODE: u8 = 0x1F;

/// SANITIZE (SBC-3 5.19): OVERWRITE takes a parameter list with the
/// initialization pattern; BLOCK ERASE (deallocate, or zero on a LU that
/// cannot) and EXIT FAILURE MODE take none. OVERWRITE and BLOCK ERASE run
/// in the background (`scsi::sanitize`); with IMMED status comes as soon
/// as they start, without it when they end.
pub fn sanitize(cdb: &Cdb, lu: &LuInfo) -> CmdResult {
    let sa = cdb.service_action();
    let plen = u32::from(cdb.be16(7));
    check_writable(lu)?;
    match sa {
        SANITIZE_OVERWRITE => {
            // Header (4 bytes) and a pattern of 1..=block size bytes.
            if plen < 5 || plen > lu.block_size + 4 {
                return Err(Sense::invalid_field_in_cdb_at(7, 7));
            }
            Ok(Outcome::DataOut { len: plen })
        }
        SANITIZE_BLOCK_ERASE | SANITIZE_EXIT_FAILURE_MODE => {
            if plen != 0 {
                return Err(Sense::invalid_field_in_cdb_at(7, 7));
            }
            if sa == SANITIZE_EXIT_FAILURE_MODE {
                lu.state.sanitize_exit_failure();
                return Ok(Outcome::Good);
            }
            let op = if lu.state.thin() && lu.state.lbprz() {
                RangeOp::Discard
            } else {
                RangeOp::Zero
            };
            Ok(Outcome::Job(Box::new(
                Job::ranges(op, vec![bytes(lu, 0, lu.num_blocks)], true).sanitize(immed(cdb)),
            )))
        }
        _ => Err(Sense::invalid_field_in_cdb_at(1, 4)),
    }
}

/// SANITIZE OVERWRITE with its parameter list: INVERT 0, TEST 00b, any
/// OVERWRITE COUNT (one pass writes the pattern; more passes of the same
/// pattern change nothing), the pattern repeated over every block.
pub fn sanitize_data(cdb: &Cdb, lu: &LuInfo, data: &[u8]) -> CmdResult {
    if data.len() < 4 {
        return Err(Sense::parameter_list_length_error());
    }
    if data[0] & 0x80 != 0 {
        return Err(param_field(0, 7));
    }
    if data[0] & 0x60 != 0 {
        return Err(param_field(0, 6));
    }
    if data[0] & 0x1F == 0 {
        return Err(param_field(0, 4));
    }
    let plen = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let bs = lu.block_size as usize;
    if plen == 0 || plen > bs || data.len() != plen + 4 {
        return Err(param_field(2, 7));
    }
    let pattern = &data[4..4 + plen];
    let block: Vec<u8> = pattern.iter().copied().cycle().take(bs).collect();
    let per = (STEP_BYTES / bs).max(1);
    let n = per.min(lu.num_blocks as usize).max(1);
    Ok(Outcome::Job(Box::new(
        Job::ranges(
            RangeOp::Fill(block.repeat(n)),
            vec![bytes(lu, 0, lu.num_blocks)],
            true,
        )
        .sanitize(immed(cdb)),
    )))
}

/// SANITIZE's IMMED bit (CDB byte 1, bit 7).
fn immed(cdb: &Cdb) -> bool {
    cdb.byte(1) & 0x80 != 0
}
