//! Boot-entry discovery in a boot directory.
//!
//! Two sources, in order of preference:
//! 1. Boot Loader Specification entries, `loader/entries/*.conf`
//!    (Fedora, RHEL, systemd-boot installs). Paths inside them are relative
//!    to the root of the boot directory.
//! 2. Plain kernel/initrd pairs: `vmlinuz-VER` with `initramfs-VER.img`
//!    (Fedora, Arch: `vmlinuz-linux` + `initramfs-linux.img`) or
//!    `initrd.img-VER` (Debian, Ubuntu), newest first.

use nom::bytes::complete::{take_till, take_till1};
use nom::character::complete::{char, multispace0};
use nom::combinator::rest;
use nom::sequence::{preceded, separated_pair};
use nom::{IResult, Parser};
use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One bootable kernel found in the boot directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootEntry {
    /// Stable identifier: the BLS file stem, or the kernel file name.
    pub id: String,
    /// Human-readable menu title.
    pub title: String,
    /// Kernel version, when known.
    pub version: Option<String>,
    /// Kernel path relative to the boot directory root, without a leading `/`.
    pub linux: String,
    /// Initrd paths relative to the boot directory root, in load order.
    pub initrd: Vec<String>,
    /// Kernel command line from the entry (or the configured default),
    /// before stripping and before the iSCSI arguments are added.
    pub options: String,
    /// `machine-id` key of a BLS entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

/// Where entries came from (reported by the dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `loader/entries/*.conf`.
    Bls,
    /// `vmlinuz-*` files next to their initrds.
    KernelScan,
}

/// Early microcode images some distributions (Arch) load before the initrd.
const MICROCODE_IMAGES: &[&str] = &["intel-ucode.img", "amd-ucode.img"];

/// Discover entries in `dir`. `cmdline_default` is the command line of
/// entries that have none (kernel scan). Entries come sorted, default first.
/// An empty result is an error: a one-line message without the directory
/// name (callers prefix the flag that named it).
pub fn discover(dir: &Path, cmdline_default: &str) -> Result<(Source, Vec<BootEntry>), String> {
    let meta = fs::metadata(dir).map_err(|e| io_msg(&e))?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    let bls = discover_bls(dir, cmdline_default)?;
    if !bls.is_empty() {
        return Ok((Source::Bls, bls));
    }
    let scanned = discover_kernels(dir, cmdline_default)?;
    if !scanned.is_empty() {
        return Ok((Source::KernelScan, scanned));
    }
    Err("no kernels found (looked for loader/entries/*.conf and vmlinuz-*)".into())
}

fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Variables of GRUB's environment block (`grub2/grubenv` or
/// `grub/grubenv`): older Fedora entries say `options $kernelopts`.
pub fn grubenv(dir: &Path) -> Vec<(String, String)> {
    ["grub2/grubenv", "grub/grubenv"]
        .iter()
        .find_map(|p| fs::read_to_string(dir.join(p)).ok())
        .map(|t| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| grubenv_line(l).ok())
                .map(|(_, (k, v))| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `NAME=VALUE`: the name runs to the first `=`, the value is the rest of
/// the line (it may contain `=`: `kernelopts=root=UUID=…`). The block's `#`
/// padding lines are filtered out before.
fn grubenv_line(line: &str) -> IResult<&str, (&str, &str)> {
    separated_pair(take_till(|c| c == '='), char('='), rest).parse(line)
}

/// Replace `$name`/`${name}` words with their grubenv values; words naming
/// unknown variables are dropped (GRUB expands them to nothing).
pub fn expand_vars(words: &str, env: &[(String, String)]) -> String {
    words
        .split_ascii_whitespace()
        .filter_map(|w| {
            let Some(name) = w.strip_prefix('$') else {
                return Some(w.to_string());
            };
            let name = name.trim_start_matches('{').trim_end_matches('}');
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parse every `loader/entries/*.conf` under `dir`. Entries whose kernel file
/// is missing are skipped with a warning. `$variables` in `options` and
/// `initrd` come from grubenv; an entry left without options gets
/// `cmdline_default`.
pub fn discover_bls(dir: &Path, cmdline_default: &str) -> Result<Vec<BootEntry>, String> {
    let env = grubenv(dir);
    let edir = dir.join("loader/entries");
    let rd = match fs::read_dir(&edir) {
        Ok(rd) => rd,
        Err(_) => return Ok(Vec::new()),
    };
    let mut found: Vec<(Option<String>, BootEntry)> = Vec::new();
    for de in rd.flatten() {
        let name = de.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".conf") else {
            continue;
        };
        if stem.is_empty() || name.starts_with('.') {
            continue;
        }
        let text = match fs::read_to_string(de.path()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("bootentries: {}: {e}", de.path().display());
                continue;
            }
        };
        let Some((sort_key, entry)) = parse_bls(stem, &text) else {
            tracing::warn!(
                "bootentries: {}: no `linux` key, skipped",
                de.path().display()
            );
            continue;
        };
        let mut entry = entry;
        if entry.options.contains('$') {
            entry.options = expand_vars(&entry.options, &env);
        }
        if entry.options.is_empty() {
            entry.options = cmdline_default.to_string();
        }
        entry.initrd = entry
            .initrd
            .iter()
            .map(|i| expand_vars(i, &env))
            .flat_map(|i| i.split_ascii_whitespace().map(rel).collect::<Vec<_>>())
            .collect();
        // Entries written with /boot on the root filesystem name
        // `/boot/vmlinuz-…`; the boot directory is that /boot already.
        if !dir.join(&entry.linux).is_file() {
            if let Some(p) = entry
                .linux
                .strip_prefix("boot/")
                .filter(|p| dir.join(p).is_file())
            {
                entry.linux = p.to_string();
                for i in &mut entry.initrd {
                    if let Some(p) = i.strip_prefix("boot/").filter(|p| dir.join(p).is_file()) {
                        *i = p.to_string();
                    }
                }
            }
        }
        if !dir.join(&entry.linux).is_file() {
            tracing::warn!(
                "bootentries: {}: kernel {} missing, skipped",
                name,
                entry.linux
            );
            continue;
        }
        found.push((sort_key, entry));
    }
    found.sort_by(|(ka, a), (kb, b)| bls_order(ka.as_deref(), a, kb.as_deref(), b));
    Ok(found.into_iter().map(|(_, e)| e).collect())
}

/// BLS ordering: entries with a sort-key first (ascending), then machine-id,
/// then version descending; ties and entries without sort-key by file name,
/// descending version order (newest first).
fn bls_order(ka: Option<&str>, a: &BootEntry, kb: Option<&str>, b: &BootEntry) -> Ordering {
    match (ka, kb) {
        (Some(x), Some(y)) => x
            .cmp(y)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
            .then_with(|| {
                vercmp(
                    b.version.as_deref().unwrap_or(""),
                    a.version.as_deref().unwrap_or(""),
                )
            })
            .then_with(|| vercmp(&b.id, &a.id)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => vercmp(
            b.version.as_deref().unwrap_or(""),
            a.version.as_deref().unwrap_or(""),
        )
        .then_with(|| vercmp(&b.id, &a.id)),
    }
}

/// Parse one BLS entry. Returns its sort-key and the entry, or `None` when
/// it has no kernel.
pub fn parse_bls(stem: &str, text: &str) -> Option<(Option<String>, BootEntry)> {
    let mut e = BootEntry {
        id: stem.to_string(),
        title: String::new(),
        version: None,
        linux: String::new(),
        initrd: Vec::new(),
        options: String::new(),
        machine_id: None,
    };
    let mut sort_key = None;
    let mut options: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Ok((_, (key, val))) = bls_line(line) else {
            continue;
        };
        let val = val.trim();
        match key {
            "title" => e.title = val.to_string(),
            "version" => e.version = Some(val.to_string()),
            "linux" => e.linux = rel(val),
            "initrd" => e.initrd.extend(val.split_ascii_whitespace().map(rel)),
            "options" => options.push(val.to_string()),
            "machine-id" => e.machine_id = Some(val.to_string()),
            "sort-key" => sort_key = Some(val.to_string()),
            _ => {}
        }
    }
    if e.linux.is_empty() {
        return None;
    }
    e.options = options.join(" ");
    if e.title.is_empty() {
        e.title = match &e.version {
            Some(v) => format!("Linux {v}"),
            None => stem.to_string(),
        };
    }
    Some((sort_key, e))
}

/// `KEY VALUE`: the key is the first word, the value the rest of the line
/// after the blanks that follow it (empty for a bare key). Comments and
/// blank lines are skipped before.
fn bls_line(line: &str) -> IResult<&str, (&str, &str)> {
    (
        take_till1(|c: char| c.is_ascii_whitespace()),
        preceded(multispace0, rest),
    )
        .parse(line)
}

/// BLS paths are absolute from the boot partition root; keep them relative.
fn rel(p: &str) -> String {
    p.trim_start_matches('/').to_string()
}

/// Scan `dir` (not recursively) for `vmlinuz-VER` with a matching initrd.
pub fn discover_kernels(dir: &Path, cmdline_default: &str) -> Result<Vec<BootEntry>, String> {
    let rd = fs::read_dir(dir).map_err(|e| io_msg(&e))?;
    let mut found: Vec<(SystemTime, BootEntry)> = Vec::new();
    let microcode: Vec<String> = MICROCODE_IMAGES
        .iter()
        .filter(|m| dir.join(m).is_file())
        .map(|m| m.to_string())
        .collect();
    for de in rd.flatten() {
        let name = de.file_name().to_string_lossy().into_owned();
        let Some(ver) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        if ver.is_empty() || name.ends_with(".hmac") || name.ends_with(".sig") {
            continue;
        }
        let path = de.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let Some(initrd) = pick_initrd(dir, ver, &path) else {
            tracing::info!(
                "bootentries: {name}: no initramfs-{ver}.img or initrd.img-{ver}, skipped"
            );
            continue;
        };
        let mut initrds = microcode.clone();
        initrds.push(initrd);
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((
            mtime,
            BootEntry {
                id: name.clone(),
                title: format!("Linux {ver}"),
                version: Some(ver.to_string()),
                linux: name.clone(),
                initrd: initrds,
                options: cmdline_default.to_string(),
                machine_id: None,
            },
        ));
    }
    found.sort_by(|(ta, a), (tb, b)| tb.cmp(ta).then_with(|| vercmp(&b.id, &a.id)));
    Ok(found.into_iter().map(|(_, e)| e).collect())
}

/// The initrd that goes with `vmlinuz-VER`: `initramfs-VER.img` or
/// `initrd.img-VER` by name, or one named after the version the kernel
/// image reports in its header. Arch names its kernel `vmlinuz-linux`
/// while dracut names the initramfs after the release
/// (`initramfs-6.6.1-arch1-1.img`); when both kinds exist the newest file
/// wins, since the other was left by the initramfs generator no longer in
/// use.
fn pick_initrd(dir: &Path, ver: &str, kernel: &Path) -> Option<String> {
    let mut names = vec![format!("initramfs-{ver}.img"), format!("initrd.img-{ver}")];
    if let Some(kver) = kernel_release(kernel) {
        if kver != ver {
            names.push(format!("initramfs-{kver}.img"));
            names.push(format!("initrd.img-{kver}"));
        }
    }
    names
        .into_iter()
        .filter_map(|n| {
            let m = fs::metadata(dir.join(&n)).ok().filter(|m| m.is_file())?;
            Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), n))
        })
        .max_by(|(ta, _), (tb, _)| ta.cmp(tb))
        .map(|(_, n)| n)
}

