//! Guest fixtures for the QEMU tests: a kernel's module closure, the shared
//! libraries of a program, and iSCSI Login Requests sniffed off a tap.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub use crate::{run_bytes, run_ok, wait_bounded, Capture, Cpio, DebCache, NetNs, Spawned};

/// plus the list of built-in ones.
pub struct Modules {
    pub version: String,
    pub root: PathBuf,
    files: HashMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

fn mod_key(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(file: &Path) -> Option<String> {
    let n = file.file_name()?.to_string_lossy().into_owned();
    let base = n
        .strip_suffix(".xz")
        .or(n.strip_suffix(".zst"))
        .or(n.strip_suffix(".gz"))
        .unwrap_or(&n);
    base.strip_suffix(".ko").map(mod_key)
}

impl Modules {
    /// Indexes `lib/modules/VERSION` under an unpacked kernel package.
    pub fn index(tree: &Path) -> Modules {
        let base = tree.join("lib/modules");
        let version = std::fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("no kernel version directory");
        let root = base.join(&version);
        let mut files = HashMap::new();
        let mut stack = vec![root.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                } else if let Some(n) = module_name_of(&p) {
                    files.insert(n, p);
                }
            }
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name_of(Path::new(l.trim())))
            .collect();
        Modules {
            version,
            root,
            files,
            builtin,
        }
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&mod_key(name))
    }

    /// The module's bytes, decompressed if the package ships it compressed.
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        let p = &self.files[&mod_key(name)];
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tool = match ext.as_str() {
            "ko" => return std::fs::read(p).unwrap(),
            "xz" => "xz",
            "zst" => "zstd",
            "gz" => "gzip",
            other => panic!("unknown module compression {other:?} for {}", p.display()),
        };
        run_bytes(
            Command::new(tool).arg("-dc").arg(p),
            Duration::from_secs(60),
        )
    }

    /// `depends=` from the module's `.modinfo` strings.
    fn depends(&self, name: &str) -> Vec<String> {
        let data = self.bytes(name);
        let key = b"depends=";
        let mut i = 0;
        while let Some(pos) = find(&data[i..], key) {
            let at = i + pos;
            // A .modinfo entry starts at a NUL boundary.
            if at == 0 || data[at - 1] == 0 {
                let end = data[at..]
                    .iter()
                    .position(|b| *b == 0)
                    .map(|e| at + e)
                    .unwrap_or(data.len());
                let v = String::from_utf8_lossy(&data[at + key.len()..end]).into_owned();
                return v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(mod_key)
                    .collect();
            }
            i = at + 1;
        }
        Vec::new()
    }

    /// `wanted` and everything they depend on that is not built in, in an
    /// order that loads dependencies first.
    pub fn closure(&self, wanted: &[&str]) -> Vec<String> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&mod_key(w), &mut done, &mut order, 0);
        }
        order
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        assert!(depth < 64, "module dependency loop at {name}");
        if done.contains(name) {
            return;
        }
        done.insert(name.to_string());
        if !self.files.contains_key(name) {
            assert!(
                self.is_builtin(name),
                "module {name} is neither shipped nor built in"
            );
            return;
        }
        for d in self.depends(name) {
            self.visit(&d, done, order, depth + 1);
        }
        order.push(name.to_string());
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Shared libraries of a dynamically linked program
// ---------------------------------------------------------------------------

/// (path in the guest, file on the host) for every library `ldd` lists for
/// `binary`, searching `extra_lib_dirs` first (libraries from downloaded
/// packages) and the host system after.
pub fn shared_libs(binary: &Path, extra_lib_dirs: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let lp = std::env::join_paths(extra_lib_dirs).unwrap();
    let out = run_ok(
        Command::new("ldd").arg(binary).env("LD_LIBRARY_PATH", lp),
        Duration::from_secs(30),
    );
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.contains("not found") {
            panic!("ldd {}: {line}\n{out}", binary.display());
        }
        // `libfoo.so.1 => /path (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let (soname, path) = match line.split_once(" => ") {
            Some((so, rest)) => (
                so.trim().to_string(),
                rest.split_whitespace().next().unwrap_or("").to_string(),
            ),
            None => {
                let p = line.split_whitespace().next().unwrap_or("").to_string();
                (p.clone(), p)
            }
        };
        if !path.starts_with('/') {
            continue; // linux-vdso
        }
        let guest = if soname.starts_with('/') {
            soname
        } else {
            format!("/lib/x86_64-linux-gnu/{soname}")
        };
        libs.push((guest, PathBuf::from(path)));
    }
    libs
}

