//! `bootlun init`: the ramdisk's PID 1. The machine set-up (mounts, module
//! loading, device discovery, signals, power-off) lives in
//! `bootlun_image::init`; this file only decides what to serve, from three
//! layers of configuration, highest first:
//!
//! 1. `bootlun.KEY=VALUE` words on the kernel command line, so the boot
//!    loader can change a LUN or an address without a rebuild;
//! 2. `bootlun.toml` (or the file named by `boot-config`) under
//!    `boot-path` on the boot device, when the config names one;
//! 3. `/etc/bootlun.toml`, baked into the image by `bootlun image build`.

use crate::cli::{self, Running, ServeArgs};
use bootlun_image::init as sys;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Config baked into the image.
const BAKED_CONFIG: &str = "/etc/bootlun.toml";
/// The boot network when the config names none (as the seed used).
const DEFAULT_NET_ADDRESS: &str = "192.168.200.1/24";
const DEFAULT_DISK_TIMEOUT: u64 = 60;
/// Read from the boot partition (under boot-path) when it exists.
const DEFAULT_BOOT_CONFIG: &str = "bootlun.toml";
/// How long to wait for an Ethernet link when no interface is named.
const LINK_WAIT: Duration = Duration::from_secs(15);

/// `serve` flags written as kernel command line words.
#[derive(Parser, Debug)]
#[command(name = "bootlun.*", no_binary_name = true)]
struct CmdlineArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

fn say(msg: &str) {
    // The console is stdout/stderr once setup_system() has run; tracing
    // may not be initialised yet.
    eprintln!("bootlun: {msg}");
}

/// `bootlun.KEY=VALUE` words as `serve` arguments.
fn cmdline_layer(cmdline: &str) -> Result<ServeArgs, String> {
    let mut argv: Vec<String> = Vec::new();
    for (k, v) in sys::kernel_cmdline_settings(cmdline) {
        argv.push(format!("--{k}"));
        argv.push(v);
    }
    CmdlineArgs::try_parse_from(&argv)
        .map(|a| a.serve)
        .map_err(|e| {
            let first = e.to_string();
            let line = first
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            format!(
                "kernel command line: {line} (bootlun.KEY=VALUE words take the `serve` flag names)"
            )
        })
}

/// CHAP secrets given as `bootlun.KEY=VALUE` words: they work, but the
/// kernel command line is in /proc/cmdline and in the host's boot entry.
fn cmdline_secret_warnings(args: &ServeArgs) -> Vec<String> {
    [
        ("chap", args.chap.is_some()),
        ("mutual-chap", args.mutual_chap.is_some()),
        ("discovery-chap", args.discovery_chap.is_some()),
    ]
    .into_iter()
    .filter(|(_, given)| *given)
    .map(|(key, _)| {
        format!(
            "warning: bootlun.{key}= on the kernel command line: its secret can be read in /proc/cmdline and in the boot entry; put `{key}` in bootlun.toml on the boot partition (or a secrets file) instead"
        )
    })
    .collect()
}

fn modules_dir() -> PathBuf {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    Path::new("/lib/modules").join(release)
}

/// The status line printed on the console.
fn status_text(running: &Running, last: &Mutex<(Instant, u64, u64)>) -> String {
    let stats = running.stats();
    let (mut conns, mut rd, mut wr) = (0u64, 0u64, 0u64);
    for r in stats.reactors.iter() {
        use std::sync::atomic::Ordering::Relaxed;
        conns += r.connections_open.load(Relaxed);
        rd += r.read_bytes.load(Relaxed);
        wr += r.write_bytes.load(Relaxed);
    }
    let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
    let secs = l.0.elapsed().as_secs_f64().max(0.001);
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs / 1e6;
    let line = format!(
        "iSCSI {} {} | {} LUN(s) | {} connection(s) | read {:.1} MB/s, write {:.1} MB/s{}",
        running.portal,
        running.target_name,
        running.lun_count(),
        conns,
        rate(rd, l.1),
        rate(wr, l.2),
        running
            .pxe_interface
            .as_deref()
            .map(|i| format!(" | PXE on {i}"))
            .unwrap_or_default()
    );
    *l = (Instant::now(), rd, wr);
    line
}

/// Everything PID 1 does; never returns.
pub fn main() -> ! {
    if let Err(e) = sys::setup_system() {
        say(&format!("system set-up incomplete: {e}"));
    }
    let mods = modules_dir();
    let report = sys::coldplug(&mods);
    say(&format!("{report}"));

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (args, problem) = match configure(&cmdline) {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e)),
    };
    let log = args.as_ref().and_then(|a| a.log.clone());
    let log_format = args.as_ref().and_then(|a| a.log_format);
    cli::init_logging(log.as_deref(), log_format);

    let running = match (args, problem) {
        (Some(args), _) => match prepare_and_start(args) {
            Ok(r) => Ok(r),
            Err(e) => Err(e),
        },
        (None, Some(e)) => Err(e),
        (None, None) => Err("no configuration".into()),
    };
    let shell = ["/bin/sh", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match running {
        Ok(running) => {
            let running = Arc::new(Mutex::new(Some(running)));
            let last = Mutex::new((Instant::now(), 0u64, 0u64));
            let r2 = running.clone();
            sys::supervise(sys::SuperviseOpts {
                status: Box::new(move || {
                    let g = r2.lock().unwrap_or_else(|p| p.into_inner());
                    match g.as_ref() {
                        Some(r) => status_text(r, &last),
                        None => "stopping".into(),
                    }
                }),
                shutdown: Box::new(move || {
                    let taken = running.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(r) = taken {
                        if let Err(e) = r.stop() {
                            say(&format!("{e}"));
                        }
                    }
                }),
                shell,
                status_every: Duration::from_secs(10),
            })
        }
        Err(e) => {
            say(&format!("NOT SERVING: {e}"));
            say("fix it on the kernel command line (bootlun.KEY=VALUE) or in the config, then reboot");
            let msg = format!("not serving: {e}");
            sys::supervise(sys::SuperviseOpts {
                status: Box::new(move || msg.clone()),
                shutdown: Box::new(|| {}),
                shell,
                status_every: Duration::from_secs(30),
            })
        }
    }
}