/// How much of a kernel image the header readers need: the release
/// string's offset is a 16-bit value past 0x200.
const HEADER_SPAN: u64 = 0x200 + 0x1_0000 + 128;

fn kernel_head(kernel: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    fs::File::open(kernel)
        .ok()?
        .take(HEADER_SPAN)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// The release (`uname -r`) an x86 Linux kernel image reports in its
/// boot-protocol header: the setup header ("HdrS" at 0x202) holds at 0x20E
/// the offset, minus 0x200, of a string that starts with the release.
/// `None` without a setup header or a plausible release.
pub fn header_release(img: &[u8]) -> Option<String> {
    if img.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = usize::from(u16::from_le_bytes([*img.get(0x20E)?, *img.get(0x20F)?]));
    if ptr == 0 {
        return None;
    }
    let s = img.get(ptr + 0x200..)?;
    let s = &s[..s.len().min(128)];
    let end = s
        .iter()
        .position(|&c| c == 0 || c == b' ')
        .unwrap_or(s.len());
    let r = std::str::from_utf8(&s[..end]).ok()?;
    let ok = !r.is_empty()
        && r.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_+~".contains(&c));
    ok.then(|| r.to_string())
}

/// Whether a kernel image can be started by UEFI firmware (and so by iPXE
/// on UEFI): an EFI stub makes it a PE/COFF image, "MZ" at 0 and "PE\0\0"
/// at the offset stored at 0x3C.
pub fn header_efi_stub(img: &[u8]) -> bool {
    let Some(pe) = img.get(0x3C..0x40) else {
        return false;
    };
    let pe = u32::from_le_bytes([pe[0], pe[1], pe[2], pe[3]]) as usize;
    img.starts_with(b"MZ") && img.get(pe..pe.saturating_add(4)) == Some(&b"PE\0\0"[..])
}

/// [`header_release`] of a kernel file.
pub fn kernel_release(kernel: &Path) -> Option<String> {
    header_release(&kernel_head(kernel)?)
}

/// [`header_efi_stub`] of a kernel file; `None` when it cannot be read.
pub fn has_efi_stub(kernel: &Path) -> Option<bool> {
    kernel_head(kernel).map(|h| header_efi_stub(&h))
}

/// Remove every argument whose name (the part before `=`, or the whole
/// argument) is in `strip`.
pub fn strip_args(cmdline: &str, strip: &[String]) -> String {
    cmdline
        .split_ascii_whitespace()
        .filter(|a| {
            let name = a.split_once('=').map(|(n, _)| n).unwrap_or(a);
            !strip.iter().any(|s| s == a || s == name)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Version comparison in the spirit of `strverscmp`/`rpmvercmp`: runs of
/// digits compare numerically, everything else byte-wise; `~` sorts before
/// anything (pre-releases).
pub fn vercmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (ca, cb) = (a[i], b[j]);
        if ca.is_ascii_digit() && cb.is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
            continue;
        }
        if ca != cb {
            return match (ca, cb) {
                (b'~', _) => Ordering::Less,
                (_, b'~') => Ordering::Greater,
                _ => ca.cmp(&cb),
            };
        }
        i += 1;
        j += 1;
    }
    match (i < a.len(), j < b.len()) {
        (true, false) if a[i] == b'~' => Ordering::Less,
        (true, false) => Ordering::Greater,
        (false, true) if b[j] == b'~' => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => Ordering::Equal,
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let k = d.iter().position(|&c| c != b'0').unwrap_or(d.len());
    &d[k..]
}

/// Resolve `--boot-device`: a device path, `UUID=`, `LABEL=`,
/// `PARTUUID=`, `PARTLABEL=` or `serial=`, through `/dev/disk/by-*` when
/// udev made them, else by reading the disks' superblocks and partition
/// tables (the boot ramdisk has no udev).
pub fn resolve_device(spec: &str) -> Result<PathBuf, String> {
    match bootlun_engine::blkid::resolve(spec) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!("--boot-device {spec}: no such device")),
        Err(e) => Err(format!("--boot-device {spec}: {e}")),
    }
}

