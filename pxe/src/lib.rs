//! PXE sidecars: DHCP, TFTP and HTTP servers, boot-entry discovery and
//! boot-menu generation. (Skeleton: being written.)

pub mod dhcp;
pub mod tftp;

use serde::Deserialize;

/// What the PXE services need to know about the iSCSI target they
/// advertise.
#[derive(Debug, Clone)]
pub struct IscsiExport {
    /// Target IQN.
    pub target_name: String,
    /// TCP port of the iSCSI portal.
    pub port: u16,
    /// LUN numbers exported.
    pub luns: Vec<u64>,
}

/// `serve` flags that turn on and tune the PXE sidecars. Every field is
/// also a key of the TOML config file (kebab-case, same as the flag).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PxeArgs {
    /// Network interface whose IPv4 address the PXE services use; turns them on.
    #[arg(long)]
    pub pxe_interface: Option<String>,
}

impl PxeArgs {
    /// Fill every field not given on the command line from the config file.
    pub fn merge_from(&mut self, file: PxeArgs) {
        if self.pxe_interface.is_none() {
            self.pxe_interface = file.pxe_interface;
        }
    }
}

/// Running sidecars; dropping it does not stop them (they live as long as
/// the process).
pub struct PxeHandle;

/// Start the sidecars described by `args`, or return `Ok(None)` when
/// `--pxe-interface` is not set. Errors are one line for the operator.
pub fn start(args: &PxeArgs, export: &IscsiExport) -> Result<Option<PxeHandle>, String> {
    let _ = export;
    match &args.pxe_interface {
        None => Ok(None),
        Some(i) => Err(format!("--pxe-interface {i}: PXE services are not built yet")),
    }
}
