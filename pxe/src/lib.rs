//! PXE sidecars: DHCP, TFTP and HTTP servers, boot-entry discovery and
//! boot-menu generation.
//!
//! [`start`] is what `bootlun serve` calls; [`bootentries_main`] is the
//! `bootlun bootentries` dry run.

pub mod bootentries;
pub mod dhcp;
pub mod http;
pub mod iface;
pub mod menu;
pub mod netlink;
pub mod progress;
pub mod tftp;

use serde::Deserialize;
use std::path::{Path, PathBuf};

use bootentries::{BootEntry, BootMount, Source};
use menu::{Chap, MenuConfig};

/// Initiator IQN advertised when the caller does not choose one.
pub const DEFAULT_INITIATOR: &str = "iqn.2025-01.org.bootlun:initiator";
/// Arguments stripped from kernel command lines by default.
pub const DEFAULT_STRIP: &str = "quiet";
/// Default location of the iPXE binaries (Debian package `ipxe`).
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";

/// What the PXE services need to know about the iSCSI target they
/// advertise.
#[derive(Debug, Clone, Default)]
pub struct IscsiExport {
    /// Target IQN.
    pub target_name: String,
    /// TCP port of the iSCSI portal.
    pub port: u16,
    /// LUN numbers exported (the first is the boot LUN).
    pub luns: Vec<u64>,
    /// Initiator IQN the booted system should use (`None`:
    /// [`DEFAULT_INITIATOR`]).
    pub initiator_name: Option<String>,
    /// CHAP user name and secret the target requires, if any.
    pub chap: Option<(String, String)>,
    /// The target's user name and secret for mutual CHAP, if any.
    pub mutual_chap: Option<(String, String)>,
}

/// How the booted system finds its root disk.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// dracut `netroot=iscsi:…` on the kernel command line.
    #[default]
    Netroot,
    /// iPXE `sanhook`s the LUNs and publishes an iBFT; dracut reads it.
    Ibft,
    /// iPXE boots the disk's own boot loader (`sanboot`).
    Sanboot,
}

/// DHCP sidecar mode.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DhcpModeArg {
    /// Hand out addresses and boot information.
    #[default]
    Server,
    /// ProxyDHCP: boot information only, next to another DHCP server.
    Proxy,
    /// No DHCP.
    Off,
}

/// `serve` flags that turn on and tune the PXE sidecars. Every field is
/// also a key of the TOML config file (kebab-case, same as the flag).
#[derive(Debug, Clone, Default, clap::Args, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PxeArgs {
    /// Network interface whose IPv4 address the PXE services use; turns them on.
    #[arg(long, value_name = "IFACE")]
    pub pxe_interface: Option<String>,
    /// Directory holding the kernels to offer (a /boot tree).
    #[arg(long, value_name = "DIR", conflicts_with = "boot_device")]
    pub boot_dir: Option<PathBuf>,
    /// Block device with the kernels, mounted read-only: a path, UUID=… or LABEL=….
    #[arg(long, value_name = "DEV")]
    pub boot_device: Option<String>,
    /// Subdirectory of the boot device holding the kernels [default: /].
    #[arg(long, value_name = "PATH")]
    pub boot_path: Option<String>,
    /// Kernel command line of entries that have none (kernels found without BLS entries).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline_default: Option<String>,
    /// How the booted system mounts its root [default: netroot].
    #[arg(long, value_enum)]
    pub boot_method: Option<BootMethod>,
    /// Seconds the menu waits before booting the default entry; 0 boots it at once [default: 5].
    #[arg(long, value_name = "SECS")]
    pub menu_timeout: Option<u32>,
    /// User name required to see the boot menu (with --menu-password).
    #[arg(long, value_name = "USER")]
    pub menu_user: Option<String>,
    /// Password required to see the boot menu (with --menu-user).
    #[arg(long, value_name = "PASSWORD")]
    pub menu_password: Option<String>,
    /// Directory of iPXE binaries served over TFTP and HTTP [default: /usr/lib/ipxe].
    #[arg(long, value_name = "DIR")]
    pub ipxe_dir: Option<PathBuf>,
    /// iPXE for BIOS PXE ROMs, a file in --ipxe-dir [default: undionly.kpxe].
    #[arg(long, value_name = "NAME")]
    pub ipxe_bios: Option<String>,
    /// iPXE for x86-64 UEFI (PXE and HTTP boot), a file in --ipxe-dir [default: snponly.efi].
    #[arg(long, value_name = "NAME")]
    pub ipxe_efi64: Option<String>,
    /// iPXE for ARM64 UEFI, a file in --ipxe-dir [default: snponly-arm64.efi if present;
    /// without one, ARM64 clients get no offer].
    #[arg(long, value_name = "NAME")]
    pub ipxe_arm64: Option<String>,
    /// DHCP sidecar: full server, ProxyDHCP next to another server, or off [default: server].
    #[arg(long, value_enum)]
    pub dhcp_mode: Option<DhcpModeArg>,
    /// Addresses handed out in server mode, START-END [default: the one address after ours, so one machine boots at a time].
    #[arg(long, value_name = "START-END")]
    pub dhcp_pool: Option<String>,
    /// TCP port of the HTTP server [default: 80].
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Kernel arguments removed from every entry, comma- or space-separated [default: quiet].
    #[arg(long, value_name = "ARGS")]
    pub strip_args: Option<String>,
    /// Also put the CHAP credentials on the kernel command line (netroot).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cmdline_chap: Option<bool>,
}