/// A read-only mount of the boot device, unmounted on drop.
#[derive(Debug)]
pub struct BootMount {
    /// Mount point (a fresh directory under the runtime directory).
    pub dir: PathBuf,
}

impl BootMount {
    /// Mount `spec` read-only, trying every block filesystem the kernel knows.
    pub fn mount(spec: &str) -> Result<BootMount, String> {
        let dev = resolve_device(spec)?;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("bootlun-boot.{}", std::process::id()));
        fs::create_dir_all(&dir)
            .map_err(|e| format!("--boot-device {spec}: {}: {e}", dir.display()))?;
        let fstypes: Vec<String> = fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("nodev"))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let mut last = String::from("no filesystem types available");
        for t in &fstypes {
            // The initiator owns this filesystem and may have it mounted
            // with a live journal: never replay it from here.
            let data = if t == "ext3" || t == "ext4" {
                "noload"
            } else {
                ""
            };
            use rustix::mount::MountFlags;
            let r = rustix::mount::mount(
                &dev,
                &dir,
                t.as_str(),
                MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
                data,
            );
            if r.is_ok() {
                tracing::info!(
                    "boot device {} ({t}) mounted read-only at {}",
                    dev.display(),
                    dir.display()
                );
                return Ok(BootMount { dir });
            }
            if let Err(e) = r {
                last = std::io::Error::from(e).to_string();
            }
        }
        let _ = fs::remove_dir(&dir);
        Err(format!(
            "--boot-device {spec}: cannot mount {} read-only: {last}",
            dev.display()
        ))
    }
}

