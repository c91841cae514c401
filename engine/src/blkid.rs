//! Identify block devices without udev.
//!
//! The boot ramdisk has no udev, so `/dev/disk/by-uuid` and friends do not
//! exist there. This module reads the few KiB of superblock each file system
//! keeps at a fixed place, and the partition tables of whole disks, to find
//! the same identifiers `blkid` prints: `UUID`, `LABEL`, `PARTUUID`,
//! `PARTLABEL`, plus the disk serial number from sysfs.
//!
//! Everything read from a device is hostile: the parsers take byte slices
//! (or a reader that returns short data at the end of a device) and return
//! `None` rather than panicking on truncated or inconsistent structures.
//!
//! Supported: ext2/3/4, vfat (FAT12/16/32), xfs, btrfs, swap, iso9660;
//! GPT and MBR (DOS) partition tables, MBR logical partitions included.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a block device is, as far as identifiers go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockId {
    /// The device node probed.
    pub dev: PathBuf,
    /// File system type as blkid names it (`ext4`, `vfat`, `swap`, ...).
    pub fstype: Option<String>,
    /// File system UUID (`vfat`: volume serial `ABCD-1234`).
    pub uuid: Option<String>,
    /// File system label.
    pub label: Option<String>,
    /// Partition UUID (GPT entry GUID, or `xxxxxxxx-NN` on MBR disks).
    pub partuuid: Option<String>,
    /// GPT partition name.
    pub partlabel: Option<String>,
    /// Serial number of a whole disk (from sysfs; partitions have none).
    pub serial: Option<String>,
}

/// File system identifiers found in a superblock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsInfo {
    /// Type name as blkid prints it.
    pub fstype: String,
    /// UUID as blkid prints it.
    pub uuid: Option<String>,
    /// Label, trailing padding removed.
    pub label: Option<String>,
}

/// One partition of a partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// Partition number as the kernel numbers it (1-based; MBR logical
    /// partitions start at 5).
    pub number: u32,
    /// First sector, in 512-byte units.
    pub start: u64,
    /// Length, in 512-byte units.
    pub size: u64,
    /// PARTUUID.
    pub partuuid: String,
    /// PARTLABEL (GPT only).
    pub partlabel: Option<String>,
}

/// A partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTable {
    /// `gpt` or `dos`, as blkid's PTTYPE.
    pub kind: &'static str,
    /// PTUUID: the GPT disk GUID, or the MBR disk signature.
    pub ptuuid: String,
    /// The partitions, in table order.
    pub parts: Vec<PartEntry>,
}

/// Random-access reads that may come back short at the end of the device.
trait Reader {
    /// Up to `len` bytes at `off`; fewer (or none) past the end or on error.
    fn read_at(&self, off: u64, len: usize) -> Vec<u8>;
}

/// An image in memory.
struct Bytes<'a>(&'a [u8]);

impl Reader for Bytes<'_> {
    fn read_at(&self, off: u64, len: usize) -> Vec<u8> {
        let Ok(start) = usize::try_from(off) else {
            return Vec::new();
        };
        if start >= self.0.len() {
            return Vec::new();
        }
        let end = start.saturating_add(len).min(self.0.len());
        self.0[start..end].to_vec()
    }
}

impl Reader for File {
    fn read_at(&self, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match FileExt::read_at(self, &mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf.truncate(got);
        buf
    }
}

fn slice(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}
fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(slice(b, off, 2)?.try_into().ok()?))
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(slice(b, off, 4)?.try_into().ok()?))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(slice(b, off, 8)?.try_into().ok()?))
}

