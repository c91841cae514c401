//! Command-line parsing and wiring. Every operator error is one line that
//! names the flag or key to change, with exit status 2.

use bootlun_engine::{
    open_backend, parse_core_list, parse_size, Engine, EngineConfig, LunSpec, PollMode,
};
use bootlun_frontends::iscsi::negotiate::Limits;
use bootlun_frontends::iscsi::{IscsiService, Lun, TargetShared};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_LISTEN: &str = "0.0.0.0:3260";
const DEFAULT_TARGET: &str = "iqn.2026-11.org.bootlun:target";
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
    Bootentries(bootlun_pxe::BootentriesArgs),
}

/// `serve` flags. Every field is also a key of the TOML config file
/// (kebab-case, as the flag); flags override the file.
#[derive(clap::Args, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ServeArgs {
    /// TOML file with the same keys as these flags.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address and port of the iSCSI portal [default: 0.0.0.0:3260].
    #[arg(long)]
    listen: Option<String>,
    /// Target IQN [default: iqn.2026-11.org.bootlun:target].
    #[arg(long)]
    target_name: Option<String>,
    /// A LUN: a path (file or block device), ram:SIZE or null:SIZE, with an
    /// optional ,ro suffix. Repeat for LUN 1, 2, ...
    #[arg(long = "lun")]
    #[serde(default)]
    lun: Vec<String>,
    /// Cores to run reactors on, e.g. 0,1 or 0-3 [default: all].
    #[arg(long)]
    cores: Option<String>,
    /// busy, adaptive or interrupt [default: adaptive].
    #[arg(long)]
    poll: Option<String>,
    /// Adaptive polling: microseconds to spin before sleeping [default: 50].
    #[arg(long)]
    poll_spin_us: Option<u64>,
    /// I/O buffers per reactor [default: 256].
    #[arg(long)]
    buffers: Option<usize>,
    /// Size of each I/O buffer [default: 1M].
    #[arg(long)]
    buffer_size: Option<String>,
    /// Commands each connection may have outstanding [default: 128].
    #[arg(long)]
    queue_depth: Option<u32>,
    /// Seconds a new connection has to complete its login [default: 30].
    #[arg(long)]
    login_timeout: Option<u64>,
    /// Log filter (error, warn, info, debug, trace) [default: info, or RUST_LOG].
    #[arg(long)]
    log: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pxe: bootlun_pxe::PxeArgs,
}

impl ServeArgs {
    fn merge_from(&mut self, file: ServeArgs) {
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
            log
        );
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
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => serve(*args),
        Cmd::Bootentries(args) => bootlun_pxe::bootentries_main(&args),
    }
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let f = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = unsafe { libc::isatty(2) } == 1;
    tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(mut args: ServeArgs) -> ExitCode {
    if let Some(path) = args.config.clone() {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return usage_error(&format!("--config {}: {e}", path.display())),
        };
        let file: ServeArgs = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let msg = e.message().replace('\n', " ");
                return usage_error(&format!("--config {}: {msg}", path.display()));
            }
        };
        args.merge_from(file);
    }
    init_logging(args.log.as_deref());
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => usage_error(&m),
        Err(Failure::Runtime(m)) => {
            eprintln!("bootlun: {m}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    /// The operator's input is wrong: exit 2.
    Usage(String),
    /// Something failed at run time: exit 1.
    Runtime(String),
}

fn run(args: ServeArgs) -> Result<(), Failure> {
    use Failure::*;
    // Catch SIGINT/SIGTERM before anything is announced, so a signal sent
    // right after the "listening on" line still flushes and exits 0.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Runtime(format!("cannot install signal handlers: {e}")))?;
    let listen = args.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen.parse().map_err(|_| {
        Usage(format!(
            "--listen {listen}: expected ADDR:PORT, for example 0.0.0.0:3260"
        ))
    })?;
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
    let buffer_size = match &args.buffer_size {
        Some(s) => parse_size(s).map_err(|e| Usage(format!("--buffer-size {e}")))? as usize,
        None => 1 << 20,
    };
    if !(64 * 1024..=16 << 20).contains(&buffer_size) {
        return Err(Usage(format!(
            "--buffer-size {buffer_size}: must be between 64K and 16M"
        )));
    }
    let buffers = args.buffers.unwrap_or(256);
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

    let mut luns = Vec::new();
    for (i, text) in args.lun.iter().enumerate() {
        let spec = LunSpec::parse(text).map_err(Usage)?;
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
        luns.push(Lun::new(backend, &target_name, MAX_TRANSFER_BYTES));
    }
    let backends: Vec<_> = luns.iter().map(|l| l.backend.clone()).collect();

    // Bursts never exceed one buffer, so every unsolicited burst fits the
    // buffer its command owns.
    let limits = Limits {
        max_recv_data_segment_length: (256 * 1024).min(buffer_size as u32),
        max_burst_length: (16 << 20).min(buffer_size as u32 * 16),
        first_burst_length: (256 * 1024).min(buffer_size as u32),
        ..Limits::default()
    };
    let login_timeout = args.login_timeout.unwrap_or(30);
    if !(1..=3600).contains(&login_timeout) {
        return Err(Usage(format!(
            "--login-timeout {login_timeout}: must be between 1 and 3600 seconds"
        )));
    }
    let mut shared = TargetShared::new(target_name.clone(), luns, limits, queue_depth);
    shared.login_timeout_secs = login_timeout;
    let shared = Arc::new(shared);

    let listener = TcpListener::bind(listen).map_err(|e| {
        Runtime(format!(
            "--listen {listen}: cannot listen: {e} (is another target on this port?)"
        ))
    })?;
    raise_memlock();
    let cfg = EngineConfig {
        cores: cores.clone(),
        poll,
        spin: Duration::from_micros(args.poll_spin_us.unwrap_or(50)),
        buffers,
        buffer_size,
        ring_entries: 1024,
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
        initiator_name: None,
        chap: None,
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
    tracing::info!("listening on {bound}");

    wait_for_signal(signals);
    tracing::info!("stopping: flushing LUNs");
    let stats = engine.stats.clone();
    engine.shutdown();
    for line in stats.summary().lines() {
        tracing::info!("{line}");
    }
    if let Some(p) = pxe {
        p.stop();
    }
    let mut failed = false;
    for b in &backends {
        if let Err(e) = b.flush_blocking() {
            tracing::error!("flush of {} failed: {e}", b.describe());
            failed = true;
        }
    }
    if failed {
        return Err(Runtime("some LUNs could not be flushed".into()));
    }
    tracing::info!("stopped");
    Ok(())
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
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &r);
    }
}

/// Block until SIGINT or SIGTERM.
fn wait_for_signal(mut signals: signal_hook::iterator::Signals) {
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig} received");
    }
}
