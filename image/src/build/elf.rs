//! The few ELF and bzImage facts the builder checks: whether a binary is
//! dynamically linked (PT_INTERP), whether it still carries symbol tables
//! or debug info, and a kernel image's setup header.

use crate::kmod::Reader;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// The dynamic loader named by PT_INTERP; `None` for a static binary.
    pub interp: Option<String>,
    /// A `.symtab` or any `.debug_*` section is present.
    pub strippable: bool,
}

/// Reads the program and section headers of an ELF executable.
pub fn elf_facts(b: &[u8]) -> Result<ElfFacts, String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let is64 = match b[4] {
        1 => false,
        2 => true,
        _ => return Err("bad ELF class".into()),
    };
    let le = match b[5] {
        1 => true,
        2 => false,
        _ => return Err("bad ELF byte order".into()),
    };
    let rd = Reader { b, le };
    let (phoff, phentsize, phnum) = if is64 {
        (rd.u64(0x20)?, rd.u16(0x36)? as u64, rd.u16(0x38)? as u64)
    } else {
        (
            rd.u32(0x1c)? as u64,
            rd.u16(0x2a)? as u64,
            rd.u16(0x2c)? as u64,
        )
    };
    let mut facts = ElfFacts::default();
    for i in 0..phnum {
        let base = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or("ELF program header out of range")?;
        let p_type = rd.u32(base)?;
        if p_type == 3 {
            // PT_INTERP
            let (off, size) = if is64 {
                (rd.u64(base + 8)?, rd.u64(base + 0x20)?)
            } else {
                (rd.u32(base + 4)? as u64, rd.u32(base + 0x10)? as u64)
            };
            let s = rd.slice(off, size)?;
            let s = s.split(|&c| c == 0).next().unwrap_or(b"");
            facts.interp = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    // Only sections not loaded at run time count: Rust keeps an allocated
    // `.debug_gdb_scripts` that strip leaves in place.
    for (name, flags) in section_names(&rd, is64)? {
        let alloc = flags & 2 != 0;
        if !alloc
            && (name == ".symtab" || name.starts_with(".debug_") || name.starts_with(".zdebug_"))
        {
            facts.strippable = true;
        }
    }
    Ok(facts)
}

/// (name, sh_flags) of every section.
fn section_names(rd: &Reader<'_>, is64: bool) -> Result<Vec<(String, u64)>, String> {
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (
            rd.u64(0x28)?,
            rd.u16(0x3a)? as u64,
            rd.u16(0x3c)? as u64,
            rd.u16(0x3e)? as u64,
        )
    } else {
        (
            rd.u32(0x20)? as u64,
            rd.u16(0x2e)? as u64,
            rd.u16(0x30)? as u64,
            rd.u16(0x32)? as u64,
        )
    };
    if shnum == 0 || shstrndx >= shnum {
        return Ok(Vec::new());
    }
    let hdr = |i: u64| -> Result<(u32, u64, u64, u64), String> {
        let base = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or("ELF section header out of range")?;
        if is64 {
            Ok((
                rd.u32(base)?,
                rd.u64(base + 8)?,
                rd.u64(base + 0x18)?,
                rd.u64(base + 0x20)?,
            ))
        } else {
            Ok((
                rd.u32(base)?,
                rd.u32(base + 8)? as u64,
                rd.u32(base + 0x10)? as u64,
                rd.u32(base + 0x14)? as u64,
            ))
        }
    };
    let (_, _, so, ss) = hdr(shstrndx)?;
    let strtab = rd.slice(so, ss)?;
    let mut out = Vec::new();
    for i in 0..shnum {
        let (n, flags, _, _) = hdr(i)?;
        let s = strtab
            .get(n as usize..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .unwrap_or(b"");
        out.push((String::from_utf8_lossy(s).into_owned(), flags));
    }
    Ok(out)
}

/// The x86 boot protocol's view of a kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BzImage {
    /// First word of the embedded version string (`6.1.0-57-amd64`).
    pub version: Option<String>,
    /// The file starts with `MZ` (EFI stub present).
    pub efi_stub: bool,
}

/// Checks the setup header (`HdrS` at 0x202) and reads the version string
/// the header points to (offset at 0x20E, relative to 0x200).
pub fn bzimage(b: &[u8]) -> Result<BzImage, String> {
    if b.len() < 0x210 || &b[0x202..0x206] != b"HdrS" {
        return Err("not a Linux x86 kernel image (no HdrS boot header)".into());
    }
    let ptr = u16::from_le_bytes([b[0x20e], b[0x20f]]) as usize;
    let version = b
        .get(ptr + 0x200..)
        .filter(|_| ptr != 0)
        .and_then(|s| s.split(|&c| c == 0).next())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .filter(|v| !v.is_empty() && v.len() < 128);
    Ok(BzImage {
        version,
        efi_stub: &b[..2] == b"MZ",
    })
}