/// A UUID stored as 16 bytes in text order (ext, xfs, btrfs, swap).
fn uuid_be(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

/// A GUID as GPT stores it: the first three fields little-endian.
fn guid_le(b: &[u8]) -> Option<String> {
    if b.len() != 16 {
        return None;
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(b);
    t[0..4].reverse();
    t[4..6].reverse();
    t[6..8].reverse();
    if t.iter().all(|&x| x == 0) {
        return None;
    }
    uuid_be(&t)
}

/// A fixed-size, padded label: stop at the first NUL, drop trailing spaces.
fn label_bytes(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    // Labels on these formats are meant to be UTF-8 (or ASCII); anything
    // else is shown lossily rather than refused.
    let s = String::from_utf8_lossy(&b[..end]);
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

fn utf16_units(units: impl Iterator<Item = u16>) -> Option<String> {
    let u: Vec<u16> = units.take_while(|&c| c != 0).collect();
    let s: String = char::decode_utf16(u)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

// ---------------------------------------------------------------------------
// File systems

fn probe_ext(r: &dyn Reader) -> Option<FsInfo> {
    let sb = r.read_at(1024, 1024);
    if le16(&sb, 0x38)? != 0xEF53 {
        return None;
    }
    let compat = le32(&sb, 0x5C)?;
    let incompat = le32(&sb, 0x60)?;
    let ro_compat = le32(&sb, 0x64)?;
    // An external journal device is not a file system.
    if incompat & 0x0008 != 0 {
        return Some(FsInfo {
            fstype: "jbd".into(),
            uuid: uuid_be(slice(&sb, 0x68, 16)?),
            label: label_bytes(slice(&sb, 0x78, 16)?),
        });
    }
    // Same rule as blkid: any feature ext3 does not know makes it ext4;
    // otherwise a journal makes it ext3.
    const EXT3_INCOMPAT: u32 = 0x0002 | 0x0004 | 0x0010; // filetype, recover, meta_bg
    const EXT3_RO_COMPAT: u32 = 0x0001 | 0x0002 | 0x0004; // sparse_super, large_file, btree_dir
    let fstype = if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        "ext4"
    } else if compat & 0x0004 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(FsInfo {
        fstype: fstype.into(),
        uuid: uuid_be(slice(&sb, 0x68, 16)?),
        label: label_bytes(slice(&sb, 0x78, 16)?),
    })
}

fn probe_xfs(r: &dyn Reader) -> Option<FsInfo> {
    let sb = r.read_at(0, 512);
    if slice(&sb, 0, 4)? != b"XFSB" {
        return None;
    }
    let bs = u32::from_be_bytes(slice(&sb, 4, 4)?.try_into().ok()?);
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
        return None;
    }
    Some(FsInfo {
        fstype: "xfs".into(),
        uuid: uuid_be(slice(&sb, 32, 16)?),
        label: label_bytes(slice(&sb, 108, 12)?),
    })
}

fn probe_btrfs(r: &dyn Reader) -> Option<FsInfo> {
    let sb = r.read_at(0x10000, 4096);
    if slice(&sb, 64, 8)? != b"_BHRfS_M" {
        return None;
    }
    Some(FsInfo {
        fstype: "btrfs".into(),
        uuid: uuid_be(slice(&sb, 32, 16)?),
        label: label_bytes(slice(&sb, 0x12b, 256)?),
    })
}

fn probe_swap(r: &dyn Reader) -> Option<FsInfo> {
    // The signature sits at the end of the first page, whatever the page
    // size of the machine that ran mkswap.
    for page in [4096u64, 8192, 16384, 32768, 65536] {
        let sig = r.read_at(page - 10, 10);
        if sig == b"SWAPSPACE2" {
            let h = r.read_at(1024, 48);
            return Some(FsInfo {
                fstype: "swap".into(),
                uuid: slice(&h, 12, 16).and_then(uuid_be),
                label: slice(&h, 28, 16).and_then(label_bytes),
            });
        }
        if sig == b"SWAP-SPACE" {
            return Some(FsInfo {
                fstype: "swap".into(),
                uuid: None,
                label: None,
            });
        }
    }
    None
}

fn probe_iso9660(r: &dyn Reader) -> Option<FsInfo> {
    // Volume descriptors start at sector 16 (2048-byte sectors) and end
    // with a terminator (type 255); bound the walk.
    let mut pvd: Option<Vec<u8>> = None;
    let mut joliet: Option<Vec<u8>> = None;
    for i in 0..32u64 {
        let vd = r.read_at(32768 + i * 2048, 2048);
        if slice(&vd, 1, 5)? != b"CD001" {
            break;
        }
        match vd[0] {
            1 if pvd.is_none() => pvd = Some(vd),
            // A supplementary descriptor with a UCS-2 escape sequence.
            2 if joliet.is_none()
                && matches!(
                    slice(&vd, 88, 3),
                    Some(b"%/@") | Some(b"%/C") | Some(b"%/E")
                ) =>
            {
                joliet = Some(vd)
            }
            255 => break,
            _ => {}
        }
    }
    let pvd = pvd?;
    let ascii = slice(&pvd, 40, 32)?;
    let label = match &joliet {
        // Joliet keeps 16 UCS-2 characters; the primary descriptor keeps
        // 32 d-characters. Like blkid, prefer the Joliet characters and
        // fill its padding (and the part past its 16) from the primary.
        Some(j) => {
            let units = slice(j, 40, 32)?;
            let mut out: Vec<u16> = Vec::new();
            for (i, &a) in ascii.iter().enumerate() {
                let u = if i < 16 {
                    u16::from_be_bytes([units[2 * i], units[2 * i + 1]])
                } else {
                    u16::from(b' ')
                };
                if u == 0 {
                    break;
                }
                out.push(if u == u16::from(b' ') {
                    u16::from(a)
                } else {
                    u
                });
            }
            utf16_units(out.into_iter())
        }
        None => label_bytes(ascii),
    };
    // No UUID exists on ISO 9660; blkid derives one from the modification
    // date (or else the creation date) so that every image build differs.
    let date_uuid = |off: usize| -> Option<String> {
        let d = slice(&pvd, off, 16)?;
        if d.iter().all(|&c| c == b'0' || c == 0) || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let s = |a: usize, b: usize| String::from_utf8_lossy(&d[a..b]).into_owned();
        Some(format!(
            "{}-{}-{}-{}-{}-{}-{}",
            s(0, 4),
            s(4, 6),
            s(6, 8),
            s(8, 10),
            s(10, 12),
            s(12, 14),
            s(14, 16)
        ))
    };
    Some(FsInfo {
        fstype: "iso9660".into(),
        uuid: date_uuid(830).or_else(|| date_uuid(813)),
        label,
    })
}

fn probe_vfat(r: &dyn Reader) -> Option<FsInfo> {
    let bs = r.read_at(0, 512);
    if bs.len() < 512 {
        return None;
    }
    let sector = le16(&bs, 11)?;
    let spc = bs[13];
    let reserved = le16(&bs, 14)?;
    let fats = bs[16];
    let root_entries = le16(&bs, 17)?;
    let media = bs[21];
    let fat16_len = le16(&bs, 22)?;
    if !sector.is_power_of_two()
        || !(512..=4096).contains(&sector)
        || spc == 0
        || !spc.is_power_of_two()
        || reserved == 0
        || fats == 0
        || !(media >= 0xF8 || media == 0xF0)
    {
        return None;
    }
    let fat32 = fat16_len == 0;
    // Where the extended BPB is depends on the FAT width; both carry a
    // "FAT" type string that an MBR or another boot sector lacks.
    let (ext, fat_len) = if fat32 {
        (64usize, u64::from(le32(&bs, 36)?))
    } else {
        (36usize, u64::from(fat16_len))
    };
    let fstype_str = slice(&bs, ext + 18, 8)?;
    if !fstype_str.starts_with(b"FAT") && slice(&bs, 3, 5)? != b"MSWIN" {
        return None;
    }
    let has_ebpb = bs[ext + 2] == 0x29 || bs[ext + 2] == 0x28;
    let uuid = if has_ebpb {
        let s = le32(&bs, ext + 3)?;
        Some(format!("{:04X}-{:04X}", s >> 16, s & 0xFFFF))
    } else {
        None
    };
    let boot_label = if bs[ext + 2] == 0x29 {
        slice(&bs, ext + 7, 11)
            .and_then(label_bytes)
            .filter(|l| l != "NO NAME")
    } else {
        None
    };
    // The label the OS shows is the volume-label entry of the root
    // directory; the boot sector copy is only a fallback.
    let sector = u64::from(sector);
    let root_off = (u64::from(reserved) + u64::from(fats) * fat_len) * sector;
    let root = if fat32 {
        let cluster = u64::from(le32(&bs, 44)?);
        if cluster < 2 {
            Vec::new()
        } else {
            let cbytes = u64::from(spc) * sector;
            // Only the first cluster of the root directory; the label entry
            // is written first by every formatter.
            r.read_at(
                root_off + (cluster - 2) * cbytes,
                cbytes.min(64 * 1024) as usize,
            )
        }
    } else {
        r.read_at(root_off, (usize::from(root_entries) * 32).min(64 * 1024))
    };
    let mut dir_label = None;
    for e in root.chunks_exact(32) {
        match e[0] {
            0 => break,
            0xE5 => continue,
            _ => {}
        }
        let attr = e[11];
        // Volume label: the volume-id bit without the long-name pattern.
        if attr & 0x08 != 0 && attr & 0x0F != 0x0F {
            dir_label = label_bytes(&e[0..11]).filter(|l| l != "NO NAME");
            break;
        }
    }
    Some(FsInfo {
        fstype: "vfat".into(),
        uuid,
        label: dir_label.or(boot_label),
    })
}

fn probe_fs(r: &dyn Reader) -> Option<FsInfo> {
    // Signatures at distinct offsets; the FAT boot sector check comes last
    // because its marks are the weakest.
    probe_swap(r)
        .or_else(|| probe_ext(r))
        .or_else(|| probe_xfs(r))
        .or_else(|| probe_btrfs(r))
        .or_else(|| probe_iso9660(r))
        .or_else(|| probe_vfat(r))
}

/// File system identifiers in an image held in memory (the start of a
/// device is enough: 68 KiB covers every format here).
pub fn probe_bytes(data: &[u8]) -> Option<FsInfo> {
    probe_fs(&Bytes(data))
}

// ---------------------------------------------------------------------------
// Partition tables

fn parse_gpt(r: &dyn Reader) -> Option<PartTable> {
    for lba in [512u64, 4096] {
        let h = r.read_at(lba, 512);
        if slice(&h, 0, 8) != Some(b"EFI PART") {
            continue;
        }
        let entries_lba = le64(&h, 72)?;
        let count = le32(&h, 80)?;
        let esize = le32(&h, 84)?;
        if !(128..=4096).contains(&esize) || esize % 8 != 0 || count > 4096 {
            return None;
        }
        let total = u64::from(count) * u64::from(esize);
        if total > 1 << 20 {
            return None;
        }
        let table = r.read_at(entries_lba.checked_mul(lba)?, total as usize);
        let mut parts = Vec::new();
        for (i, e) in table.chunks_exact(esize as usize).enumerate() {
            if e[0..16].iter().all(|&b| b == 0) {
                continue; // unused entry
            }
            let first = le64(e, 32)?;
            let last = le64(e, 40)?;
            let name = slice(e, 56, 72)?;
            let mul = lba / 512;
            parts.push(PartEntry {
                number: i as u32 + 1,
                start: first.saturating_mul(mul),
                size: last
                    .checked_sub(first)
                    .map_or(0, |n| n.saturating_add(1).saturating_mul(mul)),
                partuuid: guid_le(&e[16..32]).unwrap_or_default(),
                partlabel: utf16_units(
                    name.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]])),
                ),
            });
        }
        return Some(PartTable {
            kind: "gpt",
            ptuuid: guid_le(slice(&h, 56, 16)?).unwrap_or_default(),
            parts,
        });
    }
    None
}

