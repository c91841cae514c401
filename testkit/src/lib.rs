//! Test support shared by every bootlun integration test (root crate and
//! `bootlun-pxe`): one skip policy, one temp-dir type, one network-namespace
//! type, one Debian package cache, one child-process/log-capture type and
//! the image crate's cpio writer.
//!
//! * Skip policy: [`require_root`], [`require_tool`] and [`require_file`]
//!   FAIL the test with a message naming the Debian package, unless
//!   `BOOTLUN_SKIP_EXTERNAL=1` is set, in which case they print `SKIPPED: ...`
//!   and return false (the caller returns). Nothing turns green by not
//!   running.
//! * [`Server`] starts `bootlun serve` (or, with `BOOTLUN_TEST_TARGET=tgt`,
//!   a private `tgtd` configured the same way), waits for the readiness
//!   line, keeps draining its output and stops exactly the process it
//!   started.
//! * [`run_tool`] runs an external program with a hard time limit.
//! * [`TempDir`] gives every test its own scratch directory.
//! * [`NetNs`] creates, enters and deletes network namespaces.
//! * [`DebCache`] keeps `apt-get download`ed packages in `target/tmp/deb-cache`.
//! * [`Spawned`] / [`Capture`] run a child and wait on its output.
//! * [`IscsiConn`] is a minimal raw iSCSI initiator.
//!
//! Nothing here sleeps to synchronise: waits are on condition variables fed
//! by the output-draining threads, and every wait is bounded.

mod cpio;
mod deb;
mod iscsi;
mod netns;
mod proc;
mod server;
pub mod vm;

pub use cpio::Cpio;
pub use deb::DebCache;
pub use iscsi::*;
pub use netns::{enter as enter_netns, NetNs, RaSender};
pub use proc::{run_bytes, run_ok, wait_bounded, Capture, Spawned};
pub use server::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Default target name of `bootlun serve`.
pub const DEFAULT_IQN: &str = "iqn.2026-11.org.bootlun:target";
/// How long a server may take to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{}-{:08x}", std::process::id(), n, nanos)
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A scratch directory unique to one test, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A directory under `base` (for example `/dev/shm`, for files that
    /// must live on tmpfs), removed with everything in it when dropped,
    /// panics included.
    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        let path = base.join(format!("bootlun-test-{tag}-{}", unique_suffix()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.set_len(size)
        .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
}

/// Deterministic pseudo-random bytes (xorshift64*), good enough for test data.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Parses `64M`, `1G`, `512K`, `4096` into bytes (binary units).
pub fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1u64 << 20),
        Some('G') => (&s[..s.len() - 1], 1u64 << 30),
        Some('T') => (&s[..s.len() - 1], 1u64 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("bad size {s:?}"))
        * mult
}

// ---------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Cargo's target directory, found from the running test binary
/// (`target/<profile>/deps/<test>`); `CARGO_TARGET_DIR` wins when set.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("{}: not inside a Cargo target directory", exe.display()))
}

/// `target/tmp`, the scratch directory Cargo gives integration tests.
pub fn target_tmp_dir() -> PathBuf {
    let d = target_dir().join("tmp");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    d
}

/// True when `BOOTLUN_SKIP_EXTERNAL=1`.
pub fn skip_external() -> bool {
    std::env::var("BOOTLUN_SKIP_EXTERNAL")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Checks that `bin` is installed. Missing: panics naming the Debian package,
/// unless `BOOTLUN_SKIP_EXTERNAL=1`, in which case it prints SKIPPED and
/// returns false (the caller then returns early).
pub fn require_tool(bin: &str, debian_package: &str) -> bool {
    if find_in_path(bin).is_some() {
        return true;
    }
    if skip_external() {
        eprintln!(
            "SKIPPED: `{bin}` not found (Debian package {debian_package}); BOOTLUN_SKIP_EXTERNAL=1"
        );
        println!("SKIPPED: `{bin}` not found (Debian package {debian_package})");
        false
    } else {
        panic!(
            "`{bin}` not found in PATH: install the Debian package `{debian_package}` \
             (apt-get install {debian_package}), or set BOOTLUN_SKIP_EXTERNAL=1 to skip"
        );
    }
}

/// The one way a test gives up: FAIL (panic) naming what to install,
/// unless `BOOTLUN_SKIP_EXTERNAL=1`, then print `SKIPPED: ...` and return
/// false so the caller returns.
fn missing(what: &str, fix: &str) -> bool {
    if skip_external() {
        eprintln!("SKIPPED: {what} ({fix}); BOOTLUN_SKIP_EXTERNAL=1");
        println!("SKIPPED: {what} ({fix})");
        false
    } else {
        panic!("{what}: {fix}, or set BOOTLUN_SKIP_EXTERNAL=1 to skip");
    }
}

/// Checks that the test runs as root (network namespaces, taps, loop
/// devices); otherwise fails, or skips under `BOOTLUN_SKIP_EXTERNAL=1`.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    missing("not root", "run the test as root (sudo -E cargo test ...)")
}

