//! Boot menus: the iPXE script, `pxelinux.cfg/default` and the JSON dry-run
//! description, all generated from the discovered entries.

use crate::bootentries::{strip_args, BootEntry, Source};
use crate::BootMethod;
use std::fmt::Write as _;

/// CHAP credentials of the iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    /// CHAP user name.
    pub user: String,
    /// CHAP secret.
    pub secret: String,
    /// The target's own user name and secret, for mutual CHAP (the
    /// initiator checks the target): iPXE's `reverse-username` and
    /// `reverse-password`, dracut's `rd.iscsi.in.username`/`.password`.
    pub reverse: Option<(String, String)>,
}

/// Everything menu generation needs besides the entries.
#[derive(Debug, Clone)]
pub struct MenuConfig {
    /// IPv4 address of the server as the initiator reaches it.
    pub server: String,
    /// HTTP port of the menu/kernel server.
    pub http_port: u16,
    /// Target IQN.
    pub target_name: String,
    /// iSCSI portal port.
    pub iscsi_port: u16,
    /// Exported LUNs (the first one is the boot LUN for `sanboot`).
    pub luns: Vec<u64>,
    /// Initiator IQN handed to the booted system.
    pub initiator_name: String,
    /// Target CHAP credentials, if the target wants them.
    pub chap: Option<Chap>,
    /// Put CHAP credentials on the kernel command line (netroot only).
    pub chap_on_cmdline: bool,
    /// How the booted system reaches its root disk.
    pub method: BootMethod,
    /// Seconds before the default entry boots; 0 boots it at once.
    pub timeout: u32,
    /// The menu is behind a login (`/boot.ipxe` asks, `/menu.ipxe` checks).
    pub login: bool,
    /// Kernel arguments removed from every entry's command line.
    pub strip: Vec<String>,
}

