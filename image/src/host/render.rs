//! What install writes and runs, per distribution: the dracut drop-in, the
//! BootLoaderSpec entry, the GRUB script, the package and regeneration
//! commands. Pure functions of their inputs, so tests can pin the text.

use std::fs;
use std::path::Path;

pub const DRACUT_CONF: &str = "/etc/dracut.conf.d/90-bootlun.conf";
pub const BOOT_KERNEL: &str = "/boot/bootlun-kernel.bin";
pub const BOOT_INITRD: &str = "/boot/bootlun-initrd.img";
pub const BOOT_CONFIG: &str = "/boot/bootlun.toml";
pub const BLS_DIR: &str = "/boot/loader/entries";
pub const BLS_ENTRY: &str = "/boot/loader/entries/bootlun.conf";
pub const GRUB_D: &str = "/etc/grub.d";
pub const GRUB_SCRIPT: &str = "/etc/grub.d/45_bootlun";
pub const TITLE: &str = "bootlun iSCSI target";
pub const OPTIONS: &str = "console=tty0 console=ttyS0,115200n8";

/// Wired NIC drivers put into every initramfs, so the OS still finds its
/// root disk when the initiator is another machine than the one it was
/// installed on.
pub const COMMON_NIC_DRIVERS: &[&str] = crate::NIC_DRIVERS;

/// open-iscsi units whose enablement Debian and Ubuntu create; left
/// enabled, they log in (or out) on their own while the initramfs' login
/// carries the root disk.
pub const ISCSI_UNITS: &[&str] = &["open-iscsi.service", "iscsid.service", "iscsid.socket"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    /// Debian, Ubuntu and their derivatives.
    Debian,
    /// Fedora, RHEL, CentOS and their derivatives.
    Fedora,
    /// Arch and its derivatives.
    Arch,
}

impl Distro {
    /// From os-release `ID` and `ID_LIKE`: the ID itself first, then the
    /// families it names, in order.
    pub fn detect(id: &str, id_like: &str) -> Option<Distro> {
        std::iter::once(id)
            .chain(id_like.split_whitespace())
            .find_map(|w| match w {
                "debian" | "ubuntu" => Some(Distro::Debian),
                "fedora" | "rhel" | "centos" => Some(Distro::Fedora),
                "arch" | "archlinux" => Some(Distro::Arch),
                _ => None,
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Distro::Debian => "debian",
            Distro::Fedora => "fedora",
            Distro::Arch => "arch",
        }
    }

    pub fn from_name(s: &str) -> Option<Distro> {
        match s {
            "debian" => Some(Distro::Debian),
            "fedora" => Some(Distro::Fedora),
            "arch" => Some(Distro::Arch),
            _ => None,
        }
    }

    /// The one command that installs every prerequisite.
    pub fn package_command(self) -> &'static str {
        match self {
            Distro::Debian => {
                "apt-get install dracut dracut-network open-iscsi (on Debian this replaces initramfs-tools)"
            }
            Distro::Fedora => "dnf install dracut-network iscsi-initiator-utils",
            Distro::Arch => "pacman -S dracut open-iscsi (this replaces mkinitcpio)",
        }
    }

