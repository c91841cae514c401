//! The few ELF and bzImage facts the builder checks: whether a binary is
//! dynamically linked (PT_INTERP), whether it still carries symbol tables
//! or debug info, and a kernel image's setup header.

use object::read::elf::{FileHeader, ProgramHeader};
use object::{Object, ObjectSection, SectionFlags};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// The dynamic loader named by PT_INTERP; `None` for a static binary.
    pub interp: Option<String>,
    /// A `.symtab` or any `.debug_*` section is present.
    pub strippable: bool,
}

/// PT_INTERP of an ELF file of class `Elf` (32- or 64-bit header type).
fn interp<Elf: FileHeader<Endian = object::Endianness>>(
    b: &[u8],
) -> Result<Option<String>, String> {
    let hdr = Elf::parse(b).map_err(|e| format!("bad ELF header: {e}"))?;
    let endian = hdr.endian().map_err(|e| format!("bad ELF header: {e}"))?;
    let phdrs = hdr
        .program_headers(endian, b)
        .map_err(|e| format!("bad ELF program headers: {e}"))?;
    for ph in phdrs {
        if let Some(s) = ph
            .interpreter(endian, b)
            .map_err(|e| format!("bad PT_INTERP: {e}"))?
        {
            let s = s.split(|&c| c == 0).next().unwrap_or(b"");
            return Ok(Some(String::from_utf8_lossy(s).into_owned()));
        }
    }
    Ok(None)
}

/// Reads the program and section headers of an ELF executable (through
/// the `object` crate, which checks every offset against the file).
pub fn elf_facts(b: &[u8]) -> Result<ElfFacts, String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let interp = match b[4] {
        1 => interp::<object::elf::FileHeader32<object::Endianness>>(b)?,
        2 => interp::<object::elf::FileHeader64<object::Endianness>>(b)?,
        _ => return Err("bad ELF class".into()),
    };
    let file = object::File::parse(b).map_err(|e| format!("bad ELF file: {e}"))?;
    // Only sections not loaded at run time count: Rust keeps an allocated
    // `.debug_gdb_scripts` that strip leaves in place.
    let strippable = file.sections().any(|s| {
        let alloc = matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & 2 != 0);
        let name = s.name().unwrap_or("");
        !alloc && (name == ".symtab" || name.starts_with(".debug_") || name.starts_with(".zdebug_"))
    });
    Ok(ElfFacts { interp, strippable })
}

/// The x86 boot protocol's view of a kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BzImage {
    /// The release its header names (`6.1.0-57-amd64`).
    pub version: Option<String>,
    /// A PE/COFF EFI stub is present (UEFI firmware can start it).
    pub efi_stub: bool,
}

/// Checks the setup header (`HdrS` at 0x202); the header fields are read
/// by the same code that pairs kernels with initrds on the PXE side.
pub fn bzimage(b: &[u8]) -> Result<BzImage, String> {
    use bootlun_pxe::bootentries::{header_efi_stub, header_release};
    if b.get(0x202..0x206) != Some(&b"HdrS"[..]) {
        return Err("not a Linux x86 kernel image (no HdrS boot header)".into());
    }
    Ok(BzImage {
        version: header_release(b),
        efi_stub: header_efi_stub(b),
    })
}