fn parse_mbr(r: &dyn Reader) -> Option<PartTable> {
    let s = r.read_at(0, 512);
    if slice(&s, 510, 2)? != [0x55, 0xAA] {
        return None;
    }
    let entry = |sec: &[u8], i: usize| -> Option<(u8, u8, u64, u64)> {
        let e = slice(sec, 446 + 16 * i, 16)?;
        Some((e[0], e[4], u64::from(le32(e, 8)?), u64::from(le32(e, 12)?)))
    };
    let mut primaries = Vec::new();
    for i in 0..4 {
        let (boot, typ, start, size) = entry(&s, i)?;
        // A boot sector of some file system also ends in 55AA; real table
        // entries have a boot flag of 0 or 0x80.
        if boot != 0 && boot != 0x80 {
            return None;
        }
        primaries.push((typ, start, size));
    }
    if primaries.iter().any(|p| p.0 == 0xEE) {
        return None; // protective MBR: the disk is GPT
    }
    if primaries.iter().all(|p| p.0 == 0) {
        return None;
    }
    let sig = le32(&s, 440)?;
    let id = |n: u32| format!("{sig:08x}-{n:02x}");
    let mut parts = Vec::new();
    let mut extended = None;
    for (i, &(typ, start, size)) in primaries.iter().enumerate() {
        if typ == 0 || size == 0 {
            continue;
        }
        if matches!(typ, 0x05 | 0x0F | 0x85) && extended.is_none() {
            extended = Some(start);
        }
        parts.push(PartEntry {
            number: i as u32 + 1,
            start,
            size,
            partuuid: id(i as u32 + 1),
            partlabel: None,
        });
    }
    // Logical partitions: a chain of extended boot records, each holding
    // one partition (relative to itself) and a link (relative to the
    // extended partition). Bounded against loops.
    if let Some(ext_start) = extended {
        let mut ebr = ext_start;
        let mut n = 5;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..256 {
            if !seen.insert(ebr) {
                break;
            }
            let sec = r.read_at(ebr.checked_mul(512)?, 512);
            if slice(&sec, 510, 2) != Some(&[0x55, 0xAA][..]) {
                break;
            }
            let Some((_, typ, start, size)) = entry(&sec, 0) else {
                break;
            };
            if typ != 0 && size != 0 {
                parts.push(PartEntry {
                    number: n,
                    start: ebr.saturating_add(start),
                    size,
                    partuuid: id(n),
                    partlabel: None,
                });
                n += 1;
            }
            match entry(&sec, 1) {
                Some((_, t, next, _)) if t != 0 && next != 0 => {
                    let Some(e) = ext_start.checked_add(next) else {
                        break;
                    };
                    ebr = e;
                }
                _ => break,
            }
        }
    }
    Some(PartTable {
        kind: "dos",
        ptuuid: format!("{sig:08x}"),
        parts,
    })
}