    /// Regenerates GRUB's config, when the boot entry is a grub.d script.
    pub fn grub_command(self) -> Vec<String> {
        let v: &[&str] = match self {
            Distro::Debian => &["update-grub"],
            Distro::Fedora => &["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
            Distro::Arch => &["grub-mkconfig", "-o", "/boot/grub/grub.cfg"],
        };
        v.iter().map(|s| s.to_string()).collect()
    }
}

/// The dracut drop-in. `drivers` is the host's own NIC modules followed by
/// [`COMMON_NIC_DRIVERS`], without repeats.
pub fn dracut_conf(host_drivers: &[String]) -> String {
    let mut drivers: Vec<&str> = Vec::new();
    for d in host_drivers
        .iter()
        .map(String::as_str)
        .chain(COMMON_NIC_DRIVERS.iter().copied())
    {
        if !drivers.contains(&d) {
            drivers.push(d);
        }
    }
    format!(
        "# Written by `bootlun host install`; `bootlun host uninstall` removes it.\n\
         # Lets this system's initramfs log in to its root disk over iSCSI when\n\
         # another machine network-boots it from bootlun: the iscsi and network\n\
         # modules, no host-specific command line baked in (the boot menu passes\n\
         # netroot=...), and the drivers of this host's and common wired NICs.\n\
         add_dracutmodules+=\" iscsi network \"\n\
         hostonly_cmdline=\"no\"\n\
         add_drivers+=\" {} \"\n",
        drivers.join(" ")
    )
}

/// Kernel modules of this machine's physical network interfaces, read from
/// `class_net` (normally /sys/class/net). Virtual interfaces (no `device`)
/// and wireless ones (dracut cannot bring up an iSCSI root over Wi-Fi) are
/// left out.
pub fn host_nic_modules(class_net: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Ok(rd) = fs::read_dir(class_net) else {
        return out;
    };
    let mut ifaces: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    ifaces.sort();
    for iface in ifaces {
        let dev = iface.join("device");
        if !dev.exists() || iface.join("wireless").exists() || iface.join("phy80211").exists() {
            continue;
        }
        // The module name can differ from the driver name; prefer it.
        let name = fs::read_link(dev.join("driver/module"))
            .or_else(|_| fs::read_link(dev.join("driver")))
            .ok()
            .and_then(|l| {
                l.file_name()
                    .and_then(|n| n.to_str())
                    .map(|s| s.replace('-', "_"))
            });
        let Some(name) = name else { continue };
        let sane = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if sane && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Where boot loaders find a file of /boot: at the root of its partition
/// when /boot is a mount of its own, else under /boot.
pub fn boot_rel(path: &str, separate_boot: bool) -> String {
    if separate_boot {
        path.strip_prefix("/boot").unwrap_or(path).to_string()
    } else {
        path.to_string()
    }
}

/// A sort key that orders after every key in `os_keys` (BootLoaderSpec
/// compares sort keys as plain strings, ascending), or None when the OS
/// entries have none: systemd-boot puts entries that have a sort key
/// *before* those without, so adding one would move bootlun to the top.
pub fn sort_key_after(os_keys: &[String]) -> Option<String> {
    let max = os_keys.iter().max()?;
    // Any string with `max` as a proper prefix sorts after `max`, and so
    // after every other key too.
    Some(format!("{max}-bootlun"))
}

/// The BootLoaderSpec entry. `version 0` keeps it below the OS kernels in
/// loaders that order by version, newest first (GRUB's blscfg).
pub fn bls_entry(separate_boot: bool, sort_key: Option<&str>) -> String {
    let mut s = format!(
        "# Written by `bootlun host install`; `bootlun host uninstall` removes it.\n\
         title {TITLE}\n\
         version 0\n\
         linux {}\n\
         initrd {}\n\
         options {OPTIONS}\n",
        boot_rel(BOOT_KERNEL, separate_boot),
        boot_rel(BOOT_INITRD, separate_boot),
    );
    if let Some(k) = sort_key {
        s.push_str(&format!("sort-key {k}\n"));
    }
    s
}

/// The `sort-key` values of the OS's own BootLoaderSpec entries.
pub fn bls_sort_keys(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("sort-key")?;
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            let k = rest.trim();
            (!k.is_empty()).then(|| k.to_string())
        })
        .collect()
}

/// The grub.d script. grub-mkconfig runs it with `pkgdatadir` and
/// `GRUB_DEVICE_BOOT` exported; with GRUB's helper library it lets GRUB
/// find /boot the way the OS's own entries do, else it falls back to
/// searching for the kernel file by name. It prints nothing when the
/// kernel is gone, so a stale script never yields a dead entry.
/// `BOOTLUN_ROOT` is unset on a real system; tests set it to check the
/// script against a fixture tree.
pub fn grub_script(separate_boot: bool) -> String {
    let rel_kernel = boot_rel(BOOT_KERNEL, separate_boot);
    let rel_initrd = boot_rel(BOOT_INITRD, separate_boot);
    format!(
        r#"#!/bin/sh
# Written by `bootlun host install`; `bootlun host uninstall` removes it.
# Adds the bootlun entry after the OS's own when grub-mkconfig runs.

kernel={BOOT_KERNEL}
initrd={BOOT_INITRD}
[ -f "${{BOOTLUN_ROOT:-}}$kernel" ] || exit 0

prefix=/usr
exec_prefix=/usr
datarootdir=/usr/share
if [ -n "${{pkgdatadir:-}}" ] && [ -r "$pkgdatadir/grub-mkconfig_lib" ]; then
	. "$pkgdatadir/grub-mkconfig_lib"
fi

# Paths as seen from the partition holding /boot, found at install time;
# GRUB's helpers below know better when they are there.
linux_path={rel_kernel}
initrd_path={rel_initrd}
access="search --no-floppy --set=root --file $linux_path"
if [ -n "${{GRUB_DEVICE_BOOT:-}}" ] &&
	command -v make_system_path_relative_to_its_root >/dev/null 2>&1 &&
	command -v prepare_grub_to_access_device >/dev/null 2>&1; then
	if k=$(make_system_path_relative_to_its_root "$kernel") && [ -n "$k" ] &&
		i=$(make_system_path_relative_to_its_root "$initrd") && [ -n "$i" ] &&
		a=$(prepare_grub_to_access_device ${{GRUB_DEVICE_BOOT}}) && [ -n "$a" ]; then
		linux_path=$k
		initrd_path=$i
		access=$a
	fi
fi

echo "Found bootlun iSCSI target: $kernel" >&2
echo "menuentry '{TITLE}' --class bootlun --id bootlun-iscsi-target {{"
printf '%s\n' "$access" | while IFS= read -r line; do
	printf '\t%s\n' "$line"
done
printf '\t%s\n' "echo 'Loading bootlun...'"
printf '\tlinux %s %s\n' "$linux_path" '{OPTIONS}'
printf '\tinitrd %s\n' "$initrd_path"
echo "}}"
"#
    )
}

/// Is `s` safe as a kernel version or pkgbase in a command line?
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_families() {
        assert_eq!(Distro::detect("ubuntu", "debian"), Some(Distro::Debian));
        assert_eq!(
            Distro::detect("linuxmint", "ubuntu debian"),
            Some(Distro::Debian)
        );
        assert_eq!(
            Distro::detect("rocky", "rhel centos fedora"),
            Some(Distro::Fedora)
        );
        assert_eq!(Distro::detect("endeavouros", "arch"), Some(Distro::Arch));
        assert_eq!(Distro::detect("opensuse-tumbleweed", "opensuse suse"), None);
    }

