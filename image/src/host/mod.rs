//! `bootlun host install|update|uninstall`: prepare the installed OS of
//! this machine (the *target*) so another machine can network-boot it
//! over iSCSI from the bootlun image, and offer that image in the boot
//! menu.
//!
//! install: checks prerequisites, writes a dracut drop-in so the OS's own
//! initramfs can log in over iSCSI and regenerates it, copies the image to
//! /boot, adds a "bootlun iSCSI target" boot entry (a BootLoaderSpec entry,
//! or a grub.d script), and on Debian/Ubuntu disables the open-iscsi units.
//! Every change is recorded in a manifest (see [`manifest`]) as it is made,
//! and uninstall undoes exactly those, in reverse.
//!
//! All paths handled here are paths inside `--root` (see [`root`]).

pub mod manifest;
pub mod render;
pub mod root;

use manifest::{backup_path, Change, Manifest, Pending, BACKUP_DIR, MANIFEST, STATE_DIR};
use render::Distro;
use root::Root;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct HostArgs {
    #[command(subcommand)]
    pub action: HostAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum HostAction {
    /// Make this OS bootable over iSCSI from bootlun and add the bootlun
    /// boot entry.
    Install(HostOpts),
    /// Copy a rebuilt image (and config) to /boot and refresh the entry.
    Update(HostOpts),
    /// Undo exactly what install did.
    Uninstall(HostOpts),
}

#[derive(clap::Args, Debug, Clone)]
pub struct HostOpts {
    /// Root of the host tree to change [default: /].
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Print every change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// bootlun TOML config (the `serve` keys), copied to /boot/bootlun.toml
    /// where the ramdisk reads it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory with bootlun-kernel.bin and bootlun-initrd.img
    /// [default: bootlun-image].
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Do not regenerate the initramfs or the GRUB config (print the
    /// commands instead).
    #[arg(long)]
    pub no_regenerate: bool,
}

impl HostOpts {
    /// Defaults as the command line gives them.
    pub fn new(root: impl Into<PathBuf>) -> HostOpts {
        HostOpts {
            root: root.into(),
            dry_run: false,
            config: None,
            image_dir: None,
            no_regenerate: false,
        }
    }
}

/// Why a host action stopped: `code` 2 for an operator error (nothing was
/// changed), 1 for a failure while changing things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub code: u8,
    pub msg: String,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

fn usage(msg: impl Into<String>) -> HostError {
    HostError {
        code: 2,
        msg: msg.into(),
    }
}

fn failed(msg: impl Into<String>) -> HostError {
    HostError {
        code: 1,
        msg: msg.into(),
    }
}

pub fn main(args: &HostArgs) -> ExitCode {
    let mut out = io::stdout().lock();
    match run(&args.action, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("bootlun host: {}", e.msg);
            ExitCode::from(e.code)
        }
    }
}

/// Run one action, writing its report (one line per change) to `out`.
pub fn run(action: &HostAction, out: &mut dyn Write) -> Result<(), HostError> {
    match action {
        HostAction::Install(o) => Session::open(o, out)?.install(),
        HostAction::Update(o) => Session::open(o, out)?.update(),
        HostAction::Uninstall(o) => Session::open(o, out)?.uninstall(),
    }
}

/// Largest config file accepted; a bootlun config is a few lines.
const MAX_CONFIG: u64 = 1 << 20;
/// Longest a regeneration command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where a file's new content comes from.
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Source {
    fn hash(&self) -> io::Result<String> {
        match self {
            Source::Bytes(b) => Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))),
            Source::File(p) => root::hash_path(p),
        }
    }
    fn reader(&self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            Source::Bytes(b) => Ok(Box::new(b.as_slice())),
            Source::File(p) => Ok(Box::new(std::fs::File::open(p)?)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WriteKind {
    /// No file there.
    Create,
    /// Someone else's file: back it up first.
    Replace,
    /// A file bootlun wrote before.
    Update,
}

enum Step {
    Mkdir(String),
    Write {
        path: String,
        src: Source,
        mode: u32,
        hash: String,
        kind: WriteKind,
    },
    RemoveSymlink {
        path: String,
        target: String,
    },
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Mkdir(p) => format!("mkdir {p}"),
            Step::Write {
                path,
                kind: WriteKind::Create,
                ..
            } => format!("create {path}"),
            Step::Write {
                path,
                kind: WriteKind::Update,
                ..
            } => format!("write {path}"),
            Step::Write {
                path,
                kind: WriteKind::Replace,
                ..
            } => {
                format!("write {path} (original kept as {})", backup_path(path))
            }
            Step::RemoveSymlink { path, target } => format!("remove symlink {path} -> {target}"),
        }
    }
}