/// The partition table of a disk image held in memory (GPT first).
pub fn partitions_bytes(data: &[u8]) -> Option<PartTable> {
    parse_gpt(&Bytes(data)).or_else(|| parse_mbr(&Bytes(data)))
}

/// The partition table of a device or image file.
pub fn partitions(dev: &Path) -> std::io::Result<Option<PartTable>> {
    let f = File::open(dev)?;
    Ok(parse_gpt(&f).or_else(|| parse_mbr(&f)))
}

// ---------------------------------------------------------------------------
// Devices

/// Where sysfs and the device nodes live (`/sys`, `/dev` normally; tests
/// use a fake tree).
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs mount point.
    pub sys: PathBuf,
    /// devtmpfs mount point.
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sys: "/sys".into(),
            dev: "/dev".into(),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Serial number of a whole disk, from the places drivers put it.
fn disk_serial(sysdir: &Path) -> Option<String> {
    ["serial", "device/serial", "device/wwid"]
        .iter()
        .find_map(|f| read_trim(&sysdir.join(f)))
}

/// Probe the device whose sysfs directory is `sysdir` and node `node`.
fn probe_with_sys(roots: &Roots, node: &Path, sysdir: Option<&Path>) -> std::io::Result<BlockId> {
    let f = File::open(node)?;
    let fs = probe_fs(&f);
    let mut id = BlockId {
        dev: node.to_path_buf(),
        fstype: fs.as_ref().map(|f| f.fstype.clone()),
        uuid: fs.as_ref().and_then(|f| f.uuid.clone()),
        label: fs.and_then(|f| f.label),
        ..BlockId::default()
    };
    let Some(sysdir) = sysdir else {
        return Ok(id);
    };
    let partno = read_trim(&sysdir.join("partition")).and_then(|s| s.parse::<u32>().ok());
    match partno {
        None => id.serial = disk_serial(sysdir),
        Some(n) => {
            // The partition's identifiers live in its disk's table: the
            // parent directory of the partition in sysfs is the disk.
            let disk = std::fs::canonicalize(sysdir)
                .ok()
                .and_then(|c| c.parent().and_then(|p| p.file_name()).map(|s| s.to_owned()));
            if let Some(disk) = disk {
                if let Ok(Some(t)) = partitions(&roots.dev.join(&disk)) {
                    if let Some(p) = t.parts.into_iter().find(|p| p.number == n) {
                        id.partuuid = (!p.partuuid.is_empty()).then_some(p.partuuid);
                        id.partlabel = p.partlabel;
                    }
                }
            }
        }
    }
    Ok(id)
}