/// Merge the command line and the baked config; the boot-device file is
/// merged later, once the device has appeared.
fn configure(cmdline: &str) -> Result<ServeArgs, String> {
    let mut args = cmdline_layer(cmdline)?;
    for w in cmdline_secret_warnings(&args) {
        say(&w);
    }
    let baked = Path::new(BAKED_CONFIG);
    if baked.exists() {
        args.config = Some(baked.to_path_buf());
    }
    Ok(args)
}

fn prepare_and_start(mut args: ServeArgs) -> Result<Running, String> {
    let baked = match &args.config {
        Some(p) => cli::load_config(p)?,
        None => ServeArgs::default(),
    };
    // What the two layers say together decides where to look next.
    let mut view = args.clone();
    view.merge_from(baked.clone());

    let timeout = Duration::from_secs(view.disk_timeout.unwrap_or(DEFAULT_DISK_TIMEOUT));
    let mut wanted: Vec<String> = view
        .lun
        .iter()
        .map(|l| cli::lun_device(l).to_string())
        .filter(|d| d.starts_with('/') || cli::is_device_id(d))
        .collect();
    if let Some(b) = &view.pxe.boot_device {
        wanted.push(b.clone());
    }
    if !wanted.is_empty() {
        sys::wait_for_devices(&wanted, timeout, &mut |m| say(m))?;
    }
    // A named boot partition may carry a bootlun.toml (`host install`
    // puts the config there), so settings change without a rebuild.
    let named = view.boot_config.is_some();
    let boot_config = view
        .boot_config
        .clone()
        .unwrap_or_else(|| DEFAULT_BOOT_CONFIG.into());
    if let Some(dev) = &view.pxe.boot_device {
        let file = &boot_config;
        let sub = view
            .pxe
            .boot_path
            .as_deref()
            .unwrap_or("/")
            .trim_start_matches('/');
        match bootlun_pxe::bootentries::BootMount::mount(dev) {
            Ok(m) => {
                let path = m.dir.join(sub).join(file.trim_start_matches('/'));
                if path.exists() {
                    let layer =
                        cli::load_config(&path).map_err(|e| format!("boot-config {file}: {e}"))?;
                    say(&format!("read {file} from {dev}"));
                    args.merge_from(layer);
                } else if named {
                    say(&format!(
                        "boot-config {file}: not on {dev}; using the built-in config"
                    ));
                }
            }
            Err(e) if named => return Err(e),
            Err(e) => say(&format!("{e}; no {file} read from it")),
        }
    }
    args.merge_from(baked);
    args.config = None;

    if args.net_address.is_none() {
        args.net_address = Some(DEFAULT_NET_ADDRESS.into());
    }
    if args.net_interface.is_none() {
        args.net_interface = args.pxe.pxe_interface.clone().or_else(|| {
            say("looking for an Ethernet interface with a link");
            bootlun_pxe::netlink::first_ethernet_with_link(LINK_WAIT)
        });
        match &args.net_interface {
            Some(i) => say(&format!("network interface {i}")),
            None => return Err("no Ethernet interface found (set bootlun.net-interface=)".into()),
        }
    }
    let boots = args.pxe.boot_device.is_some()
        || args.pxe.boot_dir.is_some()
        || args.pxe.boot_method == Some(bootlun_pxe::BootMethod::Sanboot);
    if args.pxe.pxe_interface.is_none() && boots {
        args.pxe.pxe_interface = args.net_interface.clone();
    }
    if args.lun.is_empty() {
        return Err("no LUN configured (bootlun.lun=/dev/... on the kernel command line, or lun = [...] in the config)".into());
    }
    cli::start(args).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chap_secrets_on_the_kernel_command_line_are_warned_about() {
        let args = cmdline_layer(
            "quiet bootlun.lun=serial=abc bootlun.chap=user:secret123456 bootlun.mutual-chap=tgt:othersecret1",
        )
        .unwrap();
        let w = cmdline_secret_warnings(&args);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("bootlun.chap=") && w[0].contains("/proc/cmdline"));
        assert!(w[1].contains("bootlun.mutual-chap="));
        assert!(
            w.iter().all(|l| !l.contains("secret123456")),
            "no secret in the warning"
        );
        let args = cmdline_layer("bootlun.lun=serial=abc").unwrap();
        assert!(cmdline_secret_warnings(&args).is_empty());
    }
}
