//! The host tree being changed, seen as if `ROOT` were `/`: every path in
//! here is absolute *inside* the root ("/boot/x"), and symlinks met on the
//! way are resolved against the root, never against the running system, so
//! `--root /mnt` with an absolute `/mnt/etc/os-release -> /usr/lib/...`
//! link reads the tree's file and not this machine's.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Symlink hops allowed while resolving one path (Linux uses 40).
const MAX_HOPS: usize = 40;

/// An in-root path must be absolute, plain UTF-8, with no `..`, `.` or NUL,
/// so it can be stored in the manifest and shown to the operator as is.
pub fn check_inroot(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.contains('\0') || p == "/" {
        return Err(format!("{p:?}: not an absolute path below /"));
    }
    for c in p.split('/').skip(1) {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("{p:?}: empty, . or .. component"));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    /// The root is this machine's `/`: read /sys and /proc, run commands
    /// without chroot.
    pub is_slash: bool,
}

impl Root {
    pub fn new(dir: &Path) -> io::Result<Root> {
        let canon = fs::canonicalize(dir)?;
        if !canon.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        let is_slash = canon == Path::new("/");
        Ok(Root {
            dir: canon,
            is_slash,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host path of in-root path `p`. Symlinks in every component but
    /// the last are followed inside the root; the last is followed only
    /// with `follow_last` (reading), not when the entry itself is what is
    /// created, replaced or removed.
    pub fn host(&self, p: &str, follow_last: bool) -> io::Result<PathBuf> {
        let mut todo: Vec<String> = Vec::new();
        push_components(&mut todo, p);
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        // `todo` is a stack: the next component to visit is at the end.
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            let last = todo.is_empty();
            let mut cand = self.dir.clone();
            cand.extend(cur.iter());
            cand.push(&c);
            if last && !follow_last {
                cur.push(c);
                break;
            }
            match fs::symlink_metadata(&cand) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(io::Error::other(format!("{p}: too many symlinks")));
                    }
                    let target = fs::read_link(&cand)?;
                    let t = target.to_string_lossy().into_owned();
                    if t.starts_with('/') {
                        cur.clear();
                    }
                    push_components(&mut todo, &t);
                }
                _ => cur.push(c),
            }
        }
        let mut out = self.dir.clone();
        out.extend(cur.iter());
        Ok(out)
    }

    pub fn lstat(&self, p: &str) -> io::Result<fs::Metadata> {
        fs::symlink_metadata(self.host(p, false)?)
    }

    pub fn exists(&self, p: &str) -> bool {
        self.host(p, true).map(|h| h.exists()).unwrap_or(false)
    }

    pub fn is_dir(&self, p: &str) -> bool {
        self.host(p, true).map(|h| h.is_dir()).unwrap_or(false)
    }

    pub fn read_to_string(&self, p: &str) -> io::Result<String> {
        fs::read_to_string(self.host(p, true)?)
    }

    /// Names in directory `p`, sorted; empty when it does not exist.
    pub fn list(&self, p: &str) -> Vec<String> {
        let Ok(h) = self.host(p, true) else {
            return Vec::new();
        };
        let Ok(rd) = fs::read_dir(h) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    /// SHA-256 of the regular file at `p` (not following a final symlink),
    /// or None when there is none.
    pub fn hash_file(&self, p: &str) -> io::Result<Option<String>> {
        let h = self.host(p, false)?;
        match fs::symlink_metadata(&h) {
            Ok(m) if m.is_file() => Ok(Some(hash_path(&h)?)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write `src` to `p` with `mode` atomically: a temporary file next to
    /// it, synced, then renamed over it, so a crash never leaves half a
    /// kernel in /boot.
    pub fn write_atomic(&self, p: &str, src: &mut dyn Read, mode: u32) -> io::Result<()> {
        let dest = self.host(p, false)?;
        let dir = dest.parent().ok_or_else(|| io::Error::other("no parent"))?;
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?;
        let tmp = dir.join(format!(".{}.bootlun-tmp", name.to_string_lossy()));
        let res = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            io::copy(src, &mut f)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.flush()?;
            f.sync_all()?;
            fs::rename(&tmp, &dest)?;
            sync_dir(dir);
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Copy the regular file at in-root `from` to in-root `to`, keeping
    /// its mode (backups and restores).
    pub fn copy_file(&self, from: &str, to: &str) -> io::Result<()> {
        let src = self.host(from, false)?;
        let mode = fs::symlink_metadata(&src)?.mode() & 0o7777;
        let mut f = fs::File::open(&src)?;
        self.write_atomic(to, &mut f, mode)
    }

    pub fn mkdir(&self, p: &str) -> io::Result<()> {
        let h = self.host(p, false)?;
        fs::create_dir(&h)?;
        fs::set_permissions(&h, fs::Permissions::from_mode(0o755))
    }

    pub fn remove_file(&self, p: &str) -> io::Result<()> {
        let h = self.host(p, false)?;
        fs::remove_file(&h)?;
        if let Some(d) = h.parent() {
            sync_dir(d);
        }
        Ok(())
    }

    pub fn rmdir(&self, p: &str) -> io::Result<()> {
        fs::remove_dir(self.host(p, false)?)
    }

    pub fn symlink(&self, target: &str, p: &str) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.host(p, false)?)
    }

    pub fn read_link(&self, p: &str) -> io::Result<String> {
        Ok(fs::read_link(self.host(p, false)?)?
            .to_string_lossy()
            .into_owned())
    }
}

fn push_components(todo: &mut Vec<String>, p: &str) {
    let comps: Vec<String> = Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect();
    todo.extend(comps.into_iter().rev());
}

fn sync_dir(dir: &Path) {
    // Best effort: the rename is what matters; a failed directory fsync
    // (some file systems refuse it) is no reason to fail the install.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// SHA-256 hex of a host file, streamed.
pub fn hash_path(p: &Path) -> io::Result<String> {
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Fields of an os-release file: `KEY=value`, the value optionally in
/// single or double quotes, with backslash escapes inside double quotes.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let val = if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            let mut s = String::new();
            let mut esc = false;
            for ch in inner.chars() {
                if esc {
                    s.push(ch);
                    esc = false;
                } else if ch == '\\' {
                    esc = true;
                } else {
                    s.push(ch);
                }
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            inner.to_string()
        } else {
            v.to_string()
        };
        out.push((k.trim().to_string(), val));
    }
    out
}

/// Does this fstab text mount something on /boot itself?
pub fn fstab_has_boot(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return false;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1].trim_end_matches('/') == "/boot" && f[2] != "swap"
    })
}

