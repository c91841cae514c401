//! `bootlun image build`: a kernel plus an initramfs in which bootlun runs
//! as PID 1.
//!
//! The initramfs holds bootlun (`/init` links to it), the baked serve
//! config, the kernel modules for common NICs and disks with their
//! dependencies (decompressed, with freshly written `modules.dep`,
//! `modules.alias` and `modules.builtin` so that [`crate::kmod::ModIndex`]
//! reads them at boot), the firmware those modules name, iPXE binaries for
//! the PXE service and, optionally, a static busybox as rescue shell.
//!
//! The build needs no root and only reads the host: Debian kernel packages
//! are read in Rust, dependencies come from each module's `.modinfo`
//! because packages do not ship depmod's output.

mod deb;
pub mod elf;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::cpio;
use crate::kmod::{self, IndexEntry, ModIndex, ModInfo};

pub use deb::Extracted;

/// Modules every image carries, besides [`crate::NIC_DRIVERS`], when the
/// kernel has them as modules: the virtio bus and disks, disk controllers,
/// USB storage, input for the power button and the rescue console, and
/// the filesystems a boot directory may live on.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "mmc_block",
    "sdhci_pci",
    "sdhci_acpi",
    "evdev",
    "button",
    "ext4",
    "vfat",
    "xfs",
    "btrfs",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "iso9660",
];

/// Names of [`DEFAULT_MODULES`] that some kernels call otherwise: the
/// ISO 9660 driver is the module `isofs` (alias `iso9660`).
const OTHER_NAMES: &[(&str, &str)] = &[("iso9660", "isofs")];

/// Where iPXE binaries live in the image; the baked config points there.
pub const IMAGE_IPXE_DIR: &str = "/usr/lib/ipxe";

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Zstd,
    Gzip,
    None,
}

/// Builds `bootlun-kernel.bin` and `bootlun-initrd.img`.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The serve config (TOML, keys = long flag names, plus net-interface
    /// and net-address), baked into the image as /etc/bootlun.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel image [default: /boot/vmlinuz-$(uname -r)].
    #[arg(long, value_name = "PATH", conflicts_with = "kernel_deb")]
    pub kernel: Option<PathBuf>,
    /// Module tree of that kernel [default: /lib/modules/$(uname -r)].
    #[arg(long, value_name = "DIR", conflicts_with = "kernel_deb")]
    pub modules_dir: Option<PathBuf>,
    /// A Debian linux-image-* package: kernel and modules are taken from it.
    #[arg(long, value_name = "FILE")]
    pub kernel_deb: Option<PathBuf>,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "bootlun-image")]
    pub out: PathBuf,
    /// The bootlun binary to put in the image (best statically linked:
    /// `cargo build-static`) [default: this executable].
    #[arg(long, value_name = "PATH")]
    pub bootlun_bin: Option<PathBuf>,
    /// Static busybox for a rescue shell, or `none` [default: /bin/busybox
    /// when present and statically linked (package busybox-static)].
    #[arg(long, value_name = "PATH|none")]
    pub busybox: Option<String>,
    /// Where firmware named by the included modules is looked up
    /// [default: /lib/firmware when present].
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// Extra modules, comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub add_modules: Vec<String>,
    /// iPXE binaries copied to /usr/lib/ipxe in the image [default: the
    /// config's ipxe-dir, else /usr/lib/ipxe].
    #[arg(long, value_name = "DIR")]
    pub ipxe_dir: Option<PathBuf>,
    /// Initramfs compression.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compress: Compress,
}

impl BuildArgs {
    /// The defaults, as the command line would give them.
    pub fn new(out: PathBuf) -> Self {
        BuildArgs {
            config: None,
            kernel: None,
            modules_dir: None,
            kernel_deb: None,
            out,
            bootlun_bin: None,
            busybox: None,
            firmware_dir: None,
            add_modules: Vec::new(),
            ipxe_dir: None,
            compress: Compress::Zstd,
        }
    }
}

/// Why a build stopped.
#[derive(Debug)]
pub enum Fail {
    /// The operator must change a flag or file (exit status 2).
    Usage(String),
    /// Something failed while building (exit status 1).
    Runtime(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Usage(s) | Fail::Runtime(s) => f.write_str(s),
        }
    }
}

/// What a successful build produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub kernel_path: PathBuf,
    pub initrd_path: PathBuf,
    pub kernel_version: String,
    pub kernel_size: u64,
    pub initrd_size: u64,
    pub initrd_uncompressed: u64,
    pub compress: String,
    /// Module names in the image.
    pub modules: Vec<String>,
    /// Names of the default list (and --add-modules) the kernel does not have.
    pub missing_modules: Vec<String>,
    /// Names of the default list the kernel has built in.
    pub builtin_modules: Vec<String>,
    pub firmware_files: usize,
    pub firmware_missing: Vec<String>,
    pub busybox: bool,
    pub ipxe_files: Vec<String>,
    /// True when /bin/bootlun is statically linked.
    pub bootlun_static: bool,
    pub bootlun_stripped: bool,
    pub shared_libs: Vec<String>,
    /// The config file baked in, if any.
    pub config: Option<PathBuf>,
    pub seconds: f64,
}