macro_rules! merge_fields {
    ($self:ident, $file:ident, $($f:ident),*) => {
        $( if $self.$f.is_none() { $self.$f = $file.$f; } )*
    };
}

impl PxeArgs {
    /// Fill every field not given on the command line from the config file.
    pub fn merge_from(&mut self, file: PxeArgs) {
        merge_fields!(
            self,
            file,
            pxe_interface,
            boot_dir,
            boot_device,
            boot_path,
            cmdline_default,
            boot_method,
            menu_timeout,
            menu_user,
            menu_password,
            ipxe_dir,
            ipxe_bios,
            ipxe_efi64,
            ipxe_arm64,
            dhcp_mode,
            dhcp_pool,
            http_port,
            strip_args,
            cmdline_chap
        );
    }

    fn strip_list(&self) -> Vec<String> {
        split_list(self.strip_args.as_deref().unwrap_or(DEFAULT_STRIP))
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Where the kernels are: a directory, or a mounted device (kept mounted
/// for as long as this lives).
struct BootSource {
    dir: PathBuf,
    _mount: Option<BootMount>,
}

fn boot_source(
    boot_dir: Option<&Path>,
    boot_device: Option<&str>,
    boot_path: Option<&str>,
) -> Result<Option<BootSource>, String> {
    let sub = boot_path.unwrap_or("/").trim_start_matches('/');
    match (boot_dir, boot_device) {
        (Some(_), Some(_)) => Err("--boot-dir and --boot-device cannot be used together".into()),
        (Some(d), None) => Ok(Some(BootSource {
            dir: d.join(sub),
            _mount: None,
        })),
        (None, Some(dev)) => {
            let m = BootMount::mount(dev)?;
            let dir = m.dir.join(sub);
            Ok(Some(BootSource {
                dir,
                _mount: Some(m),
            }))
        }
        (None, None) => Ok(None),
    }
}

/// Finds the boot entries, again on every menu request: the initiator runs
/// the OS from this very disk and may install a new kernel between two
/// boots. A device is unmounted and mounted afresh for each scan, so the
/// scan reads what is on the disk now rather than cached blocks.
struct BootScan {
    boot_dir: Option<PathBuf>,
    boot_device: Option<String>,
    boot_path: Option<String>,
    cmdline_default: String,
    method: BootMethod,
    current: Option<BootSource>,
}

/// One log line per menu entry, and a warning for kernels UEFI clients
/// cannot start (no EFI stub): BIOS clients can still boot them.
fn log_entries(what: &str, entries: &[BootEntry], dir: Option<&Path>) {
    for e in entries {
        tracing::info!("pxe: {what} {:?} kernel {}", e.title, e.linux);
        if let Some(false) = dir.and_then(|d| bootentries::has_efi_stub(&d.join(&e.linux))) {
            tracing::warn!(
                "pxe: {} has no EFI stub: UEFI clients cannot boot {:?} (BIOS clients can)",
                e.linux,
                e.title
            );
        }
    }
}

impl BootScan {
    /// The directory of the current scan.
    fn dir(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.dir.as_path())
    }

    fn flag(&self) -> String {
        source_flag(self.boot_dir.as_deref(), self.boot_device.as_deref())
    }

    /// Entries and the directory they are relative to (`None` with no
    /// boot source, which only `sanboot` allows).
    fn scan(&mut self) -> Result<(Vec<BootEntry>, Option<PathBuf>), String> {
        // Release the previous mount first: a second mount of the same
        // device would share its (possibly stale) superblock.
        self.current = None;
        let src = boot_source(
            self.boot_dir.as_deref(),
            self.boot_device.as_deref(),
            self.boot_path.as_deref(),
        )?;
        let found = match &src {
            Some(s) => match bootentries::discover(&s.dir, &self.cmdline_default) {
                Ok((_, e)) => (e, Some(s.dir.clone())),
                Err(_) if self.method == BootMethod::Sanboot => (Vec::new(), Some(s.dir.clone())),
                Err(e) => return Err(format!("{}: {e}", self.flag())),
            },
            None if self.method == BootMethod::Sanboot => (Vec::new(), None),
            None => {
                return Err(
                    "--pxe-interface needs --boot-dir or --boot-device (or --boot-method sanboot)"
                        .into(),
                )
            }
        };
        self.current = src;
        Ok(found)
    }
}

fn source_flag(boot_dir: Option<&Path>, boot_device: Option<&str>) -> String {
    match (boot_dir, boot_device) {
        (Some(d), _) => format!("--boot-dir {}", d.display()),
        (None, d) => format!("--boot-device {}", d.unwrap_or("")),
    }
}

/// The HTTP route table for `entries`: the menus, every kernel and initrd
/// (only those, and only if they resolve inside `boot_dir`), and the
/// regular files of `ipxe_dir` under `/ipxe/`.
pub fn routes(
    cfg: &MenuConfig,
    entries: &[BootEntry],
    boot_dir: &Path,
    ipxe_dir: Option<&Path>,
) -> Result<http::Router, String> {
    use http::Resource;
    let mut r = http::Router::default();
    let menu = menu::ipxe_menu(cfg, entries);
    if cfg.login {
        r.routes.insert(
            "/boot.ipxe".into(),
            Resource::text(menu::ipxe_login(cfg), "text/plain"),
        );
        let mut m = Resource::text(menu, "text/plain");
        m.auth = true;
        r.routes.insert("/menu.ipxe".into(), m);
    } else {
        r.routes.insert(
            "/boot.ipxe".into(),
            Resource::text(menu.clone(), "text/plain"),
        );
        r.routes
            .insert("/menu.ipxe".into(), Resource::text(menu, "text/plain"));
    }
    r.routes.insert(
        "/pxelinux.cfg/default".into(),
        Resource::text(menu::pxelinux(cfg, entries), "text/plain"),
    );
    let jail =
        std::fs::canonicalize(boot_dir).map_err(|e| format!("{}: {e}", boot_dir.display()))?;
    for e in entries {
        for rel in std::iter::once(&e.linux).chain(e.initrd.iter()) {
            let p = boot_dir.join(rel);
            match std::fs::canonicalize(&p) {
                Ok(c) if c.starts_with(&jail) && c.is_file() => {
                    let key = http::normalize_target(&menu::url_path(rel))
                        .map_err(|_| format!("{rel}: unusable file name"))?;
                    r.routes.insert(key, Resource::file(c));
                }
                Ok(c) => tracing::warn!(
                    "{}: resolves to {} outside {}, not served",
                    p.display(),
                    c.display(),
                    jail.display()
                ),
                Err(err) => tracing::warn!("{}: {err}, not served", p.display()),
            }
        }
    }
    if let Some(d) = ipxe_dir {
        if let (Ok(jail), Ok(rd)) = (std::fs::canonicalize(d), std::fs::read_dir(d)) {
            for de in rd.flatten() {
                let Ok(c) = std::fs::canonicalize(de.path()) else {
                    continue;
                };
                if !c.is_file() || !c.starts_with(&jail) {
                    continue;
                }
                let name = de.file_name().to_string_lossy().into_owned();
                r.routes.insert(format!("/ipxe/{name}"), Resource::file(c));
            }
        }
    }
    Ok(r)
}

/// Running sidecars. Dropping it (or [`PxeHandle::stop`]) stops the HTTP
/// server; the DHCP and TFTP threads run until the process exits.
pub struct PxeHandle {
    /// The HTTP server.
    pub http: http::HttpServer,
    /// Address the services advertise.
    pub server: std::net::Ipv4Addr,
    /// Entries on the menu.
    pub entries: Vec<BootEntry>,
    /// Other sidecar threads (DHCP, TFTP).
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

impl PxeHandle {
    /// Stop the HTTP server (tests); other sidecars run until exit.
    pub fn stop(self) {
        self.http.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn menu_config(
    server: String,
    http_port: u16,
    export: &IscsiExport,
    method: BootMethod,
    timeout: u32,
    login: bool,
    strip: Vec<String>,
    chap_on_cmdline: bool,
) -> MenuConfig {
    MenuConfig {
        server,
        http_port,
        target_name: export.target_name.clone(),
        iscsi_port: if export.port == 0 { 3260 } else { export.port },
        luns: if export.luns.is_empty() {
            vec![0]
        } else {
            export.luns.clone()
        },
        initiator_name: export
            .initiator_name
            .clone()
            .unwrap_or_else(|| DEFAULT_INITIATOR.to_string()),
        chap: export.chap.clone().map(|(user, secret)| Chap {
            user,
            secret,
            reverse: export.mutual_chap.clone(),
        }),
        chap_on_cmdline,
        method,
        timeout,
        login,
        strip,
    }
}

/// Start the sidecars described by `args`, or return `Ok(None)` when
/// `--pxe-interface` is not set. Errors are one line for the operator.
pub fn start(args: &PxeArgs, export: &IscsiExport) -> Result<Option<PxeHandle>, String> {
    let Some(ifname) = &args.pxe_interface else {
        return Ok(None);
    };
    if args.menu_user.is_some() != args.menu_password.is_some() {
        return Err("--menu-user and --menu-password must be given together".into());
    }
    let ifa = iface::ipv4_of(ifname)?;
    let method = args.boot_method.unwrap_or_default();
    let mut scan = BootScan {
        boot_dir: args.boot_dir.clone(),
        boot_device: args.boot_device.clone(),
        boot_path: args.boot_path.clone(),
        cmdline_default: args.cmdline_default.clone().unwrap_or_default(),
        method,
        current: None,
    };
    let (entries, boot_dir) = scan.scan()?;
    let http_port = args.http_port.unwrap_or(80);
    let login = args.menu_user.is_some() && args.menu_password.is_some();
    let cfg = menu_config(
        ifa.addr.to_string(),
        http_port,
        export,
        method,
        args.menu_timeout.unwrap_or(5),
        login,
        args.strip_list(),
        args.cmdline_chap.unwrap_or(false),
    );
    let ipxe_dir = args
        .ipxe_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IPXE_DIR));
    let auth = match (&args.menu_user, &args.menu_password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        _ => None,
    };
    let build = {
        let cfg = cfg.clone();
        let ipxe_dir = ipxe_dir.clone();
        move |entries: &[BootEntry], boot_dir: Option<&Path>| -> Result<http::Router, String> {
            let empty = std::env::temp_dir();
            let mut r = routes(&cfg, entries, boot_dir.unwrap_or(&empty), Some(&ipxe_dir))?;
            r.auth = auth.clone();
            Ok(r)
        }
    };
    let router = build(&entries, boot_dir.as_deref())?;
    let listen = std::net::SocketAddr::from((ifa.addr, http_port));
    let mut http_cfg = http::HttpConfig::new(listen, router);
    let scan = std::sync::Mutex::new(scan);
    let known = std::sync::Mutex::new(entries.clone());
    http_cfg.refresh = Some(http::Refresh {
        paths: vec![
            "/boot.ipxe".into(),
            "/menu.ipxe".into(),
            "/pxelinux.cfg/default".into(),
        ],
        rebuild: std::sync::Arc::new(move || {
            let mut scan = scan.lock().unwrap_or_else(|p| p.into_inner());
            let rebuilt = scan
                .scan()
                .and_then(|(e, dir)| build(&e, dir.as_deref()).map(|r| (e, r)));
            match rebuilt {
                Ok((e, r)) => {
                    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
                    if *known != e {
                        log_entries("boot entries changed:", &e, scan.dir());
                        *known = e;
                    }
                    Some(r)
                }
                Err(err) => {
                    // Keep serving the last good menu: a rescan can fail
                    // while the initiator is writing to the partition.
                    tracing::warn!("pxe: rescan of the boot entries failed, menu unchanged: {err}");
                    None
                }
            }
        }),
    });
    let http = http::spawn(http_cfg).map_err(|e| {
        format!(
            "--http-port {http_port}: {}",
            e.trim_start_matches("http: ")
        )
    })?;
    log_entries("entry", &entries, boot_dir.as_deref());
    let threads = sidecars::spawn(args, ifname, &ifa, &cfg, &ipxe_dir)?;
    Ok(Some(PxeHandle {
        http,
        server: ifa.addr,
        entries,
        threads,
    }))
}

mod sidecars {
    //! DHCP and TFTP wiring.
    use super::*;
    use std::net::Ipv4Addr;

    /// `START-END` → inclusive pool on the interface's subnet.
    pub(super) fn parse_pool(
        s: &str,
        ifa: &iface::IfaceAddr,
    ) -> Result<(Ipv4Addr, Ipv4Addr), String> {
        let bad = || format!("--dhcp-pool {s}: expected START-END, two IPv4 addresses");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if u32::from(a) > u32::from(b) {
            return Err(format!("--dhcp-pool {s}: start is after end"));
        }
        let net = ifa.net();
        if !net.contains(&a) || !net.contains(&b) {
            return Err(format!("--dhcp-pool {s}: not inside {}", net.trunc()));
        }
        Ok((a, b))
    }

    /// The default pool: exactly one address, the one after ours (or the
    /// one before when ours is the last host of the subnet), so only one
    /// machine can boot this disk at a time.
    pub(super) fn default_pool(ifa: &iface::IfaceAddr) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let net = ifa.net();
        if net.prefix_len() > 30 {
            return None;
        }
        let me = u32::from(ifa.addr);
        // Hosts lie strictly between the network and broadcast addresses.
        let (first, last) = (u32::from(net.network()) + 1, u32::from(net.broadcast()) - 1);
        let a = if me < last {
            me + 1
        } else if me > first {
            me - 1
        } else {
            return None;
        };
        Some((Ipv4Addr::from(a), Ipv4Addr::from(a)))
    }

    pub(super) fn spawn(
        args: &PxeArgs,
        ifname: &str,
        ifa: &iface::IfaceAddr,
        cfg: &MenuConfig,
        ipxe_dir: &Path,
    ) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
        let mut threads = Vec::new();
        let mode = match args.dhcp_mode.unwrap_or_default() {
            DhcpModeArg::Server => dhcp::DhcpMode::Server,
            DhcpModeArg::Proxy => dhcp::DhcpMode::Proxy,
            DhcpModeArg::Off => dhcp::DhcpMode::Off,
        };
        if mode != dhcp::DhcpMode::Off {
            let mut boot = dhcp::BootFiles::defaults_for(ifa.addr);
            boot.ipxe_script_url = format!("{}/boot.ipxe", cfg.http_base());
            boot.http_base = format!("{}/ipxe/", cfg.http_base());
            let named = |flag: &str, v: &Option<String>| -> Result<Option<String>, String> {
                let Some(n) = v else { return Ok(None) };
                if n.contains('/') || !ipxe_dir.join(n).is_file() {
                    return Err(format!(
                        "--{flag} {n}: not a file in --ipxe-dir {}",
                        ipxe_dir.display()
                    ));
                }
                Ok(Some(n.clone()))
            };
            if let Some(n) = named("ipxe-bios", &args.ipxe_bios)? {
                boot.bios_file = n;
            }
            if let Some(n) = named("ipxe-efi64", &args.ipxe_efi64)? {
                boot.efi_file = n;
            }
            boot.arm64_file = match named("ipxe-arm64", &args.ipxe_arm64)? {
                Some(n) => n,
                None if ipxe_dir.join("snponly-arm64.efi").is_file() => "snponly-arm64.efi".into(),
                None => {
                    tracing::info!(
                        "no ARM64 iPXE in {} (--ipxe-arm64): ARM64 UEFI clients will get no offer",
                        ipxe_dir.display()
                    );
                    String::new()
                }
            };
            boot.initiator_iqn = Some(cfg.initiator_name.clone());
            let mut d = dhcp::DhcpConfig::new(ifname, ifa.addr, ifa.netmask, boot);
            d.mode = mode;
            d.pool = match &args.dhcp_pool {
                Some(p) => parse_pool(p, ifa)?,
                None => default_pool(ifa).ok_or_else(|| {
                    format!("--pxe-interface {ifname}: subnet too small for a client address; use --dhcp-pool")
                })?,
            };
            threads.push(dhcp::spawn(d).map_err(|e| format!("--pxe-interface {ifname}: {e}"))?);
        }
        if ipxe_dir.is_dir() {
            let t = tftp::TftpConfig {
                bind: std::net::SocketAddr::from((ifa.addr, 69)),
                interface: Some(ifname.to_string()),
                root: ipxe_dir.to_path_buf(),
            };
            threads.push(tftp::spawn(t).map_err(|e| format!("--pxe-interface {ifname}: {e}"))?);
        } else if mode != dhcp::DhcpMode::Off {
            tracing::warn!(
                "--ipxe-dir {}: not a directory; firmware without iPXE cannot boot (no TFTP)",
                ipxe_dir.display()
            );
        }
        Ok(threads)
    }
}

/// Flags of `bootlun bootentries`: print what `serve --pxe-interface`
/// would offer.
#[derive(Debug, Clone, clap::Args)]
pub struct BootentriesArgs {
    /// Directory holding the kernels (a /boot tree).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "boot_device",
        required_unless_present = "boot_device"
    )]
    pub boot_dir: Option<PathBuf>,
    /// Block device with the kernels, mounted read-only: a path, UUID=… or LABEL=….
    #[arg(long, value_name = "DEV")]
    pub boot_device: Option<String>,
    /// Subdirectory of the boot device holding the kernels.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub boot_path: String,
    /// Output: the iPXE menu, pxelinux.cfg/default, or JSON.
    #[arg(long, value_enum, default_value = "ipxe")]
    pub format: BootentriesFormat,
    /// Server address used in URLs and iSCSI URIs.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub server: String,
    /// HTTP port used in URLs.
    #[arg(long, value_name = "PORT", default_value_t = 80)]
    pub http_port: u16,
    /// Target IQN.
    #[arg(
        long,
        value_name = "IQN",
        default_value = "iqn.2025-01.org.bootlun:target"
    )]
    pub target_name: String,
    /// iSCSI portal port.
    #[arg(long, value_name = "PORT", default_value_t = 3260)]
    pub iscsi_port: u16,
    /// Initiator IQN handed to the booted system.
    #[arg(long, value_name = "IQN", default_value = DEFAULT_INITIATOR)]
    pub initiator_name: String,
    /// How the booted system mounts its root.
    #[arg(long, value_enum, default_value = "netroot")]
    pub boot_method: BootMethod,
    /// Kernel command line of entries that have none.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cmdline_default: String,
    /// Menu timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub menu_timeout: u32,
    /// Kernel arguments removed from every entry, comma- or space-separated.
    #[arg(long, value_name = "ARGS", default_value = DEFAULT_STRIP)]
    pub strip_args: String,
}

