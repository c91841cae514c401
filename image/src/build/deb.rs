//! Reading a Debian `linux-image-*` package without dpkg: the outer `ar`
//! archive, then `data.tar.{xz,zst,gz}`, from which only the kernel
//! (`boot/vmlinuz-*`) and the module tree (`lib/modules/<ver>/` or
//! `usr/lib/modules/<ver>/`) are extracted into a cache directory.
//!
//! The package is untrusted input: member names with `..`, absolute paths,
//! links and device nodes are never written; only regular files are.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use super::Progress;

/// What a package provided, in the cache.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub kernel: PathBuf,
    /// `None` for a kernel without loadable modules.
    pub modules_dir: Option<PathBuf>,
    /// The `<ver>` of `vmlinuz-<ver>`.
    pub version: String,
    /// The cache was already complete and was used as is.
    pub reused: bool,
    /// The package actually read (differs from the one given when a
    /// meta package was followed to the package it depends on).
    pub deb: PathBuf,
}

const MARKER: &str = ".complete";

/// Extracts `deb` under `cache_root/<file stem>/` unless that is already
/// complete for this very file (same size and modification time).
pub fn extract(deb: &Path, cache_root: &Path, progress: &Progress) -> Result<Extracted, String> {
    extract_depth(deb, cache_root, progress, 0)
}

fn extract_depth(
    deb: &Path,
    cache_root: &Path,
    progress: &Progress,
    depth: u32,
) -> Result<Extracted, String> {
    let flag = "--kernel-deb";
    let meta =
        fs::metadata(deb).map_err(|e| format!("{flag} {}: {}", deb.display(), short_io(&e)))?;
    if !meta.is_file() {
        return Err(format!("{flag} {}: not a file", deb.display()));
    }
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .ok_or_else(|| format!("{flag} {}: no file name", deb.display()))?;
    let stamp = format!(
        "{} {}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let dir = cache_root.join(&stem);
    if let Some(x) = read_marker(&dir, &stamp) {
        return Ok(Extracted {
            reused: true,
            deb: deb.to_path_buf(),
            ..x
        });
    }

    let partial = cache_root.join(format!("{stem}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).map_err(|e| {
        format!(
            "--out: cannot create {}: {}",
            partial.display(),
            short_io(&e)
        )
    })?;
    let result = unpack(deb, &partial, progress);
    let found = match result {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    let (kernel_rel, version) = match found.kernel {
        Some(k) => k,
        None => {
            let _ = fs::remove_dir_all(&partial);
            // A meta package (linux-image-amd64) holds no kernel: follow its
            // Depends to a package file lying next to it.
            if depth == 0 {
                if let Some(dep) = found.image_depends.as_deref() {
                    if let Some(next) = sibling_deb(deb, dep) {
                        progress.note(&format!(
                            "{}: meta package; using {} it depends on",
                            deb.display(),
                            next.display()
                        ));
                        return extract_depth(&next, cache_root, progress, depth + 1);
                    }
                    return Err(format!(
                        "{flag} {}: no boot/vmlinuz-* in this package; it depends on {dep}: give that package's .deb (apt-get download {dep})",
                        deb.display()
                    ));
                }
            }
            return Err(format!(
                "{flag} {}: no boot/vmlinuz-* in this package",
                deb.display()
            ));
        }
    };
    // Prefer the module tree of the same version as the kernel.
    let modules_rel = found
        .module_versions
        .iter()
        .find(|v| **v == version)
        .or_else(|| found.module_versions.first())
        .map(|v| format!("modules/{v}"));
    let marker = format!(
        "{stamp}\n{version}\n{kernel_rel}\n{}\n",
        modules_rel.as_deref().unwrap_or("")
    );
    fs::write(partial.join(MARKER), marker)
        .map_err(|e| format!("--out: {}: {}", partial.display(), short_io(&e)))?;
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::rename(&partial, &dir) {
        let _ = fs::remove_dir_all(&partial);
        // Another build may have completed the same cache meanwhile.
        if let Some(x) = read_marker(&dir, &stamp) {
            return Ok(Extracted {
                reused: true,
                deb: deb.to_path_buf(),
                ..x
            });
        }
        return Err(format!(
            "--out: cannot rename into {}: {}",
            dir.display(),
            short_io(&e)
        ));
    }
    read_marker(&dir, &stamp)
        .map(|x| Extracted {
            reused: false,
            deb: deb.to_path_buf(),
            ..x
        })
        .ok_or_else(|| format!("--out: cache {} unreadable after extraction", dir.display()))
}

fn read_marker(dir: &Path, stamp: &str) -> Option<Extracted> {
    let text = fs::read_to_string(dir.join(MARKER)).ok()?;
    let mut l = text.lines();
    if l.next()? != stamp {
        return None;
    }
    let version = l.next()?.to_string();
    let kernel = dir.join(l.next()?);
    let m = l.next().unwrap_or("");
    let modules_dir = (!m.is_empty()).then(|| dir.join(m));
    if !kernel.is_file() || modules_dir.as_ref().is_some_and(|m| !m.is_dir()) {
        return None;
    }
    Some(Extracted {
        kernel,
        modules_dir,
        version,
        reused: true,
        deb: PathBuf::new(),
    })
}

/// `name_*.deb` in the directory of `deb`, newest name last in sort order.
fn sibling_deb(deb: &Path, name: &str) -> Option<PathBuf> {
    let dir = deb
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!("{name}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|f| {
                    let f = f.to_string_lossy();
                    f.starts_with(&prefix) && f.ends_with(".deb")
                })
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    found.pop()
}

#[derive(Default)]
struct Found {
    /// (path relative to the cache dir, version)
    kernel: Option<(String, String)>,
    module_versions: Vec<String>,
    /// First `linux-image-*` name in the control file's Depends.
    image_depends: Option<String>,
}

fn unpack(deb: &Path, dest: &Path, progress: &Progress) -> Result<Found, String> {
    let flag = "--kernel-deb";
    let file =
        fs::File::open(deb).map_err(|e| format!("{flag} {}: {}", deb.display(), short_io(&e)))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut ar = ar::Archive::new(io::BufReader::new(file));
    let mut found = Found::default();
    let mut saw_data = false;
    let mut saw_any = false;
    while let Some(entry) = ar.next_entry() {
        let entry =
            entry.map_err(|e| format!("{flag} {}: not a Debian package ({e})", deb.display()))?;
        saw_any = true;
        let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let id = id.trim_end_matches('/').to_string();
        if let Some(comp) = id.strip_prefix("control.tar") {
            let r = decompressor(comp, Box::new(entry))
                .map_err(|e| format!("{flag} {}: {id}: {e}", deb.display()))?;
            found.image_depends = read_control_depends(r);
        } else if let Some(comp) = id.strip_prefix("data.tar") {
            saw_data = true;
            progress.stage(
                &format!("extracting {}", short_name(deb)),
                Some(total),
                true,
            );
            let counted = Counting {
                inner: entry,
                progress,
            };
            let r = decompressor(comp, Box::new(counted))
                .map_err(|e| format!("{flag} {}: {id}: {e}", deb.display()))?;
            unpack_data(r, dest, &mut found)
                .map_err(|e| format!("{flag} {}: {id}: {e}", deb.display()))?;
        }
    }
    if !saw_any || !saw_data {
        return Err(format!(
            "{flag} {}: not a Debian package (no data.tar member)",
            deb.display()
        ));
    }
    Ok(found)
}

fn short_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Counts compressed bytes read, for the progress bar.
struct Counting<'p, R> {
    inner: R,
    progress: &'p Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// A decompressing reader for a member suffix: `.xz`, `.zst`, `.gz` or none.
pub fn decompressor<'a>(suffix: &str, r: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match suffix {
        "" => r,
        ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        ".zst" => Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| e.to_string())?),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(r)),
        other => return Err(format!("unsupported compression {other:?}")),
    })
}