/// Checks that `path` exists (a firmware image, a device node); otherwise
/// fails naming `debian_package`, or skips under `BOOTLUN_SKIP_EXTERNAL=1`.
pub fn require_file(path: impl AsRef<Path>, debian_package: &str) -> bool {
    let path = path.as_ref();
    if path.exists() {
        return true;
    }
    missing(
        &format!("{} missing", path.display()),
        &format!(
            "install the Debian package `{debian_package}` (apt-get install {debian_package})"
        ),
    )
}

/// Output of an external program run by [`run_tool`].
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub description: String,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the full output unless the program exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "{} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.description,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn drain_to_string<R: Read + Send + 'static>(r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut r = r;
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` until `deadline`; on overrun kills exactly that child
/// (SIGKILL) and returns None.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    wait_bounded(child, limit)
}

/// Runs `cmd` with stdin closed and stdout/stderr captured. If it has not
/// exited within `limit`, it is killed and the test fails with its output.
pub fn run_tool(cmd: &mut Command, limit: Duration) -> ToolOutput {
    match try_run_tool(cmd, limit) {
        Ok(out) => out,
        Err(out) => panic!(
            "`{}` did not finish within {limit:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.description, out.stdout, out.stderr
        ),
    }
}

/// Like [`run_tool`], but an overrun is returned as `Err` (with the output
/// so far; the program has been killed) instead of failing the test.
pub fn try_run_tool(cmd: &mut Command, limit: Duration) -> Result<ToolOutput, ToolOutput> {
    let description = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{description}`: {e}"));
    let out = drain_to_string(child.stdout.take().unwrap());
    let err = drain_to_string(child.stderr.take().unwrap());
    let status = wait_with_deadline(&mut child, limit);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(ToolOutput {
            status,
            stdout,
            stderr,
            elapsed: start.elapsed(),
            description,
        }),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(ToolOutput {
                status: ExitStatus::from_raw(libc::SIGKILL),
                stdout,
                stderr,
                elapsed: start.elapsed(),
                description,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Captured output of a server
// ---------------------------------------------------------------------------

/// The output of a [`Server`]: a [`Capture`] seen as plain lines (stderr
/// as is, stdout behind `[stdout] `).
#[derive(Clone)]
pub struct LogBuf(Capture);

impl Default for LogBuf {
    fn default() -> Self {
        LogBuf(Capture::new(Instant::now()))
    }
}

impl LogBuf {
    fn attach<R: Read + Send + 'static>(&self, r: R, prefix: &'static str) {
        self.0.attach_prefixed(r, "server", false, prefix);
    }

    /// All lines so far, newline-joined.
    pub fn text(&self) -> String {
        self.0.text()
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lines().into_iter().map(|(_, l)| l).collect()
    }

    /// Waits until some line satisfies `pred` (returns it), or all streams
    /// closed, or `limit` passed (returns None).
    pub fn wait_for(&self, limit: Duration, pred: impl FnMut(&str) -> bool) -> Option<String> {
        self.0.wait_for(limit, pred).map(|(_, l)| l)
    }
}

/// Run `qemu-img ARGS` (bounded to 3 minutes); a failure panics with its
/// output, naming the package that brings the iscsi driver.
pub fn qemu_img(args: &[&str]) {
    qemu_img_as(std::process::Command::new("qemu-img"), args);
}

/// [`qemu_img`] with `qemu-img` started by `cmd` (for example
/// [`NetNs::command`], to run it inside a namespace).
pub fn qemu_img_as(mut cmd: std::process::Command, args: &[&str]) {
    let out = run_tool(cmd.args(args), Duration::from_secs(180));
    assert!(
        out.success(),
        "qemu-img {} failed ({}); the iscsi driver comes with the Debian package qemu-block-extra\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    println!("qemu-img {} ... ok in {:?}", args.join(" "), out.elapsed);
}

/// Write the raw image `src` to `url` (an `iscsi://` LUN) with
/// `qemu-img convert`, then read the LUN back into `back`.
pub fn qemu_img_write_and_read_back(src: &Path, url: &str, back: &Path) {
    qemu_img_write_and_read_back_as(|| std::process::Command::new("qemu-img"), src, url, back);
}

/// [`qemu_img_write_and_read_back`] with each `qemu-img` started by `cmd`.
pub fn qemu_img_write_and_read_back_as(
    cmd: impl Fn() -> std::process::Command,
    src: &Path,
    url: &str,
    back: &Path,
) {
    let (src, back) = (src.to_string_lossy(), back.to_string_lossy());
    qemu_img_as(
        cmd(),
        &["convert", "-n", "-f", "raw", "-O", "raw", &src, url],
    );
    qemu_img_as(cmd(), &["convert", "-f", "raw", "-O", "raw", url, &back]);
}
