//! MODE SENSE(6) / MODE SENSE(10) (SPC-4 6.11, 6.12): mode parameter
//! header, block descriptor and the Caching, Control and Informational
//! Exceptions Control mode pages; MODE SELECT(6/10). Only the Control
//! page's SWP bit is changeable (software write protect); nothing is
//! savable.

use super::cdb::Cdb;
use super::{LuInfo, Outcome, Sense};

/// Mode page codes.
pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
/// "Return all mode pages".
pub const PAGE_ALL: u8 = 0x3F;
/// Subpage code "all subpages" (with page 3Fh: all pages and subpages).
pub const SUBPAGE_ALL: u8 = 0xFF;

/// DEVICE-SPECIFIC PARAMETER bits for direct-access devices (SBC-3 6.4.1).
pub const DSP_WP: u8 = 0x80;
pub const DSP_DPOFUA: u8 = 0x10;

/// PAGE CONTROL field values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

impl PageControl {
    pub fn from_bits(pc: u8) -> Self {
        match pc & 0x03 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => PageControl::Saved,
        }
    }
}

/// The decoded fields of a MODE SENSE CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSenseRequest {
    /// MODE SENSE(10) (longer header) rather than MODE SENSE(6).
    pub ten: bool,
    /// DBD: no block descriptor.
    pub dbd: bool,
    /// LLBAA (MODE SENSE(10) only): 16-byte block descriptor.
    pub llbaa: bool,
    pub pc: PageControl,
    pub page: u8,
    pub subpage: u8,
    pub alloc: usize,
}

/// MODE SENSE(6): DBD in byte 1, PC/PAGE CODE in byte 2, SUBPAGE in byte 3,
/// ALLOCATION LENGTH in byte 4.
pub fn mode_sense_6(cdb: &Cdb, lu: &LuInfo, out: &mut Vec<u8>) -> Result<Outcome, Sense> {
    let req = ModeSenseRequest {
        ten: false,
        dbd: cdb.byte(1) & 0x08 != 0,
        llbaa: false,
        pc: PageControl::from_bits(cdb.byte(2) >> 6),
        page: cdb.byte(2) & 0x3F,
        subpage: cdb.byte(3),
        alloc: usize::from(cdb.byte(4)),
    };
    mode_sense(&req, lu, out)
}

/// MODE SENSE(10): LLBAA/DBD in byte 1, PC/PAGE CODE in byte 2, SUBPAGE in
/// byte 3, ALLOCATION LENGTH in bytes 7-8.
pub fn mode_sense_10(cdb: &Cdb, lu: &LuInfo, out: &mut Vec<u8>) -> Result<Outcome, Sense> {
    let req = ModeSenseRequest {
        ten: true,
        dbd: cdb.byte(1) & 0x08 != 0,
        llbaa: cdb.byte(1) & 0x10 != 0,
        pc: PageControl::from_bits(cdb.byte(2) >> 6),
        page: cdb.byte(2) & 0x3F,
        subpage: cdb.byte(3),
        alloc: usize::from(cdb.be16(7)),
    };
    mode_sense(&req, lu, out)
}

/// Build the mode parameter data for either CDB size.
pub fn mode_sense(
    req: &ModeSenseRequest,
    lu: &LuInfo,
    out: &mut Vec<u8>,
) -> Result<Outcome, Sense> {
    if req.pc == PageControl::Saved {
        return Err(Sense::saving_parameters_not_supported().at_cdb(2, Some(7)));
    }
    if req.subpage != 0 && req.subpage != SUBPAGE_ALL {
        return Err(Sense::invalid_field_in_cdb_at(3, 7));
    }
    let pages: &[u8] = match req.page {
        PAGE_ALL => &[PAGE_CACHING, PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS],
        PAGE_CACHING => &[PAGE_CACHING],
        PAGE_CONTROL => &[PAGE_CONTROL],
        PAGE_INFORMATIONAL_EXCEPTIONS => &[PAGE_INFORMATIONAL_EXCEPTIONS],
        _ => return Err(Sense::invalid_field_in_cdb_at(2, 5)),
    };
    out.clear();
    let header_len = if req.ten { 8 } else { 4 };
    out.resize(header_len, 0);
    if !req.dbd {
        block_descriptor(lu, req.ten && req.llbaa, out);
    }
    let bd_len = out.len() - header_len;
    for &page in pages {
        mode_page(page, req.pc, lu, out);
    }
    mode_parameter_header(req.ten, lu, bd_len, out);
    out.truncate(req.alloc);
    Ok(Outcome::Good)
}

