//! `bootlun bootentries`: the menu `serve` would offer, printed without
//! serving anything. It reads the same config file and applies the same
//! defaults as `serve`, so the dry run shows what the initiator will get.

use crate::cli::{load_config, ServeArgs, DEFAULT_TARGET};
use bootlun_pxe::{BootMethod, BootentriesArgs, BootentriesFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// The ramdisk's network when nothing else names the server address.
const DEFAULT_SERVER: &str = "192.168.200.1";

#[derive(clap::Args, Debug)]
pub(crate) struct BootentriesCli {
    /// The `serve` config file: boot source, target name, method and
    /// address are taken from it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding the kernels (a /boot tree).
    #[arg(long, value_name = "DIR", conflicts_with = "boot_device")]
    boot_dir: Option<PathBuf>,
    /// Block device with the kernels, mounted read-only: a path, UUID=, LABEL=, PARTUUID=, PARTLABEL= or serial=.
    #[arg(long, value_name = "DEV")]
    boot_device: Option<String>,
    /// Subdirectory of the boot device holding the kernels [default: /].
    #[arg(long, value_name = "PATH")]
    boot_path: Option<String>,
    /// Output: the iPXE menu, pxelinux.cfg/default, or JSON.
    #[arg(long, value_enum, default_value = "ipxe")]
    format: BootentriesFormat,
    /// Server address in URLs and iSCSI URIs [default: the config's
    /// net-address, else its pxe-interface's address, else 192.168.200.1].
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// HTTP port used in URLs [default: the config's, else 80].
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    /// Target IQN [default: the config's, else serve's default].
    #[arg(long, value_name = "IQN")]
    target_name: Option<String>,
    /// iSCSI portal port [default: the config's listen port, else 3260].
    #[arg(long, value_name = "PORT")]
    iscsi_port: Option<u16>,
    /// Initiator IQN handed to the booted system.
    #[arg(long, value_name = "IQN")]
    initiator_name: Option<String>,
    /// How the booted system mounts its root [default: the config's, else netroot].
    #[arg(long, value_enum)]
    boot_method: Option<BootMethod>,
    /// Kernel command line of entries that have none.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    cmdline_default: Option<String>,
    /// Menu timeout in seconds [default: the config's, else 5].
    #[arg(long, value_name = "SECS")]
    menu_timeout: Option<u32>,
    /// Kernel arguments removed from every entry [default: the config's, else quiet].
    #[arg(long, value_name = "ARGS")]
    strip_args: Option<String>,
}

fn resolve(cli: BootentriesCli) -> Result<BootentriesArgs, String> {
    let file = match &cli.config {
        Some(p) => load_config(p).map_err(|e| format!("--config {e}"))?,
        None => ServeArgs::default(),
    };
    let p = &file.pxe;
    let (boot_dir, boot_device) = match (cli.boot_dir, cli.boot_device) {
        (None, None) => (p.boot_dir.clone(), p.boot_device.clone()),
        given => given,
    };
    if boot_dir.is_none() && boot_device.is_none() {
        return Err("one of --boot-dir or --boot-device is required (or a --config naming boot-dir or boot-device)".into());
    }
    let server = match cli.server {
        Some(s) => s,
        None => match (&file.net_address, &p.pxe_interface) {
            (Some(cidr), _) => cidr.split('/').next().unwrap_or(DEFAULT_SERVER).to_string(),
            (None, Some(i)) => bootlun_pxe::iface::ipv4_of(i)
                .map(|a| a.addr.to_string())
                .unwrap_or_else(|_| DEFAULT_SERVER.to_string()),
            (None, None) => DEFAULT_SERVER.to_string(),
        },
    };
    let listen_port = file
        .listen
        .as_deref()
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    Ok(BootentriesArgs {
        boot_dir,
        boot_device,
        boot_path: cli
            .boot_path
            .or_else(|| p.boot_path.clone())
            .unwrap_or_else(|| "/".into()),
        format: cli.format,
        server,
        http_port: cli.http_port.or(p.http_port).unwrap_or(80),
        target_name: cli
            .target_name
            .or(file.target_name.clone())
            .unwrap_or_else(|| DEFAULT_TARGET.into()),
        iscsi_port: cli.iscsi_port.or(listen_port).unwrap_or(3260),
        initiator_name: cli
            .initiator_name
            .unwrap_or_else(|| bootlun_pxe::DEFAULT_INITIATOR.into()),
        boot_method: cli.boot_method.or(p.boot_method).unwrap_or_default(),
        cmdline_default: cli
            .cmdline_default
            .or_else(|| p.cmdline_default.clone())
            .unwrap_or_default(),
        menu_timeout: cli.menu_timeout.or(p.menu_timeout).unwrap_or(5),
        strip_args: cli
            .strip_args
            .or_else(|| p.strip_args.clone())
            .unwrap_or_else(|| bootlun_pxe::DEFAULT_STRIP.into()),
    })
}

pub(crate) fn main(cli: BootentriesCli) -> ExitCode {
    match resolve(cli) {
        Ok(args) => bootlun_pxe::bootentries_main(&args),
        Err(e) => {
            eprintln!("bootlun bootentries: {e}");
            ExitCode::from(2)
        }
    }
}
