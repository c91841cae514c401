//! INQUIRY (SPC-4 6.6): standard inquiry data and the vital product data
//! pages of a direct-access block device.

use super::cdb::Cdb;
use super::{LuInfo, Outcome, Sense};

/// Peripheral device type: direct-access block device (SBC-3).
pub const DEVICE_TYPE_DISK: u8 = 0x00;
/// PERIPHERAL QUALIFIER 011b + device type 1Fh: no logical unit here.
pub const NO_LOGICAL_UNIT: u8 = 0x7F;

/// VPD page codes.
pub const PAGE_SUPPORTED_VPD: u8 = 0x00;
pub const PAGE_UNIT_SERIAL_NUMBER: u8 = 0x80;
pub const PAGE_DEVICE_IDENTIFICATION: u8 = 0x83;
pub const PAGE_BLOCK_LIMITS: u8 = 0xB0;
pub const PAGE_BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
pub const PAGE_LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;

/// The VPD pages we answer, in ascending order (the SUPPORTED VPD PAGES list).
pub const SUPPORTED_PAGES: [u8; 6] = [
    PAGE_SUPPORTED_VPD,
    PAGE_UNIT_SERIAL_NUMBER,
    PAGE_DEVICE_IDENTIFICATION,
    PAGE_BLOCK_LIMITS,
    PAGE_BLOCK_DEVICE_CHARACTERISTICS,
    PAGE_LOGICAL_BLOCK_PROVISIONING,
];

/// VERSION: the device claims SPC-4.
pub const VERSION_SPC4: u8 = 0x06;

/// Version descriptors: SAM-5, iSCSI (no version claimed), SPC-4, SBC-3.
pub const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// IEEE Company ID used in the NAA 6 designator. bootlun holds no IEEE
/// assignment, so this is a Company ID with the X bit (bit 1 of the first
/// octet) set, the range the IEEE uses for CIDs rather than OUIs. Replace it
/// with a registered identifier if one is ever obtained.
pub const NAA_COMPANY_ID: u32 = 0x02_B0_07;

/// Length of standard INQUIRY data: through the version descriptors and the
/// reserved bytes after them (bytes 0..=95).
pub const STANDARD_LEN: usize = 96;

/// INQUIRY: standard data, or the VPD page selected by EVPD / PAGE CODE.
/// Data-In is cut to ALLOCATION LENGTH (bytes 3-4).
pub fn inquiry(cdb: &Cdb, lu: Option<&LuInfo>, out: &mut Vec<u8>) -> Result<Outcome, Sense> {
    let evpd = cdb.byte(1) & 0x01 != 0;
    let page = cdb.byte(2);
    let alloc = usize::from(cdb.be16(3));
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_field_in_cdb_at(2, 7));
        }
        standard_inquiry(lu, out);
    } else {
        let lu = lu.ok_or(Sense::lun_not_supported())?;
        vpd_page(page, lu, out)?;
    }
    out.truncate(alloc);
    Ok(Outcome::Good)
}

