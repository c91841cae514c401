//! Coldplug: load the kernel modules for the devices that exist, the way
//! udev would at boot, with no udev.
//!
//! Every device in sysfs that a driver could bind to has a `modalias` file.
//! Each round matches all of them against `modules.alias`, loads the
//! modules found (dependencies first) and, if anything was loaded, waits
//! for the device tree to stop growing: bus drivers create new devices
//! (a PCI SCSI controller brings SCSI disks, virtio-pci brings virtio
//! devices) whose drivers the next round loads. Rounds stop when one loads
//! nothing new.

use crate::kmod::{self, ModIndex};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many rounds (each needs a new level of bus).
const MAX_ROUNDS: u32 = 8;
/// How long a round waits for new devices to stop appearing.
const SETTLE_MAX: Duration = Duration::from_secs(3);
const SETTLE_STEP: Duration = Duration::from_millis(200);

/// File systems the boot partition may use: their modules are loaded
/// whether or not a device asks for them (nothing in sysfs does).
const FS_MODULES: [&str; 6] = ["ext4", "vfat", "xfs", "btrfs", "iso9660", "fat"];

/// What coldplug did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColdplugReport {
    /// Modules loaded, in load order.
    pub loaded: Vec<String>,
    /// Modules that failed: (name, reason).
    pub failed: Vec<(String, String)>,
    /// Rounds run.
    pub rounds: u32,
    /// Distinct modaliases seen in the last round.
    pub modaliases: usize,
    /// Why nothing could be done (no module index), if so.
    pub error: Option<String>,
}

impl ColdplugReport {
    /// One line per fact, for a log.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(e) = &self.error {
            v.push(format!("modules: {e}"));
        }
        v.push(format!(
            "modules: {} loaded in {} round(s) for {} device alias(es){}{}",
            self.loaded.len(),
            self.rounds,
            self.modaliases,
            if self.loaded.is_empty() { "" } else { ": " },
            self.loaded.join(" ")
        ));
        for (m, e) in &self.failed {
            v.push(format!("modules: {m} failed: {e}"));
        }
        v
    }
}

impl fmt::Display for ColdplugReport {
    /// One line (the console prints it after `bootlun: `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return write!(f, "modules: {e}");
        }
        write!(
            f,
            "modules: {} loaded in {} round(s) for {} device alias(es)",
            self.loaded.len(),
            self.rounds,
            self.modaliases
        )?;
        if !self.loaded.is_empty() {
            write!(f, " ({})", self.loaded.join(" "))?;
        }
        if !self.failed.is_empty() {
            let fails: Vec<String> = self
                .failed
                .iter()
                .map(|(m, e)| format!("{m}: {e}"))
                .collect();
            write!(f, "; {} failed: {}", self.failed.len(), fails.join(", "))?;
        }
        Ok(())
    }
}