/// Does this /proc/self/mountinfo text have a mount on /boot?
pub fn mountinfo_has_boot(text: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/boot"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bootlun-root-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tmpdir("resolve");
        fs::create_dir_all(d.join("usr/lib")).unwrap();
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("usr/lib/os-release"), "ID=inside\n").unwrap();
        // Absolute link: must land in the tree, not in this machine's /usr.
        std::os::unix::fs::symlink("/usr/lib/os-release", d.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("../../..", d.join("usr/lib/up")).unwrap();
        let r = Root::new(&d).unwrap();
        assert!(!r.is_slash);
        assert_eq!(r.read_to_string("/etc/os-release").unwrap(), "ID=inside\n");
        assert_eq!(
            r.host("/etc/os-release", false).unwrap(),
            r.dir().join("etc/os-release")
        );
        // `..` cannot climb above the root.
        assert_eq!(
            r.host("/usr/lib/up/../../etc", true).unwrap(),
            r.dir().join("etc")
        );
        std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
        assert!(r.host("/loop/x", true).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn inroot_paths_are_checked() {
        assert!(check_inroot("/etc/x").is_ok());
        for bad in ["etc/x", "/", "/etc/../x", "/etc//x", "/etc/./x", "/a\0b"] {
            assert!(check_inroot(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn os_release_quotes() {
        let f = parse_os_release(
            "ID=\"fedora\"\nID_LIKE='rhel centos'\n# c\nNAME=\"a \\\"b\\\"\"\nX\n",
        );
        assert_eq!(f[0], ("ID".into(), "fedora".into()));
        assert_eq!(f[1], ("ID_LIKE".into(), "rhel centos".into()));
        assert_eq!(f[2].1, "a \"b\"");
    }

    #[test]
    fn boot_mounts() {
        assert!(fstab_has_boot(
            "UUID=1 / ext4 defaults 0 1\nUUID=2 /boot ext4 defaults 0 2\n"
        ));
        assert!(!fstab_has_boot(
            "UUID=1 / ext4 defaults 0 1\nUUID=3 /boot/efi vfat umask=077 0 2\n"
        ));
        assert!(!fstab_has_boot("# UUID=2 /boot ext4 defaults 0 2\n"));
        assert!(mountinfo_has_boot(
            "22 1 259:1 / / rw - ext4 /dev/x rw\n30 22 259:2 / /boot rw,relatime - ext4 /dev/y rw\n"
        ));
        assert!(!mountinfo_has_boot(
            "30 22 259:2 / /boot/efi rw - vfat /dev/y rw\n"
        ));
    }
}