/// The sysfs directory of a block device node (`/sys/dev/block/MAJ:MIN`).
fn sysdir_of(roots: &Roots, dev: &Path) -> Option<PathBuf> {
    let md = std::fs::metadata(dev).ok()?;
    if !md.file_type().is_block_device() {
        return None;
    }
    let rdev = md.rdev();
    let p = roots.sys.join(format!(
        "dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    p.exists().then_some(p)
}

/// Identify one device (or an image file: then only file system fields).
pub fn probe(dev: &Path) -> std::io::Result<BlockId> {
    let roots = Roots::default();
    let sys = sysdir_of(&roots, dev);
    probe_with_sys(&roots, dev, sys.as_deref())
}

/// Every block device sysfs knows, as (sysfs dir, device node), in name
/// order. Devices of size 0 (empty loop devices, drives without media)
/// and floppy drives are left out.
pub fn devices_in(roots: &Roots) -> Vec<(PathBuf, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(roots.sys.join("class/block")) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let sysdir = e.path();
            if read_trim(&sysdir.join("size")).as_deref() == Some("0") {
                return None;
            }
            // A floppy drive without a disk answers reads only after
            // seconds of retries (QEMU machines have one by default).
            if name.to_string_lossy().starts_with("fd") {
                return None;
            }
            let node = roots.dev.join(&name);
            node.exists().then_some((sysdir, node))
        })
        .collect();
    v.sort();
    v
}