impl Drop for BootMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vercmp_orders_kernels() {
        assert_eq!(vercmp("6.10.0", "6.9.12"), Ordering::Greater);
        assert_eq!(vercmp("6.1.0-13-amd64", "6.1.0-9-amd64"), Ordering::Greater);
        assert_eq!(vercmp("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(vercmp("abc", "abc"), Ordering::Equal);
        assert_eq!(vercmp("007", "7"), Ordering::Equal);
    }

    #[test]
    fn strip_by_name_or_whole() {
        let s = vec![
            "quiet".to_string(),
            "rhgb".to_string(),
            "splash".to_string(),
        ];
        assert_eq!(
            strip_args("ro quiet  rhgb root=UUID=x splash=silent", &s),
            "ro root=UUID=x"
        );
    }

    #[test]
    fn bls_parse_keys() {
        let (k, e) = parse_bls(
            "abc-6.5.6",
            "# c\ntitle Fedora Linux (6.5.6)\nversion 6.5.6\nlinux /vmlinuz-6.5.6\ninitrd /a.img /b.img\ninitrd /c.img\noptions root=UUID=1 ro\noptions quiet\nsort-key fedora\n",
        )
        .unwrap();
        assert_eq!(k.as_deref(), Some("fedora"));
        assert_eq!(e.linux, "vmlinuz-6.5.6");
        assert_eq!(e.initrd, ["a.img", "b.img", "c.img"]);
        assert_eq!(e.options, "root=UUID=1 ro quiet");
        assert!(parse_bls("x", "title t\n").is_none());
    }

    #[test]
    fn line_grammars() {
        let bls = |l| bls_line(l).map(|(_, kv)| kv).ok();
        assert_eq!(
            bls("options\troot=/dev/x  ro"),
            Some(("options", "root=/dev/x  ro"))
        );
        assert_eq!(bls("linux"), Some(("linux", "")));
        assert_eq!(bls(""), None);
        let env = |l| grubenv_line(l).map(|(_, kv)| kv).ok();
        assert_eq!(
            env("kernelopts=root=UUID=1 ro"),
            Some(("kernelopts", "root=UUID=1 ro"))
        );
        assert_eq!(env("saved_entry="), Some(("saved_entry", "")));
        assert_eq!(env("no equals sign"), None);
    }
}