fn read_control_depends(r: Box<dyn Read + '_>) -> Option<String> {
    let mut tar = tar::Archive::new(r);
    for e in tar.entries().ok()? {
        let mut e = e.ok()?;
        let is_control = e
            .path()
            .ok()
            .map(|p| {
                p.components()
                    .filter(|c| !matches!(c, Component::CurDir))
                    .eq([Component::Normal("control".as_ref())])
            })
            .unwrap_or(false);
        if !is_control || e.size() > 1 << 20 {
            continue;
        }
        let mut text = String::new();
        e.read_to_string(&mut text).ok()?;
        let deps = text.lines().find_map(|l| l.strip_prefix("Depends:"))?;
        return deps
            .split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| {
                d.starts_with("linux-image-")
                    && d.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-+._".contains(c))
            })
            .map(str::to_string);
    }
    None
}

fn unpack_data(r: Box<dyn Read + '_>, dest: &Path, found: &mut Found) -> io::Result<()> {
    let mut tar = tar::Archive::new(r);
    for e in tar.entries()? {
        let mut e = e?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let path = e.path()?.into_owned();
        let mut parts: Vec<&str> = Vec::new();
        let mut ok = true;
        for c in path.components() {
            match c {
                Component::CurDir => {}
                Component::Normal(s) => match s.to_str() {
                    Some(s) => parts.push(s),
                    None => ok = false,
                },
                _ => ok = false,
            }
        }
        if !ok || parts.is_empty() {
            continue;
        }
        let rel: PathBuf =
            if parts.len() == 2 && parts[0] == "boot" && parts[1].starts_with("vmlinuz-") {
                let version = parts[1]["vmlinuz-".len()..].to_string();
                if version.is_empty() || found.kernel.is_some() {
                    continue;
                }
                found.kernel = Some((format!("boot/{}", parts[1]), version));
                ["boot", parts[1]].iter().collect()
            } else {
                let rest = match parts.as_slice() {
                    ["lib", "modules", rest @ ..] | ["usr", "lib", "modules", rest @ ..] => rest,
                    _ => continue,
                };
                if rest.len() < 2 {
                    continue;
                }
                if !found.module_versions.iter().any(|v| v == rest[0]) {
                    found.module_versions.push(rest[0].to_string());
                }
                std::iter::once("modules")
                    .chain(rest.iter().copied())
                    .collect()
            };
        let out = dest.join(&rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut f = fs::File::create(&out)?;
        io::copy(&mut e, &mut f)?;
        f.flush()?;
    }
    Ok(())
}

/// An io::Error as a short lowercase phrase ("no such file").
pub fn short_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