/// What a device spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A device path.
    Path(PathBuf),
    /// File system UUID (compared case-insensitively).
    Uuid(String),
    /// GPT partition GUID or MBR `xxxxxxxx-NN` (case-insensitive).
    PartUuid(String),
    /// File system label (exact).
    Label(String),
    /// GPT partition name (exact).
    PartLabel(String),
    /// Disk serial number (exact).
    Serial(String),
}

impl Spec {
    /// Parse `path | UUID= | PARTUUID= | LABEL= | PARTLABEL= | serial=`.
    pub fn parse(spec: &str) -> Result<Spec, String> {
        if spec.starts_with('/') {
            return Ok(Spec::Path(spec.into()));
        }
        let Some((k, v)) = spec.split_once('=') else {
            return Err(format!(
                "{spec}: not a device (use a /dev path, UUID=, PARTUUID=, LABEL=, PARTLABEL= or serial=)"
            ));
        };
        // Like fstab, strip one level of quotes around the value.
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        if v.is_empty() {
            return Err(format!("{spec}: empty value"));
        }
        let v = v.to_string();
        Ok(match k.to_ascii_uppercase().as_str() {
            "UUID" => Spec::Uuid(v),
            "PARTUUID" => Spec::PartUuid(v),
            "LABEL" => Spec::Label(v),
            "PARTLABEL" => Spec::PartLabel(v),
            "SERIAL" => Spec::Serial(v),
            _ => {
                return Err(format!(
                    "{spec}: unknown key {k} (use UUID=, PARTUUID=, LABEL=, PARTLABEL= or serial=)"
                ))
            }
        })
    }

    fn matches(&self, id: &BlockId) -> bool {
        let ieq =
            |a: &Option<String>, b: &str| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b));
        match self {
            Spec::Path(_) => false,
            Spec::Uuid(u) => ieq(&id.uuid, u),
            Spec::PartUuid(u) => ieq(&id.partuuid, u),
            Spec::Label(l) => id.label.as_deref() == Some(l),
            Spec::PartLabel(l) => id.partlabel.as_deref() == Some(l),
            Spec::Serial(s) => id.serial.as_deref() == Some(s),
        }
    }

    fn by_dir(&self) -> Option<(&'static str, &str)> {
        match self {
            Spec::Uuid(v) => Some(("by-uuid", v)),
            Spec::PartUuid(v) => Some(("by-partuuid", v)),
            Spec::Label(v) => Some(("by-label", v)),
            Spec::PartLabel(v) => Some(("by-partlabel", v)),
            _ => None,
        }
    }
}