/// Fill the header at the start of `out` (already holding everything).
fn mode_parameter_header(ten: bool, lu: &LuInfo, bd_len: usize, out: &mut [u8]) {
    let dsp = if lu.write_protected() {
        DSP_WP | DSP_DPOFUA
    } else {
        DSP_DPOFUA
    };
    if ten {
        let mdl = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&mdl.to_be_bytes());
        out[2] = 0; // MEDIUM TYPE
        out[3] = dsp;
        out[4] = u8::from(bd_len == 16); // LONGLBA
        out[6..8].copy_from_slice(&(bd_len as u16).to_be_bytes());
    } else {
        out[0] = (out.len() - 1) as u8;
        out[1] = 0;
        out[2] = dsp;
        out[3] = bd_len as u8;
    }
}

/// Short (8-byte) or long LBA (16-byte) mode parameter block descriptor
/// (SBC-3 6.4.2). The short NUMBER OF LOGICAL BLOCKS saturates at FFFFFFFFh.
fn block_descriptor(lu: &LuInfo, long: bool, out: &mut Vec<u8>) {
    if long {
        out.extend_from_slice(&lu.num_blocks.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&lu.block_size.to_be_bytes());
    } else {
        let n = u32::try_from(lu.num_blocks).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.push(0);
        out.extend_from_slice(&lu.block_size.to_be_bytes()[1..]);
    }
}

/// Control mode page byte 4: SWP.
const CONTROL_SWP: u8 = 0x08;

/// Append one mode page with the values `pc` asks for. Only SWP is
/// changeable.
fn mode_page(page: u8, pc: PageControl, lu: &LuInfo, out: &mut Vec<u8>) {
    let start = out.len();
    match page {
        PAGE_CACHING => out.extend_from_slice(&caching_page(lu)),
        PAGE_CONTROL => {
            let mut p = control_page();
            if pc == PageControl::Current && lu.state.swp() {
                p[4] |= CONTROL_SWP;
            }
            out.extend_from_slice(&p)
        }
        _ => out.extend_from_slice(&informational_exceptions_page()),
    }
    if pc == PageControl::Changeable {
        out[start + 2..].fill(0);
        if page == PAGE_CONTROL {
            out[start + 4] = CONTROL_SWP;
        }
    }
}

/// MODE SELECT(6) / MODE SELECT(10): CDB checks. SP (save pages) is
/// refused, PF must be set for a non-empty list; the list comes as
/// Data-Out.
pub fn mode_select(cdb: &Cdb, ten: bool) -> Result<Outcome, Sense> {
    let len = if ten {
        u32::from(cdb.be16(7))
    } else {
        u32::from(cdb.byte(4))
    };
    if cdb.byte(1) & 0x01 != 0 {
        return Err(Sense::saving_parameters_not_supported().at_cdb(1, Some(0)));
    }
    if len == 0 {
        return Ok(Outcome::Good);
    }
    if cdb.byte(1) & 0x10 == 0 {
        return Err(Sense::invalid_field_in_cdb_at(1, 4));
    }
    Ok(Outcome::DataOut { len })
}

fn param_error(byte: usize) -> Sense {
    Sense {
        field: Some(super::FieldPointer {
            in_cdb: false,
            byte: byte as u16,
            bit: None,
        }),
        ..Sense::invalid_field_in_parameter_list()
    }
}

