//! QEMU fixture for the Linux-initiator test: Debian packages cached on
//! disk, a guest kernel's module closure, an initramfs written in the cpio
//! "newc" format, a network namespace with a tap device, and children whose
//! output is captured line by line with timestamps.
//!
//! Everything here stops only what it started (by PID) and every wait is
//! bounded.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------

/// Runs `cmd` to completion within `limit` (killed on overrun) and returns
/// stdout; panics with the full output on failure.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, limit);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => String::from_utf8_lossy(&out).into_owned(),
        Some(st) => panic!(
            "{desc} failed ({st})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
        None => panic!(
            "{desc} did not finish within {limit:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    }
}

/// Like [`run_ok`] but returns stdout's raw bytes.
pub fn run_bytes(cmd: &mut Command, limit: Duration) -> Vec<u8> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, limit);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => out,
        other => panic!(
            "{desc} failed ({other:?})\n--- stderr ---\n{}",
            String::from_utf8_lossy(&err)
        ),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits for `child` at most `limit`; on overrun SIGKILLs exactly that child
/// and returns None.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Polls the child's state; nothing is ordered by this sleep.
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Captured, timestamped output
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Lines {
    lines: Vec<(Duration, String)>,
    open: usize,
}

/// Lines written by a child, each with the time since `origin`.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<(Mutex<Lines>, Condvar)>,
    origin: Instant,
}

impl Capture {
    pub fn new(origin: Instant) -> Capture {
        Capture {
            inner: Arc::default(),
            origin,
        }
    }

