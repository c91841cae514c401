//! Command-line parsing and wiring. Every operator error is one line that
//! names the flag or key to change, with exit status 2.

use bootlun_engine::{
    open_backend, parse_core_list, parse_size, Engine, EngineConfig, LunSpec, PollMode,
    ZeroCopySend,
};
use bootlun_frontends::iscsi::negotiate::{Acl, ChapSecret, Limits};
use bootlun_frontends::iscsi::{IscsiService, Lun, TargetShared};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_LISTEN: &str = "0.0.0.0:3260";
pub(crate) const DEFAULT_TARGET: &str = "iqn.2026-11.org.bootlun:target";
/// Largest single command reported to initiators (VPD Block Limits).
const MAX_TRANSFER_BYTES: u32 = 32 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "bootlun",
    version,
    about = "Network-boot this machine's own OS: iSCSI target and PXE services"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Export disks over iSCSI (and, with --pxe-interface, boot them over PXE).
    Serve(Box<ServeArgs>),
    /// Print the boot entries and menu that would be served (dry run).
    Bootentries(crate::bootentries::BootentriesCli),
    /// Build the boot ramdisk (bootlun-kernel.bin + bootlun-initrd.img).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Install, update or uninstall the ramdisk's boot entry on this host.
    Host(bootlun_image::host::HostArgs),
    /// Run as the ramdisk's init (PID 1): set up the machine, then serve.
    Init,
    /// Ask the ramdisk's init to flush every LUN and power off.
    Shutdown,
    /// Check a config file, or print one with every key.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `bootlun man > /usr/share/man/man1/bootlun.1`.
    Man,
    /// Print the status of a running `serve` (from its admin listener).
    Status(crate::admin::client::StatusArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check FILE as `serve --config FILE` would; errors as FILE:LINE:COLUMN.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print a commented config with every key.
    Example,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Write DIR/bootlun-kernel.bin and DIR/bootlun-initrd.img.
    Build(bootlun_image::build::BuildArgs),
}