/// URL path under which a boot-directory file is served.
pub fn url_path(rel: &str) -> String {
    let mut s = String::from("/boot/");
    for b in rel.trim_start_matches('/').bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/+,=@".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

impl MenuConfig {
    /// `http://SERVER[:PORT]`.
    pub fn http_base(&self) -> String {
        if self.http_port == 80 {
            format!("http://{}", self.server)
        } else {
            format!("http://{}:{}", self.server, self.http_port)
        }
    }

    /// Full URL of a boot-directory file.
    pub fn url(&self, rel: &str) -> String {
        format!("{}{}", self.http_base(), url_path(rel))
    }

    /// `iscsi:SERVER:PROTO:PORT:LUN:TARGET` (protocol empty = TCP, port
    /// empty = 3260). Exactly four colons sit between server and target.
    pub fn iscsi_uri(&self, lun: Option<u64>) -> String {
        let port = if self.iscsi_port == 3260 {
            String::new()
        } else {
            self.iscsi_port.to_string()
        };
        let lun = lun.map(|l| l.to_string()).unwrap_or_default();
        format!(
            "iscsi:{}::{}:{}:{}",
            self.server, port, lun, self.target_name
        )
    }

    fn boot_lun(&self) -> u64 {
        self.luns.first().copied().unwrap_or(0)
    }

    /// dracut `netroot=` value; LUN 0 is left empty.
    pub fn netroot(&self, with_chap: bool) -> String {
        let lun = Some(self.boot_lun()).filter(|&l| l != 0);
        let uri = self.iscsi_uri(lun);
        match (&self.chap, with_chap) {
            (Some(c), true) => format!("iscsi:{}:{}@{}", c.user, c.secret, &uri["iscsi:".len()..]),
            _ => uri,
        }
    }

    /// Kernel command line of `e` (without `initrd=` arguments).
    /// `ibft` is false where the loader cannot publish an iBFT (pxelinux):
    /// such entries fall back to netroot arguments.
    pub fn cmdline(&self, e: &BootEntry, ibft: bool) -> String {
        let mut args = strip_args(&e.options, &self.strip);
        let push = |args: &mut String, a: &str| {
            if !args.is_empty() {
                args.push(' ');
            }
            args.push_str(a);
        };
        if self.method == BootMethod::Ibft && ibft {
            push(&mut args, "rd.iscsi.firmware=1 ip=ibft");
        } else {
            push(
                &mut args,
                &format!("netroot={}", self.netroot(self.chap_on_cmdline)),
            );
            if let Some((ru, rp)) = self
                .chap
                .as_ref()
                .filter(|_| self.chap_on_cmdline)
                .and_then(|c| c.reverse.as_ref())
            {
                push(
                    &mut args,
                    &format!("rd.iscsi.in.username={ru} rd.iscsi.in.password={rp}"),
                );
            }
            push(
                &mut args,
                &format!("rd.iscsi.initiator={}", self.initiator_name),
            );
            push(
                &mut args,
                "ip=dhcp rd.iscsi.param=node.session.timeo.replacement_timeout=-1",
            );
        }
        args
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Menu text: iPXE treats nothing specially in item text except a leading
/// `--`, and keeps it on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `/boot.ipxe` when a login is configured: ask, then chain the
/// authenticated menu. No secret is in this script.
pub fn ipxe_login(cfg: &MenuConfig) -> String {
    let mut s = String::new();
    s.push_str("#!ipxe\n# bootlun: log in to see the boot menu\n");
    s.push_str(":login\n");
    s.push_str("login || goto cancel\n");
    let _ = writeln!(
        s,
        "chain --autofree http://${{username:uristring}}:${{password:uristring}}@{}/menu.ipxe || goto failed",
        cfg.http_base().trim_start_matches("http://")
    );
    s.push_str(":failed\necho Login failed\nclear username\nclear password\ngoto login\n");
    s.push_str(":cancel\necho Login cancelled: dropping to the iPXE shell\nshell\n");
    s
}

/// The iPXE menu script (`/menu.ipxe`; also `/boot.ipxe` without login).
pub fn ipxe_menu(cfg: &MenuConfig, entries: &[BootEntry]) -> String {
    let mut s = String::new();
    s.push_str("#!ipxe\n# bootlun boot menu (generated)\n");
    let _ = writeln!(s, "set bootlun-target {}", cfg.target_name);
    let default = if cfg.method == BootMethod::Sanboot || entries.is_empty() {
        "sanboot"
    } else {
        "e0"
    };
    if cfg.timeout == 0 {
        let _ = writeln!(s, "goto {default}");
    }
    s.push_str(":menu\n");
    s.push_str("menu bootlun: boot over iSCSI\n");
    if cfg.method == BootMethod::Sanboot || entries.is_empty() {
        s.push_str("item --gap -- Disk\n");
        let _ = writeln!(
            s,
            "item sanboot Boot the disk's own boot loader (LUN {})",
            cfg.boot_lun()
        );
    }
    if !entries.is_empty() {
        s.push_str("item --gap -- Installed kernels\n");
    }
    for (i, e) in entries.iter().enumerate() {
        let _ = writeln!(s, "item e{i} {}", one_line(&e.title));
    }
    s.push_str("item --gap -- Advanced\n");
    s.push_str("item shell iPXE shell\n");
    s.push_str("item reboot Reboot\n");
    s.push_str("item exit Exit to firmware\n");
    let _ = writeln!(
        s,
        "choose --timeout {} --default {default} selected || goto shell",
        u64::from(cfg.timeout) * 1000
    );
    s.push_str("goto ${selected}\n");
    for (i, e) in entries.iter().enumerate() {
        let _ = writeln!(s, ":e{i}");
        let _ = writeln!(s, "echo Booting {}", one_line(&e.title));
        if cfg.method == BootMethod::Ibft {
            san_setup(cfg, &mut s);
            for (n, lun) in cfg.luns.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "sanhook --drive 0x{:02x} {} || goto failed",
                    0x80 + n,
                    cfg.iscsi_uri(Some(*lun))
                );
            }
        }
        let mut line = format!("kernel {}", cfg.url(&e.linux));
        for i in &e.initrd {
            let _ = write!(line, " initrd={}", basename(i));
        }
        let cmd = cfg.cmdline(e, true);
        if !cmd.is_empty() {
            line.push(' ');
            line.push_str(&cmd);
        }
        let _ = writeln!(s, "{line} || goto failed");
        for i in &e.initrd {
            let _ = writeln!(s, "initrd {} || goto failed", cfg.url(i));
        }
        s.push_str("boot || goto failed\n");
    }
    if default == "sanboot" {
        s.push_str(":sanboot\n");
        san_setup(cfg, &mut s);
        let _ = writeln!(
            s,
            "sanboot {} || goto failed",
            cfg.iscsi_uri(Some(cfg.boot_lun()))
        );
    }
    s.push_str(":failed\necho Boot failed: press a key for the menu\nprompt\ngoto menu\n");
    s.push_str(":shell\necho Type 'exit' to return to the menu\nshell\ngoto menu\n");
    s.push_str(":reboot\nreboot\n");
    s.push_str(":exit\nexit 1\n");
    s
}

/// iPXE settings before `sanhook`/`sanboot`: initiator name and the CHAP
/// credentials (or none: clear anything left from the menu login).
fn san_setup(cfg: &MenuConfig, s: &mut String) {
    let _ = writeln!(s, "set initiator-iqn {}", cfg.initiator_name);
    match &cfg.chap {
        Some(c) => {
            let _ = writeln!(s, "set username {}", c.user);
            let _ = writeln!(s, "set password {}", c.secret);
            match &c.reverse {
                Some((ru, rp)) => {
                    let _ = writeln!(s, "set reverse-username {ru}");
                    let _ = writeln!(s, "set reverse-password {rp}");
                }
                None => s.push_str("clear reverse-username\nclear reverse-password\n"),
            }
        }
        None => s.push_str(
            "clear username\nclear password\nclear reverse-username\nclear reverse-password\n",
        ),
    }
}

/// `pxelinux.cfg/default` (lpxelinux fetches the HTTP URLs). iBFT needs
/// iPXE, so `ibft` entries get netroot arguments here; `sanboot` has no
/// equivalent and lists the kernels only.
pub fn pxelinux(cfg: &MenuConfig, entries: &[BootEntry]) -> String {
    let mut s = String::new();
    s.push_str("# bootlun boot menu (generated)\n");
    if cfg.timeout == 0 {
        s.push_str("PROMPT 0\n");
    } else {
        s.push_str("UI menu.c32\nPROMPT 0\n");
        let _ = writeln!(s, "TIMEOUT {}", u64::from(cfg.timeout) * 10);
        s.push_str("MENU TITLE bootlun: boot over iSCSI\n");
    }
    if !entries.is_empty() {
        s.push_str("DEFAULT e0\n");
    }
    for (i, e) in entries.iter().enumerate() {
        s.push('\n');
        let _ = writeln!(s, "LABEL e{i}");
        let _ = writeln!(s, "  MENU LABEL {}", one_line(&e.title));
        if i == 0 {
            s.push_str("  MENU DEFAULT\n");
        }
        let _ = writeln!(s, "  KERNEL {}", cfg.url(&e.linux));
        let mut append = String::new();
        if !e.initrd.is_empty() {
            let list: Vec<String> = e.initrd.iter().map(|i| cfg.url(i)).collect();
            let _ = write!(append, "initrd={}", list.join(","));
        }
        let cmd = cfg.cmdline(e, false);
        if !cmd.is_empty() {
            if !append.is_empty() {
                append.push(' ');
            }
            append.push_str(&cmd);
        }
        let _ = writeln!(s, "  APPEND {append}");
    }
    s
}

#[derive(serde::Serialize)]
struct JsonEntry<'a> {
    id: &'a str,
    title: &'a str,
    version: Option<&'a str>,
    linux: &'a str,
    initrd: &'a [String],
    options: &'a str,
    kernel_url: String,
    initrd_urls: Vec<String>,
    cmdline: String,
    default: bool,
}

