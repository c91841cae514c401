//! Network interface set-up over rtnetlink: link up, IPv4 addresses,
//! carrier detection. Used by PID 1 in the boot ramdisk, where there is no
//! `ip` binary to call.
//!
//! The messages are built and parsed with `netlink-packet-route` and sent
//! on a plain blocking `netlink-sys` socket. The `rtnetlink` crate would do
//! the same with less code, but it needs an async runtime (tokio or
//! async-std) that this program does not run; a blocking request/answer
//! exchange is all interface set-up needs.
//!
//! Errors are one line for the operator, prefixed with the flag that names
//! the interface: `--net-interface eth9: no such interface`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The flag errors are attributed to.
const FLAG: &str = "--net-interface";

/// A blocking rtnetlink socket with request/answer helpers.
struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> std::io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // The kernel answers at once; a receive timeout only guards PID 1
        // against waiting forever on a reply that never comes.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid socket and a timeval of the right size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Send one request and collect the answers: every message of a dump,
    /// or nothing for an acknowledged change. A netlink error comes back as
    /// the errno it carries.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let mut out = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: rx is a valid writable buffer of rx.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    rx.as_mut_ptr() as *mut libc::c_void,
                    rx.len(),
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let data = &rx[..n as usize];
            let mut off = 0usize;
            while off + 16 <= data.len() {
                let len =
                    u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                        as usize;
                if len < 16 || off + len > data.len() {
                    break;
                }
                let part = &data[off..off + len];
                off += (len + 3) & !3;
                let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(part) else {
                    continue; // a message this crate cannot parse; not ours to judge
                };
                if m.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match m.payload {
                    // Dump entries, or the answer to a GET (the ACK follows).
                    NetlinkPayload::InnerMessage(i) => out.push(i),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn ifindex(ifname: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(ifname)
        .map_err(|_| format!("{FLAG} {ifname:?}: not an interface name"))?;
    // SAFETY: NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(format!("{FLAG} {ifname}: no such interface"))
    } else {
        Ok(i)
    }
}

fn open(ifname: &str) -> Result<Rtnl, String> {
    Rtnl::open().map_err(|e| format!("{FLAG} {ifname}: rtnetlink socket: {e}"))
}

/// Bring an interface up (`ip link set IFNAME up`).
pub fn link_up(ifname: &str) -> Result<(), String> {
    let index = ifindex(ifname)?;
    let mut nl = open(ifname)?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    nl.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
        .map_err(|e| format!("{FLAG} {ifname}: cannot bring the link up: {e}"))?;
    Ok(())
}

/// The link state the kernel reports: (administratively up, carrier).
fn link_state(nl: &mut Rtnl, ifname: &str, index: u32) -> Result<(bool, bool), String> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    let answers = nl
        .request(RouteNetlinkMessage::GetLink(m), NLM_F_ACK)
        .map_err(|e| format!("{FLAG} {ifname}: {e}"))?;
    for a in answers {
        if let RouteNetlinkMessage::NewLink(l) = a {
            if l.header.index != index {
                continue;
            }
            let up = l.header.flags.contains(LinkFlags::Up);
            let carrier = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Carrier(c) => Some(*c != 0),
                    _ => None,
                })
                .unwrap_or_else(|| l.header.flags.contains(LinkFlags::LowerUp));
            return Ok((up, carrier && up));
        }
    }
    Err(format!(
        "{FLAG} {ifname}: the kernel did not describe the link"
    ))
}

/// Whether an interface is up and has carrier.
pub fn has_carrier(ifname: &str) -> Result<bool, String> {
    let index = ifindex(ifname)?;
    let mut nl = open(ifname)?;
    Ok(link_state(&mut nl, ifname, index)?.1)
}

fn addrs_of(nl: &mut Rtnl, ifname: &str, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.index = index;
    let answers = nl
        .request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)
        .map_err(|e| format!("{FLAG} {ifname}: cannot list addresses: {e}"))?;
    let mut out = Vec::new();
    for a in answers {
        let RouteNetlinkMessage::NewAddress(am) = a else {
            continue;
        };
        // Without strict checking the kernel dumps every interface.
        if am.header.index != index || am.header.family != AddressFamily::Inet {
            continue;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs
        // from it only on point-to-point links (where it is the peer).
        let local = am.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let addr = local.or_else(|| {
            am.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })
        });
        if let Some(a) = addr {
            out.push((a, am.header.prefix_len));
        }
    }
    Ok(out)
}

/// IPv4 addresses of an interface, with prefix lengths, in kernel order.
pub fn ipv4_addrs(ifname: &str) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let index = ifindex(ifname)?;
    let mut nl = open(ifname)?;
    addrs_of(&mut nl, ifname, index)
}

fn addr_message(index: u32, addr: Ipv4Addr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
    m.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr)));
    m
}

/// Add `addr/prefix` to an interface (with the broadcast address `ip addr
/// add ... brd +` would set). `Ok(false)` when it was already there.
pub fn add_ipv4(ifname: &str, addr: Ipv4Addr, prefix: u8) -> Result<bool, String> {
    if prefix > 32 {
        return Err(format!(
            "{FLAG} {ifname}: prefix /{prefix} is longer than 32"
        ));
    }
    let index = ifindex(ifname)?;
    let mut nl = open(ifname)?;
    if addrs_of(&mut nl, ifname, index)?
        .iter()
        .any(|&(a, p)| a == addr && p == prefix)
    {
        return Ok(false);
    }
    let mut m = addr_message(index, addr, prefix);
    if prefix < 31 {
        let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        m.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                u32::from(addr) | host,
            )));
    }
    match nl.request(
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(format!("{FLAG} {ifname}: cannot add {addr}/{prefix}: {e}")),
    }
}