// ---------------------------------------------------------------------------
// Login Requests on the wire
// ---------------------------------------------------------------------------

/// One iSCSI Login Request seen on the wire.
#[derive(Clone, Debug)]
pub struct LoginSeen {
    /// The initiator's TCP port.
    pub port: u16,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
}

impl LoginSeen {
    pub fn isid_hex(&self) -> String {
        self.isid.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Records the Login Requests sent to TCP port `target_port` on an
/// interface inside a network namespace, from a thread that joins the
/// namespace with setns(2) and reads an AF_PACKET socket. bootlun logs no
/// ISIDs; this tells which connections belong to the same session.
pub struct LoginSniffer {
    seen: Arc<Mutex<Vec<LoginSeen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LoginSniffer {
    pub fn start(netns: &str, ifname: &str, target_port: u16) -> Result<LoginSniffer, String> {
        let seen: Arc<Mutex<Vec<LoginSeen>>> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns_path = format!("/run/netns/{netns}");
        let ifname = std::ffi::CString::new(ifname).unwrap();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let fd = match open_packet_socket(&ns_path, &ifname) {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 65536];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: recv(2) into our own buffer, on our own socket.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue; // timeout (SO_RCVTIMEO) or interrupted
                }
                if let Some(l) = parse_login(&buf[..n as usize], target_port) {
                    seen2.lock().unwrap().push(l);
                }
            }
            // SAFETY: closing the socket this thread opened.
            unsafe { libc::close(fd) };
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(LoginSniffer {
                seen,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("packet capture thread did not start".into()),
        }
    }

    pub fn logins(&self) -> Vec<LoginSeen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for LoginSniffer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Joins the namespace (this thread only) and opens an AF_PACKET socket on
/// `ifname` with a 200 ms receive timeout.
fn open_packet_socket(ns_path: &str, ifname: &std::ffi::CStr) -> Result<libc::c_int, String> {
    let ns = std::fs::File::open(ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file we hold open; it changes the
    // network namespace of this (dedicated) thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {ns_path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: if_nametoindex on a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if index == 0 {
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
        return Err(format!("no interface {ifname:?} in the namespace"));
    }
    // SAFETY: sockaddr_ll is plain old data; zero is a valid initial value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = index as i32;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: bind/setsockopt with correctly sized, initialised arguments.
    let ok = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) == 0
    };
    if !ok {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
        return Err(format!("bind/setsockopt on the packet socket: {e}"));
    }
    Ok(fd)
}

/// An iSCSI Login Request at the start of the TCP payload of an Ethernet
/// frame (IPv4) sent to `target_port`.
fn parse_login(frame: &[u8], target_port: u16) -> Option<LoginSeen> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[9] != 6 || ip.len() < ihl + 20 {
        return None;
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let ip = &ip[..total.min(ip.len())];
    let tcp = &ip[ihl..];
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let doff = (tcp[12] >> 4) as usize * 4;
    if dport != target_port || tcp.len() < doff + 48 {
        return None;
    }
    let pdu = &tcp[doff..];
    if pdu[0] & 0x3f != 0x03 {
        return None;
    }
    Some(LoginSeen {
        port: sport,
        isid: pdu[8..14].try_into().unwrap(),
        tsih: u16::from_be_bytes([pdu[14], pdu[15]]),
        cid: u16::from_be_bytes([pdu[20], pdu[21]]),
    })
}