#[derive(serde::Serialize)]
struct JsonMenu<'a> {
    source: Source,
    boot_method: BootMethod,
    server: &'a str,
    target_name: &'a str,
    iscsi_uri: String,
    menu_timeout: u32,
    entries: Vec<JsonEntry<'a>>,
}

/// Machine-readable description of what would be served.
pub fn json(cfg: &MenuConfig, source: Source, entries: &[BootEntry]) -> String {
    let m = JsonMenu {
        source,
        boot_method: cfg.method,
        server: &cfg.server,
        target_name: &cfg.target_name,
        iscsi_uri: cfg.iscsi_uri(Some(cfg.boot_lun())),
        menu_timeout: cfg.timeout,
        entries: entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut cmdline = String::new();
                for r in &e.initrd {
                    let _ = write!(cmdline, "initrd={} ", basename(r));
                }
                cmdline.push_str(&cfg.cmdline(e, true));
                JsonEntry {
                    id: &e.id,
                    title: &e.title,
                    version: e.version.as_deref(),
                    linux: &e.linux,
                    initrd: &e.initrd,
                    options: &e.options,
                    kernel_url: cfg.url(&e.linux),
                    initrd_urls: e.initrd.iter().map(|i| cfg.url(i)).collect(),
                    cmdline: cmdline.trim_end().to_string(),
                    default: i == 0 && cfg.method != BootMethod::Sanboot,
                }
            })
            .collect(),
    };
    let mut s = serde_json::to_string_pretty(&m).expect("menu serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(method: BootMethod) -> MenuConfig {
        MenuConfig {
            server: "192.168.200.1".into(),
            http_port: 80,
            target_name: "iqn.2025-01.org.bootlun:disk".into(),
            iscsi_port: 3260,
            luns: vec![0, 1],
            initiator_name: "iqn.2025-01.org.bootlun:initiator".into(),
            chap: None,
            chap_on_cmdline: false,
            method,
            timeout: 5,
            login: false,
            strip: vec!["quiet".into()],
        }
    }

    #[test]
    fn uri_has_four_colons_between_server_and_target() {
        let c = cfg(BootMethod::Netroot);
        let u = c.iscsi_uri(Some(0));
        assert_eq!(u, "iscsi:192.168.200.1:::0:iqn.2025-01.org.bootlun:disk");
        let mid = &u["iscsi:192.168.200.1".len()..u.len() - "iqn.2025-01.org.bootlun:disk".len()];
        assert_eq!(mid, ":::0:");
        assert_eq!(
            c.netroot(false),
            "iscsi:192.168.200.1::::iqn.2025-01.org.bootlun:disk"
        );
        let mut c2 = c.clone();
        c2.iscsi_port = 3261;
        c2.chap = Some(Chap {
            user: "u".into(),
            secret: "s".into(),
            reverse: None,
        });
        assert_eq!(
            c2.netroot(true),
            "iscsi:u:s@192.168.200.1::3261::iqn.2025-01.org.bootlun:disk"
        );
        assert_eq!(
            c2.netroot(false),
            "iscsi:192.168.200.1::3261::iqn.2025-01.org.bootlun:disk"
        );
    }

    #[test]
    fn login_script_asks_then_chains_with_credentials() {
        let mut c = cfg(BootMethod::Netroot);
        c.login = true;
        c.http_port = 8080;
        let s = ipxe_login(&c);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("\nlogin || goto cancel\n"));
        assert!(s.contains(
            "chain --autofree http://${username:uristring}:${password:uristring}@192.168.200.1:8080/menu.ipxe || goto failed"
        ));
        // The menu itself clears the login before any SAN command, so the
        // menu password is never sent as iSCSI CHAP.
        c.method = BootMethod::Sanboot;
        let m = ipxe_menu(&c, &[]);
        let i = m.find("clear password").unwrap();
        assert!(i < m.find("sanboot iscsi:").unwrap());
    }

    #[test]
    fn ibft_keeps_secret_off_cmdline() {
        let mut c = cfg(BootMethod::Ibft);
        c.chap = Some(Chap {
            user: "u".into(),
            secret: "sekrit".into(),
            reverse: Some(("tgt".into(), "tgtsekrit".into())),
        });
        let e = BootEntry {
            id: "x".into(),
            title: "X".into(),
            version: None,
            linux: "vmlinuz-x".into(),
            initrd: vec!["initrd.img-x".into()],
            options: "root=/dev/sda1 quiet ro".into(),
            machine_id: None,
        };
        let m = ipxe_menu(&c, std::slice::from_ref(&e));
        let kline = m.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(!kline.contains("sekrit"));
        assert!(kline.contains("rd.iscsi.firmware=1"));
        assert!(!kline.contains("quiet"));
        assert!(m.contains("sanhook --drive 0x80 iscsi:192.168.200.1:::0:iqn"));
        assert!(m.contains("sanhook --drive 0x81 iscsi:192.168.200.1:::1:iqn"));
        assert!(m.contains("set password sekrit"));
        assert!(m.contains("set reverse-username tgt\nset reverse-password tgtsekrit\n"));
        assert!(!kline.contains("tgtsekrit"));
    }

    #[test]
    fn cmdline_chap_puts_mutual_credentials_on_netroot_command_lines() {
        let mut c = cfg(BootMethod::Netroot);
        c.chap = Some(Chap {
            user: "u".into(),
            secret: "sekrit-sekrit".into(),
            reverse: Some(("tgt".into(), "tgt-sekrit-1".into())),
        });
        let e = BootEntry {
            id: "x".into(),
            title: "X".into(),
            version: None,
            linux: "vmlinuz-x".into(),
            initrd: vec![],
            options: "ro".into(),
            machine_id: None,
        };
        // Without --cmdline-chap the secrets stay in iPXE only.
        let line = c.cmdline(&e, true);
        assert!(!line.contains("sekrit"), "{line}");
        c.chap_on_cmdline = true;
        let line = c.cmdline(&e, true);
        assert!(
            line.contains("netroot=iscsi:u:sekrit-sekrit@192.168.200.1:"),
            "{line}"
        );
        assert!(
            line.contains("rd.iscsi.in.username=tgt rd.iscsi.in.password=tgt-sekrit-1"),
            "{line}"
        );
        // With no CHAP at all, nothing is left over from a menu login.
        c.chap = None;
        c.method = BootMethod::Sanboot;
        let m = ipxe_menu(&c, std::slice::from_ref(&e));
        assert!(m.contains("clear reverse-username\nclear reverse-password\n"));
    }
}