/// `bootlun image build`: prints one line and exits 2 on an operator
/// error, 1 on a build failure.
pub fn main(args: &BuildArgs, check_config: &dyn Fn(&str) -> Result<(), String>) -> ExitCode {
    match run(args, check_config) {
        Ok(s) => {
            print_summary(&s);
            ExitCode::SUCCESS
        }
        Err(Fail::Usage(m)) => {
            eprintln!("bootlun image build: {m}");
            ExitCode::from(2)
        }
        Err(Fail::Runtime(m)) => {
            eprintln!("bootlun image build: {m}");
            ExitCode::from(1)
        }
    }
}

fn usage<T>(m: String) -> Result<T, Fail> {
    Err(Fail::Usage(m))
}

/// The build itself; [`main`] adds printing and exit codes.
pub fn run(
    args: &BuildArgs,
    check_config: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Summary, Fail> {
    let started = Instant::now();
    let progress = Progress::new();
    let mut sum = Summary::default();

    // Config first: the cheapest mistake to report.
    let (config_text, config_table) = match &args.config {
        Some(p) => {
            let text = fs::read_to_string(p).map_err(|e| {
                Fail::Usage(format!("--config {}: {}", p.display(), deb::short_io(&e)))
            })?;
            if let Err(e) = check_config(&text) {
                return usage(format!("--config {}: {e}", p.display()));
            }
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                Fail::Usage(format!(
                    "--config {}: {}",
                    p.display(),
                    one_line(&e.to_string())
                ))
            })?;
            sum.config = Some(p.clone());
            (Some(text), Some(table))
        }
        None => (None, None),
    };

    // Every input path is checked before the long work starts.
    let bootlun_bin = match &args.bootlun_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| {
            Fail::Usage(format!(
                "--bootlun-bin: cannot find this executable ({e}); give the path"
            ))
        })?,
    };
    let bin_bytes = fs::read(&bootlun_bin).map_err(|e| {
        Fail::Usage(format!(
            "--bootlun-bin {}: {}",
            bootlun_bin.display(),
            deb::short_io(&e)
        ))
    })?;
    let bin_facts = elf::elf_facts(&bin_bytes)
        .map_err(|e| Fail::Usage(format!("--bootlun-bin {}: {e}", bootlun_bin.display())))?;

    let busybox = pick_busybox(args.busybox.as_deref())?;
    let firmware_dir = match &args.firmware_dir {
        Some(d) if !d.is_dir() => {
            return usage(format!("--firmware-dir {}: no such directory", d.display()))
        }
        Some(d) => Some(d.clone()),
        None => Some(PathBuf::from("/lib/firmware")).filter(|d| d.is_dir()),
    };
    let (ipxe_dir, ipxe_from) = match (
        &args.ipxe_dir,
        config_table
            .as_ref()
            .and_then(|t| t.get("ipxe-dir"))
            .and_then(|v| v.as_str()),
    ) {
        (Some(d), _) => {
            if !d.is_dir() {
                return usage(format!("--ipxe-dir {}: no such directory", d.display()));
            }
            (d.clone(), "--ipxe-dir")
        }
        (None, Some(c)) => (PathBuf::from(c), "the config's ipxe-dir"),
        (None, None) => (PathBuf::from(IMAGE_IPXE_DIR), "the default"),
    };
    let mut extra_modules = Vec::new();
    for m in &args.add_modules {
        let m = m.trim();
        if m.is_empty() {
            continue;
        }
        if !m
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return usage(format!("--add-modules {m}: not a module name"));
        }
        extra_modules.push(kmod::normalize(m));
    }

    fs::create_dir_all(&args.out).map_err(|e| {
        Fail::Usage(format!(
            "--out {}: {}",
            args.out.display(),
            deb::short_io(&e)
        ))
    })?;

    // Kernel and module tree.
    let (kernel_path, modules_dir, modules_flag) = if let Some(d) = &args.kernel_deb {
        let x = deb::extract(d, &args.out.join(".cache"), &progress).map_err(Fail::Usage)?;
        if x.reused {
            progress.note(&format!(
                "using the extracted {} in {}",
                short(&x.deb),
                args.out.join(".cache").display()
            ));
        }
        (x.kernel, x.modules_dir, "--kernel-deb")
    } else {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let kernel = args
            .kernel
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/boot/vmlinuz-{release}")));
        if !kernel.is_file() {
            return usage(format!("--kernel {}: no such file", kernel.display()));
        }
        let modules = match &args.modules_dir {
            Some(d) if !d.is_dir() => {
                return usage(format!("--modules-dir {}: no such directory", d.display()))
            }
            Some(d) => Some(d.clone()),
            None => {
                let d = PathBuf::from(format!("/lib/modules/{release}"));
                if d.is_dir() {
                    Some(d)
                } else {
                    progress.note(&format!(
                        "warning: {} not found; the image gets no modules (--modules-dir)",
                        d.display()
                    ));
                    None
                }
            }
        };
        (kernel, modules, "--modules-dir")
    };
    let kernel_flag = if args.kernel_deb.is_some() {
        "--kernel-deb"
    } else {
        "--kernel"
    };
    let kernel_bytes = fs::read(&kernel_path).map_err(|e| {
        Fail::Usage(format!(
            "{kernel_flag} {}: {}",
            kernel_path.display(),
            deb::short_io(&e)
        ))
    })?;
    let bz = elf::bzimage(&kernel_bytes)
        .map_err(|e| Fail::Usage(format!("{kernel_flag} {}: {e}", kernel_path.display())))?;
    let dir_version = modules_dir
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|s| s.to_string_lossy().into_owned());
    let version = match (&bz.version, &dir_version) {
        (Some(k), Some(m)) if k != m => {
            progress.note(&format!(
                "warning: kernel {} is version {k} but {modules_flag} is for {m}: its modules will not load",
                kernel_path.display()
            ));
            k.clone()
        }
        (Some(k), _) => k.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => "unknown".to_string(),
    };
    sum.kernel_version = version.clone();
    sum.kernel_size = kernel_bytes.len() as u64;

    // Modules: the closure of the wanted list by depends= and softdep.
    let mods = match &modules_dir {
        Some(d) => {
            let mut src = ModSource::scan(d)
                .map_err(|e| Fail::Usage(format!("{modules_flag} {}: {e}", d.display())))?;
            let unknown: Vec<_> = extra_modules
                .iter()
                .filter(|m| !src.has(m) && !src.builtin.contains(*m))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return usage(format!(
                    "--add-modules {}: no such module in {}",
                    unknown.join(","),
                    d.display()
                ));
            }
            let wanted: Vec<String> = crate::NIC_DRIVERS
                .iter()
                .chain(DEFAULT_MODULES)
                .map(|s| s.to_string())
                .chain(extra_modules.iter().cloned())
                .collect();
            collect_modules(&mut src, &wanted, &progress)?
        }
        None => {
            if !extra_modules.is_empty() {
                return usage(format!(
                    "--add-modules: {modules_flag} gives no module tree"
                ));
            }
            Collected::default()
        }
    };
    sum.missing_modules = mods.missing.clone();
    sum.builtin_modules = mods.builtin_named.clone();
    sum.modules = mods.modules.iter().map(|m| m.name.clone()).collect();

    // Firmware named by those modules.
    let mut firmware: Vec<(String, Vec<u8>)> = Vec::new();
    let names: BTreeSet<&String> = mods
        .modules
        .iter()
        .flat_map(|m| m.info.firmware.iter())
        .collect();
    if let Some(fw) = &firmware_dir {
        for name in &names {
            match read_firmware(fw, name) {
                Some(b) => firmware.push(((*name).clone(), b)),
                None => sum.firmware_missing.push((*name).clone()),
            }
        }
    } else {
        sum.firmware_missing = names.iter().map(|s| (*s).clone()).collect();
    }
    sum.firmware_files = firmware.len();

    // iPXE binaries.
    let ipxe = ipxe_files(&ipxe_dir);
    if ipxe.is_empty() {
        progress.note(&format!(
            "warning: no iPXE binaries in {} ({ipxe_from}; package ipxe): PXE clients without iPXE cannot boot from this image",
            ipxe_dir.display()
        ));
    }
    sum.ipxe_files = ipxe.iter().map(|(n, _)| n.clone()).collect();

    // The bootlun binary: stripped, and with its loader and libraries when
    // it is dynamically linked.
    let (bin_bytes, stripped) = if bin_facts.strippable {
        match strip_copy(&bootlun_bin, &args.out) {
            Ok(b) => (b, true),
            Err(e) => {
                progress.note(&format!("note: /bin/bootlun included with its symbols ({e}); install binutils for a smaller image"));
                (bin_bytes, false)
            }
        }
    } else {
        (bin_bytes, true)
    };
    sum.bootlun_stripped = stripped;
    sum.bootlun_static = bin_facts.interp.is_none();
    let mut libs: Vec<String> = Vec::new();
    if let Some(interp) = &bin_facts.interp {
        progress.note(&format!(
            "note: {} is dynamically linked; copying its loader and libraries. `cargo build-static` gives a self-contained binary",
            bootlun_bin.display()
        ));
        libs.push(interp.clone());
        for l in ldd(&bootlun_bin)
            .map_err(|e| Fail::Usage(format!("--bootlun-bin {}: {e}", bootlun_bin.display())))?
        {
            if !libs.contains(&l) {
                libs.push(l);
            }
        }
    }
    sum.shared_libs = libs.clone();

    // Config as baked: the iPXE directory is the image's own.
    let baked_config = config_text.map(|t| {
        if config_table
            .as_ref()
            .is_some_and(|t| t.contains_key("ipxe-dir"))
        {
            let r = rewrite_key(&t, "ipxe-dir", IMAGE_IPXE_DIR);
            if check_config(&r).is_ok() {
                return r;
            }
        }
        t
    });
    if baked_config.is_none() {
        progress.note("warning: no --config: the image serves nothing unless its kernel command line says bootlun.lun=...");
    }

    // Assemble and compress.
    let initrd_path = args.out.join("bootlun-initrd.img");
    let kernel_out = args.out.join("bootlun-kernel.bin");
    let total: u64 = bin_bytes.len() as u64
        + mods
            .modules
            .iter()
            .map(|m| m.data.len() as u64)
            .sum::<u64>()
        + firmware.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
        + ipxe.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    progress.stage(
        &format!("writing {} ({:?})", short(&initrd_path), args.compress),
        Some(total),
        true,
    );
    let inputs = ImageInputs {
        version: &version,
        bootlun: &bin_bytes,
        libs: &libs,
        busybox: busybox.as_ref(),
        config: baked_config.as_deref(),
        mods: &mods,
        modules_dir: modules_dir.as_deref(),
        firmware: &firmware,
        ipxe: &ipxe,
    };
    let tmp = tmp_path(&initrd_path);
    let write = (|| -> io::Result<u64> {
        let file = fs::File::create(&tmp)?;
        let comp = Compressor::new(file, args.compress)?;
        let mut w = cpio::Writer::new(comp);
        write_image(&mut w, &inputs, &progress)?;
        let (comp, raw) = w.finish_counted()?;
        let file = comp.finish()?;
        file.sync_all()?;
        Ok(raw)
    })();
    let raw = match write {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(Fail::Runtime(format!("{}: {e}", initrd_path.display())));
        }
    };
    fs::rename(&tmp, &initrd_path)
        .map_err(|e| Fail::Runtime(format!("{}: {e}", initrd_path.display())))?;
    write_atomic(&kernel_out, &kernel_bytes)
        .map_err(|e| Fail::Runtime(format!("{}: {e}", kernel_out.display())))?;
    progress.finish();

    sum.initrd_uncompressed = raw;
    sum.initrd_size = fs::metadata(&initrd_path).map(|m| m.len()).unwrap_or(0);
    sum.compress = format!("{:?}", args.compress).to_lowercase();
    sum.busybox = busybox.is_some();
    sum.kernel_path = kernel_out;
    sum.initrd_path = initrd_path;
    sum.seconds = started.elapsed().as_secs_f64();
    Ok(sum)
}