/// Output format of `bootlun bootentries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootentriesFormat {
    /// iPXE script.
    Ipxe,
    /// `pxelinux.cfg/default`.
    Pxelinux,
    /// JSON.
    Json,
}

/// Render the dry run as text (the body of [`bootentries_main`]).
pub fn bootentries_render(args: &BootentriesArgs) -> Result<String, String> {
    let src = boot_source(
        args.boot_dir.as_deref(),
        args.boot_device.as_deref(),
        Some(&args.boot_path),
    )?
    .ok_or("one of --boot-dir or --boot-device is required")?;
    let flag = source_flag(args.boot_dir.as_deref(), args.boot_device.as_deref());
    let found = bootentries::discover(&src.dir, &args.cmdline_default);
    let (source, entries) = match found {
        Ok(x) => x,
        Err(_) if args.boot_method == BootMethod::Sanboot => (Source::KernelScan, Vec::new()),
        Err(e) => return Err(format!("{flag}: {e}")),
    };
    let export = IscsiExport {
        target_name: args.target_name.clone(),
        port: args.iscsi_port,
        luns: vec![0],
        initiator_name: Some(args.initiator_name.clone()),
        chap: None,
        mutual_chap: None,
    };
    let cfg = menu_config(
        args.server.clone(),
        args.http_port,
        &export,
        args.boot_method,
        args.menu_timeout,
        false,
        split_list(&args.strip_args),
        false,
    );
    Ok(match args.format {
        BootentriesFormat::Ipxe => menu::ipxe_menu(&cfg, &entries),
        BootentriesFormat::Pxelinux => menu::pxelinux(&cfg, &entries),
        BootentriesFormat::Json => menu::json(&cfg, source, &entries),
    })
}