    #[test]
    fn sort_key_orders_last() {
        assert_eq!(sort_key_after(&[]), None);
        let keys = vec![
            "fedora".to_string(),
            "arch".to_string(),
            "fedora".to_string(),
        ];
        let k = sort_key_after(&keys).unwrap();
        assert!(keys.iter().all(|o| o.as_str() < k.as_str()), "{k}");
        assert_eq!(
            bls_sort_keys(&["title x\nsort-key  debian \nsort-keyx y\n".into()]),
            vec!["debian".to_string()]
        );
    }

    #[test]
    fn nic_modules_from_sysfs() {
        let d = std::env::temp_dir().join(format!("bootlun-sysnet-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let net = d.join("class/net");
        let mk = |iface: &str, driver: Option<&str>, module: Option<&str>, wifi: bool| {
            let i = net.join(iface);
            fs::create_dir_all(&i).unwrap();
            if let Some(drv) = driver {
                let dev = d.join("devices").join(iface);
                let drvdir = d.join("drivers").join(drv);
                fs::create_dir_all(&dev).unwrap();
                fs::create_dir_all(&drvdir).unwrap();
                std::os::unix::fs::symlink(&drvdir, dev.join("driver")).unwrap();
                if let Some(m) = module {
                    let mdir = d.join("module").join(m);
                    fs::create_dir_all(&mdir).unwrap();
                    std::os::unix::fs::symlink(&mdir, drvdir.join("module")).unwrap();
                }
                std::os::unix::fs::symlink(&dev, i.join("device")).unwrap();
            }
            if wifi {
                fs::create_dir_all(i.join("wireless")).unwrap();
            }
        };
        mk("lo", None, None, false);
        mk("enp0s31f6", Some("e1000e"), Some("e1000e"), false);
        mk("enx00", Some("r8152-cfgselector"), None, false);
        mk("wlp2s0", Some("iwlwifi"), Some("iwlwifi"), true);
        mk("eth9", Some("bad name!"), None, false);
        assert_eq!(host_nic_modules(&net), vec!["e1000e", "r8152_cfgselector"]);
        assert!(host_nic_modules(&d.join("nope")).is_empty());
        let conf = dracut_conf(&["e1000e".into(), "foo".into()]);
        assert!(
            conf.contains("add_drivers+=\" e1000e foo virtio_net e1000 igb "),
            "{conf}"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
