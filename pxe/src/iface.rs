//! IPv4 address of a network interface (getifaddrs).

use std::net::Ipv4Addr;

/// The first IPv4 address of an interface and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfaceAddr {
    /// Interface address.
    pub addr: Ipv4Addr,
    /// Netmask.
    pub netmask: Ipv4Addr,
    /// Interface index.
    pub index: u32,
}

impl IfaceAddr {
    /// Prefix length of the netmask.
    pub fn prefix_len(&self) -> u32 {
        u32::from(self.netmask).count_ones()
    }

    /// The subnet this address is on.
    pub fn net(&self) -> ipnet::Ipv4Net {
        subnet(self.addr, self.netmask)
    }
}

/// `addr` with `netmask` as a subnet. The kernel's masks are contiguous; a
/// mask with holes counts only its leading ones.
pub fn subnet(addr: Ipv4Addr, netmask: Ipv4Addr) -> ipnet::Ipv4Net {
    let prefix = u32::from(netmask).leading_ones() as u8;
    // A prefix of at most 32 is always accepted.
    ipnet::Ipv4Net::new(addr, prefix).unwrap_or_default()
}

/// Look up `name`. Errors are one line for the operator:
/// `--pxe-interface eth9: no such interface`.
pub fn ipv4_of(name: &str) -> Result<IfaceAddr, String> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| format!("--pxe-interface {name:?}: invalid name"))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(format!("--pxe-interface {name}: no such interface"));
    }
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(format!(
            "--pxe-interface {name}: getifaddrs: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let n = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if n.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null; family read before the cast.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let netmask = if ifa.ifa_netmask.is_null() {
            Ipv4Addr::new(255, 255, 255, 0)
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in.
            let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            Ipv4Addr::from(u32::from_be(m.sin_addr.s_addr))
        };
        found = Some(IfaceAddr {
            addr,
            netmask,
            index,
        });
        break;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found.ok_or_else(|| format!("--pxe-interface {name}: interface has no IPv4 address"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_and_missing() {
        let lo = super::ipv4_of("lo").unwrap();
        assert_eq!(lo.addr, std::net::Ipv4Addr::LOCALHOST);
        assert_eq!(lo.prefix_len(), 8);
        assert_eq!(
            super::ipv4_of("nosuch9").unwrap_err(),
            "--pxe-interface nosuch9: no such interface"
        );
    }
}