fn short(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

fn print_summary(s: &Summary) {
    let mut o = String::new();
    o.push_str(&format!(
        "bootlun image build: done in {:.1} s\n",
        s.seconds
    ));
    o.push_str(&format!(
        "  kernel     {} ({}) -> {}\n",
        s.kernel_version,
        mib(s.kernel_size),
        s.kernel_path.display()
    ));
    o.push_str(&format!(
        "  initramfs  {} {} ({} uncompressed) -> {}\n",
        mib(s.initrd_size),
        s.compress,
        mib(s.initrd_uncompressed),
        s.initrd_path.display()
    ));
    o.push_str(&format!("  modules    {}", s.modules.len()));
    if !s.missing_modules.is_empty() {
        o.push_str(&format!(
            "; not in this kernel: {}",
            s.missing_modules.join(" ")
        ));
    }
    if !s.builtin_modules.is_empty() {
        o.push_str(&format!("; built in: {}", s.builtin_modules.len()));
    }
    o.push('\n');
    o.push_str(&format!("  firmware   {} files", s.firmware_files));
    if !s.firmware_missing.is_empty() {
        o.push_str(&format!(
            " ({} named by modules not found: firmware-* packages)",
            s.firmware_missing.len()
        ));
    }
    o.push('\n');
    o.push_str(&format!(
        "  busybox    {}\n",
        if s.busybox { "yes" } else { "no" }
    ));
    o.push_str(&format!(
        "  iPXE       {}\n",
        if s.ipxe_files.is_empty() {
            "none".to_string()
        } else {
            s.ipxe_files.join(" ")
        }
    ));
    o.push_str(&format!(
        "  bootlun    {}{}\n",
        if s.bootlun_static {
            "static".to_string()
        } else {
            format!(
                "dynamic (+{} libraries; cargo build-static recommended)",
                s.shared_libs.len()
            )
        },
        if s.bootlun_stripped {
            ", stripped"
        } else {
            ", not stripped"
        }
    ));
    match &s.config {
        Some(c) => o.push_str(&format!("  config     baked from {}\n", c.display())),
        None => {
            o.push_str("  config     none: boot with bootlun.lun=... on the kernel command line\n")
        }
    }
    print!("{o}");
}

// ---------------------------------------------------------------------------
// Progress: a bar on a terminal, a few plain lines otherwise.

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        let bar = io::stderr().is_terminal().then(|| {
            indicatif::ProgressBar::with_draw_target(
                Some(0),
                indicatif::ProgressDrawTarget::stderr(),
            )
        });
        Progress { bar }
    }

    /// Starts a stage; `bytes` selects a byte count display.
    fn stage(&self, msg: &str, total: Option<u64>, bytes: bool) {
        match &self.bar {
            Some(b) => {
                let tpl = if bytes {
                    "{msg:40} [{bar:30}] {bytes}/{total_bytes}"
                } else {
                    "{msg:40} [{bar:30}] {pos}/{len}"
                };
                let style = indicatif::ProgressStyle::with_template(tpl)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> ");
                // Message and counts first, so no frame pairs the new
                // style with the previous stage's numbers.
                b.set_message(msg.to_string());
                b.set_length(total.unwrap_or(0));
                b.set_position(0);
                b.set_style(style);
            }
            None => eprintln!("bootlun image build: {msg}"),
        }
    }

    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("bootlun image build: {msg}")),
            None => eprintln!("bootlun image build: {msg}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

// ---------------------------------------------------------------------------
// Modules.

/// A module tree on disk: names to files, found by walking it (Debian
/// packages ship no modules.dep), plus what is built in.
struct ModSource {
    dir: PathBuf,
    /// Underscore name to path relative to `dir`.
    by_name: HashMap<String, String>,
    builtin: HashSet<String>,
    /// The tree's own modules.alias, when depmod has run there; used to
    /// resolve soft dependencies named by alias.
    aliases: Option<ModIndex>,
    /// Without modules.alias: the aliases of the crypto modules, read from
    /// their .modinfo on first need. Soft dependencies name crypto
    /// algorithms (`crypto-crc32c` for ext4), which the kernel otherwise
    /// requests through a modprobe the ramdisk does not have.
    crypto_aliases: Option<ModIndex>,
}

impl ModSource {
    fn scan(dir: &Path) -> Result<ModSource, String> {
        let mut by_name: HashMap<String, (u8, String)> = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        let mut visited = 0usize;
        while let Some(rel) = stack.pop() {
            let rd = fs::read_dir(dir.join(&rel))
                .map_err(|e| format!("{}: {}", rel.display(), deb::short_io(&e)))?;
            for e in rd.flatten() {
                visited += 1;
                if visited > 1_000_000 {
                    return Err("too many files".into());
                }
                // file_type() does not follow symlinks: the `build` and
                // `source` links point outside the tree.
                let Ok(ft) = e.file_type() else { continue };
                let name = e.file_name().to_string_lossy().into_owned();
                let path = rel.join(&name);
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() && is_module_file(&name) {
                    let Some(p) = path.to_str() else { continue };
                    // depmod's default search order: updates first, built-in tree last.
                    let prio = if p.starts_with("updates/") {
                        0
                    } else if p.starts_with("kernel/") {
                        2
                    } else {
                        1
                    };
                    let key = kmod::name_from_path(p);
                    match by_name.get(&key) {
                        Some((q, old)) if (*q, old.as_str()) <= (prio, p) => {}
                        _ => {
                            by_name.insert(key, (prio, p.to_string()));
                        }
                    }
                }
            }
        }
        let builtin_text = fs::read(dir.join("modules.builtin")).unwrap_or_default();
        let builtin = lines_of(&builtin_text)
            .map(|l| kmod::name_from_path(&l))
            .collect();
        let aliases = fs::read(dir.join("modules.alias"))
            .ok()
            .map(|a| ModIndex::from_texts(dir, b"", &a, b""));
        Ok(ModSource {
            dir: dir.to_path_buf(),
            by_name: by_name.into_iter().map(|(k, (_, p))| (k, p)).collect(),
            builtin,
            aliases,
            crypto_aliases: None,
        })
    }

    /// Module names for an alias (`crypto-crc32c`).
    fn lookup_alias(&mut self, alias: &str) -> Vec<String> {
        if let Some(a) = &self.aliases {
            return a.match_modalias(alias);
        }
        if self.crypto_aliases.is_none() {
            let mut text = String::new();
            for (name, rel) in &self.by_name {
                if !rel.contains("crypto/") {
                    continue;
                }
                let Ok(data) = read_module(&self.dir.join(rel)) else {
                    continue;
                };
                let Ok(info) = kmod::read_modinfo(&data) else {
                    continue;
                };
                for a in info
                    .aliases
                    .iter()
                    .filter(|a| !a.contains(char::is_whitespace))
                {
                    text.push_str(&format!("alias {a} {name}\n"));
                }
            }
            self.crypto_aliases = Some(ModIndex::from_texts(&self.dir, b"", text.as_bytes(), b""));
        }
        self.crypto_aliases
            .as_ref()
            .map(|a| a.match_modalias(alias))
            .unwrap_or_default()
    }

    fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

fn lines_of(b: &[u8]) -> impl Iterator<Item = String> + '_ {
    b.split(|&c| c == b'\n')
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// A module as it goes into the image.
struct Module {
    name: String,
    /// Path relative to the modules dir, compression suffix removed.
    rel: String,
    data: Vec<u8>,
    info: ModInfo,
}

#[derive(Default)]
struct Collected {
    modules: Vec<Module>,
    missing: Vec<String>,
    builtin_named: Vec<String>,
    builtin_text: Vec<u8>,
}

/// Reads one module file, decompressing `.ko.xz`, `.ko.zst` or `.ko.gz`.
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    let suffix = if name.ends_with(".ko.xz") {
        ".xz"
    } else if name.ends_with(".ko.zst") {
        ".zst"
    } else if name.ends_with(".ko.gz") {
        ".gz"
    } else {
        ""
    };
    let f = fs::File::open(path).map_err(|e| deb::short_io(&e))?;
    let mut r = deb::decompressor(suffix, Box::new(io::BufReader::new(f)))?;
    let mut out = Vec::new();
    // No module is near 256 MiB; the cap keeps a corrupt file from eating memory.
    r.by_ref()
        .take(256 << 20)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot decompress: {e}"))?;
    Ok(out)
}

fn collect_modules(
    src: &mut ModSource,
    wanted: &[String],
    progress: &Progress,
) -> Result<Collected, Fail> {
    let mut c = Collected {
        builtin_text: fs::read(src.dir.join("modules.builtin")).unwrap_or_default(),
        ..Default::default()
    };
    progress.stage("reading modules", Some(wanted.len() as u64), false);
    let mut queue: Vec<String> = Vec::new();
    for w in wanted {
        let other = OTHER_NAMES
            .iter()
            .find(|(a, _)| a == w)
            .map(|(_, b)| b.to_string());
        let w = match other {
            Some(o) if !src.has(w) && !src.builtin.contains(w) => &o.clone(),
            _ => w,
        };
        if src.has(w) {
            queue.push(w.clone());
        } else if src.builtin.contains(w) {
            c.builtin_named.push(w.clone());
        } else {
            c.missing.push(w.clone());
        }
    }
    queue.reverse();
    let mut seen: HashSet<String> = queue.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        let Some(rel) = src.by_name.get(&name).cloned() else {
            continue;
        };
        let path = src.dir.join(&rel);
        let data = match read_module(&path) {
            Ok(d) => d,
            Err(e) => {
                progress.note(&format!("warning: {}: {e}; left out", path.display()));
                continue;
            }
        };
        let info = match kmod::read_modinfo(&data) {
            Ok(i) => i,
            Err(e) => {
                progress.note(&format!(
                    "warning: {}: {e}; included without dependencies",
                    path.display()
                ));
                ModInfo::default()
            }
        };
        let mut next: Vec<String> = info.depends.clone();
        for s in info.softdeps.iter().chain(&info.softdeps_post) {
            let n = kmod::normalize(s);
            if src.has(&n) {
                next.push(n);
            } else if !src.builtin.contains(&n) {
                next.extend(src.lookup_alias(s));
            }
        }
        for d in next {
            if src.builtin.contains(&d) || seen.contains(&d) {
                continue;
            }
            if !src.has(&d) {
                if info.depends.contains(&d) {
                    progress.note(&format!(
                        "warning: {name} depends on {d}, which this kernel lacks"
                    ));
                }
                continue;
            }
            seen.insert(d.clone());
            progress.set_len_add(1);
            queue.push(d);
        }
        let plain = rel
            .strip_suffix(".xz")
            .or_else(|| rel.strip_suffix(".zst"))
            .or_else(|| rel.strip_suffix(".gz"))
            .unwrap_or(&rel)
            .to_string();
        c.modules.push(Module {
            name: info.name.clone().unwrap_or_else(|| name.clone()),
            rel: plain,
            data,
            info,
        });
        progress.inc(1);
    }
    c.modules.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(c)
}