/// `serve` flags. Every field is also a key of the TOML config file
/// (kebab-case, as the flag); flags override the file.
#[derive(clap::Args, Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct ServeArgs {
    /// TOML file with the same keys as these flags.
    #[arg(long)]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Address and port of the iSCSI portal [default: the --pxe-interface
    /// address, port 3260; else 0.0.0.0:3260].
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// Target IQN [default: iqn.2026-11.org.bootlun:target].
    #[arg(long)]
    pub(crate) target_name: Option<String>,
    /// A LUN: a path (file or block device), a block device by UUID=,
    /// LABEL=, PARTUUID=, PARTLABEL= or serial=, ram:SIZE or null:SIZE,
    /// with an optional ,ro suffix. Repeat for LUN 1, 2, ...
    #[arg(long = "lun")]
    #[serde(default)]
    pub(crate) lun: Vec<String>,
    /// Cores to run reactors on, e.g. 0,1 or 0-3 [default: all].
    #[arg(long)]
    pub(crate) cores: Option<String>,
    /// busy, adaptive or interrupt [default: adaptive].
    #[arg(long)]
    pub(crate) poll: Option<String>,
    /// Adaptive polling: longest spin after the last completion, in microseconds [default: 50].
    #[arg(long)]
    pub(crate) poll_spin_us: Option<u64>,
    /// I/O buffers per reactor [default: 1/128 of RAM over the reactors, 128 to 256].
    #[arg(long)]
    pub(crate) buffers: Option<usize>,
    /// Size of each I/O buffer [default: 1M].
    #[arg(long)]
    pub(crate) buffer_size: Option<String>,
    /// Commands each connection may have outstanding [default: 128].
    #[arg(long)]
    pub(crate) queue_depth: Option<u32>,
    /// Seconds a new connection has to complete its login [default: 30].
    #[arg(long)]
    pub(crate) login_timeout: Option<u64>,
    /// Send a NOP-In ping on a connection idle this many seconds; an
    /// initiator that has answered pings before is dropped if it then stays
    /// silent for --nop-timeout (TCP keepalive uses the same times). 0 turns
    /// keepalive off [default: 5].
    #[arg(long, value_name = "SECS")]
    pub(crate) nop_interval: Option<u64>,
    /// Seconds of silence after a ping before the connection is closed
    /// [default: 15].
    #[arg(long, value_name = "SECS")]
    pub(crate) nop_timeout: Option<u64>,
    /// Most normal sessions the target holds; further logins are refused
    /// (status 0302, out of resources) [default: 64].
    #[arg(long, value_name = "N")]
    pub(crate) max_sessions: Option<usize>,
    /// Most MiB per second a SANITIZE OVERWRITE (or a BLOCK ERASE that has
    /// to write zeros) writes in the background, leaving the disk to the
    /// other LUNs; the LU answers NOT READY, SANITIZE IN PROGRESS until it
    /// ends. 0: as fast as the disk [default: 64].
    #[arg(long, value_name = "MIB")]
    pub(crate) sanitize_rate: Option<u64>,
    /// Let a kernel thread per reactor poll its io_uring submission queue
    /// (SQPOLL): fewer system calls, but each such thread spins a core of
    /// its own while there is work. For machines with cores to spare
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) sqpoll: Option<bool>,
    /// Send Data-In with zero-copy sendmsg (the NIC reads the I/O buffers;
    /// no copy into socket buffers): auto uses it for sends of 32 KiB and
    /// more to peers not on this machine, and drops it for a connection
    /// once the kernel reports it had to copy anyway; on uses it for every
    /// such send; off never [default: auto].
    #[arg(long, value_name = "auto|on|off")]
    pub(crate) zero_copy_send: Option<String>,
    /// Log filter (error, warn, info, debug, trace) [default: info, or RUST_LOG].
    #[arg(long)]
    pub(crate) log: Option<String>,
    /// Log lines as plain text or as one JSON object per line [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Interface to bring up and give --net-address [default: --pxe-interface;
    /// in the ramdisk: the first Ethernet interface with a link].
    #[arg(long, value_name = "IFACE")]
    pub(crate) net_interface: Option<String>,
    /// IPv4 address/prefix for --net-interface, added if missing and removed
    /// at exit if bootlun added it [in the ramdisk: 192.168.200.1/24].
    #[arg(long, value_name = "CIDR")]
    pub(crate) net_address: Option<String>,
    /// Seconds to wait for LUN and boot devices given as UUID=, LABEL=,
    /// PARTUUID=, PARTLABEL= or serial= to appear [default: 0; in the ramdisk: 60].
    #[arg(long, value_name = "SECS")]
    pub(crate) disk_timeout: Option<u64>,
    /// In the ramdisk: a further TOML file on the boot device, under
    /// --boot-path, read before the built-in config [default: bootlun.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) boot_config: Option<String>,
    /// CHAP user name and secret (at least 12 bytes) initiators must log
    /// in with. On the command line the secret is visible in ps: prefer --secrets.
    #[arg(long, value_name = "USER:SECRET")]
    pub(crate) chap: Option<String>,
    /// The target's own CHAP user name and secret, for initiators that
    /// authenticate the target too (mutual CHAP; needs --chap, a different secret).
    #[arg(long, value_name = "USER:SECRET")]
    pub(crate) mutual_chap: Option<String>,
    /// CHAP user name and secret for discovery (SendTargets) sessions
    /// [default: those of --chap].
    #[arg(long, value_name = "USER:SECRET")]
    pub(crate) discovery_chap: Option<String>,
    /// TOML file with the keys chap, mutual-chap and discovery-chap; must be
    /// mode 0600. Flags and config keys win over it.
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets: Option<PathBuf>,
    /// Initiator IQN allowed to log in; repeat for more [default: any]. The
    /// first is also the initiator name the boot menu hands out.
    #[arg(long = "allow-initiator", value_name = "IQN")]
    #[serde(default)]
    pub(crate) allow_initiator: Vec<String>,
    /// Source address or prefix allowed to log in, e.g. 192.168.200.0/24;
    /// repeat for more [default: any].
    #[arg(long = "allow-address", value_name = "CIDR")]
    #[serde(default)]
    pub(crate) allow_address: Vec<String>,
    /// Export block devices even when mounted, used as swap or held by
    /// device-mapper/md (both sides writing corrupts the file system).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) force: Option<bool>,
    /// Address and port of the admin listener: status page (/), its data
    /// (/status.json) and Prometheus metrics (/metrics); off turns it off.
    /// Port 0 picks a free port (logged). If the default port is taken the
    /// target runs without the page [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub(crate) admin_listen: Option<String>,
    /// User name the admin listener asks for (HTTP basic auth); needs
    /// --admin-password-file [default: no password].
    #[arg(long, value_name = "NAME")]
    pub(crate) admin_user: Option<String>,
    /// File holding the admin listener's password (one line, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) admin_password_file: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) pxe: bootlun_pxe::PxeArgs,
}