/// Remove `addr/prefix` from an interface; removing an address that is not
/// there is not an error.
pub fn del_ipv4(ifname: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), String> {
    let index = ifindex(ifname)?;
    let mut nl = open(ifname)?;
    match nl.request(
        RouteNetlinkMessage::DelAddress(addr_message(index, addr, prefix)),
        NLM_F_ACK,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        Err(e) => Err(format!(
            "{FLAG} {ifname}: cannot remove {addr}/{prefix}: {e}"
        )),
    }
}

/// [`ethernet_interfaces`] under another sysfs `class/net` directory (tests).
pub fn ethernet_interfaces_in(class_net: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(class_net) else {
        return Vec::new();
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut v: Vec<(u32, String)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let dir = e.path();
            // ARPHRD_ETHER; loopback is type 772, but be explicit anyway.
            if read(&dir.join("type"))?.as_str() != "1" || name == "lo" {
                return None;
            }
            // Bridges, bonds, veths, tunnels and the like have no backing
            // device; Wi-Fi needs credentials PID 1 does not have.
            if dir.join("bridge").exists()
                || dir.join("bonding").exists()
                || !dir.join("device").exists()
                || dir.join("wireless").exists()
                || dir.join("phy80211").exists()
            {
                return None;
            }
            let idx = read(&dir.join("ifindex"))?.parse().ok()?;
            Some((idx, name))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Physical Ethernet interfaces, ordered by interface index.
pub fn ethernet_interfaces() -> Vec<String> {
    ethernet_interfaces_in(Path::new("/sys/class/net"))
}

/// Bring every candidate up and wait (at most `timeout`) for carrier. The
/// first candidate (in the given order) with carrier wins; once one has
/// carrier, earlier ones get a short grace period to catch up, since link
/// negotiation takes a second or two. Without any carrier, the first
/// candidate that could be brought up. `None` only when there are none.
pub fn first_with_link(candidates: &[String], timeout: Duration) -> Option<String> {
    let mut usable: Vec<(String, u32)> = Vec::new();
    for c in candidates {
        match link_up(c).and_then(|()| ifindex(c)) {
            Ok(i) => usable.push((c.clone(), i)),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let first = usable.first()?.0.clone();
    let Ok(mut nl) = Rtnl::open() else {
        return Some(first);
    };
    let deadline = Instant::now() + timeout;
    let mut grace_until: Option<Instant> = None;
    loop {
        let with: Vec<bool> = usable
            .iter()
            .map(|(n, i)| link_state(&mut nl, n, *i).map(|s| s.1).unwrap_or(false))
            .collect();
        if with.first() == Some(&true) {
            return Some(first);
        }
        let now = Instant::now();
        if with.iter().any(|&c| c) {
            let g = *grace_until.get_or_insert(now + Duration::from_secs(3));
            if now >= g || now >= deadline {
                let pos = with.iter().position(|&c| c)?;
                return Some(usable[pos].0.clone());
            }
        } else if now >= deadline {
            return Some(first);
        }
        // Polling a few times a second: carrier events would need a
        // multicast subscription for a wait that happens once per boot.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bring the physical Ethernet interfaces up, wait (bounded) for carrier
/// and return the first with carrier, else the first Ethernet interface.
pub fn first_ethernet_with_link(timeout: Duration) -> Option<String> {
    first_with_link(&ethernet_interfaces(), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interface_is_one_line() {
        assert_eq!(
            link_up("nosuch9").unwrap_err(),
            "--net-interface nosuch9: no such interface"
        );
        assert_eq!(
            ipv4_addrs("nosuch9").unwrap_err(),
            "--net-interface nosuch9: no such interface"
        );
        assert!(add_ipv4("lo", Ipv4Addr::LOCALHOST, 33)
            .unwrap_err()
            .contains("/33"));
    }

    #[test]
    fn loopback_has_its_address() {
        // Every network namespace has lo; the test host has 127.0.0.1 on it.
        let a = ipv4_addrs("lo").unwrap();
        assert!(a.contains(&(Ipv4Addr::LOCALHOST, 8)), "{a:?}");
    }

    #[test]
    fn ethernet_filter_on_a_fake_sysfs() {
        let root = std::env::temp_dir().join(format!("bootlun-netlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |name: &str, typ: &str, idx: u32, extra: &[&str]| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{typ}\n")).unwrap();
            std::fs::write(d.join("ifindex"), format!("{idx}\n")).unwrap();
            for e in extra {
                std::fs::create_dir_all(d.join(e)).unwrap();
            }
        };
        mk("lo", "772", 1, &[]);
        mk("enp3s0", "1", 5, &["device"]);
        mk("eno1", "1", 2, &["device"]);
        mk("br0", "1", 3, &["bridge"]);
        mk("veth0", "1", 4, &[]);
        mk("wlan0", "1", 6, &["device", "wireless"]);
        mk("ib0", "32", 7, &["device"]);
        assert_eq!(ethernet_interfaces_in(&root), ["eno1", "enp3s0"]);
        let _ = std::fs::remove_dir_all(&root);
        assert!(ethernet_interfaces_in(Path::new("/nonexistent")).is_empty());
    }
}
