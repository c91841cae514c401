//! Kernel module indexes in the standard text formats (`modules.dep`,
//! `modules.alias`, `modules.builtin`, as written by depmod and kbuild),
//! the `.modinfo` section reader the builder uses on `.ko` files, and the
//! two system calls PID 1 needs to load modules.
//!
//! Module names compare with `-` and `_` equivalent, as modprobe does: every
//! name is kept in its underscore form.
//!
//! Everything read here comes from files that may be damaged or hostile:
//! parsers skip lines they do not understand and never panic.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The underscore form of a module name (`virtio-net` → `virtio_net`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a module file path: `kernel/fs/ext4/ext4.ko.xz` → `ext4`.
pub fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = match file.find(".ko") {
        Some(i) => &file[..i],
        None => file,
    };
    normalize(stem)
}

/// Alias normalization as kmod does it: `-` becomes `_` except inside a
/// `[...]` bracket expression (where `-` is a range).
fn alias_normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_bracket = false;
    for c in s.chars() {
        match c {
            '[' => {
                in_bracket = true;
                out.push(c)
            }
            ']' => {
                in_bracket = false;
                out.push(c)
            }
            '-' if !in_bracket => out.push('_'),
            _ => out.push(c),
        }
    }
    out
}

/// fnmatch(3) without flags on bytes: `*`, `?`, `[...]` (with `!` or `^`
/// negation and `a-z` ranges), `\` escapes. Linear backtracking on the last
/// `*` only, so hostile patterns cannot make it exponential.
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` seen, and the text position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                b'?' => Some(pi + 1),
                b'[' => match class_match(p, pi, t[ti]) {
                    Some((true, next)) => Some(next),
                    Some((false, _)) => None,
                    // An unterminated bracket is an ordinary character.
                    None => (t[ti] == b'[').then_some(pi + 1),
                },
                b'\\' if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
                c => (c == t[ti]).then_some(pi + 1),
            }
        } else {
            None
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches byte `c` against the bracket expression starting at `p[start]`
/// (`[`). Returns whether it matched and the index after `]`, or `None`
/// when the bracket is not closed.
fn class_match(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && (p[i] == b'!' || p[i] == b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        if i >= p.len() {
            return None;
        }
        // A `]` right after `[` or `[!` is a literal member.
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let mut lo = p[i];
        if lo == b'\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let mut hi = p[i + 2];
            let mut skip = 3;
            if hi == b'\\' && i + 3 < p.len() {
                hi = p[i + 3];
                skip = 4;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
            i += skip;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[derive(Debug, Clone)]
struct DepEntry {
    /// As written in modules.dep: relative to the modules dir (or absolute).
    path: String,
    /// Direct and indirect dependencies, underscore names, file order.
    deps: Vec<String>,
}

/// A parsed module directory: which modules exist, what they depend on,
/// which aliases name them, and which are built into the kernel.
#[derive(Debug, Clone, Default)]
pub struct ModIndex {
    dir: PathBuf,
    modules: HashMap<String, DepEntry>,
    /// Aliases without glob characters, normalized, to module names.
    exact_aliases: HashMap<String, Vec<String>>,
    /// Aliases with glob characters (normalized pattern, module name), file order.
    glob_aliases: Vec<(String, String)>,
    builtin: HashSet<String>,
    /// modules.softdep: module to (pre, post) names, modules or aliases.
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
}

impl ModIndex {
    /// Reads DIR/modules.dep (required), DIR/modules.alias,
    /// DIR/modules.builtin and DIR/modules.softdep (optional).
    pub fn open(modules_dir: &Path) -> Result<ModIndex, String> {
        let dep_path = modules_dir.join("modules.dep");
        let dep = std::fs::read(&dep_path).map_err(|e| format!("{}: {e}", dep_path.display()))?;
        let read_opt = |name: &str| -> Result<Vec<u8>, String> {
            let p = modules_dir.join(name);
            match std::fs::read(&p) {
                Ok(b) => Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(format!("{}: {e}", p.display())),
            }
        };
        let alias = read_opt("modules.alias")?;
        let builtin = read_opt("modules.builtin")?;
        let softdep = read_opt("modules.softdep")?;
        Ok(Self::from_texts(modules_dir, &dep, &alias, &builtin).with_softdeps(&softdep))
    }

    /// Adds the soft dependencies of a modules.softdep text
    /// (`softdep MODULE pre: A B post: C`).
    pub fn with_softdeps(mut self, text: &[u8]) -> ModIndex {
        for line in lines(text) {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            let entry = self.softdeps.entry(normalize(module)).or_default();
            let mut post = false;
            for w in words {
                match w {
                    "pre:" => post = false,
                    "post:" => post = true,
                    _ if post => entry.1.push(w.to_string()),
                    _ => entry.0.push(w.to_string()),
                }
            }
        }
        self
    }

    /// Builds an index from the contents of the three files (bytes, since
    /// the files may not be UTF-8); `modules_dir` anchors relative paths.
    pub fn from_texts(modules_dir: &Path, dep: &[u8], alias: &[u8], builtin: &[u8]) -> ModIndex {
        let mut idx = ModIndex {
            dir: modules_dir.to_path_buf(),
            ..Default::default()
        };
        for line in lines(dep) {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = rest.split_whitespace().map(name_from_path).collect();
            idx.modules.entry(name_from_path(path)).or_insert(DepEntry {
                path: path.to_string(),
                deps,
            });
        }
        for line in lines(alias) {
            let mut words = line.split_whitespace();
            let (Some("alias"), Some(pat), Some(module)) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            idx.add_alias(pat, module);
        }
        for line in lines(builtin) {
            let line = line.trim();
            if !line.is_empty() {
                idx.builtin.insert(name_from_path(line));
            }
        }
        idx
    }

    fn add_alias(&mut self, pattern: &str, module: &str) {
        let pat = alias_normalize(pattern);
        let module = normalize(module);
        if pat.contains(['*', '?', '[']) {
            self.glob_aliases.push((pat, module));
        } else {
            let v = self.exact_aliases.entry(pat).or_default();
            if !v.contains(&module) {
                v.push(module);
            }
        }
    }

    /// The directory this index describes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Module names (underscore form) whose alias patterns (fnmatch
    /// globs: `*` `?` `[..]`) match `modalias`. File order, no duplicates.
    pub fn match_modalias(&self, modalias: &str) -> Vec<String> {
        let m = alias_normalize(modalias.trim());
        let mut out: Vec<String> = Vec::new();
        if let Some(v) = self.exact_aliases.get(&m) {
            out.extend(v.iter().cloned());
        }
        for (pat, module) in &self.glob_aliases {
            if !out.contains(module) && fnmatch(pat, &m) {
                out.push(module.clone());
            }
        }
        out
    }

    /// A module name, or an alias like `fs-ext4` / `net-pf-17`, to module
    /// names. A built-in module resolves to its own name (loading it is then
    /// a no-op); an unknown name to nothing.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let n = normalize(name_or_alias.trim());
        if self.modules.contains_key(&n) || self.builtin.contains(&n) {
            return vec![n];
        }
        self.match_modalias(name_or_alias)
    }

    /// `names` plus all their dependencies, dependencies first, no
    /// duplicates, built-ins and unknown names left out. Soft dependencies
    /// (modules.softdep) come along as modprobe loads them: `pre:` ones
    /// before the module, `post:` ones after it.
    pub fn load_order(&self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut done = HashSet::new();
        for n in names {
            self.visit(&normalize(n), &mut done, &mut HashSet::new(), &mut out);
        }
        out
    }

    /// Depth-first post-order walk; `on_path` breaks dependency cycles that
    /// a damaged modules.dep may contain.
    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        on_path: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if done.contains(name) || on_path.contains(name) || self.builtin.contains(name) {
            return;
        }
        let Some(entry) = self.modules.get(name) else {
            return;
        };
        on_path.insert(name.to_string());
        let soft = self.softdeps.get(name);
        for s in soft.map(|s| s.0.as_slice()).unwrap_or(&[]) {
            for r in self.resolve(s) {
                self.visit(&r, done, on_path, out);
            }
        }
        // depmod lists dependencies so that the last one loads first.
        for d in entry.deps.iter().rev() {
            self.visit(d, done, on_path, out);
        }
        done.insert(name.to_string());
        out.push(name.to_string());
        for s in soft.map(|s| s.1.as_slice()).unwrap_or(&[]) {
            for r in self.resolve(s) {
                self.visit(&r, done, on_path, out);
            }
        }
        on_path.remove(name);
    }

    /// Absolute path of the module file.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        let e = self.modules.get(&normalize(name))?;
        let p = Path::new(&e.path);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// True when a loadable module file of that name is listed.
    pub fn has_module(&self, name: &str) -> bool {
        self.modules.contains_key(&normalize(name))
    }

    /// Number of loadable modules listed in modules.dep.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// Text lines of a byte file, lossily decoded, comments and blanks dropped.
fn lines(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    bytes.split(|&b| b == b'\n').filter_map(|l| {
        let s = String::from_utf8_lossy(l);
        let t = s.trim();
        (!t.is_empty() && !t.starts_with('#')).then(|| t.to_string())
    })
}

/// finit_module(2) of one uncompressed .ko; Ok(false) when already loaded
/// (EEXIST).
pub fn load_module(path: &Path, params: &str) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let params = std::ffi::CString::new(params).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in module parameters")
    })?;
    // SAFETY: the fd is open for the duration of the call and `params` is a
    // valid NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Names of loaded modules (/proc/modules), underscore form.
pub fn loaded() -> HashSet<String> {
    std::fs::read("/proc/modules")
        .map(|b| parse_proc_modules(&b))
        .unwrap_or_default()
}

/// The first word of each /proc/modules line.
pub fn parse_proc_modules(bytes: &[u8]) -> HashSet<String> {
    lines(bytes)
        .filter_map(|l| l.split_whitespace().next().map(normalize))
        .collect()
}

// ---------------------------------------------------------------------------
// Builder side: `.modinfo` of a module file, and writing the index files.

/// What a module declares about itself in its `.modinfo` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, underscore form (absent in very old modules).
    pub name: Option<String>,
    /// `depends=`: modules whose symbols it uses, underscore form.
    pub depends: Vec<String>,
    /// `alias=` patterns as written.
    pub aliases: Vec<String>,
    /// `firmware=` files, relative to /lib/firmware.
    pub firmware: Vec<String>,
    /// `softdep=` `pre:` names (modules or aliases) to load before it.
    pub softdeps: Vec<String>,
    /// `softdep=` `post:` names to load after it.
    pub softdeps_post: Vec<String>,
}

/// Reads the `.modinfo` section of an ELF relocatable (.ko, uncompressed).
pub fn read_modinfo(elf: &[u8]) -> Result<ModInfo, String> {
    let section = elf_section(elf, ".modinfo")?.ok_or("no .modinfo section")?;
    Ok(parse_modinfo(section))
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut mi = ModInfo::default();
    for item in section.split(|&b| b == 0) {
        let s = String::from_utf8_lossy(item);
        let Some((k, v)) = s.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k {
            "name" if !v.is_empty() => mi.name = Some(normalize(v)),
            "depends" => mi.depends.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(normalize),
            ),
            "alias" if !v.is_empty() => mi.aliases.push(v.to_string()),
            "firmware" if !v.is_empty() => mi.firmware.push(v.to_string()),
            "softdep" => {
                // "pre: a b post: c"
                let mut post = false;
                for w in v.split_whitespace() {
                    match w {
                        "pre:" => post = false,
                        "post:" => post = true,
                        _ if post => mi.softdeps_post.push(w.to_string()),
                        _ => mi.softdeps.push(w.to_string()),
                    }
                }
            }
            _ => {}
        }
    }
    mi
}

/// Finds a section by name in an ELF file (32/64-bit, either byte order),
/// through the `object` crate, which checks every offset against the file.
/// `Ok(None)` when absent; `Err` when the file is not a sane ELF.
pub fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, String> {
    use object::{Object, ObjectSection};
    if elf.len() < 16 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let file = object::File::parse(elf).map_err(|e| format!("bad ELF file: {e}"))?;
    match file.section_by_name(wanted) {
        None => Ok(None),
        Some(s) => s
            .data()
            .map(Some)
            .map_err(|e| format!("bad ELF section {wanted}: {e}")),
    }
}

/// One module the builder puts in the image, for writing the index files.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Path relative to the modules dir, e.g. `kernel/fs/ext4/ext4.ko`.
    pub path: String,
    pub info: ModInfo,
}

/// The text of modules.dep, modules.alias and modules.softdep for a set of
/// modules, in depmod's formats. Dependencies outside the set (or built in)
/// are left out; each line lists the full transitive closure, the module
/// to load first last, as depmod does.
pub fn index_texts(entries: &[IndexEntry]) -> (String, String, String) {
    let mut by_name: HashMap<String, &IndexEntry> = HashMap::new();
    for e in entries {
        let name = e
            .info
            .name
            .clone()
            .unwrap_or_else(|| name_from_path(&e.path));
        by_name.entry(name).or_insert(e);
    }
    let mut dep = String::new();
    let mut alias = String::from("# Aliases extracted from modules themselves.\n");
    let mut softdep = String::from("# Soft dependencies extracted from modules themselves.\n");
    for e in entries {
        let name = e
            .info
            .name
            .clone()
            .unwrap_or_else(|| name_from_path(&e.path));
        // Post-order of the closure: dependencies before dependents.
        let mut order = Vec::new();
        let mut done = HashSet::new();
        closure_visit(&name, &by_name, &mut done, &mut HashSet::new(), &mut order);
        order.retain(|n| n != &name);
        dep.push_str(&e.path);
        dep.push(':');
        for d in order.iter().rev() {
            if let Some(de) = by_name.get(d) {
                dep.push(' ');
                dep.push_str(&de.path);
            }
        }
        dep.push('\n');
        for a in &e.info.aliases {
            if !a.contains(char::is_whitespace) {
                alias.push_str(&format!("alias {a} {name}\n"));
            }
        }
    }
    for e in entries {
        let name = e
            .info
            .name
            .clone()
            .unwrap_or_else(|| name_from_path(&e.path));
        let (pre, post) = (&e.info.softdeps, &e.info.softdeps_post);
        if !pre.is_empty() || !post.is_empty() {
            let mut line = format!("softdep {name}");
            if !pre.is_empty() {
                line.push_str(&format!(" pre: {}", pre.join(" ")));
            }
            if !post.is_empty() {
                line.push_str(&format!(" post: {}", post.join(" ")));
            }
            softdep.push_str(&line);
            softdep.push('\n');
        }
    }
    (dep, alias, softdep)
}

fn closure_visit(
    name: &str,
    by_name: &HashMap<String, &IndexEntry>,
    done: &mut HashSet<String>,
    on_path: &mut HashSet<String>,
    out: &mut Vec<String>,
) {
    if done.contains(name) || on_path.contains(name) {
        return;
    }
    let Some(e) = by_name.get(name) else { return };
    on_path.insert(name.to_string());
    for d in &e.info.depends {
        closure_visit(d, by_name, done, on_path, out);
    }
    on_path.remove(name);
    done.insert(name.to_string());
    out.push(name.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_basics() {
        assert!(fnmatch(
            "pci:v00008086d000010D3sv*sd*bc*sc*i*",
            "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(!fnmatch(
            "pci:v00008086d000010D3sv*sd*bc*sc*i*",
            "pci:v00008086d000010D4sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(fnmatch("a?c", "abc"));
        assert!(!fnmatch("a?c", "ac"));
        assert!(fnmatch("[abc]x", "bx"));
        assert!(!fnmatch("[!abc]x", "bx"));
        assert!(fnmatch("[a-c]x", "cx"));
        assert!(fnmatch("*", ""));
        assert!(fnmatch("a*b*c", "aXXbYYbc"));
        assert!(!fnmatch("a*b*c", "aXXbYYbd"));
        assert!(fnmatch("[]]", "]"));
        assert!(fnmatch("[", "["));
        assert!(fnmatch("\\*", "*"));
        assert!(!fnmatch("\\*", "x"));
        // Pathological pattern stays fast.
        let p = "a*".repeat(30) + "b";
        assert!(!fnmatch(&p, &"a".repeat(200)));
    }

    #[test]
    fn name_forms() {
        assert_eq!(name_from_path("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            name_from_path("kernel/drivers/x/ax88179-178a.ko"),
            "ax88179_178a"
        );
        assert_eq!(alias_normalize("fs-ext4"), "fs_ext4");
        assert_eq!(alias_normalize("a-[0-9]"), "a_[0-9]");
    }

    #[test]
    fn modinfo_parse() {
        let s = b"license=GPL\0depends=jbd2,mbcache,crc16\0alias=fs-ext4\0softdep=pre: crypto-crc32c post: zz\0name=ext4\0firmware=x/y.bin\0\0";
        let m = parse_modinfo(s);
        assert_eq!(m.name.as_deref(), Some("ext4"));
        assert_eq!(m.depends, vec!["jbd2", "mbcache", "crc16"]);
        assert_eq!(m.aliases, vec!["fs-ext4"]);
        assert_eq!(m.firmware, vec!["x/y.bin"]);
        assert_eq!(m.softdeps, vec!["crypto-crc32c"]);
        assert_eq!(m.softdeps_post, vec!["zz"]);
        let e = parse_modinfo(b"depends=\0");
        assert!(e.depends.is_empty());
    }

    #[test]
    fn index_round_trip() {
        let mk = |path: &str, name: &str, deps: &[&str], aliases: &[&str]| IndexEntry {
            path: path.into(),
            info: ModInfo {
                name: Some(name.into()),
                depends: deps.iter().map(|s| s.to_string()).collect(),
                aliases: aliases.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        };
        let entries = vec![
            mk(
                "kernel/fs/ext4/ext4.ko",
                "ext4",
                &["jbd2", "mbcache", "crc16", "builtin_thing"],
                &["fs-ext4"],
            ),
            mk("kernel/fs/jbd2/jbd2.ko", "jbd2", &[], &[]),
            mk("kernel/fs/mbcache.ko", "mbcache", &[], &[]),
            mk("kernel/lib/crc16.ko", "crc16", &[], &[]),
            mk(
                "kernel/drivers/net/virtio_net.ko",
                "virtio_net",
                &["net_failover"],
                &["virtio:d00000001v*"],
            ),
            mk(
                "kernel/drivers/net/net_failover.ko",
                "net_failover",
                &["failover"],
                &[],
            ),
            mk("kernel/net/core/failover.ko", "failover", &[], &[]),
        ];
        let (dep, alias, _) = index_texts(&entries);
        assert!(dep.contains("kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n"));
        assert!(alias.contains("alias virtio:d00000001v* virtio_net\n"));
        let idx = ModIndex::from_texts(
            Path::new("/m"),
            dep.as_bytes(),
            alias.as_bytes(),
            b"kernel/x/builtin_thing.ko\n",
        );
        assert_eq!(
            idx.load_order(&["ext4".into()]),
            vec!["jbd2", "mbcache", "crc16", "ext4"]
        );
        assert_eq!(
            idx.load_order(&["virtio-net".into()]),
            vec!["failover", "net_failover", "virtio_net"]
        );
        assert_eq!(idx.resolve("fs-ext4"), vec!["ext4"]);
        assert_eq!(idx.resolve("fs_ext4"), vec!["ext4"]);
        assert_eq!(
            idx.match_modalias("virtio:d00000001v00001AF4"),
            vec!["virtio_net"]
        );
        assert_eq!(
            idx.path_of("virtio-net").unwrap(),
            Path::new("/m/kernel/drivers/net/virtio_net.ko")
        );
        assert!(idx.is_builtin("builtin-thing"));
        assert!(idx.load_order(&["builtin_thing".into()]).is_empty());
    }

    #[test]
    fn proc_modules() {
        let s = b"virtio_net 65536 0 - Live 0x0\nnet_failover 20480 1 virtio_net, Live 0x0\n";
        let m = parse_proc_modules(s);
        assert!(m.contains("virtio_net") && m.contains("net_failover") && m.len() == 2);
    }

    #[test]
    fn elf_garbage() {
        assert!(elf_section(b"", ".modinfo").is_err());
        assert!(elf_section(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0", ".modinfo").is_err());
    }
}