impl ServeArgs {
    pub(crate) fn merge_from(&mut self, file: ServeArgs) {
        macro_rules! take {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        take!(
            listen,
            target_name,
            cores,
            poll,
            poll_spin_us,
            buffers,
            buffer_size,
            queue_depth,
            login_timeout,
            nop_interval,
            nop_timeout,
            max_sessions,
            sanitize_rate,
            sqpoll,
            zero_copy_send,
            log,
            log_format,
            net_interface,
            net_address,
            disk_timeout,
            boot_config,
            chap,
            mutual_chap,
            discovery_chap,
            secrets,
            force,
            admin_listen,
            admin_user,
            admin_password_file
        );
        if self.allow_initiator.is_empty() {
            self.allow_initiator = file.allow_initiator;
        }
        if self.allow_address.is_empty() {
            self.allow_address = file.allow_address;
        }
        if self.lun.is_empty() {
            self.lun = file.lun;
        }
        self.pxe.merge_from(file.pxe);
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("bootlun: {msg}");
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    // The kernel starts init with arguments of its own choosing (command
    // line words it did not recognise), so PID 1 does not parse argv.
    if bootlun_image::running_as_init() {
        crate::init::main();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => serve(*args),
        Cmd::Bootentries(args) => crate::bootentries::main(args),
        Cmd::Image(ImageCmd::Build(args)) => {
            bootlun_image::build::main(&args, &|text| parse_config_text(text).map(|_| ()))
        }
        Cmd::Host(args) => bootlun_image::host::main(&args),
        Cmd::Init => crate::init::main(),
        Cmd::Shutdown => bootlun_image::init::request_shutdown(),
        Cmd::Config(ConfigCmd::Check { file }) => crate::config::check_file(&file),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "bootlun", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man => {
            use clap::CommandFactory;
            let man = clap_mangen::Man::new(Cli::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bootlun man: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Status(args) => crate::admin::client::main(&args),
        Cmd::Config(ConfigCmd::Example) => {
            print!("{}", crate::config::example());
            ExitCode::SUCCESS
        }
    }
}

/// Parse a config file's text (the `serve` keys). The error is one line.
pub(crate) fn parse_config_text(text: &str) -> Result<ServeArgs, String> {
    toml::from_str::<ServeArgs>(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        match e.span() {
            Some(sp) => {
                let line = text[..sp.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })
}

/// Read and parse the config file at `path`, naming it in the error.
pub(crate) fn load_config(path: &std::path::Path) -> Result<ServeArgs, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_config_text(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `--log`: level names, or `target=level` directives. A bare word that is
/// not a level would parse as a target name and silence everything else,
/// so it is refused.
pub(crate) fn log_filter(s: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bad = || {
        format!("--log {s}: not a log filter (use error, warn, info, debug or trace, or TARGET=LEVEL, comma-separated)")
    };
    for d in s.split(',').map(str::trim) {
        let ok = match d.split_once('=') {
            Some((t, l)) => !t.is_empty() && LEVELS.contains(&l.to_ascii_lowercase().as_str()),
            None => LEVELS.contains(&d.to_ascii_lowercase().as_str()),
        };
        if !ok {
            return Err(bad());
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|_| bad())
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Swaps the log filter of the running process (SIGHUP).
type LogReload =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

pub(crate) fn init_logging(filter: Option<&str>, format: Option<LogFormat>) -> Option<LogReload> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let f = match filter.map(log_filter) {
        Some(Ok(f)) => f,
        // Already refused by check(); a ramdisk keeps logging.
        Some(Err(_)) => EnvFilter::new("info"),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // SAFETY: isatty only inspects the descriptor number; an fd 2 that is
    // closed or not a terminal yields 0, never undefined behaviour.
    let tty = unsafe { libc::isatty(2) } == 1;
    // No colours from PID 1: its console is often a serial line whose
    // other end is a log, not a terminal.
    let ansi = tty && !bootlun_image::running_as_init();
    let (layer, handle) = tracing_subscriber::reload::Layer::new(f);
    let registry = tracing_subscriber::registry().with(layer);
    let done = if format == Some(LogFormat::Json) {
        let fmt = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr);
        registry.with(fmt).try_init()
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        registry.with(fmt).try_init()
    };
    done.ok().map(|()| handle)
}

fn serve(mut args: ServeArgs) -> ExitCode {
    let cli_only = args.clone();
    if let Some(path) = args.config.clone() {
        match load_config(&path) {
            Ok(file) => args.merge_from(file),
            Err(e) => return usage_error(&format!("--config {e}")),
        }
    }
    if let Some(Err(e)) = args.log.as_deref().map(log_filter) {
        return usage_error(&e);
    }
    let reload = init_logging(args.log.as_deref(), args.log_format);
    warn_command_line_secrets(&cli_only);
    // Catch SIGINT/SIGTERM before anything is announced, so a signal sent
    // right after the "listening on" line still flushes and exits 0.
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bootlun: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let started = args.clone();
    let result = start(args).and_then(|running| {
        // Readiness for systemd (Type=notify); a no-op elsewhere.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        run_until_stopped(signals, &running, &cli_only, &started, reload.as_ref());
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        running.stop()
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => usage_error(&m),
        Err(Failure::Runtime(m)) => {
            eprintln!("bootlun: {m}");
            ExitCode::from(1)
        }
    }
}

pub(crate) enum Failure {
    /// The operator's input is wrong: exit 2.
    Usage(String),
    /// Something failed at run time: exit 1.
    Runtime(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Runtime(m) => f.write_str(m),
        }
    }
}

/// A running target: the reactors, the PXE sidecars and the address
/// bootlun added, until [`Running::stop`].
pub(crate) struct Running {
    /// The status page; stopped first.
    admin: Option<crate::admin::AdminHandle>,
    engine: Engine,
    pxe: Option<bootlun_pxe::PxeHandle>,
    backends: Vec<Arc<dyn bootlun_engine::BlockBackend>>,
    _net: Option<NetGuard>,
    /// `ADDR:PORT` of the portal.
    pub(crate) portal: SocketAddr,
    /// Target IQN.
    pub(crate) target_name: String,
    /// What the PXE sidecars serve on, if they run.
    pub(crate) pxe_interface: Option<String>,
}

impl Running {
    /// Counters of every reactor (live).
    pub(crate) fn stats(&self) -> bootlun_engine::Stats {
        self.engine.stats.clone()
    }

    pub(crate) fn lun_count(&self) -> usize {
        self.backends.len()
    }

    /// Stop the reactors and sidecars and flush every LUN.
    pub(crate) fn stop(self) -> Result<(), Failure> {
        tracing::info!("stopping: flushing LUNs");
        drop(self.admin);
        let stats = self.engine.stats.clone();
        self.engine.shutdown();
        for line in stats.summary().lines() {
            tracing::info!("{line}");
        }
        if let Some(p) = self.pxe {
            p.stop();
        }
        let mut failed = false;
        for b in &self.backends {
            if let Err(e) = b.flush_blocking() {
                tracing::error!("flush of {} failed: {e}", b.describe());
                failed = true;
            }
        }
        if failed {
            return Err(Failure::Runtime("some LUNs could not be flushed".into()));
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// An address bootlun put on an interface; removed again on drop.
struct NetGuard {
    ifname: String,
    addr: std::net::Ipv4Addr,
    prefix: u8,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        match bootlun_pxe::netlink::del_ipv4(&self.ifname, self.addr, self.prefix) {
            Ok(()) => tracing::info!("removed {}/{} from {}", self.addr, self.prefix, self.ifname),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// `A.B.C.D/N` of `--net-address`.
fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad =
        || format!("--net-address {s}: expected IPv4ADDRESS/PREFIX, for example 192.168.200.1/24");
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = p.trim().parse().map_err(|_| bad())?;
    if prefix == 0 || prefix > 32 || addr.is_unspecified() || addr.is_broadcast() {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// Bring `--net-interface` up with `--net-address`; the guard removes the
/// address at exit when it was not there before.
fn configure_net(args: &ServeArgs) -> Result<Option<NetGuard>, Failure> {
    use Failure::*;
    let Some(cidr) = &args.net_address else {
        if let Some(i) = &args.net_interface {
            bootlun_pxe::netlink::link_up(i).map_err(Usage)?;
        }
        return Ok(None);
    };
    let (addr, prefix) = parse_cidr(cidr).map_err(Usage)?;
    let ifname = args
        .net_interface
        .clone()
        .or_else(|| args.pxe.pxe_interface.clone())
        .ok_or_else(|| {
            Usage(format!(
                "--net-address {cidr}: needs --net-interface (or --pxe-interface)"
            ))
        })?;
    bootlun_pxe::netlink::link_up(&ifname).map_err(Usage)?;
    let added = bootlun_pxe::netlink::add_ipv4(&ifname, addr, prefix).map_err(Runtime)?;
    if added {
        tracing::info!("added {addr}/{prefix} to {ifname}");
        Ok(Some(NetGuard {
            ifname,
            addr,
            prefix,
        }))
    } else {
        tracing::info!("{ifname} already has {addr}/{prefix}");
        Ok(None)
    }
}

/// Whether the `--boot-device` `boot` is `lun` or a partition of it (the
/// usual case: the installed OS's disk holds its own /boot).
fn boot_device_on(boot: &str, lun: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(Some(boot)) = bootlun_engine::blkid::resolve(boot) else {
        return false;
    };
    let (Ok(b), Ok(l)) = (std::fs::metadata(&boot), std::fs::metadata(lun)) else {
        return false;
    };
    if !b.file_type().is_block_device() || !l.file_type().is_block_device() {
        return false;
    }
    if b.rdev() == l.rdev() {
        return true;
    }
    // /sys/dev/block/MAJ:MIN of a partition is a directory inside its
    // disk's, whose `dev` file names the disk.
    let (maj, min) = (libc::major(b.rdev()), libc::minor(b.rdev()));
    let part = std::path::PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    let Ok(real) = std::fs::canonicalize(&part) else {
        return false;
    };
    let disk_dev = real
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("dev")).ok());
    let lun_dev = format!("{}:{}", libc::major(l.rdev()), libc::minor(l.rdev()));
    real.join("partition").exists() && disk_dev.is_some_and(|d| d.trim() == lun_dev)
}

/// A `--lun` or `--boot-device` given by identity rather than path.
pub(crate) fn is_device_id(spec: &str) -> bool {
    ["UUID=", "PARTUUID=", "LABEL=", "PARTLABEL=", "serial="]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// The device part of a `--lun` value (without `,ro`).
pub(crate) fn lun_device(spec: &str) -> &str {
    spec.strip_suffix(",ro").unwrap_or(spec)
}

/// Every value of `args` parsed and range-checked, before anything is
/// opened, bound or pinned (also what `config check` runs).
pub(crate) struct Checked {
    /// `None`: on the `--pxe-interface` address, else [`DEFAULT_LISTEN`].
    listen: Option<SocketAddr>,
    target_name: String,
    cores: Vec<usize>,
    available: usize,
    poll: PollMode,
    zero_copy_send: ZeroCopySend,
    buffer_size: usize,
    buffers: usize,
    queue_depth: u32,
    login_timeout: u64,
    luns: Vec<LunSpec>,
    security: Security,
    /// `None`: `--admin-listen off`.
    admin: Option<crate::admin::AdminConfig>,
}

pub(crate) fn check(args: &ServeArgs) -> Result<Checked, Failure> {
    use Failure::*;
    let listen = match &args.listen {
        Some(l) => Some(l.parse().map_err(|_| {
            Usage(format!(
                "--listen {l}: expected ADDR:PORT, for example 0.0.0.0:3260"
            ))
        })?),
        None => None,
    };
    if let Some(c) = &args.net_address {
        parse_cidr(c).map_err(Usage)?;
    }
    if let Some(l) = &args.log {
        log_filter(l).map_err(Usage)?;
    }
    if args.pxe.menu_user.is_some() != args.pxe.menu_password.is_some() {
        return Err(Usage(
            "--menu-user and --menu-password must be given together".into(),
        ));
    }
    let target_name = args
        .target_name
        .clone()
        .unwrap_or_else(|| DEFAULT_TARGET.to_string());
    if !(target_name.starts_with("iqn.")
        || target_name.starts_with("eui.")
        || target_name.starts_with("naa."))
        || target_name.len() > 223
        || target_name.contains(char::is_whitespace)
    {
        return Err(Usage(format!(
            "--target-name {target_name}: not an iSCSI name (use iqn.YYYY-MM.reversed.domain:name)"
        )));
    }
    if args.lun.is_empty() {
        return Err(Usage(
            "--lun: at least one LUN is needed, for example --lun ram:1G or --lun /dev/sda".into(),
        ));
    }
    let luns = args
        .lun
        .iter()
        .map(|t| LunSpec::parse(t).map_err(Usage))
        .collect::<Result<Vec<_>, _>>()?;
    let available = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cores = match &args.cores {
        Some(c) => parse_core_list(c, available).map_err(Usage)?,
        None => (0..available).collect(),
    };
    let poll: PollMode = match &args.poll {
        Some(p) => p.parse().map_err(Usage)?,
        None => PollMode::Adaptive,
    };
    let zero_copy_send: ZeroCopySend = match &args.zero_copy_send {
        Some(z) => z.parse().map_err(Usage)?,
        None => ZeroCopySend::Auto,
    };
    let buffer_size = match &args.buffer_size {
        Some(s) => parse_size(s).map_err(|e| Usage(format!("--buffer-size {e}")))? as usize,
        None => 1 << 20,
    };
    if !(64 * 1024..=16 << 20).contains(&buffer_size) {
        return Err(Usage(format!(
            "--buffer-size {buffer_size}: must be between 64K and 16M"
        )));
    }
    let buffers = args
        .buffers
        .unwrap_or_else(|| bootlun_engine::bufpool::default_buffers(cores.len(), buffer_size));
    if !(8..=16384).contains(&buffers) {
        return Err(Usage(format!(
            "--buffers {buffers}: must be between 8 and 16384"
        )));
    }
    let queue_depth = args.queue_depth.unwrap_or(128);
    if !(1..=4096).contains(&queue_depth) {
        return Err(Usage(format!(
            "--queue-depth {queue_depth}: must be between 1 and 4096"
        )));
    }
    let login_timeout = args.login_timeout.unwrap_or(30);
    if !(1..=3600).contains(&login_timeout) {
        return Err(Usage(format!(
            "--login-timeout {login_timeout}: must be between 1 and 3600 seconds"
        )));
    }
    if let Some(n) = args.nop_interval.filter(|n| *n > 3600) {
        return Err(Usage(format!(
            "--nop-interval {n}: must be between 0 (off) and 3600 seconds"
        )));
    }
    if let Some(n) = args.nop_timeout.filter(|n| !(1..=3600).contains(n)) {
        return Err(Usage(format!(
            "--nop-timeout {n}: must be between 1 and 3600 seconds"
        )));
    }
    if let Some(n) = args.sanitize_rate.filter(|n| *n > 1 << 20) {
        return Err(Usage(format!(
            "--sanitize-rate {n}: at most {} MiB/s (0: no limit)",
            1 << 20
        )));
    }
    if let Some(n) = args.max_sessions.filter(|n| !(1..=65535).contains(n)) {
        return Err(Usage(format!(
            "--max-sessions {n}: must be between 1 and 65535"
        )));
    }
    Ok(Checked {
        listen,
        target_name,
        cores,
        available,
        poll,
        zero_copy_send,
        buffer_size,
        buffers,
        queue_depth,
        login_timeout,
        luns,
        security: check_security(args)?,
        admin: crate::admin::check(
            args.admin_listen.as_deref(),
            args.admin_user.as_deref(),
            args.admin_password_file.as_deref(),
        )
        .map_err(Usage)?,
    })
}

pub(crate) fn start(args: ServeArgs) -> Result<Running, Failure> {
    use Failure::*;
    let Checked {
        listen,
        target_name,
        cores,
        available,
        poll,
        zero_copy_send,
        buffer_size,
        buffers,
        queue_depth,
        login_timeout,
        luns: specs,
        security,
        admin,
    } = check(&args)?;
    let net = configure_net(&args)?;
    let listen: SocketAddr = match (listen, &args.pxe.pxe_interface) {
        (Some(l), _) => l,
        // A boot network gets the portal on its own address only.
        (None, Some(i)) => {
            let ifa = bootlun_pxe::iface::ipv4_of(i).map_err(Usage)?;
            SocketAddr::from((ifa.addr, 3260))
        }
        (None, None) => DEFAULT_LISTEN.parse().expect("valid default"),
    };
    let mut luns = Vec::new();
    for (i, (text, mut spec)) in args.lun.iter().zip(specs).enumerate() {
        let dev = lun_device(text);
        if is_device_id(dev) {
            match bootlun_engine::blkid::resolve(dev) {
                Ok(Some(p)) => {
                    tracing::info!("LUN {i}: {dev} is {}", p.display());
                    spec.kind = bootlun_engine::backend::LunKind::Path(p);
                }
                Ok(None) => return Err(Usage(format!("--lun {text}: no such device"))),
                Err(e) => return Err(Usage(format!("--lun {text}: {e}"))),
            }
        }
        spec.force = args.force.unwrap_or(false);
        if let (bootlun_engine::backend::LunKind::Path(lun), Some(boot)) =
            (&spec.kind, &args.pxe.boot_device)
        {
            spec.holds_boot = boot_device_on(boot, lun);
        }
        let backend = open_backend(&spec, i).map_err(Usage)?;
        tracing::info!(
            "LUN {i}: {} ({} bytes, {}-byte blocks{}{})",
            backend.describe(),
            backend.size_bytes(),
            backend.block_size(),
            if backend.read_only() {
                ", read-only"
            } else {
                ""
            },
            if backend.info().direct {
                ", O_DIRECT"
            } else {
                ""
            }
        );
        // Commands larger than a buffer are carried in buffer-sized chunks,
        // so the limit reported to initiators (VPD B0h) is not the buffer.
        let lun = Lun::new(backend, &target_name, MAX_TRANSFER_BYTES);
        if let Some(mib) = args.sanitize_rate {
            lun.info.state.set_sanitize_rate(mib << 20);
        }
        luns.push(lun);
    }
    let backends: Vec<_> = luns.iter().map(|l| l.backend.clone()).collect();

    // Bursts never exceed one buffer, so every unsolicited burst fits the
    // buffer its command owns.
    let limits = Limits {
        max_recv_data_segment_length: (256 * 1024).min(buffer_size as u32),
        max_burst_length: (16 << 20).min(buffer_size as u32 * 16),
        first_burst_length: (256 * 1024).min(buffer_size as u32),
        chap: security.chap.clone(),
        mutual_chap: security.mutual_chap.clone(),
        discovery_chap: security.discovery_chap.clone(),
        acl: Arc::new(security.acl.clone()),
        ..Limits::default()
    };
    security.log_summary();
    let mut shared = TargetShared::new(target_name.clone(), luns, limits, queue_depth);
    shared.login_timeout_secs = login_timeout;
    if let Some(n) = args.nop_interval {
        shared.nop_interval_secs = n;
    }
    if let Some(n) = args.nop_timeout {
        shared.nop_timeout_secs = n;
    }
    if let Some(n) = args.max_sessions {
        shared.max_sessions = n;
    }
    let shared = Arc::new(shared);

    let listener = TcpListener::bind(listen).map_err(|e| {
        Runtime(format!(
            "--listen {listen}: cannot listen: {e} (is another target on this port?)"
        ))
    })?;
    raise_memlock();
    tracing::info!(
        "pinning {} MiB of I/O buffers: {} reactor(s) x {buffers} x {} KiB",
        (cores.len() * buffers * buffer_size) >> 20,
        cores.len(),
        buffer_size >> 10
    );
    let cfg = EngineConfig {
        cores: cores.clone(),
        poll,
        spin: Duration::from_micros(args.poll_spin_us.unwrap_or(50)),
        buffers,
        buffer_size,
        ring_entries: 1024,
        sqpoll: args.sqpoll.unwrap_or(false).then_some(1000),
        zero_copy_send,
    };
    let engine = Engine::start(
        cfg,
        listener,
        Arc::new(IscsiService {
            shared: shared.clone(),
        }),
    )
    .map_err(|e| Runtime(format!("cannot start reactors: {e}")))?;
    let bound = engine.local_addr;

    let export = bootlun_pxe::IscsiExport {
        target_name: target_name.clone(),
        port: bound.port(),
        luns: shared.lun_numbers.clone(),
        // A restricted target hands out a name it accepts.
        initiator_name: args.allow_initiator.first().cloned(),
        chap: security.chap.as_ref().map(ChapSecret::pair),
        mutual_chap: security.mutual_chap.as_ref().map(ChapSecret::pair),
    };
    if args.pxe.pxe_interface.is_some() {
        keep_sidecars_off(&cores, available);
    }
    let pxe = bootlun_pxe::start(&args.pxe, &export).map_err(Usage)?;

    tracing::info!(
        "target {target_name}: {} LUN(s), {} reactor(s) on cores {:?}, poll {:?}",
        shared.luns.len(),
        cores.len(),
        cores,
        poll
    );
    let admin = match admin {
        Some(cfg) => {
            let pxe_status = pxe.as_ref().map(|p| crate::admin::status::PxeStatus {
                interface: args.pxe.pxe_interface.clone().unwrap_or_default(),
                server: p.server.to_string(),
                boot_entries: p
                    .entries
                    .iter()
                    .map(|b| crate::admin::status::BootEntryRow {
                        id: b.id.clone(),
                        title: b.title.clone(),
                        version: b.version.clone(),
                        kernel: b.linux.clone(),
                    })
                    .collect(),
            });
            let src = crate::admin::Source::new(
                target_name.clone(),
                bound,
                shared.clone(),
                engine.stats.clone(),
                pxe_status,
            );
            crate::admin::spawn(&cfg, Arc::new(src)).map_err(Runtime)?
        }
        None => None,
    };
    tracing::info!("listening on {bound}");
    Ok(Running {
        admin,
        engine,
        pxe,
        backends,
        _net: net,
        portal: bound,
        target_name,
        pxe_interface: args.pxe.pxe_interface.clone(),
    })
}

/// The PXE sidecar threads inherit this thread's CPU mask: keep them off
/// the reactors' cores when there are other cores to run on.
fn keep_sidecars_off(reactor_cores: &[usize], available: usize) {
    let others: Vec<usize> = (0..available)
        .filter(|c| !reactor_cores.contains(c))
        .collect();
    if others.is_empty() {
        tracing::info!("PXE sidecars share the reactors' cores (no other core is free)");
        return;
    }
    // SAFETY: cpu_set_t is a plain bit array for which all zeros is the
    // empty set; CPU_SET indexes it with a bounds check (a core past
    // CPU_SETSIZE panics, it does not write out of bounds); and
    // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes from a
    // set that lives across the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in &others {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                "cannot move PXE sidecars off the reactor cores: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
    }
    tracing::info!("PXE sidecars run on cores {others:?}");
}

/// Registered buffers are pinned memory; lift the limit if we may.
fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct through a reference that is
    // live for the call; a refusal (no CAP_SYS_RESOURCE) is only an error
    // return, and the reactors report the pinning failure themselves.
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &r);
    }
}

/// Serve until SIGINT or SIGTERM. SIGUSR1 writes the counters to the log;
/// SIGHUP re-reads the config file: the log filter changes at once, the
/// boot entries are re-read on every menu request anyway, and every other
/// changed key is named as needing a restart (sessions are never dropped).
fn run_until_stopped(
    mut signals: signal_hook::iterator::Signals,
    running: &Running,
    cli_only: &ServeArgs,
    started: &ServeArgs,
    reload: Option<&LogReload>,
) {
    use signal_hook::consts::{SIGHUP, SIGUSR1};
    for sig in signals.forever() {
        match sig {
            SIGUSR1 => {
                for line in running.stats().summary().lines() {
                    tracing::info!("{line}");
                }
            }
            SIGHUP => reload_config(cli_only, started, reload),
            _ => {
                tracing::info!("signal {sig} received");
                return;
            }
        }
    }
}

fn reload_config(cli_only: &ServeArgs, started: &ServeArgs, reload: Option<&LogReload>) {
    let Some(path) = &started.config else {
        tracing::info!(
            "SIGHUP: no --config file to re-read; boot entries are re-read on every menu request"
        );
        return;
    };
    let file = match load_config(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("SIGHUP: {e}; keeping the running configuration");
            return;
        }
    };
    // Flags given on the command line still win over the file.
    let mut now = cli_only.clone();
    now.merge_from(file);
    if let Err(e) = check(&now) {
        tracing::warn!(
            "SIGHUP: {}: {e}; keeping the running configuration",
            path.display()
        );
        return;
    }
    if now.log != started.log {
        if let (Some(h), Some(Ok(f))) = (reload, now.log.as_deref().map(log_filter)) {
            if h.reload(f).is_ok() {
                tracing::info!(
                    "SIGHUP: log filter is now {:?}",
                    now.log.as_deref().unwrap_or("")
                );
            }
        }
    }
    let before = toml::Value::try_from(started).ok();
    let after = toml::Value::try_from(&now).ok();
    let changed: Vec<String> = match (before, after) {
        (Some(toml::Value::Table(b)), Some(toml::Value::Table(a))) => a
            .keys()
            .chain(b.keys())
            .filter(|k| *k != "log" && a.get(*k) != b.get(*k))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    if changed.is_empty() {
        tracing::info!(
            "SIGHUP: {} re-read; boot entries are re-read on every menu request",
            path.display()
        );
    } else {
        tracing::warn!(
            "SIGHUP: {} changed {}; these take effect only after a restart (sessions were kept)",
            path.display(),
            changed.join(", ")
        );
    }
}

/// CHAP credentials and the ACL, from flags, config keys and `--secrets`.
#[derive(Default)]
pub(crate) struct Security {
    chap: Option<ChapSecret>,
    mutual_chap: Option<ChapSecret>,
    discovery_chap: Option<ChapSecret>,
    acl: Acl,
}

impl Security {
    /// One line on what protects the target; never a secret.
    fn log_summary(&self) {
        let names = |c: &Option<ChapSecret>| c.as_ref().map(|c| c.user.clone());
        match (&self.chap, &self.discovery_chap) {
            (None, None) => {
                tracing::warn!("no CHAP: anyone who can reach the portal can log in (see --chap)")
            }
            _ => tracing::info!(
                "CHAP: user {:?}, mutual {:?}, discovery {:?}",
                names(&self.chap),
                names(&self.mutual_chap),
                names(&self.discovery_chap).or(names(&self.chap)),
            ),
        }
        if !self.acl.initiators.is_empty() || !self.acl.addresses.is_empty() {
            tracing::info!(
                "allowed initiators: {}; allowed addresses: {}",
                list_or_any(&self.acl.initiators),
                list_or_any(&self.acl.addresses),
            );
        }
    }
}

fn list_or_any<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        return "any".into();
    }
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a `--secrets` file may hold.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct SecretsFile {
    chap: Option<String>,
    mutual_chap: Option<String>,
    discovery_chap: Option<String>,
}

/// RFC 7143 section 12.1.3 wants at least 96 bits of secret.
const MIN_CHAP_SECRET: usize = 12;
const MAX_CHAP_FIELD: usize = 255;

/// `USER:SECRET` of `what` (a flag, or a key of the secrets file). The
/// error never contains the secret.
fn parse_chap(what: &str, value: &str) -> Result<ChapSecret, String> {
    let Some((user, secret)) = value.split_once(':') else {
        return Err(format!("{what}: expected USER:SECRET"));
    };
    // Both pass through the iPXE script and the kernel command line.
    let bad = |c: char| c.is_whitespace() || c.is_control();
    if user.is_empty() || user.len() > MAX_CHAP_FIELD || user.chars().any(bad) {
        return Err(format!(
            "{what}: the user name must be 1 to {MAX_CHAP_FIELD} characters without spaces"
        ));
    }
    if secret.len() < MIN_CHAP_SECRET {
        return Err(format!(
            "{what}: the secret of {user} is shorter than {MIN_CHAP_SECRET} bytes; use a longer one"
        ));
    }
    if secret.len() > MAX_CHAP_FIELD || secret.chars().any(bad) || secret.contains("${") {
        return Err(format!(
            "{what}: the secret of {user} must be at most {MAX_CHAP_FIELD} bytes without spaces, control characters or ${{"
        ));
    }
    Ok(ChapSecret {
        user: user.to_string(),
        secret: secret.as_bytes().to_vec(),
    })
}

/// Read `--secrets FILE`, refusing one other users can read.
fn read_secrets(path: &std::path::Path) -> Result<SecretsFile, String> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("--secrets {p}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("--secrets {p}: not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "--secrets {p}: mode {mode:04o} lets other users read it; run chmod 600 {p}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("--secrets {p}: {e}"))?;
    // Only the message: the full error would quote the line, secret and all.
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().replace('\n', " ");
        match line {
            Some(l) => format!("--secrets {p}: line {l}: {msg}"),
            None => format!("--secrets {p}: {msg}"),
        }
    })
}

/// Every CHAP and ACL value, checked (also by `config check`).
pub(crate) fn check_security(args: &ServeArgs) -> Result<Security, Failure> {
    use Failure::Usage;
    let file = match &args.secrets {
        Some(path) => Some((
            path.display().to_string(),
            read_secrets(path).map_err(Usage)?,
        )),
        None => None,
    };
    // The flag or config key if given, else the secrets file's key.
    let pick =
        |flag: &str, given: &Option<String>, from_file: fn(&SecretsFile) -> &Option<String>| {
            if let Some(v) = given {
                return parse_chap(&format!("--{flag}"), v).map(Some);
            }
            match &file {
                Some((p, f)) => from_file(f)
                    .as_ref()
                    .map(|v| parse_chap(&format!("--secrets {p}: {flag}"), v))
                    .transpose(),
                None => Ok(None),
            }
        };
    let chap = pick("chap", &args.chap, |f| &f.chap).map_err(Usage)?;
    let mutual_chap = pick("mutual-chap", &args.mutual_chap, |f| &f.mutual_chap).map_err(Usage)?;
    let discovery_chap = pick("discovery-chap", &args.discovery_chap, |f| {
        &f.discovery_chap
    })
    .map_err(Usage)?;
    if let Some(m) = &mutual_chap {
        if chap.is_none() && discovery_chap.is_none() {
            return Err(Usage(
                "--mutual-chap needs --chap: the target answers the initiator's challenge only after the initiator logged in with CHAP".into(),
            ));
        }
        // One secret in both directions lets an attacker reflect the
        // target's challenge back at it.
        let same = |c: &Option<ChapSecret>| c.as_ref().is_some_and(|c| c.secret == m.secret);
        if same(&chap) || same(&discovery_chap) {
            return Err(Usage(
                "--mutual-chap: the secret must differ from the --chap and --discovery-chap secrets".into(),
            ));
        }
    }
    let mut acl = Acl::default();
    for n in &args.allow_initiator {
        let ok = (n.starts_with("iqn.") || n.starts_with("eui.") || n.starts_with("naa."))
            && n.len() <= 223
            && !n.contains(char::is_whitespace);
        if !ok {
            return Err(Usage(format!(
                "--allow-initiator {n}: not an iSCSI name (use iqn.YYYY-MM.reversed.domain:name)"
            )));
        }
        acl.initiators.push(n.clone());
    }
    for a in &args.allow_address {
        let net = bootlun_frontends::iscsi::negotiate::parse_prefix(a).ok_or_else(|| {
            Usage(format!(
                "--allow-address {a}: expected ADDRESS or ADDRESS/PREFIX, for example 192.168.200.0/24"
            ))
        })?;
        acl.addresses.push(net);
    }
    Ok(Security {
        chap,
        mutual_chap,
        discovery_chap,
        acl,
    })
}

/// A secret given as a flag is in /proc/PID/cmdline for every user to read.
pub(crate) fn warn_command_line_secrets(cli: &ServeArgs) {
    for (flag, given) in [
        ("--chap", cli.chap.is_some()),
        ("--mutual-chap", cli.mutual_chap.is_some()),
        ("--discovery-chap", cli.discovery_chap.is_some()),
    ] {
        if given {
            tracing::warn!(
                "{flag}: a secret on the command line is visible to every user (ps); put it in a --secrets file (mode 0600) instead"
            );
        }
    }
}