/// How the boot menu gets the bootlun entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BootEntry {
    Bls,
    Grub,
}

impl BootEntry {
    fn name(self) -> &'static str {
        match self {
            BootEntry::Bls => "bls",
            BootEntry::Grub => "grub",
        }
    }
}

struct Session<'a> {
    opts: &'a HostOpts,
    out: &'a mut dyn Write,
    root: Root,
    /// How --root is shown: "/" or the directory.
    shown: String,
}

impl<'a> Session<'a> {
    fn open(opts: &'a HostOpts, out: &'a mut dyn Write) -> Result<Session<'a>, HostError> {
        let root = Root::new(&opts.root)
            .map_err(|e| usage(format!("--root {}: {e}", opts.root.display())))?;
        let shown = root.dir().display().to_string();
        Ok(Session {
            opts,
            out,
            root,
            shown,
        })
    }

    fn say(&mut self, line: impl AsRef<str>) {
        // The report is best effort: a closed stdout must not stop an
        // install halfway.
        let _ = writeln!(self.out, "{}", line.as_ref());
    }

    fn io_fail(&self, what: &str, e: io::Error) -> HostError {
        failed(format!("{what}: {e}"))
    }

    // ---- facts about the tree ------------------------------------------

    fn distro(&self) -> Result<Distro, HostError> {
        let text = self
            .root
            .read_to_string("/etc/os-release")
            .or_else(|_| self.root.read_to_string("/usr/lib/os-release"))
            .map_err(|_| {
                usage(format!(
                    "--root {}: no etc/os-release or usr/lib/os-release; is it an installed system?",
                    self.shown
                ))
            })?;
        let fields = root::parse_os_release(&text);
        let get = |k: &str| {
            fields
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        Distro::detect(get("ID"), get("ID_LIKE")).ok_or_else(|| {
            usage(format!(
                "--root {}: unsupported distribution ID={} ID_LIKE={:?} (supported: Debian, Ubuntu, Fedora, Arch and their derivatives)",
                self.shown,
                get("ID"),
                get("ID_LIKE")
            ))
        })
    }

    fn check_prerequisites(&self, distro: Distro) -> Result<(), HostError> {
        let any = |paths: &[&str]| paths.iter().any(|p| self.root.exists(p));
        let module = |pat: &str| {
            self.root
                .list("/usr/lib/dracut/modules.d")
                .iter()
                .any(|n| n.contains(pat))
        };
        let mut missing = Vec::new();
        if !any(&["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"]) {
            missing.push("dracut");
        }
        if !module("network") {
            missing.push("dracut's network module");
        }
        if !module("iscsi") {
            missing.push("dracut's iscsi module");
        }
        if !any(&[
            "/usr/sbin/iscsistart",
            "/sbin/iscsistart",
            "/usr/bin/iscsistart",
        ]) {
            missing.push("iscsistart");
        }
        if missing.is_empty() {
            return Ok(());
        }
        let where_ = if self.root.is_slash {
            String::new()
        } else {
            format!(" in {}", self.shown)
        };
        Err(usage(format!(
            "missing {}{where_}; install them: {}",
            missing.join(", "),
            distro.package_command()
        )))
    }

    fn boot_entry_kind(&self) -> Result<BootEntry, HostError> {
        if self.root.is_dir(render::BLS_DIR) {
            Ok(BootEntry::Bls)
        } else if self.root.is_dir(render::GRUB_D) {
            Ok(BootEntry::Grub)
        } else {
            Err(usage(format!(
                "--root {}: no boot loader found (neither boot/loader/entries nor etc/grub.d)",
                self.shown
            )))
        }
    }

    /// Is /boot a file system of its own? Then boot loaders see its files
    /// at the root of that partition.
    fn separate_boot(&self) -> bool {
        if self.root.is_slash {
            if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
                return root::mountinfo_has_boot(&mi);
            }
        }
        self.root
            .read_to_string("/etc/fstab")
            .map(|t| root::fstab_has_boot(&t))
            .unwrap_or(false)
    }

    fn nic_drivers(&self) -> Vec<String> {
        if self.root.is_slash {
            render::host_nic_modules(Path::new("/sys/class/net"))
        } else {
            // Another tree's hardware is unknown; the common list covers it.
            Vec::new()
        }
    }

    /// The image files, checked before anything is copied.
    fn image(&self) -> Result<(PathBuf, PathBuf), HostError> {
        let given = self.opts.image_dir.is_some();
        let dir = self
            .opts
            .image_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("bootlun-image"));
        let hint = if given {
            ""
        } else {
            " (the default; pass --image-dir DIR)"
        };
        if !dir.is_dir() {
            return Err(usage(format!(
                "--image-dir {}: no such directory{hint}; build it with `bootlun image build --out DIR`",
                dir.display()
            )));
        }
        let kernel = dir.join("bootlun-kernel.bin");
        let initrd = dir.join("bootlun-initrd.img");
        let mut head = [0u8; 0x206];
        let read = std::fs::File::open(&kernel).and_then(|mut f| f.read_exact(&mut head));
        match read {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(usage(format!(
                    "--image-dir {}: no bootlun-kernel.bin in it",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => {
                return Err(usage(format!(
                    "--image-dir {}: bootlun-kernel.bin: {e}",
                    dir.display()
                )))
            }
            Ok(()) => {}
        }
        if &head[..2] != b"MZ" || &head[0x202..0x206] != b"HdrS" {
            return Err(usage(format!(
                "--image-dir {}: bootlun-kernel.bin is not a bzImage/EFI kernel (no MZ and HdrS headers)",
                dir.display()
            )));
        }
        match std::fs::metadata(&initrd) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(_) => {
                return Err(usage(format!(
                    "--image-dir {}: bootlun-initrd.img is empty",
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(usage(format!(
                    "--image-dir {}: bootlun-initrd.img: {e}",
                    dir.display()
                )))
            }
        }
        Ok((kernel, initrd))
    }

    /// The config file, parsed as TOML so a typo is caught here rather
    /// than by the ramdisk at boot.
    fn config(&self) -> Result<Option<Vec<u8>>, HostError> {
        let Some(p) = &self.opts.config else {
            return Ok(None);
        };
        let bad = |e: &dyn std::fmt::Display| usage(format!("--config {}: {e}", p.display()));
        let meta = std::fs::metadata(p).map_err(|e| bad(&e))?;
        if !meta.is_file() || meta.len() > MAX_CONFIG {
            return Err(bad(&"not a regular file of at most 1 MiB"));
        }
        let bytes = std::fs::read(p).map_err(|e| bad(&e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| bad(&e))?;
        text.parse::<toml::Table>().map_err(|e| {
            bad(&e
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string())
        })?;
        Ok(Some(bytes))
    }

    fn check_privileges(&self) -> Result<(), HostError> {
        if self.root.is_slash && !self.opts.dry_run && !rustix::process::geteuid().is_root() {
            return Err(usage(
                "changing / needs root: run it with sudo (or pass --dry-run to only look)",
            ));
        }
        Ok(())
    }

    // ---- planning ------------------------------------------------------

    /// Plan mkdirs for the missing ancestors of `path`.
    fn plan_parents(&self, path: &str, plan: &mut Vec<Step>) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc.push('/');
            acc.push_str(part);
            let planned = plan
                .iter()
                .any(|s| matches!(s, Step::Mkdir(p) if *p == acc));
            if !planned && !self.root.exists(&acc) {
                plan.push(Step::Mkdir(acc.clone()));
            }
        }
    }

    /// Plan writing `src` to `path`, unless it already holds exactly that.
    fn plan_write(
        &self,
        manifest: &Manifest,
        path: &str,
        src: Source,
        mode: u32,
        plan: &mut Vec<Step>,
    ) -> Result<(), HostError> {
        let hash = src
            .hash()
            .map_err(|e| failed(format!("reading the new {path}: {e}")))?;
        let ours = manifest.changes.iter().any(|c| {
            matches!(c, Change::Create { .. } | Change::Replace { .. }) && c.path() == path
        });
        let kind = match self.root.lstat(path) {
            // Ours but deleted since: put it back under the same entry, so
            // a replaced file's original is still restored on uninstall.
            Err(e) if e.kind() == io::ErrorKind::NotFound && ours => WriteKind::Update,
            Err(e) if e.kind() == io::ErrorKind::NotFound => WriteKind::Create,
            Err(e) => return Err(failed(format!("{path}: {e}"))),
            Ok(m) if !m.is_file() => {
                return Err(usage(format!(
                    "{path} in {} exists and is not a regular file; move it away first",
                    self.shown
                )))
            }
            Ok(_) => {
                let cur = self
                    .root
                    .hash_file(path)
                    .map_err(|e| failed(format!("{path}: {e}")))?;
                if cur.as_deref() == Some(hash.as_str()) {
                    return Ok(());
                }
                if ours {
                    WriteKind::Update
                } else {
                    WriteKind::Replace
                }
            }
        };
        self.plan_parents(path, plan);
        if kind == WriteKind::Replace {
            self.plan_parents(&backup_path(path), plan);
        }
        plan.push(Step::Write {
            path: path.to_string(),
            src,
            mode,
            hash,
            kind,
        });
        Ok(())
    }

    /// Image files, config and boot entry: what both install and update
    /// put in place.
    fn plan_boot_files(
        &self,
        manifest: &Manifest,
        boot: BootEntry,
        plan: &mut Vec<Step>,
    ) -> Result<(), HostError> {
        let (kernel, initrd) = self.image()?;
        let config = self.config()?;
        self.plan_write(
            manifest,
            render::BOOT_KERNEL,
            Source::File(kernel),
            0o644,
            plan,
        )?;
        self.plan_write(
            manifest,
            render::BOOT_INITRD,
            Source::File(initrd),
            0o644,
            plan,
        )?;
        if let Some(c) = config {
            // It may hold a CHAP secret or a menu password.
            self.plan_write(manifest, render::BOOT_CONFIG, Source::Bytes(c), 0o600, plan)?;
        }
        let separate = self.separate_boot();
        match boot {
            BootEntry::Bls => {
                let texts: Vec<String> = self
                    .root
                    .list(render::BLS_DIR)
                    .into_iter()
                    .filter(|n| n.ends_with(".conf") && n != "bootlun.conf")
                    .filter_map(|n| {
                        self.root
                            .read_to_string(&format!("{}/{n}", render::BLS_DIR))
                            .ok()
                    })
                    .collect();
                let key = render::sort_key_after(&render::bls_sort_keys(&texts));
                let entry = render::bls_entry(separate, key.as_deref());
                self.plan_write(
                    manifest,
                    render::BLS_ENTRY,
                    Source::Bytes(entry.into()),
                    0o644,
                    plan,
                )
            }
            BootEntry::Grub => {
                let script = render::grub_script(separate);
                self.plan_write(
                    manifest,
                    render::GRUB_SCRIPT,
                    Source::Bytes(script.into()),
                    0o755,
                    plan,
                )
            }
        }
    }

    /// Debian/Ubuntu: the enablement symlinks of the open-iscsi units.
    fn plan_iscsi_units(&self, plan: &mut Vec<Step>) -> Result<(), HostError> {
        let base = "/etc/systemd/system";
        for dir in self.root.list(base) {
            if !dir.ends_with(".wants") {
                continue;
            }
            for unit in render::ISCSI_UNITS {
                let path = format!("{base}/{dir}/{unit}");
                let Ok(m) = self.root.lstat(&path) else {
                    continue;
                };
                if !m.file_type().is_symlink() {
                    continue;
                }
                let target = self
                    .root
                    .read_link(&path)
                    .map_err(|e| failed(format!("{path}: {e}")))?;
                plan.push(Step::RemoveSymlink { path, target });
            }
        }
        Ok(())
    }

    /// Mkdirs for the state directory go first, so the manifest can be
    /// saved after every later step.
    fn with_state_dir(&self, plan: Vec<Step>) -> Vec<Step> {
        if plan.is_empty() {
            return plan;
        }
        let mut head = Vec::new();
        self.plan_parents(&format!("{STATE_DIR}/x"), &mut head);
        for s in plan {
            if matches!(&s, Step::Mkdir(p) if head.iter().any(|h| matches!(h, Step::Mkdir(q) if q == p)))
            {
                continue;
            }
            head.push(s);
        }
        head
    }

    // ---- doing ---------------------------------------------------------

    fn save(&self, m: &Manifest) -> Result<(), HostError> {
        if self.opts.dry_run || !self.root.is_dir(STATE_DIR) {
            return Ok(());
        }
        m.save(&self.root).map_err(|e| self.io_fail(MANIFEST, e))
    }

    /// Carry out `plan`, recording each step in `m` as soon as it is done.
    fn apply(&mut self, plan: Vec<Step>, m: &mut Manifest) -> Result<(), HostError> {
        for step in plan {
            self.say(step.describe());
            let res = if self.opts.dry_run {
                Ok(())
            } else {
                self.apply_one(&step, m)
            };
            // Record what the step changed (or, in a dry run, would have),
            // so the owed regeneration is known either way.
            if res.is_ok() {
                if let Step::Write { path, .. } = &step {
                    if path == render::DRACUT_CONF {
                        m.add_pending(Pending::Initramfs);
                    } else if path == render::GRUB_SCRIPT {
                        m.add_pending(Pending::Bootloader);
                    }
                }
            }
            let saved = self.save(m);
            res?;
            saved?;
        }
        Ok(())
    }

    fn apply_one(&self, step: &Step, m: &mut Manifest) -> Result<(), HostError> {
        match step {
            Step::Mkdir(p) => {
                self.root
                    .mkdir(p)
                    .map_err(|e| self.io_fail(&format!("mkdir {p}"), e))?;
                m.changes.push(Change::Mkdir { path: p.clone() });
            }
            Step::Write {
                path,
                src,
                mode,
                hash,
                kind,
            } => {
                let backup = backup_path(path);
                let orig_mode = match kind {
                    WriteKind::Replace => {
                        use std::os::unix::fs::MetadataExt;
                        let mode = self
                            .root
                            .lstat(path)
                            .map_err(|e| self.io_fail(path, e))?
                            .mode()
                            & 0o7777;
                        self.root
                            .copy_file(path, &backup)
                            .map_err(|e| self.io_fail(&format!("backing up {path}"), e))?;
                        mode
                    }
                    _ => 0,
                };
                let mut r = src.reader().map_err(|e| self.io_fail(path, e))?;
                let written = self.root.write_atomic(path, &mut r, *mode);
                if let Err(e) = written {
                    if *kind == WriteKind::Replace {
                        let _ = self.root.remove_file(&backup);
                    }
                    return Err(self.io_fail(&format!("writing {path}"), e));
                }
                match kind {
                    WriteKind::Create => m.changes.push(Change::Create {
                        path: path.clone(),
                        sha256: hash.clone(),
                    }),
                    WriteKind::Replace => m.changes.push(Change::Replace {
                        path: path.clone(),
                        sha256: hash.clone(),
                        backup,
                        mode: orig_mode,
                    }),
                    WriteKind::Update => {
                        if let Some(
                            Change::Create { sha256, .. } | Change::Replace { sha256, .. },
                        ) = m.owned_mut(path)
                        {
                            *sha256 = hash.clone();
                        }
                    }
                }
            }
            Step::RemoveSymlink { path, target } => {
                self.root
                    .remove_file(path)
                    .map_err(|e| self.io_fail(&format!("removing {path}"), e))?;
                m.changes.push(Change::RemoveSymlink {
                    path: path.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }

    /// The argv of a command run in the tree: chroot'ed unless it is /.
    fn in_root(&self, argv: Vec<String>) -> Vec<String> {
        if self.root.is_slash {
            argv
        } else {
            let mut v = vec!["chroot".to_string(), self.shown.clone()];
            v.extend(argv);
            v
        }
    }

    /// The commands that rebuild the initramfs with the drop-in (or
    /// without it, after uninstall).
    fn initramfs_commands(&mut self, distro: Distro) -> Vec<Vec<String>> {
        let all = vec![vec![
            "dracut".into(),
            "--regenerate-all".into(),
            "--force".into(),
        ]];
        if distro != Distro::Arch {
            return all;
        }
        // Arch names its initramfs after the kernel package, not the
        // version: /boot/vmlinuz-linux pairs with /boot/initramfs-linux.img,
        // which GRUB and bootlun's PXE menu both look for. Each
        // /usr/lib/modules/VER/pkgbase says which package VER belongs to.
        let mut cmds = Vec::new();
        for kver in self.root.list("/usr/lib/modules") {
            let Ok(pkgbase) = self
                .root
                .read_to_string(&format!("/usr/lib/modules/{kver}/pkgbase"))
            else {
                continue;
            };
            let pkgbase = pkgbase.trim();
            if render::plain_name(&kver) && render::plain_name(pkgbase) {
                cmds.push(vec![
                    "dracut".into(),
                    "--force".into(),
                    format!("/boot/initramfs-{pkgbase}.img"),
                    "--kver".into(),
                    kver.clone(),
                ]);
            }
        }
        if cmds.is_empty() {
            self.say(
                "note: no /usr/lib/modules/*/pkgbase; dracut writes versioned \
                 initramfs-VERSION.img files, rename the one for your kernel to \
                 initramfs-linux.img to pair it with vmlinuz-linux",
            );
            return all;
        }
        cmds
    }

    /// Run (or, with --dry-run / --no-regenerate, print) what `m.pending`
    /// owes, clearing each item once it succeeded.
    fn regenerate(&mut self, distro: Distro, m: &mut Manifest) -> Result<(), HostError> {
        for item in [Pending::Initramfs, Pending::Bootloader] {
            if !m.pending.contains(&item) {
                continue;
            }
            let cmds: Vec<Vec<String>> = match item {
                Pending::Initramfs => self.initramfs_commands(distro),
                Pending::Bootloader => vec![distro.grub_command()],
            };
            let cmds: Vec<Vec<String>> = cmds.into_iter().map(|c| self.in_root(c)).collect();
            if self.opts.dry_run {
                for c in &cmds {
                    self.say(format!("run: {}", c.join(" ")));
                }
                continue;
            }
            if self.opts.no_regenerate {
                for c in &cmds {
                    self.say(format!(
                        "not run (--no-regenerate), run it yourself: {}",
                        c.join(" ")
                    ));
                }
                continue;
            }
            for c in &cmds {
                self.say(format!("run: {}", c.join(" ")));
                let _ = self.out.flush();
                if let Err(e) = run_command(c) {
                    self.save(m)?;
                    return Err(failed(format!(
                        "{}: {e}; the files are in place, run the same bootlun command again to retry",
                        c.join(" ")
                    )));
                }
            }
            m.pending.retain(|p| *p != item);
            self.save(m)?;
        }
        Ok(())
    }

    // ---- the actions ---------------------------------------------------

    fn install(mut self) -> Result<(), HostError> {
        let distro = self.distro()?;
        self.check_prerequisites(distro)?;
        let boot = self.boot_entry_kind()?;
        let mut m = Manifest::load(&self.root)
            .map_err(usage)?
            .unwrap_or_else(|| Manifest::new(distro.name(), boot.name()));
        m.distro = distro.name().into();
        m.boot_entry = boot.name().into();

        let mut plan = Vec::new();
        let conf = render::dracut_conf(&self.nic_drivers());
        self.plan_write(
            &m,
            render::DRACUT_CONF,
            Source::Bytes(conf.into()),
            0o644,
            &mut plan,
        )?;
        self.plan_boot_files(&m, boot, &mut plan)?;
        if distro == Distro::Debian {
            self.plan_iscsi_units(&mut plan)?;
        }
        let plan = self.with_state_dir(plan);
        if plan.is_empty() {
            return self.nothing_to_change("already installed; nothing to change", distro, m);
        }
        self.check_privileges()?;
        self.header();
        self.apply(plan, &mut m)?;
        self.regenerate(distro, &mut m)?;
        self.footer(distro, boot, "installed")
    }

    fn update(mut self) -> Result<(), HostError> {
        let Some(mut m) = Manifest::load(&self.root).map_err(usage)? else {
            return Err(usage(format!(
                "bootlun is not installed in {}; run `bootlun host install` first",
                self.shown
            )));
        };
        let distro = self.distro()?;
        let boot = self.boot_entry_kind()?;
        m.boot_entry = boot.name().into();
        let mut plan = Vec::new();
        self.plan_boot_files(&m, boot, &mut plan)?;
        let plan = self.with_state_dir(plan);
        if plan.is_empty() {
            return self.nothing_to_change("up to date; nothing to change", distro, m);
        }
        self.check_privileges()?;
        self.header();
        self.apply(plan, &mut m)?;
        self.regenerate(distro, &mut m)?;
        self.footer(distro, boot, "updated")
    }

    fn nothing_to_change(
        &mut self,
        msg: &str,
        distro: Distro,
        mut m: Manifest,
    ) -> Result<(), HostError> {
        self.say(msg);
        if m.pending.is_empty() {
            return Ok(());
        }
        // An earlier run left regeneration undone (--no-regenerate or a
        // failed command): that is still owed.
        if !self.opts.dry_run && !self.opts.no_regenerate {
            self.check_privileges()?;
        }
        self.regenerate(distro, &mut m)
    }

    fn header(&mut self) {
        if !self.root.is_slash {
            let s = format!("in {}:", self.shown);
            self.say(s);
        }
    }

    fn footer(&mut self, distro: Distro, boot: BootEntry, done: &str) -> Result<(), HostError> {
        if self.opts.dry_run {
            self.say("dry run: nothing was changed");
            return Ok(());
        }
        let shown = self.shown.clone();
        self.say(format!(
            "bootlun {done} in {shown}; reboot and choose '{}' in the boot menu",
            render::TITLE
        ));
        // Single-OS installs often hide the menu; say how to reach it.
        if boot == BootEntry::Grub {
            let def = self
                .root
                .read_to_string("/etc/default/grub")
                .unwrap_or_default();
            let hidden = def.lines().any(|l| {
                let l = l.trim().replace(['"', '\''], "");
                l == "GRUB_TIMEOUT_STYLE=hidden" || l == "GRUB_TIMEOUT=0"
            });
            if hidden {
                self.say(
                    "note: the GRUB menu is hidden (/etc/default/grub); hold Shift (BIOS) or \
                     press Esc (UEFI) while booting to see it",
                );
            }
        }
        if distro == Distro::Fedora {
            let env = self
                .root
                .read_to_string("/boot/grub2/grubenv")
                .unwrap_or_default();
            if env.lines().any(|l| l.trim() == "menu_auto_hide=1") {
                self.say(
                    "note: GRUB hides its menu (menu_auto_hide); hold Shift or press Esc while \
                     booting, or run `grub2-editenv - unset menu_auto_hide`",
                );
            }
        }
        if distro == Distro::Arch {
            self.say(
                "note: pacman reruns dracut on kernel upgrades only with a dracut pacman hook \
                 installed; without one, rerun `bootlun host install` after each kernel upgrade",
            );
        }
        Ok(())
    }

    fn uninstall(mut self) -> Result<(), HostError> {
        let Some(mut m) = Manifest::load(&self.root).map_err(usage)? else {
            let shown = self.shown.clone();
            self.say(format!("bootlun is not installed in {shown}"));
            return Ok(());
        };
        let distro = Distro::from_name(&m.distro)
            .ok_or_else(|| usage(format!("{MANIFEST}: unknown distro {:?}", m.distro)))?;
        self.check_privileges()?;
        self.header();
        if m.changes.iter().any(|c| c.path() == render::DRACUT_CONF) {
            m.add_pending(Pending::Initramfs);
        }
        if m.changes.iter().any(|c| c.path() == render::GRUB_SCRIPT) {
            m.add_pending(Pending::Bootloader);
        }

        // Files and symlinks, newest change first; directories wait until
        // the manifest (which lives in one of them) is gone.
        let mut i = m.changes.len();
        while i > 0 {
            i -= 1;
            if matches!(m.changes[i], Change::Mkdir { .. }) {
                continue;
            }
            let change = m.changes[i].clone();
            let res = if self.opts.dry_run {
                self.describe_undo(&change)
            } else {
                self.undo(&change)
            };
            match res {
                Ok(()) => {
                    if !self.opts.dry_run {
                        m.changes.remove(i);
                    }
                    self.save(&m)?;
                }
                Err(e) => {
                    self.save(&m)?;
                    return Err(e);
                }
            }
        }
        self.regenerate(distro, &mut m)?;

        self.say(format!("remove {MANIFEST}"));
        if !self.opts.dry_run {
            self.root
                .remove_file(MANIFEST)
                .map_err(|e| self.io_fail(MANIFEST, e))?;
        }
        for c in m.changes.iter().rev() {
            let Change::Mkdir { path } = c else { continue };
            let entries = self.root.list(path);
            // In a dry run the manifest and files listed above still exist.
            let empty = entries.is_empty() || (self.opts.dry_run && self.would_be_empty(path, &m));
            if !empty {
                self.say(format!("keep {path} (not empty)"));
                continue;
            }
            self.say(format!("rmdir {path}"));
            if !self.opts.dry_run {
                if let Err(e) = self.root.rmdir(path) {
                    self.say(format!("warning: rmdir {path}: {e}; kept"));
                }
            }
        }
        if self.opts.dry_run {
            self.say("dry run: nothing was changed");
        } else {
            let shown = self.shown.clone();
            self.say(format!("bootlun uninstalled from {shown}"));
        }
        Ok(())
    }

    /// Dry run: would directory `dir` be empty once every file and
    /// directory the manifest created under it is gone?
    fn would_be_empty(&self, dir: &str, m: &Manifest) -> bool {
        let prefix = format!("{dir}/");
        self.root.list(dir).iter().all(|name| {
            let p = format!("{prefix}{name}");
            p == MANIFEST
                || p.starts_with(&format!("{BACKUP_DIR}/"))
                || p == BACKUP_DIR
                || m.changes.iter().any(|c| {
                    matches!(c, Change::Create { .. } | Change::Mkdir { .. }) && c.path() == p
                })
        })
    }

    fn current_hash(&self, path: &str) -> Result<Option<String>, HostError> {
        self.root.hash_file(path).map_err(|e| self.io_fail(path, e))
    }

    fn describe_undo(&mut self, c: &Change) -> Result<(), HostError> {
        match c {
            Change::Create { path, sha256 } => match self.current_hash(path)? {
                Some(h) if h == *sha256 => self.say(format!("remove {path}")),
                Some(_) => self.say(format!("keep {path} (changed since install)")),
                None => {}
            },
            Change::Replace {
                path,
                sha256,
                backup,
                ..
            } => match self.current_hash(path)? {
                Some(h) if h != *sha256 => self.say(format!(
                    "keep {path} (changed since install; original in {backup})"
                )),
                _ => self.say(format!("restore {path} from {backup}")),
            },
            Change::RemoveSymlink { path, target } => {
                if self.root.lstat(path).is_err() {
                    self.say(format!("create symlink {path} -> {target}"));
                }
            }
            Change::Mkdir { .. } => {}
        }
        Ok(())
    }

    fn undo(&mut self, c: &Change) -> Result<(), HostError> {
        match c {
            Change::Create { path, sha256 } => match self.current_hash(path)? {
                Some(h) if h == *sha256 => {
                    self.say(format!("remove {path}"));
                    self.root
                        .remove_file(path)
                        .map_err(|e| self.io_fail(path, e))?;
                }
                Some(_) => self.say(format!(
                    "warning: {path} changed since bootlun installed it; kept"
                )),
                None => {}
            },
            Change::Replace {
                path,
                sha256,
                backup,
                mode,
            } => match self.current_hash(path)? {
                Some(h) if h != *sha256 => self.say(format!(
                    "warning: {path} changed since bootlun wrote it; kept, the original is {backup}"
                )),
                _ => {
                    self.say(format!("restore {path} from {backup}"));
                    self.root
                        .copy_file(backup, path)
                        .map_err(|e| self.io_fail(&format!("restoring {path}"), e))?;
                    use std::os::unix::fs::PermissionsExt;
                    let host = self
                        .root
                        .host(path, false)
                        .map_err(|e| self.io_fail(path, e))?;
                    std::fs::set_permissions(
                        &host,
                        std::fs::Permissions::from_mode(*mode & 0o7777),
                    )
                    .map_err(|e| self.io_fail(path, e))?;
                    self.root
                        .remove_file(backup)
                        .map_err(|e| self.io_fail(backup, e))?;
                }
            },
            Change::RemoveSymlink { path, target } => match self.root.lstat(path) {
                Err(_) => {
                    self.say(format!("create symlink {path} -> {target}"));
                    // The .wants directory held it at install time; if it
                    // went away since, bring it back with the link.
                    let host = self
                        .root
                        .host(path, false)
                        .map_err(|e| self.io_fail(path, e))?;
                    if let Some(dir) = host.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| self.io_fail(path, e))?;
                    }
                    self.root
                        .symlink(target, path)
                        .map_err(|e| self.io_fail(path, e))?;
                }
                Ok(_) if self.root.read_link(path).ok().as_deref() == Some(target.as_str()) => {}
                Ok(_) => self.say(format!(
                    "warning: {path} exists again and is not the symlink to {target}; kept"
                )),
            },
            Change::Mkdir { .. } => {}
        }
        Ok(())
    }
}

/// Run `argv` with inherited output, bounded by [`COMMAND_TIMEOUT`].
fn run_command(argv: &[String]) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut child = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => return Err(format!("failed ({st})")),
            None if start.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "still running after {} s; killed",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