/// [`resolve`] against other roots (tests).
pub fn resolve_in(roots: &Roots, spec: &str) -> Result<Option<PathBuf>, String> {
    let s = Spec::parse(spec)?;
    if let Spec::Path(p) = &s {
        return Ok(p.exists().then(|| p.clone()));
    }
    // udev's links, when there is a udev; they are authoritative. Values
    // with a '/' cannot be link names, and udev escapes some characters,
    // so a miss here is not conclusive.
    if let Some((dir, v)) = s.by_dir() {
        if !v.contains('/') && v != "." && v != ".." {
            let link = roots.dev.join("disk").join(dir).join(v);
            if let Ok(c) = std::fs::canonicalize(&link) {
                return Ok(Some(c));
            }
        }
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for (sysdir, node) in devices_in(roots) {
        // Only whole disks carry a serial, and it comes from sysfs alone:
        // no need to read every device.
        if let Spec::Serial(want) = &s {
            if !sysdir.join("partition").exists()
                && disk_serial(&sysdir).as_deref() == Some(want.as_str())
            {
                found.push(node);
            }
            continue;
        }
        if let Ok(id) = probe_with_sys(roots, &node, Some(&sysdir)) {
            if s.matches(&id) {
                found.push(node);
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "{spec}: matches {} devices ({}); name one by its path",
            found.len(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The device a spec names: a path, `UUID=`, `PARTUUID=`, `LABEL=`,
/// `PARTLABEL=` or `serial=`. `Ok(None)` means not (yet) present; an error
/// is a malformed spec or an ambiguous one.
pub fn resolve(spec: &str) -> Result<Option<PathBuf>, String> {
    resolve_in(&Roots::default(), spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_byte_order() {
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(
            guid_le(&raw).unwrap(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(uuid_be(&[0; 16]), None);
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(Spec::parse("UUID=ab").unwrap(), Spec::Uuid("ab".into()));
        assert_eq!(
            Spec::parse("label=\"x y\"").unwrap(),
            Spec::Label("x y".into())
        );
        assert_eq!(Spec::parse("serial=S1").unwrap(), Spec::Serial("S1".into()));
        assert_eq!(
            Spec::parse("/dev/sda").unwrap(),
            Spec::Path("/dev/sda".into())
        );
        assert!(Spec::parse("FOO=1")
            .unwrap_err()
            .contains("unknown key FOO"));
        assert!(Spec::parse("sda").is_err());
        assert!(Spec::parse("UUID=").is_err());
    }

    #[test]
    fn mbr_with_logical_partitions() {
        let mut d = vec![0u8; 64 * 512];
        d[440..444].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        let put = |d: &mut Vec<u8>, sec: usize, i: usize, t: u8, start: u32, size: u32| {
            let o = sec * 512 + 446 + 16 * i;
            d[o + 4] = t;
            d[o + 8..o + 12].copy_from_slice(&start.to_le_bytes());
            d[o + 12..o + 16].copy_from_slice(&size.to_le_bytes());
            d[sec * 512 + 510] = 0x55;
            d[sec * 512 + 511] = 0xAA;
        };
        put(&mut d, 0, 0, 0x83, 2, 8);
        put(&mut d, 0, 1, 0x05, 10, 40);
        put(&mut d, 10, 0, 0x83, 1, 4); // logical 5 at 11
        put(&mut d, 10, 1, 0x05, 10, 10); // next EBR at 20
        put(&mut d, 20, 0, 0x83, 1, 4); // logical 6 at 21
        put(&mut d, 20, 1, 0x05, 0, 0); // end
        let t = partitions_bytes(&d).unwrap();
        assert_eq!(t.kind, "dos");
        assert_eq!(t.ptuuid, "deadbeef");
        let got: Vec<(u32, u64, &str)> = t
            .parts
            .iter()
            .map(|p| (p.number, p.start, p.partuuid.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 2, "deadbeef-01"),
                (2, 10, "deadbeef-02"),
                (5, 11, "deadbeef-05"),
                (6, 21, "deadbeef-06")
            ]
        );
        // Chains that loop end.
        put(&mut d, 20, 1, 0x05, 10, 10);
        assert_eq!(partitions_bytes(&d).unwrap().parts.len(), 4);
        put(&mut d, 20, 1, 0x05, 20, 10);
        put(&mut d, 30, 0, 0x83, 1, 4);
        put(&mut d, 30, 1, 0x05, 10, 10);
        assert_eq!(partitions_bytes(&d).unwrap().parts.len(), 5);
    }
}