impl Progress {
    fn set_len_add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }
}

/// A firmware file by name under `dir`, or its `.zst`/`.xz` compressed
/// form decompressed. Names that would leave `dir` are refused.
fn read_firmware(dir: &Path, name: &str) -> Option<Vec<u8>> {
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return None;
    }
    let p = dir.join(name);
    if p.is_file() {
        return fs::read(&p).ok();
    }
    for (ext, suffix) in [("zst", ".zst"), ("xz", ".xz")] {
        let c = dir.join(format!("{name}.{ext}"));
        if c.is_file() {
            let f = fs::File::open(&c).ok()?;
            let mut r = deb::decompressor(suffix, Box::new(io::BufReader::new(f))).ok()?;
            let mut out = Vec::new();
            r.by_ref().take(256 << 20).read_to_end(&mut out).ok()?;
            return Some(out);
        }
    }
    None
}

/// The iPXE binaries (top level of `dir`, links followed) that PXE
/// clients load: `.kpxe`, `.kkpxe`, `.kkkpxe`, `.pxe`, `.efi`, `.lkrn`.
fn ipxe_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let ext = name.rsplit_once('.')?.1;
            if !["kpxe", "kkpxe", "kkkpxe", "pxe", "efi", "lkrn"].contains(&ext) {
                return None;
            }
            let p = e.path();
            // metadata() follows links: Debian links some of these to /boot.
            let m = fs::metadata(&p).ok()?;
            if !m.is_file() || m.len() > 64 << 20 {
                return None;
            }
            Some((name, fs::read(&p).ok()?))
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// bootlun binary, busybox.