/// `bootlun bootentries`: print the menu that would be served. Exit 0 on
/// success; 2 with one line on stderr when the flags name nothing usable
/// (missing directory, no kernels, unmountable device).
pub fn bootentries_main(args: &BootentriesArgs) -> std::process::ExitCode {
    match bootentries_render(args) {
        Ok(s) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if out
                .write_all(s.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                return std::process::ExitCode::from(1);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bootlun bootentries: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        pxe: PxeArgs,
    }

    #[test]
    fn flags_and_config_keys() {
        let cli = Cli::try_parse_from([
            "x",
            "--pxe-interface",
            "eth1",
            "--boot-dir",
            "/boot",
            "--boot-method",
            "ibft",
            "--menu-timeout",
            "0",
            "--dhcp-mode",
            "proxy",
            "--dhcp-pool",
            "10.0.0.5-10.0.0.9",
            "--http-port",
            "8080",
            "--strip-args",
            "quiet,splash",
            "--cmdline-default",
            "-- ro",
            "--menu-user",
            "u",
            "--cmdline-chap",
        ])
        .unwrap();
        let a = cli.pxe;
        assert_eq!(a.boot_method, Some(BootMethod::Ibft));
        assert_eq!(a.dhcp_mode, Some(DhcpModeArg::Proxy));
        assert_eq!(a.strip_list(), ["quiet", "splash"]);
        assert_eq!(a.cmdline_default.as_deref(), Some("-- ro"));
        assert_eq!(a.cmdline_chap, Some(true));
        let file: PxeArgs = serde_json::from_str(
            r#"{"pxe-interface":"eth9","boot-device":"LABEL=boot","boot-path":"/boot","menu-password":"p",
                "ipxe-dir":"/srv/ipxe","boot-method":"sanboot","strip-args":"quiet rhgb","cmdline-chap":true}"#,
        )
        .unwrap();
        let mut merged = a.clone();
        merged.merge_from(file);
        assert_eq!(merged.pxe_interface.as_deref(), Some("eth1"), "flags win");
        assert_eq!(merged.boot_method, Some(BootMethod::Ibft));
        assert_eq!(merged.menu_password.as_deref(), Some("p"));
        assert_eq!(merged.ipxe_dir.as_deref(), Some(Path::new("/srv/ipxe")));
        assert_eq!(merged.cmdline_chap, Some(true));
        let mut from_file = PxeArgs::default();
        from_file.merge_from(
            serde_json::from_str(r#"{"cmdline-chap":false,"menu-timeout":0}"#).unwrap(),
        );
        assert_eq!(
            (from_file.cmdline_chap, from_file.menu_timeout),
            (Some(false), Some(0))
        );
        assert!(serde_json::from_str::<PxeArgs>(r#"{"no-such-key":1}"#).is_err());
    }

    #[test]
    fn default_pool_next_to_us() {
        let ifa = |a: [u8; 4], p: u8| iface::IfaceAddr {
            addr: a.into(),
            netmask: ipnet::Ipv4Net::new(a.into(), p).unwrap().netmask(),
            index: 1,
        };
        let p = sidecars::default_pool(&ifa([10, 77, 0, 1], 24)).unwrap();
        assert_eq!(p, ([10, 77, 0, 2].into(), [10, 77, 0, 2].into()));
        let p = sidecars::default_pool(&ifa([10, 77, 0, 254], 24)).unwrap();
        assert_eq!(p, ([10, 77, 0, 253].into(), [10, 77, 0, 253].into()));
        let p = sidecars::default_pool(&ifa([192, 168, 1, 1], 30)).unwrap();
        assert_eq!(p, ([192, 168, 1, 2].into(), [192, 168, 1, 2].into()));
        assert!(sidecars::default_pool(&ifa([192, 168, 1, 1], 31)).is_none());
        let bad =
            sidecars::parse_pool("10.77.1.2-10.77.1.9", &ifa([10, 77, 0, 1], 24)).unwrap_err();
        assert_eq!(
            bad,
            "--dhcp-pool 10.77.1.2-10.77.1.9: not inside 10.77.0.0/24"
        );
    }

    #[test]
    fn start_on_loopback_serves_the_menu() {
        use std::io::{Read, Write};
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut args = PxeArgs {
            pxe_interface: Some("nosuch0".into()),
            boot_dir: Some(fixtures.join("debian")),
            dhcp_mode: Some(DhcpModeArg::Off),
            http_port: Some(0),
            ipxe_dir: Some("/nonexistent".into()),
            cmdline_default: Some("ro quiet".into()),
            ..PxeArgs::default()
        };
        let export = IscsiExport {
            target_name: "iqn.2026-11.org.bootlun:t".into(),
            port: 3260,
            luns: vec![0],
            ..Default::default()
        };
        assert_eq!(
            start(&args, &export).err().unwrap(),
            "--pxe-interface nosuch0: no such interface"
        );
        args.pxe_interface = Some("lo".into());
        args.boot_dir = Some(fixtures.join("expected"));
        let e = start(&args, &export).err().unwrap();
        assert!(
            e.starts_with("--boot-dir ")
                && e.ends_with(
                    ": no kernels found (looked for loader/entries/*.conf and vmlinuz-*)"
                ),
            "{e}"
        );
        args.menu_user = Some("u".into());
        assert_eq!(
            start(&args, &export).err().unwrap(),
            "--menu-user and --menu-password must be given together"
        );
        args.menu_user = None;
        args.boot_dir = Some(fixtures.join("debian"));
        let h = start(&args, &export).unwrap().unwrap();
        let mut s = std::net::TcpStream::connect(h.http.local_addr()).unwrap();
        s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            out.contains("netroot=iscsi:127.0.0.1::::iqn.2026-11.org.bootlun:t"),
            "{out}"
        );
        assert!(!out.contains(" quiet"), "{out}");
        assert!(start(&PxeArgs::default(), &export).unwrap().is_none());
        h.stop();
    }
}
