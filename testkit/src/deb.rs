//! Debian packages fetched with `apt-get download` and unpacked, cached in
//! `target/tmp/deb-cache` across runs and tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run_ok;

/// `.deb` files fetched with `apt-get download`, and their unpacked trees,
/// kept across runs. Concurrent tests never see partial files: everything
/// is produced in a private temporary directory and renamed into place.
pub struct DebCache {
    pub dir: PathBuf,
}

impl DebCache {
    /// `BOOTLUN_E2E_CACHE`, or `target/tmp/deb-cache`, shared by every
    /// VM test so the kernel package is downloaded once. Unpacked trees go
    /// to `unpacked/`.
    pub fn open() -> DebCache {
        let dir = std::env::var_os("BOOTLUN_E2E_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::target_tmp_dir().join("deb-cache"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create cache {}: {e}", dir.display()));
        DebCache { dir }
    }

    fn private_tmp(&self, tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = self
            .dir
            .join(format!(".tmp-{tag}-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A complete cached `.deb` of `pkg` (`PKG_VERSION_ARCH.deb`), newest
    /// by name. Another test may be downloading into the same directory, so
    /// a file whose `ar` members are not all there yet is ignored.
    fn cached(&self, pkg: &str) -> Option<PathBuf> {
        let prefix = format!("{pkg}_");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
            .collect();
        found.retain(|p| deb_complete(p));
        found.sort();
        found.pop()
    }

    /// The `.deb` of `pkg`: from the cache, or `apt-get download`ed into it.
    pub fn deb(&self, pkg: &str) -> PathBuf {
        if let Some(p) = self.cached(pkg) {
            return p;
        }
        let tmp = self.private_tmp("dl");
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-q", pkg]).current_dir(&tmp);
        run_ok(&mut cmd, Duration::from_secs(300));
        let got = std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .unwrap_or_else(|| panic!("apt-get download {pkg} produced no .deb"));
        let dest = self.dir.join(got.file_name().unwrap());
        // rename(2) is atomic: a concurrent downloader of the same file
        // simply replaces it with identical content.
        std::fs::rename(&got, &dest).unwrap_or_else(|e| panic!("rename into cache: {e}"));
        let _ = std::fs::remove_dir_all(&tmp);
        dest
    }

    /// The real kernel image package behind the `linux-image-amd64`
    /// metapackage (its first `Depends`).
    pub fn kernel_deb(&self) -> PathBuf {
        let meta = self.deb("linux-image-amd64");
        let dep = run_ok(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&meta)
                .arg("Depends"),
            Duration::from_secs(30),
        );
        let name = dep
            .split([',', '|'])
            .map(|s| s.split_whitespace().next().unwrap_or(""))
            .find(|s| s.starts_with("linux-image-"))
            .unwrap_or_else(|| panic!("no linux-image dependency in {dep:?}"))
            .to_string();
        self.deb(&name)
    }

    /// Names in the `Depends` field of `deb` that start with `prefix`.
    pub fn depends_named(&self, deb: &Path, prefix: &str) -> Vec<String> {
        let dep = run_ok(
            Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"),
            Duration::from_secs(30),
        );
        dep.split([',', '|'])
            .filter_map(|s| s.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// The unpacked tree of `deb` (`dpkg-deb -x`), cached.
    pub fn unpacked(&self, deb: &Path) -> PathBuf {
        let stem = deb.file_stem().unwrap().to_string_lossy().into_owned();
        let dest = self.dir.join("unpacked").join(&stem);
        if dest.is_dir() {
            return dest;
        }
        std::fs::create_dir_all(self.dir.join("unpacked")).unwrap();
        let tmp = self.private_tmp("x");
        run_ok(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp),
            Duration::from_secs(300),
        );
        if std::fs::rename(&tmp, &dest).is_err() {
            // Someone else won the race; theirs is complete.
            let _ = std::fs::remove_dir_all(&tmp);
            assert!(
                dest.is_dir(),
                "cannot place {} in the cache",
                dest.display()
            );
        }
        dest
    }
}

/// True when `path` is an `ar` archive holding `debian-binary`, a control
/// and a data member, each as long as its header says.
fn deb_complete(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if !data.starts_with(b"!<arch>\n") {
        return false;
    }
    let mut off = 8;
    let mut names = Vec::new();
    while off + 60 <= data.len() {
        let hdr = &data[off..off + 60];
        let name = String::from_utf8_lossy(&hdr[..16])
            .trim()
            .trim_end_matches('/')
            .to_string();
        let Ok(size) = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse::<usize>()
        else {
            return false;
        };
        off += 60;
        if off + size > data.len() {
            return false;
        }
        names.push(name);
        off += size + (size & 1);
    }
    names.len() >= 3
        && names[0] == "debian-binary"
        && names.iter().any(|n| n.starts_with("control.tar"))
        && names.iter().any(|n| n.starts_with("data.tar"))
}