/// Standard INQUIRY data (SPC-4 6.6.2), 96 bytes. Without a logical unit the
/// PERIPHERAL QUALIFIER is 011b and the identification fields are blank.
pub fn standard_inquiry(lu: Option<&LuInfo>, out: &mut Vec<u8>) {
    out.clear();
    out.resize(STANDARD_LEN, 0);
    out[0] = if lu.is_some() {
        DEVICE_TYPE_DISK
    } else {
        NO_LOGICAL_UNIT
    };
    out[1] = 0x00; // RMB = 0: not removable
    out[2] = VERSION_SPC4;
    out[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    out[4] = (STANDARD_LEN - 5) as u8; // ADDITIONAL LENGTH
    out[7] = 0x02; // CMDQUE
    let (vendor, product, revision) =
        lu.map_or(("", "", ""), |l| (l.vendor, l.product, l.revision));
    put_ascii(&mut out[8..16], vendor);
    put_ascii(&mut out[16..32], product);
    put_ascii(&mut out[32..36], revision);
    for (i, d) in VERSION_DESCRIPTORS.iter().enumerate() {
        out[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
}

/// Copy `s` into `field`, space padded; characters outside printable ASCII
/// (SPC-4 4.4.1) become spaces.
pub fn put_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    for (dst, src) in field.iter_mut().zip(s.bytes()) {
        *dst = if (0x20..=0x7E).contains(&src) {
            src
        } else {
            b' '
        };
    }
}

/// Build one VPD page into `out`; unknown page: INVALID FIELD IN CDB.
pub fn vpd_page(page: u8, lu: &LuInfo, out: &mut Vec<u8>) -> Result<(), Sense> {
    out.clear();
    out.extend_from_slice(&[DEVICE_TYPE_DISK, page, 0, 0]);
    match page {
        PAGE_SUPPORTED_VPD => out.extend_from_slice(&SUPPORTED_PAGES),
        PAGE_UNIT_SERIAL_NUMBER => out.extend_from_slice(serial_number(lu).as_bytes()),
        PAGE_DEVICE_IDENTIFICATION => device_identification(lu, out),
        PAGE_BLOCK_LIMITS => block_limits(lu, out),
        PAGE_BLOCK_DEVICE_CHARACTERISTICS => block_device_characteristics(lu, out),
        PAGE_LOGICAL_BLOCK_PROVISIONING => logical_block_provisioning(lu, out),
        _ => return Err(Sense::invalid_field_in_cdb_at(2, 7)),
    }
    let len = (out.len() - 4) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// PRODUCT SERIAL NUMBER: the 16 identity bytes as 32 uppercase hex digits.
pub fn serial_number(lu: &LuInfo) -> String {
    lu.ident.iter().map(|b| format!("{b:02X}")).collect()
}

/// The 16-byte NAA IEEE Registered Extended designator (NAA 6): Company ID,
/// then the first 100 bits of the identity as VENDOR SPECIFIC IDENTIFIER
/// and its EXTENSION.
pub fn naa6(lu: &LuInfo) -> [u8; 16] {
    let ident = u128::from_be_bytes(lu.ident);
    let v = (6u128 << 124) | (u128::from(NAA_COMPANY_ID & 0xFF_FFFF) << 100) | (ident >> 28);
    v.to_be_bytes()
}

/// Device Identification page (SPC-4 7.8.6) body: the NAA 6 designator and a
/// T10 vendor ID designator (vendor + serial), both for the logical unit.
fn device_identification(lu: &LuInfo, out: &mut Vec<u8>) {
    // Designation descriptor: CODE SET, PIV/ASSOCIATION/TYPE, reserved, LENGTH.
    // NAA: code set 1 (binary), association 0 (LU), type 3 (NAA).
    out.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    out.extend_from_slice(&naa6(lu));
    // T10 vendor ID: code set 2 (ASCII), association 0, type 1.
    let serial = serial_number(lu);
    out.extend_from_slice(&[0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
    let mut vendor = [0u8; 8];
    put_ascii(&mut vendor, lu.vendor);
    out.extend_from_slice(&vendor);
    out.extend_from_slice(serial.as_bytes());
}

/// Block Limits page (SBC-3 6.5.3), page length 3Ch: transfer lengths,
/// COMPARE AND WRITE, UNMAP (on thin LUs), WRITE SAME and WRITE ATOMIC
/// limits. WSNZ 0: WRITE SAME with 0 blocks covers the rest of the LU.
fn block_limits(lu: &LuInfo, out: &mut Vec<u8>) {
    use super::lbp;
    let mut p = [0u8; 0x3C];
    // Offsets below are page byte numbers minus the 4-byte header.
    p[1] = lbp::max_caw_blocks(lu) as u8;
    p[4..8].copy_from_slice(&lu.max_transfer_blocks.to_be_bytes());
    p[8..12].copy_from_slice(&lu.optimal_transfer_blocks.to_be_bytes());
    if lu.state.thin() {
        p[16..20].copy_from_slice(&lbp::max_unmap_blocks(lu).to_be_bytes());
        p[20..24].copy_from_slice(&lbp::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        // OPTIMAL UNMAP GRANULARITY: a page or file system block.
        let gran = (4096 / lu.block_size.max(1)).max(1);
        p[24..28].copy_from_slice(&gran.to_be_bytes());
    }
    p[32..40].copy_from_slice(&lu.num_blocks.to_be_bytes());
    p[40..44].copy_from_slice(&lbp::max_atomic_blocks(lu).to_be_bytes());
    // ATOMIC ALIGNMENT 0 (any), ATOMIC TRANSFER LENGTH GRANULARITY 0 (any);
    // no atomic boundaries.
    out.extend_from_slice(&p);
}

/// Block Device Characteristics page (SBC-3 6.5.2), page length 3Ch.
fn block_device_characteristics(lu: &LuInfo, out: &mut Vec<u8>) {
    let mut p = [0u8; 0x3C];
    let rate: u16 = if lu.rotational { 0 } else { 1 }; // 1: non-rotating
    p[0..2].copy_from_slice(&rate.to_be_bytes());
    // WABEREQ 01b: after a SANITIZE BLOCK ERASE, reads of blocks not
    // written since succeed (they return zeros).
    p[3] = 0x40;
    out.extend_from_slice(&p);
}

/// Logical Block Provisioning page (SBC-3 6.5.4). A thin LU (the backend
/// can give space back) reports LBPU, LBPWS and LBPWS10 (UNMAP and WRITE
/// SAME with UNMAP), LBPRZ when deallocated blocks read as zeros, and
/// PROVISIONING TYPE thin; otherwise the LU is fully provisioned.
fn logical_block_provisioning(lu: &LuInfo, out: &mut Vec<u8>) {
    if lu.state.thin() {
        let lbprz = if lu.state.lbprz() { 0x04 } else { 0 };
        out.extend_from_slice(&[0, 0x80 | 0x40 | 0x20 | lbprz, 0x02, 0]);
    } else {
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn lu() -> LuInfo {
        LuInfo {
            block_size: 512,
            num_blocks: 1 << 20,
            read_only: false,
            write_cache: true,
            ident: [
                0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54,
                0x32, 0x10,
            ],
            vendor: "BOOTLUN",
            product: "Disk",
            revision: "0.1",
            max_transfer_blocks: 2048,
            optimal_transfer_blocks: 256,
            rotational: false,
            state: Default::default(),
        }
    }

    fn run(cdb: [u8; 6], lu: Option<&LuInfo>) -> (Result<Outcome, Sense>, Vec<u8>) {
        let mut out = Vec::new();
        let c = Cdb::parse(&cdb).unwrap();
        let r = inquiry(&c, lu, &mut out);
        (r, out)
    }

    #[test]
    fn standard_data() {
        let l = lu();
        let (r, d) = run([0x12, 0, 0, 0x01, 0x00, 0], Some(&l));
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d.len(), 96);
        assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x00, 0x00, 0x02]);
        assert_eq!(&d[8..16], b"BOOTLUN ");
        assert_eq!(&d[16..32], b"Disk            ");
        assert_eq!(&d[32..36], b"0.1 ");
        assert_eq!(
            &d[58..66],
            &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
        );
        assert!(d[66..].iter().all(|&b| b == 0));
    }

    #[test]
    fn standard_data_is_cut_to_allocation_length() {
        let l = lu();
        for alloc in [0u8, 1, 5, 36, 95] {
            let (r, d) = run([0x12, 0, 0, 0, alloc, 0], Some(&l));
            assert_eq!(r, Ok(Outcome::Good));
            assert_eq!(d.len(), usize::from(alloc));
        }
        let (_, d255) = run([0x12, 0, 0, 0, 255, 0], Some(&l));
        let (_, d256) = run([0x12, 0, 0, 1, 0, 0], Some(&l));
        assert_eq!(d255, d256);
    }

    #[test]
    fn missing_lun_standard_data() {
        let (r, d) = run([0x12, 0, 0, 0, 96, 0], None);
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d[0], 0x7F);
        assert_eq!(d[2], 0x06);
        assert_eq!(&d[8..36], &[b' '; 28]);
        let (r, _) = run([0x12, 1, 0x80, 0, 255, 0], None);
        assert_eq!(r, Err(Sense::lun_not_supported()));
    }

    #[test]
    fn identification_strings_are_sanitized() {
        let mut l = lu();
        l.vendor = "ABCDEFGHIJ";
        l.product = "caf\u{e9}\t";
        let (_, d) = run([0x12, 0, 0, 0, 96, 0], Some(&l));
        assert_eq!(&d[8..16], b"ABCDEFGH");
        assert!(d[16..32].iter().all(|&b| (0x20..=0x7E).contains(&b)));
        assert_eq!(&d[16..19], b"caf");
    }

    #[test]
    fn evpd_zero_with_page_code_is_invalid() {
        let l = lu();
        let (r, d) = run([0x12, 0, 1, 1, 0, 0], Some(&l));
        assert_eq!(r, Err(Sense::invalid_field_in_cdb_at(2, 7)));
        assert!(d.is_empty());
    }

    #[test]
    fn unknown_vpd_page_is_invalid() {
        let l = lu();
        for page in [0x01, 0x81, 0x86, 0xB3, 0xFF] {
            let (r, _) = run([0x12, 1, page, 0, 255, 0], Some(&l));
            assert_eq!(
                r,
                Err(Sense::invalid_field_in_cdb_at(2, 7)),
                "page {page:#x}"
            );
        }
    }

    #[test]
    fn supported_pages() {
        let l = lu();
        let (r, d) = run([0x12, 1, 0x00, 0, 255, 0], Some(&l));
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d, vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
        for page in SUPPORTED_PAGES {
            let (r, d) = run([0x12, 1, page, 0, 255, 0], Some(&l));
            assert_eq!(r, Ok(Outcome::Good));
            assert_eq!(d[1], page);
            assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])) + 4, d.len());
        }
    }

    #[test]
    fn unit_serial_number() {
        let l = lu();
        let (_, d) = run([0x12, 1, 0x80, 0, 255, 0], Some(&l));
        assert_eq!(&d[..4], &[0, 0x80, 0, 32]);
        assert_eq!(&d[4..], b"0123456789ABCDEFFEDCBA9876543210");
    }

    #[test]
    fn device_identification_designators() {
        let l = lu();
        let (_, d) = run([0x12, 1, 0x83, 0, 255, 0], Some(&l));
        assert_eq!(&d[..4], &[0, 0x83, 0, 20 + 44]);
        assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 16]);
        assert_eq!(d[8] >> 4, 6);
        // NAA 6 | company ID 02B007 | ident >> 28
        assert_eq!(
            &d[8..24],
            &[
                0x60, 0x2B, 0x00, 0x70, 0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xFF, 0xED, 0xCB,
                0xA9, 0x87
            ]
        );
        assert_eq!(&d[24..28], &[0x02, 0x01, 0x00, 40]);
        assert_eq!(&d[28..36], b"BOOTLUN ");
        assert_eq!(&d[36..68], b"0123456789ABCDEFFEDCBA9876543210");
    }

    #[test]
    fn naa_is_stable_and_depends_on_ident() {
        let a = lu();
        let mut b = lu();
        assert_eq!(naa6(&a), naa6(&b));
        b.ident[0] ^= 1;
        assert_ne!(naa6(&a), naa6(&b));
    }

    #[test]
    fn block_limits_page() {
        let l = lu();
        let (_, d) = run([0x12, 1, 0xB0, 0, 64, 0], Some(&l));
        assert_eq!(d.len(), 64);
        assert_eq!(&d[..4], &[0, 0xB0, 0, 0x3C]);
        assert_eq!(d[4], 0); // WSNZ 0
        assert_eq!(d[5], 255); // MAXIMUM COMPARE AND WRITE LENGTH
        assert_eq!(&d[8..12], &2048u32.to_be_bytes());
        assert_eq!(&d[12..16], &256u32.to_be_bytes());
        // Fully provisioned: no UNMAP limits.
        assert!(d[16..36].iter().all(|&b| b == 0));
        assert_eq!(&d[36..44], &(1u64 << 20).to_be_bytes()); // WRITE SAME
        assert_eq!(&d[44..48], &2048u32.to_be_bytes()); // WRITE ATOMIC
        let mut thin = lu();
        thin.state = std::sync::Arc::new(crate::scsi::LuState::with_provisioning(true, true));
        let (_, d) = run([0x12, 1, 0xB0, 0, 64, 0], Some(&thin));
        assert_eq!(&d[20..24], &(1u32 << 20).to_be_bytes()); // MAXIMUM UNMAP LBA COUNT
        assert_eq!(&d[24..28], &256u32.to_be_bytes());
        assert_eq!(&d[28..32], &8u32.to_be_bytes());
        let (_, d) = run([0x12, 1, 0xB2, 0, 64, 0], Some(&thin));
        assert_eq!(d, [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    }

    #[test]
    fn block_device_characteristics_page() {
        let mut l = lu();
        let (_, d) = run([0x12, 1, 0xB1, 0, 255, 0], Some(&l));
        assert_eq!(&d[..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
        assert_eq!(d.len(), 64);
        l.rotational = true;
        let (_, d) = run([0x12, 1, 0xB1, 0, 255, 0], Some(&l));
        assert_eq!(&d[4..6], &[0, 0]);
    }

    #[test]
    fn logical_block_provisioning_page() {
        let l = lu();
        let (_, d) = run([0x12, 1, 0xB2, 0, 255, 0], Some(&l));
        assert_eq!(d, vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn vpd_cut_to_allocation_length() {
        let l = lu();
        let (r, d) = run([0x12, 1, 0x83, 0, 10, 0], Some(&l));
        assert_eq!(r, Ok(Outcome::Good));
        assert_eq!(d.len(), 10);
        assert_eq!(d[3], 64); // PAGE LENGTH still describes the whole page
    }
}