/// MODE SELECT with its parameter list: every page must be one MODE SENSE
/// reports, with only changeable bits differing from the current values.
/// A block descriptor must repeat the current capacity and block length.
pub fn mode_select_data(
    ten: bool,
    lu: &LuInfo,
    nexus: &super::Nexus,
    data: &[u8],
) -> Result<Outcome, Sense> {
    let hlen = if ten { 8 } else { 4 };
    if data.len() < hlen {
        return Err(Sense::parameter_list_length_error());
    }
    let bd_len = if ten {
        usize::from(u16::from_be_bytes([data[6], data[7]]))
    } else {
        usize::from(data[3])
    };
    let mut p = hlen + bd_len;
    if p > data.len() {
        return Err(Sense::parameter_list_length_error());
    }
    let bd_size = if bd_len == 16 { 16 } else { 8 };
    if bd_len % bd_size != 0 {
        return Err(param_error(if ten { 6 } else { 3 }));
    }
    for d in data[hlen..p].chunks_exact(bd_size) {
        let bs = u32::from_be_bytes([0, d[d.len() - 3], d[d.len() - 2], d[d.len() - 1]]);
        if bs != lu.block_size && bs != 0 {
            return Err(param_error(hlen));
        }
    }
    let mut swp = None;
    while p < data.len() {
        let page = data[p] & 0x3F;
        if data[p] & 0x40 != 0 || p + 2 > data.len() {
            // Subpage format: no subpages are supported.
            return Err(param_error(p));
        }
        let plen = usize::from(data[p + 1]);
        let Some(body) = data.get(p..p + 2 + plen) else {
            return Err(Sense::parameter_list_length_error());
        };
        let mut current = Vec::new();
        let mut changeable = Vec::new();
        if !matches!(
            page,
            PAGE_CACHING | PAGE_CONTROL | PAGE_INFORMATIONAL_EXCEPTIONS
        ) {
            return Err(param_error(p));
        }
        mode_page(page, PageControl::Current, lu, &mut current);
        mode_page(page, PageControl::Changeable, lu, &mut changeable);
        if body.len() != current.len() {
            return Err(param_error(p + 1));
        }
        // Byte 0's PS bit is reserved in MODE SELECT; compare the rest.
        for i in 2..body.len() {
            if (body[i] ^ current[i]) & !changeable[i] != 0 {
                return Err(param_error(p + i));
            }
        }
        if page == PAGE_CONTROL {
            swp = Some(body[4] & CONTROL_SWP != 0);
        }
        p += 2 + plen;
    }
    if let Some(on) = swp {
        if lu.state.swp() != on {
            lu.state.set_swp(on);
            // SPC-4 5.12: the other I_T nexuses learn of the change.
            lu.state
                .raise_ua(super::state::ua::MODE_PARAMETERS_CHANGED, Some(nexus));
        }
    }
    Ok(Outcome::Good)
}

/// Caching mode page (SBC-3 6.4.5), 20 bytes: WCE from the LU, read cache on.
pub fn caching_page(lu: &LuInfo) -> [u8; 20] {
    let mut p = [0u8; 20];
    p[0] = PAGE_CACHING; // PS = 0: not savable
    p[1] = 0x12;
    if lu.write_cache {
        p[2] |= 0x04; // WCE
    }
    p
}

/// Control mode page (SPC-4 7.5.7), 12 bytes: TST 0, D_SENSE 0, QUEUE
/// ALGORITHM MODIFIER 1 (unrestricted reordering), QERR 0, BUSY TIMEOUT
/// PERIOD unlimited.
pub fn control_page() -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = PAGE_CONTROL;
    p[1] = 0x0A;
    p[3] = 0x10; // QUEUE ALGORITHM MODIFIER = 1
    p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes());
    p
}

