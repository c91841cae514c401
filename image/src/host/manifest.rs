//! The record of what install changed, kept in
//! `ROOT/var/lib/bootlun/manifest.json`, so uninstall can undo exactly
//! that and nothing else. It is rewritten after every single change, so it
//! matches the tree even when install stops halfway.

use super::root::{check_inroot, Root};
use serde::{Deserialize, Serialize};
use std::io;

pub const STATE_DIR: &str = "/var/lib/bootlun";
pub const MANIFEST: &str = "/var/lib/bootlun/manifest.json";
pub const BACKUP_DIR: &str = "/var/lib/bootlun/backup";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A directory that did not exist; removed again when empty.
    Mkdir { path: String },
    /// A file that did not exist, with the hash of what was written.
    Create { path: String, sha256: String },
    /// A file that existed: its original is at `backup` (with `mode`),
    /// `sha256` is what bootlun wrote over it.
    Replace {
        path: String,
        sha256: String,
        backup: String,
        mode: u32,
    },
    /// A symlink that was removed, and what it pointed to.
    RemoveSymlink { path: String, target: String },
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Mkdir { path }
            | Change::Create { path, .. }
            | Change::Replace { path, .. }
            | Change::RemoveSymlink { path, .. } => path,
        }
    }
}

/// Regeneration steps that are still owed: set when files changed and
/// the command was not run (`--no-regenerate`) or failed, cleared once it
/// succeeded, so a later plain `install` runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pending {
    Initramfs,
    Bootloader,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub format: u32,
    /// `debian`, `fedora` or `arch`: which commands regenerate.
    pub distro: String,
    /// `bls` or `grub`.
    pub boot_entry: String,
    #[serde(default)]
    pub pending: Vec<Pending>,
    pub changes: Vec<Change>,
}

impl Manifest {
    pub fn new(distro: &str, boot_entry: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            distro: distro.into(),
            boot_entry: boot_entry.into(),
            pending: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// Read the manifest; Ok(None) when bootlun is not installed. The file
    /// is checked like any outside input: a path outside the tree or a
    /// backup outside the backup directory is refused.
    pub fn load(root: &Root) -> Result<Option<Manifest>, String> {
        let text = match root.read_to_string(MANIFEST) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{MANIFEST}: {e}")),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("{MANIFEST}: {e}"))?;
        m.validate().map_err(|e| format!("{MANIFEST}: {e}"))?;
        Ok(Some(m))
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this bootlun reads {FORMAT})",
                self.format
            ));
        }
        if !matches!(self.distro.as_str(), "debian" | "fedora" | "arch") {
            return Err(format!("unknown distro {:?}", self.distro));
        }
        if !matches!(self.boot_entry.as_str(), "bls" | "grub") {
            return Err(format!("unknown boot-entry {:?}", self.boot_entry));
        }
        for c in &self.changes {
            check_inroot(c.path())?;
            match c {
                Change::Create { sha256, .. } | Change::Replace { sha256, .. }
                    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    return Err(format!("{}: bad sha256", c.path()));
                }
                _ => {}
            }
            if let Change::Replace { backup, .. } = c {
                check_inroot(backup)?;
                if !backup.starts_with(&format!("{BACKUP_DIR}/")) {
                    return Err(format!("{backup}: backup outside {BACKUP_DIR}"));
                }
            }
            if let Change::RemoveSymlink { target, .. } = c {
                if target.is_empty() || target.contains('\0') {
                    return Err(format!("{}: bad symlink target", c.path()));
                }
            }
        }
        Ok(())
    }

    pub fn save(&self, root: &Root) -> io::Result<()> {
        let mut text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        text.push(b'\n');
        root.write_atomic(MANIFEST, &mut text.as_slice(), 0o644)
    }

    /// The Create or Replace entry that owns file `path`, if any.
    pub fn owned_mut(&mut self, path: &str) -> Option<&mut Change> {
        self.changes.iter_mut().find(|c| {
            matches!(c, Change::Create { .. } | Change::Replace { .. }) && c.path() == path
        })
    }

    pub fn add_pending(&mut self, p: Pending) {
        if !self.pending.contains(&p) {
            self.pending.push(p);
        }
    }
}

/// Where the original of `path` is kept while bootlun's file is in place.
pub fn backup_path(path: &str) -> String {
    format!("{BACKUP_DIR}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_hostile_entries() {
        let mut m = Manifest::new("debian", "grub");
        m.changes.push(Change::Mkdir {
            path: "/var/lib/bootlun".into(),
        });
        m.changes.push(Change::Replace {
            path: "/etc/x".into(),
            sha256: "a".repeat(64),
            backup: backup_path("/etc/x"),
            mode: 0o644,
        });
        m.changes.push(Change::RemoveSymlink {
            path: "/etc/l".into(),
            target: "/lib/y".into(),
        });
        let text = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert!(back.validate().is_ok());

        let mut bad = m.clone();
        bad.changes.push(Change::Create {
            path: "/etc/../../x".into(),
            sha256: "a".repeat(64),
        });
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.changes.push(Change::Replace {
            path: "/etc/y".into(),
            sha256: "a".repeat(64),
            backup: "/etc/shadow".into(),
            mode: 0o644,
        });
        assert!(bad.validate().is_err());
        let mut bad = m;
        bad.changes.push(Change::Create {
            path: "/etc/z".into(),
            sha256: "zz".into(),
        });
        assert!(bad.validate().is_err());
    }
}