struct Busybox {
    bytes: Vec<u8>,
}

fn pick_busybox(arg: Option<&str>) -> Result<Option<Busybox>, Fail> {
    match arg {
        Some("none") => Ok(None),
        Some(p) => {
            let b = fs::read(p)
                .map_err(|e| Fail::Usage(format!("--busybox {p}: {}", deb::short_io(&e))))?;
            let f = elf::elf_facts(&b).map_err(|e| Fail::Usage(format!("--busybox {p}: {e}")))?;
            if f.interp.is_some() {
                return usage(format!("--busybox {p}: dynamically linked; give a static one (package busybox-static) or none"));
            }
            Ok(Some(Busybox { bytes: b }))
        }
        None => {
            let Ok(b) = fs::read("/bin/busybox") else {
                return Ok(None);
            };
            match elf::elf_facts(&b) {
                Ok(f) if f.interp.is_none() => Ok(Some(Busybox { bytes: b })),
                _ => Ok(None),
            }
        }
    }
}

/// Runs a command with a time bound; the child is killed when it overruns.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| deb::short_io(&e))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            // SAFETY: plain kill(2) of the child we spawned and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!("timed out after {} s", limit.as_secs()))
        }
    }
}

/// `strip --strip-all` into a temporary copy under `work`; returns its bytes.
fn strip_copy(bin: &Path, work: &Path) -> Result<Vec<u8>, String> {
    let tmp = work.join(format!(".bootlun-stripped-{}", std::process::id()));
    let out = run_bounded(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&tmp)
            .arg(bin),
        Duration::from_secs(120),
    );
    let result = match out {
        Ok(o) if o.status.success() => fs::read(&tmp).map_err(|e| e.to_string()),
        Ok(o) => Err(format!(
            "strip failed: {}",
            one_line(&String::from_utf8_lossy(&o.stderr))
        )),
        Err(e) => Err(format!("strip: {e}")),
    };
    let _ = fs::remove_file(&tmp);
    result
}