/// Every distinct `modalias` under `sys_devices` (symlinks not followed,
/// bounded depth and count: sysfs is finite but a fake tree need not be).
pub fn modaliases(sys_devices: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<(PathBuf, u32)> = vec![(sys_devices.to_path_buf(), 0)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > 200_000 {
            break;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else {
                continue;
            };
            if ft.is_dir() {
                if depth < 40 {
                    stack.push((e.path(), depth + 1));
                }
            } else if ft.is_file() && e.file_name() == "modalias" {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    let s = s.trim();
                    if !s.is_empty() {
                        out.insert(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Module options and blacklist from the kernel command line, as modprobe
/// reads them: `MODULE.PARAM=VALUE` words (the kernel applies them only to
/// built-in code) and `modprobe.blacklist=a,b`.
fn cmdline_module_options(cmdline: &str) -> (HashMap<String, Vec<String>>, HashSet<String>) {
    let mut params: HashMap<String, Vec<String>> = HashMap::new();
    let mut black = HashSet::new();
    for (k, v) in cmdline_words(cmdline) {
        let Some((module, param)) = k.split_once('.') else {
            continue;
        };
        let module = kmod::normalize(module);
        if module == "modprobe" && param == "blacklist" {
            if let Some(v) = v {
                black.extend(v.split(',').filter(|s| !s.is_empty()).map(kmod::normalize));
            }
            continue;
        }
        if module.is_empty() || param.is_empty() || module == "bootlun" {
            continue;
        }
        let p = match v {
            Some(v) if v.contains(' ') => format!("{param}=\"{v}\""),
            Some(v) => format!("{param}={v}"),
            None => param.to_string(),
        };
        params.entry(module).or_default().push(p);
    }
    (params, black)
}

/// Kernel command line words as (key, value), quotes removed.
fn cmdline_words(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut q = false;
    for c in cmdline.chars().chain(std::iter::once(' ')) {
        match c {
            '"' => q = !q,
            c if c.is_whitespace() && !q => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect()
}

/// A coldplug in progress, so that a caller still missing a device can run
/// another round later (USB disks appear seconds after their controller).
pub struct Coldplug {
    idx: ModIndex,
    sys: PathBuf,
    tried: HashSet<String>,
    params: HashMap<String, Vec<String>>,
    blacklist: HashSet<String>,
    fs_done: bool,
    /// What has happened so far.
    pub report: ColdplugReport,
}

impl Coldplug {
    /// Open the module index of `modules_dir` and look at devices under
    /// `sys_root` (normally `/sys`); `cmdline` is the kernel command line.
    pub fn new(modules_dir: &Path, sys_root: &Path, cmdline: &str) -> Result<Coldplug, String> {
        let idx = ModIndex::open(modules_dir)?;
        let (params, blacklist) = cmdline_module_options(cmdline);
        Ok(Coldplug {
            idx,
            sys: sys_root.to_path_buf(),
            tried: HashSet::new(),
            params,
            blacklist,
            fs_done: false,
            report: ColdplugReport::default(),
        })
    }

    fn fs_modules(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for f in FS_MODULES {
            let mut r = self.idx.resolve(f);
            if r.is_empty() {
                r = self.idx.resolve(&format!("fs-{f}"));
            }
            v.extend(r);
        }
        // Every code page: which one a FAT file system needs depends on how
        // it was made, and they are small.
        let nls = self.idx.dir().join("kernel/fs/nls");
        if let Ok(rd) = std::fs::read_dir(nls) {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| kmod::name_from_path(&e.file_name().to_string_lossy()))
                .filter(|n| n.starts_with("nls_") && self.idx.has_module(n))
                .collect();
            names.sort();
            v.extend(names);
        }
        for n in ["nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859_1"] {
            if self.idx.has_module(n) && !v.iter().any(|x| x == n) {
                v.push(n.to_string());
            }
        }
        v
    }

    /// One round: match every modalias, load what is new. `load` is
    /// [`kmod::load_module`] outside tests; `loaded` the modules already
    /// in the kernel. Returns how many modules this round loaded.
    pub fn round(
        &mut self,
        load: &mut dyn FnMut(&Path, &str) -> std::io::Result<bool>,
        loaded: &HashSet<String>,
    ) -> usize {
        self.report.rounds += 1;
        let aliases = modaliases(&self.sys.join("devices"));
        self.report.modaliases = aliases.len();
        let mut wanted: Vec<String> = Vec::new();
        for a in &aliases {
            for m in self.idx.match_modalias(a) {
                if !wanted.contains(&m) {
                    wanted.push(m);
                }
            }
        }
        if !self.fs_done {
            self.fs_done = true;
            for m in self.fs_modules() {
                if !wanted.contains(&m) {
                    wanted.push(m);
                }
            }
        }
        wanted.retain(|m| !self.blacklist.contains(m));
        let mut n = 0;
        for m in self.idx.load_order(&wanted) {
            if loaded.contains(&m) || self.idx.is_builtin(&m) || !self.tried.insert(m.clone()) {
                continue;
            }
            if self.blacklist.contains(&m) {
                continue;
            }
            let Some(path) = self.idx.path_of(&m) else {
                continue;
            };
            let params = self.params.get(&m).map(|p| p.join(" ")).unwrap_or_default();
            match load(&path, &params) {
                Ok(true) => {
                    self.report.loaded.push(m);
                    n += 1;
                }
                Ok(false) => {} // already there
                Err(e) => {
                    let why = match e.raw_os_error() {
                        // The driver found none of its hardware: normal
                        // for platform drivers matched by CPU or ACPI ids.
                        Some(libc::ENODEV) | Some(libc::ENXIO) => {
                            format!("{e} (no hardware for it)")
                        }
                        _ => e.to_string(),
                    };
                    self.report.failed.push((m, why));
                }
            }
        }
        n
    }
}

/// Count device entries that can still grow (modalias files), to see when
/// the kernel has finished creating devices after a round of loads.
fn settle(sys_devices: &Path) {
    let deadline = Instant::now() + SETTLE_MAX;
    let mut last = modaliases(sys_devices).len();
    while Instant::now() < deadline {
        std::thread::sleep(SETTLE_STEP);
        let now = modaliases(sys_devices).len();
        if now == last {
            return;
        }
        last = now;
    }
}

fn run_rounds(
    c: &mut Coldplug,
    load: &mut dyn FnMut(&Path, &str) -> std::io::Result<bool>,
    loaded: &mut dyn FnMut() -> HashSet<String>,
) {
    for _ in 0..MAX_ROUNDS {
        let before = loaded();
        if c.round(load, &before) == 0 {
            break;
        }
        settle(&c.sys.join("devices"));
    }
}

/// [`coldplug`] against another sysfs and module loader (tests).
pub fn coldplug_in(
    modules_dir: &Path,
    sys_root: &Path,
    cmdline: &str,
    load: &mut dyn FnMut(&Path, &str) -> std::io::Result<bool>,
    loaded: &mut dyn FnMut() -> HashSet<String>,
) -> ColdplugReport {
    match Coldplug::new(modules_dir, sys_root, cmdline) {
        Ok(mut c) => {
            run_rounds(&mut c, load, loaded);
            c.report
        }
        Err(e) => ColdplugReport {
            error: Some(format!("no module index ({e}); only built-in drivers")),
            ..Default::default()
        },
    }
}

/// The coldplug of this boot, kept so that later rounds (while waiting for
/// a disk) remember what was tried.
static THIS_BOOT: Mutex<Option<Coldplug>> = Mutex::new(None);

/// Load the modules for every device present (and the file system
/// modules), in rounds until a round loads nothing new.
pub fn coldplug(modules_dir: &Path) -> ColdplugReport {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match Coldplug::new(modules_dir, Path::new("/sys"), &cmdline) {
        Ok(mut c) => {
            run_rounds(&mut c, &mut kmod::load_module, &mut kmod::loaded);
            let report = c.report.clone();
            if let Ok(mut g) = THIS_BOOT.lock() {
                *g = Some(c);
            }
            report
        }
        Err(e) => ColdplugReport {
            error: Some(format!("no module index ({e}); only built-in drivers")),
            ..Default::default()
        },
    }
}

/// Another pass of [`coldplug`] for devices that appeared since (a USB
/// disk shows up seconds after its controller's driver loads). Returns the
/// modules it loaded; nothing when [`coldplug`] has not run.
pub(crate) fn coldplug_again() -> Vec<String> {
    let Ok(mut g) = THIS_BOOT.lock() else {
        return Vec::new();
    };
    let Some(c) = g.as_mut() else {
        return Vec::new();
    };
    let before = c.report.loaded.len();
    run_rounds(c, &mut kmod::load_module, &mut kmod::loaded);
    c.report.loaded[before..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_the_command_line() {
        let (p, b) = cmdline_module_options(
            "quiet e1000e.InterruptThrottleRate=1 e1000e.debug=2 \"i915.x=a b\" modprobe.blacklist=nouveau,radeon bootlun.lun=/dev/sda usb-storage.quirks=1:2:u root=/dev/x",
        );
        assert_eq!(p["e1000e"], ["InterruptThrottleRate=1", "debug=2"]);
        assert_eq!(p["i915"], ["x=\"a b\""]);
        assert_eq!(p["usb_storage"], ["quirks=1:2:u"]);
        assert!(!p.contains_key("bootlun") && !p.contains_key("root"));
        assert!(b.contains("nouveau") && b.contains("radeon") && b.len() == 2);
    }
}