    /// Reads `r` line by line (lossy UTF-8, `\r` stripped) into the capture;
    /// with `echo`, also prints each line prefixed by `tag`.
    pub fn attach<R: Read + Send + 'static>(&self, r: R, tag: &'static str, echo: bool) {
        self.inner.0.lock().unwrap().open += 1;
        let me = self.clone();
        thread::spawn(move || {
            let mut rd = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match rd.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line: String = String::from_utf8_lossy(&buf)
                            .chars()
                            .filter(|c| *c != '\r' && *c != '\n')
                            .collect();
                        let t = me.origin.elapsed();
                        if echo {
                            eprintln!("[{:7.2}s {tag}] {line}", t.as_secs_f64());
                        }
                        let (lock, cv) = &*me.inner;
                        lock.lock().unwrap().lines.push((t, line));
                        cv.notify_all();
                    }
                }
            }
            let (lock, cv) = &*me.inner;
            lock.lock().unwrap().open -= 1;
            cv.notify_all();
        });
    }

    pub fn text(&self) -> String {
        let st = self.inner.0.lock().unwrap();
        st.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn lines(&self) -> Vec<(Duration, String)> {
        self.inner.0.lock().unwrap().lines.clone()
    }

    /// Waits (at most `limit`) for a line satisfying `pred`; None if the
    /// streams closed or time ran out first.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(Duration, String)> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        let mut seen = 0;
        loop {
            while seen < st.lines.len() {
                if pred(&st.lines[seen].1) {
                    return Some(st.lines[seen].clone());
                }
                seen += 1;
            }
            let now = Instant::now();
            if st.open == 0 || now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits (at most `limit`) until every attached stream reached EOF.
    pub fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        loop {
            if st.open == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// A spawned child with captured stdout/stderr. Dropping it SIGKILLs the
/// child if it is still running (by its PID only).
pub struct Spawned {
    pub child: Option<Child>,
    pub out: Capture,
    pub name: &'static str,
}

impl Spawned {
    pub fn spawn(name: &'static str, cmd: &mut Command, origin: Instant, echo: bool) -> Spawned {
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({desc}): {e}"));
        let out = Capture::new(origin);
        out.attach(child.stdout.take().unwrap(), name, echo);
        out.attach(child.stderr.take().unwrap(), name, echo);
        Spawned {
            child: Some(child),
            out,
            name,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` to the child's PID (if it has not been reaped).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: kill(2) on the PID of our own unreaped child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `sig` to the child's PID and waits at most `limit` for it to
    /// exit (SIGKILL after that; then None).
    pub fn stop(&mut self, sig: libc::c_int, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        let st = wait_bounded(&mut child, limit);
        self.out.wait_closed(Duration::from_secs(5));
        st
    }

    /// Waits at most `limit` for the child to exit on its own; kills it on
    /// overrun (then None).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let st = wait_bounded(&mut child, limit);
        self.out.wait_closed(Duration::from_secs(5));
        st
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Network namespace with a tap device
// ---------------------------------------------------------------------------

/// A network namespace owned by this test, deleted on drop. Declare it
/// before the processes running inside it so they are dropped first.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates the namespace, brings `lo` up, and creates `tap` with `cidr`.
    pub fn with_tap(name: &str, tap: &str, cidr: &str) -> NetNs {
        let t = Duration::from_secs(20);
        // A namespace left by a crashed run with our exact name (same PID)
        // would make `add` fail; it is ours by construction, so remove it.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", name]), t);
        let ns = NetNs {
            name: name.to_string(),
        };
        run_ok(
            Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]),
            t,
        );
        run_ok(
            Command::new("ip").args([
                "netns", "exec", name, "ip", "tuntap", "add", "dev", tap, "mode", "tap",
            ]),
            t,
        );
        run_ok(
            Command::new("ip").args(["-n", name, "addr", "add", cidr, "dev", tap]),
            t,
        );
        run_ok(
            Command::new("ip").args(["-n", name, "link", "set", tap, "up"]),
            t,
        );
        ns
    }

    /// A command running `prog` inside the namespace (`ip netns exec`
    /// execs it, so the child's PID is the program's).
    pub fn command(&self, prog: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let st = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------
// Debian package cache
// ---------------------------------------------------------------------------

/// `.deb` files fetched with `apt-get download`, and their unpacked trees,
/// kept across runs. Concurrent tests never see partial files: everything
/// is produced in a private temporary directory and renamed into place.
pub struct DebCache {
    pub dir: PathBuf,
}

impl DebCache {
    /// `BOOTLUN_E2E_CACHE`, or the cache `tests/pxe_e2e.rs` uses
    /// (`pxe-e2e-cache` in Cargo's target tmp dir), so the kernel package
    /// is downloaded once for both tests. Unpacked trees go to `unpacked/`.
    pub fn open() -> DebCache {
        let dir = std::env::var_os("BOOTLUN_E2E_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("pxe-e2e-cache"));
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

// ---------------------------------------------------------------------------
// Kernel modules
// ---------------------------------------------------------------------------

/// The modules of one unpacked kernel: by name (`-` and `_` equivalent),
/// plus the list of built-in ones.
pub struct Modules {
    pub version: String,
    pub root: PathBuf,
    files: HashMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

fn mod_key(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(file: &Path) -> Option<String> {
    let n = file.file_name()?.to_string_lossy().into_owned();
    let base = n
        .strip_suffix(".xz")
        .or(n.strip_suffix(".zst"))
        .or(n.strip_suffix(".gz"))
        .unwrap_or(&n);
    base.strip_suffix(".ko").map(mod_key)
}

impl Modules {
    /// Indexes `lib/modules/VERSION` under an unpacked kernel package.
    pub fn index(tree: &Path) -> Modules {
        let base = tree.join("lib/modules");
        let version = std::fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("no kernel version directory");
        let root = base.join(&version);
        let mut files = HashMap::new();
        let mut stack = vec![root.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                } else if let Some(n) = module_name_of(&p) {
                    files.insert(n, p);
                }
            }
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name_of(Path::new(l.trim())))
            .collect();
        Modules {
            version,
            root,
            files,
            builtin,
        }
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&mod_key(name))
    }

    /// The module's bytes, decompressed if the package ships it compressed.
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        let p = &self.files[&mod_key(name)];
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tool = match ext.as_str() {
            "ko" => return std::fs::read(p).unwrap(),
            "xz" => "xz",
            "zst" => "zstd",
            "gz" => "gzip",
            other => panic!("unknown module compression {other:?} for {}", p.display()),
        };
        run_bytes(
            Command::new(tool).arg("-dc").arg(p),
            Duration::from_secs(60),
        )
    }

    /// `depends=` from the module's `.modinfo` strings.
    fn depends(&self, name: &str) -> Vec<String> {
        let data = self.bytes(name);
        let key = b"depends=";
        let mut i = 0;
        while let Some(pos) = find(&data[i..], key) {
            let at = i + pos;
            // A .modinfo entry starts at a NUL boundary.
            if at == 0 || data[at - 1] == 0 {
                let end = data[at..]
                    .iter()
                    .position(|b| *b == 0)
                    .map(|e| at + e)
                    .unwrap_or(data.len());
                let v = String::from_utf8_lossy(&data[at + key.len()..end]).into_owned();
                return v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(mod_key)
                    .collect();
            }
            i = at + 1;
        }
        Vec::new()
    }

    /// `wanted` and everything they depend on that is not built in, in an
    /// order that loads dependencies first.
    pub fn closure(&self, wanted: &[&str]) -> Vec<String> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&mod_key(w), &mut done, &mut order, 0);
        }
        order
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        assert!(depth < 64, "module dependency loop at {name}");
        if done.contains(name) {
            return;
        }
        done.insert(name.to_string());
        if !self.files.contains_key(name) {
            assert!(
                self.is_builtin(name),
                "module {name} is neither shipped nor built in"
            );
            return;
        }
        for d in self.depends(name) {
            self.visit(&d, done, order, depth + 1);
        }
        order.push(name.to_string());
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Shared libraries of a dynamically linked program
// ---------------------------------------------------------------------------

/// (path in the guest, file on the host) for every library `ldd` lists for
/// `binary`, searching `extra_lib_dirs` first (libraries from downloaded
/// packages) and the host system after.
pub fn shared_libs(binary: &Path, extra_lib_dirs: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let lp = std::env::join_paths(extra_lib_dirs).unwrap();
    let out = run_ok(
        Command::new("ldd").arg(binary).env("LD_LIBRARY_PATH", lp),
        Duration::from_secs(30),
    );
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.contains("not found") {
            panic!("ldd {}: {line}\n{out}", binary.display());
        }
        // `libfoo.so.1 => /path (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let (soname, path) = match line.split_once(" => ") {
            Some((so, rest)) => (
                so.trim().to_string(),
                rest.split_whitespace().next().unwrap_or("").to_string(),
            ),
            None => {
                let p = line.split_whitespace().next().unwrap_or("").to_string();
                (p.clone(), p)
            }
        };
        if !path.starts_with('/') {
            continue; // linux-vdso
        }
        let guest = if soname.starts_with('/') {
            soname
        } else {
            format!("/lib/x86_64-linux-gnu/{soname}")
        };
        libs.push((guest, PathBuf::from(path)));
    }
    libs
}

// ---------------------------------------------------------------------------
// cpio newc writer
// ---------------------------------------------------------------------------

/// An initramfs image in the cpio "newc" format (uncompressed; the kernel
/// accepts that). Parent directories are added automatically.
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
    pub entries: BTreeMap<String, usize>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Cpio {
        Cpio {
            buf: Vec::new(),
            ino: 1,
            dirs: BTreeSet::new(),
            entries: BTreeMap::new(),
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == S_IFDIR { 2 } else { 1 },
            0, // mtime
            size as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if !self.dirs.contains(&acc) {
                self.dirs.insert(acc.clone());
                let a = acc.clone();
                self.header(&a, S_IFDIR | 0o755, 0, (0, 0));
            }
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.parents(&format!("{}/x", path.trim_end_matches('/')));
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.header(path, S_IFREG | mode, data.len(), (0, 0));
        self.buf.extend_from_slice(data);
        self.pad();
        self.entries
            .insert(path.trim_start_matches('/').to_string(), data.len());
    }

    pub fn has(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    pub fn host_file(&mut self, path: &str, mode: u32, host: &Path) {
        let data = std::fs::read(host).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
        self.file(path, mode, &data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.header(path, S_IFLNK | 0o777, target.len(), (0, 0));
        self.buf.extend_from_slice(target.as_bytes());
        self.pad();
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.header(path, S_IFCHR | mode, 0, (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

// ---------------------------------------------------------------------------
// Login Requests on the wire
// ---------------------------------------------------------------------------

/// One iSCSI Login Request seen on the wire.
#[derive(Clone, Debug)]
pub struct LoginSeen {
    /// The initiator's TCP port.
    pub port: u16,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
}

impl LoginSeen {
    pub fn isid_hex(&self) -> String {
        self.isid.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Records the Login Requests sent to TCP port `target_port` on an
/// interface inside a network namespace, from a thread that joins the
/// namespace with setns(2) and reads an AF_PACKET socket. bootlun logs no
/// ISIDs; this tells which connections belong to the same session.
pub struct LoginSniffer {
    seen: Arc<Mutex<Vec<LoginSeen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LoginSniffer {
    pub fn start(netns: &str, ifname: &str, target_port: u16) -> Result<LoginSniffer, String> {
        let seen: Arc<Mutex<Vec<LoginSeen>>> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns_path = format!("/run/netns/{netns}");
        let ifname = std::ffi::CString::new(ifname).unwrap();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let fd = match open_packet_socket(&ns_path, &ifname) {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 65536];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: recv(2) into our own buffer, on our own socket.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue; // timeout (SO_RCVTIMEO) or interrupted
                }
                if let Some(l) = parse_login(&buf[..n as usize], target_port) {
                    seen2.lock().unwrap().push(l);
                }
            }
            // SAFETY: closing the socket this thread opened.
            unsafe { libc::close(fd) };
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(LoginSniffer {
                seen,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("packet capture thread did not start".into()),
        }
    }

    pub fn logins(&self) -> Vec<LoginSeen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for LoginSniffer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Joins the namespace (this thread only) and opens an AF_PACKET socket on
/// `ifname` with a 200 ms receive timeout.
fn open_packet_socket(ns_path: &str, ifname: &std::ffi::CStr) -> Result<libc::c_int, String> {
    let ns = std::fs::File::open(ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file we hold open; it changes the
    // network namespace of this (dedicated) thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {ns_path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: if_nametoindex on a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if index == 0 {
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
        return Err(format!("no interface {ifname:?} in the namespace"));
    }
    // SAFETY: sockaddr_ll is plain old data; zero is a valid initial value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = index as i32;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: bind/setsockopt with correctly sized, initialised arguments.
    let ok = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) == 0
    };
    if !ok {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
        return Err(format!("bind/setsockopt on the packet socket: {e}"));
    }
    Ok(fd)
}

/// An iSCSI Login Request at the start of the TCP payload of an Ethernet
/// frame (IPv4) sent to `target_port`.
fn parse_login(frame: &[u8], target_port: u16) -> Option<LoginSeen> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[9] != 6 || ip.len() < ihl + 20 {
        return None;
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let ip = &ip[..total.min(ip.len())];
    let tcp = &ip[ihl..];
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let doff = (tcp[12] >> 4) as usize * 4;
    if dport != target_port || tcp.len() < doff + 48 {
        return None;
    }
    let pdu = &tcp[doff..];
    if pdu[0] & 0x3f != 0x03 {
        return None;
    }
    Some(LoginSeen {
        port: sport,
        isid: pdu[8..14].try_into().unwrap(),
        tsih: u16::from_be_bytes([pdu[14], pdu[15]]),
        cid: u16::from_be_bytes([pdu[20], pdu[21]]),
    })
}