/// Absolute paths of the shared libraries `ldd` reports for `bin`.
fn ldd(bin: &Path) -> Result<Vec<String>, String> {
    let o = run_bounded(Command::new("ldd").arg(bin), Duration::from_secs(60))
        .map_err(|e| format!("ldd: {e} (package libc-bin)"))?;
    if !o.status.success() {
        return Err(format!(
            "ldd failed: {}",
            one_line(&String::from_utf8_lossy(&o.stderr))
        ));
    }
    let mut out = Vec::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        if l.contains("not found") {
            return Err(format!("ldd: {}", l.trim()));
        }
        let path = match l.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            out.push(p.to_string());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Config.

/// Replaces a top-level `key = ...` line (before any table header),
/// keeping the rest of the file and its comments.
fn rewrite_key(text: &str, key: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut top = true;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            top = false;
        }
        let is_key = top
            && !done
            && t.strip_prefix(key)
                .map(|r| r.trim_start().starts_with('='))
                .unwrap_or(false);
        if is_key {
            out.push_str(&format!(
                "{key} = {}  # the image's own copy\n",
                toml::Value::String(value.to_string())
            ));
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The archive.

struct ImageInputs<'a> {
    version: &'a str,
    bootlun: &'a [u8],
    libs: &'a [String],
    busybox: Option<&'a Busybox>,
    config: Option<&'a str>,
    mods: &'a Collected,
    modules_dir: Option<&'a Path>,
    firmware: &'a [(String, Vec<u8>)],
    ipxe: &'a [(String, Vec<u8>)],
}

fn write_image<W: Write>(
    w: &mut cpio::Writer<W>,
    i: &ImageInputs<'_>,
    progress: &Progress,
) -> io::Result<()> {
    for (d, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("lib", 0o755),
        ("mnt", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
    ] {
        w.dir(d, mode)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs exists.
    w.device("dev/console", cpio::S_IFCHR, 0o600, 5, 1)?;
    w.device("dev/null", cpio::S_IFCHR, 0o666, 1, 3)?;
    w.file("bin/bootlun", 0o755, i.bootlun)?;
    progress.inc(i.bootlun.len() as u64);
    w.symlink("init", "bin/bootlun")?;
    for lib in i.libs {
        if w.contains(lib) {
            continue;
        }
        let b = fs::read(lib).map_err(|e| io::Error::new(e.kind(), format!("{lib}: {e}")))?;
        w.file(lib, 0o755, &b)?;
    }
    if let Some(bb) = i.busybox {
        w.file("bin/busybox", 0o755, &bb.bytes)?;
        w.symlink("bin/sh", "busybox")?;
    }
    if let Some(c) = i.config {
        w.file("etc/bootlun.toml", 0o600, c.as_bytes())?;
    }
    if i.modules_dir.is_some() {
        let base = format!("lib/modules/{}", i.version);
        w.dir(&base, 0o755)?;
        let mut entries = Vec::with_capacity(i.mods.modules.len());
        for m in &i.mods.modules {
            w.file(&format!("{base}/{}", m.rel), 0o644, &m.data)?;
            progress.inc(m.data.len() as u64);
            entries.push(IndexEntry {
                path: m.rel.clone(),
                info: m.info.clone(),
            });
        }
        let (dep, alias, softdep) = kmod::index_texts(&entries);
        w.file(&format!("{base}/modules.dep"), 0o644, dep.as_bytes())?;
        w.file(&format!("{base}/modules.alias"), 0o644, alias.as_bytes())?;
        w.file(
            &format!("{base}/modules.softdep"),
            0o644,
            softdep.as_bytes(),
        )?;
        w.file(
            &format!("{base}/modules.builtin"),
            0o644,
            &i.mods.builtin_text,
        )?;
    }
    for (name, b) in i.firmware {
        w.file(&format!("lib/firmware/{name}"), 0o644, b)?;
        progress.inc(b.len() as u64);
    }
    if !i.ipxe.is_empty() {
        w.dir(IMAGE_IPXE_DIR, 0o755)?;
    }
    for (name, b) in i.ipxe {
        w.file(&format!("{IMAGE_IPXE_DIR}/{name}"), 0o644, b)?;
        progress.inc(b.len() as u64);
    }
    Ok(())
}

enum Compressor {
    Zstd(zstd::stream::write::Encoder<'static, io::BufWriter<fs::File>>),
    Gzip(flate2::write::GzEncoder<io::BufWriter<fs::File>>),
    None(io::BufWriter<fs::File>),
}

impl Compressor {
    fn new(f: fs::File, c: Compress) -> io::Result<Self> {
        let w = io::BufWriter::with_capacity(1 << 20, f);
        Ok(match c {
            // Level 19 keeps the kernel's decompression window at 8 MiB,
            // which every zstd-capable kernel accepts.
            Compress::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, 19)?;
                e.include_checksum(true)?;
                Compressor::Zstd(e)
            }
            Compress::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::best(),
            )),
            Compress::None => Compressor::None(w),
        })
    }

    fn finish(self) -> io::Result<fs::File> {
        let w = match self {
            Compressor::Zstd(e) => e.finish()?,
            Compressor::Gzip(e) => e.finish()?,
            Compressor::None(w) => w,
        };
        w.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Compressor {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(e) => e.write(b),
            Compressor::Gzip(e) => e.write(b),
            Compressor::None(w) => w.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(e) => e.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

fn tmp_path(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to a temporary file next to `p`, syncs it and renames it
/// over `p`, so a reader never sees a half-written file.
fn write_atomic(p: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(p);
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, p)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_the_rest() {
        let t = "# c\nlisten = \"0.0.0.0:3260\"\nipxe-dir = \"/opt/ipxe\"\n[x]\nipxe-dir = 1\n";
        let r = rewrite_key(t, "ipxe-dir", "/usr/lib/ipxe");
        let v: toml::Table = r.parse().unwrap();
        assert_eq!(v["ipxe-dir"].as_str(), Some("/usr/lib/ipxe"));
        assert_eq!(v["x"]["ipxe-dir"].as_integer(), Some(1));
        assert!(r.starts_with("# c\n"));
    }

    #[test]
    fn module_file_names() {
        assert!(is_module_file("ext4.ko.xz"));
        assert!(is_module_file("ext4.ko"));
        assert!(!is_module_file("modules.dep"));
    }

    #[test]
    fn firmware_names_stay_inside() {
        let d = std::env::temp_dir();
        assert!(read_firmware(&d, "../etc/passwd").is_none());
        assert!(read_firmware(&d, "/etc/passwd").is_none());
    }
}