/// Informational Exceptions Control mode page (SPC-4 7.5.10), 12 bytes:
/// DEXCPT set (no informational exception reporting), MRIE 0.
pub fn informational_exceptions_page() -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = PAGE_INFORMATIONAL_EXCEPTIONS;
    p[1] = 0x0A;
    p[2] = 0x08; // DEXCPT
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lu() -> LuInfo {
        LuInfo {
            block_size: 4096,
            num_blocks: 0x1_0000_0005,
            read_only: false,
            write_cache: true,
            ident: [7; 16],
            vendor: "V",
            product: "P",
            revision: "R",
            max_transfer_blocks: 0,
            optimal_transfer_blocks: 0,
            rotational: true,
            state: Default::default(),
        }
    }

    fn sense6(c: [u8; 6], lu: &LuInfo) -> (Result<Outcome, Sense>, Vec<u8>) {
        let mut out = vec![0xEE; 3];
        let r = mode_sense_6(&Cdb::parse(&c).unwrap(), lu, &mut out);
        (r, out)
    }

    fn sense10(c: [u8; 10], lu: &LuInfo) -> (Result<Outcome, Sense>, Vec<u8>) {
        let mut out = Vec::new();
        let r = mode_sense_10(&Cdb::parse(&c).unwrap(), lu, &mut out);
        (r, out)
    }

    #[test]
    fn all_pages_with_block_descriptor() {
        let l = lu();
        let (r, d) = sense6([0x1A, 0, 0x3F, 0, 255, 0], &l);
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[..4], &[55, 0, DSP_DPOFUA, 8]);
        assert_eq!(&d[4..12], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0x00]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
        assert_eq!(&d[32..36], &[0x0A, 0x0A, 0x00, 0x10]);
        assert_eq!(&d[40..42], &[0xFF, 0xFF]);
        assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08]);
    }

    #[test]
    fn all_pages_and_subpages() {
        let l = lu();
        let (r, d) = sense6([0x1A, 0, 0x3F, 0xFF, 255, 0], &l);
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d.len(), 56);
    }

    #[test]
    fn dbd_omits_block_descriptor() {
        let l = lu();
        let (_, d) = sense6([0x1A, 0x08, 0x08, 0, 255, 0], &l);
        assert_eq!(d.len(), 24);
        assert_eq!(&d[..4], &[23, 0, DSP_DPOFUA, 0]);
        assert_eq!(&d[4..7], &[0x08, 0x12, 0x04]);
    }

    #[test]
    fn write_protect_and_write_cache_bits() {
        let mut l = lu();
        l.read_only = true;
        l.write_cache = false;
        let (_, d) = sense6([0x1A, 0x08, 0x08, 0, 255, 0], &l);
        assert_eq!(d[2], DSP_WP | DSP_DPOFUA);
        assert_eq!(d[6], 0x00);
    }

    #[test]
    fn page_control_values() {
        let l = lu();
        // changeable: nothing can be changed
        let (r, d) = sense6([0x1A, 0x08, 0x48, 0, 255, 0], &l);
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(&d[4..6], &[0x08, 0x12]);
        assert!(d[6..].iter().all(|&b| b == 0));
        // default equals current
        let (_, cur) = sense6([0x1A, 0x08, 0x0A, 0, 255, 0], &l);
        let (_, def) = sense6([0x1A, 0x08, 0x8A, 0, 255, 0], &l);
        assert_eq!(cur, def);
        // saved: not supported
        let (r, d) = sense6([0x1A, 0x08, 0xC8, 0, 255, 0], &l);
        assert_eq!(
            r,
            Err(Sense::saving_parameters_not_supported().at_cdb(2, Some(7)))
        );
        assert_eq!(r.unwrap_err().asc, 0x39);
        let _ = d;
    }

    #[test]
    fn unknown_page_or_subpage() {
        let l = lu();
        for page in [0x00, 0x01, 0x19, 0x3E] {
            let (r, _) = sense6([0x1A, 0, page, 0, 255, 0], &l);
            assert_eq!(
                r,
                Err(Sense::invalid_field_in_cdb_at(2, 5)),
                "page {page:#x}"
            );
        }
        let (r, _) = sense6([0x1A, 0, 0x0A, 0x01, 255, 0], &l);
        assert_eq!(r, Err(Sense::invalid_field_in_cdb_at(3, 7)));
    }

    #[test]
    fn allocation_length_truncates() {
        let l = lu();
        let (r, d) = sense6([0x1A, 0, 0x3F, 0, 4, 0], &l);
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d, vec![55, 0, DSP_DPOFUA, 8]);
        let (_, d) = sense6([0x1A, 0, 0x3F, 0, 0, 0], &l);
        assert!(d.is_empty());
    }

    #[test]
    fn mode_sense_10_short_descriptor() {
        let l = lu();
        let (r, d) = sense10([0x5A, 0, 0x0A, 0, 0, 0, 0, 0, 255, 0], &l);
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d.len(), 8 + 8 + 12);
        assert_eq!(&d[..8], &[0, 26, 0, DSP_DPOFUA, 0, 0, 0, 8]);
        assert_eq!(&d[8..16], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0x00]);
        assert_eq!(&d[16..18], &[0x0A, 0x0A]);
    }

    #[test]
    fn mode_sense_10_long_descriptor() {
        let l = lu();
        let (_, d) = sense10([0x5A, 0x10, 0x1C, 0, 0, 0, 0, 0, 255, 0], &l);
        assert_eq!(d.len(), 8 + 16 + 12);
        assert_eq!(&d[..8], &[0, 34, 0, DSP_DPOFUA, 1, 0, 0, 16]);
        assert_eq!(&d[8..16], &0x1_0000_0005u64.to_be_bytes());
        assert_eq!(&d[16..24], &[0, 0, 0, 0, 0, 0, 0x10, 0]);
        assert_eq!(&d[24..27], &[0x1C, 0x0A, 0x08]);
        // LLBAA with DBD: no descriptor, LONGLBA clear
        let (_, d) = sense10([0x5A, 0x18, 0x1C, 0, 0, 0, 0, 0, 255, 0], &l);
        assert_eq!(&d[..8], &[0, 18, 0, DSP_DPOFUA, 0, 0, 0, 0]);
    }

    #[test]
    fn mode_sense_10_allocation_length() {
        let l = lu();
        let (_, d) = sense10([0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 10, 0], &l);
        assert_eq!(d.len(), 10);
        assert_eq!(&d[..2], &[0, 58]);
    }
}
