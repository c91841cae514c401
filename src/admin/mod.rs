//! The admin listener: a status page (`/`), its data (`/status.json`) and
//! Prometheus metrics (`/metrics`) on a sidecar thread, off the reactors.
//!
//! One request per connection (`Connection: close`), a bounded request
//! head, read and write timeouts and a cap on concurrent connections: a
//! hostile client gets a 4xx answer or a closed socket, and the target
//! keeps serving.

pub(crate) mod client;
mod http;
mod metrics;
mod page;
pub(crate) mod status;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use status::Source;

/// `--admin-listen` when not given.
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:8080";
/// Connections served at once; more are closed at once.
const MAX_CONNS: usize = 16;

/// Checked `--admin-*` flags.
#[derive(Clone)]
pub(crate) struct AdminConfig {
    pub(crate) listen: SocketAddr,
    /// Given by the operator (a bind failure is then an error, not a warning).
    pub(crate) explicit: bool,
    pub(crate) auth: Option<Credentials>,
}

/// Basic-auth user and password.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: Vec<u8>,
}

impl Credentials {
    /// Constant-time check of an `Authorization` header value.
    pub(crate) fn accepts(&self, header: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(h) = header else { return false };
        let Some(b64) = h
            .strip_prefix(b"Basic ")
            .or_else(|| h.strip_prefix(b"basic "))
        else {
            return false;
        };
        let b64: Vec<u8> = b64.iter().copied().filter(|c| *c != b' ').collect();
        let Ok(raw) = data_encoding::BASE64.decode(&b64) else {
            return false;
        };
        let Some(colon) = raw.iter().position(|c| *c == b':') else {
            return false;
        };
        let (user, pass) = (&raw[..colon], &raw[colon + 1..]);
        let u = user.ct_eq(self.user.as_bytes());
        let p = pass.ct_eq(&self.password);
        bool::from(u & p)
    }

    /// The `Authorization` header value a client sends.
    pub(crate) fn header(&self) -> String {
        let mut raw = self.user.as_bytes().to_vec();
        raw.push(b':');
        raw.extend_from_slice(&self.password);
        format!("Basic {}", data_encoding::BASE64.encode(&raw))
    }
}

/// Read a password file: a regular file other users cannot read; one
/// line, the trailing newline dropped. `flag` names it in errors.
pub(crate) fn read_password_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{flag} {p}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{flag} {p}: not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{flag} {p}: mode {mode:04o} lets other users read it; run chmod 600 {p}"
        ));
    }
    if meta.len() > 4096 {
        return Err(format!(
            "{flag} {p}: longer than 4096 bytes; it should hold only the password"
        ));
    }
    let mut pw = std::fs::read(path).map_err(|e| format!("{flag} {p}: {e}"))?;
    while pw.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        pw.pop();
    }
    if pw.is_empty() {
        return Err(format!(
            "{flag} {p}: the file is empty; put the password in it"
        ));
    }
    if pw.contains(&b'\n') {
        return Err(format!(
            "{flag} {p}: more than one line; put only the password in it"
        ));
    }
    Ok(pw)
}

/// Check `--admin-listen`, `--admin-user` and `--admin-password-file`.
/// `None`: the listener is off.
pub(crate) fn check(
    listen: Option<&str>,
    user: Option<&str>,
    password_file: Option<&Path>,
) -> Result<Option<AdminConfig>, String> {
    let auth = match (user, password_file) {
        (None, None) => None,
        (Some(u), Some(f)) => {
            if u.is_empty() || u.contains(':') || u.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "--admin-user {u:?}: must be a non-empty name without ':' or control characters"
                ));
            }
            Some(Credentials {
                user: u.to_string(),
                password: read_password_file("--admin-password-file", f)?,
            })
        }
        _ => {
            return Err("--admin-user and --admin-password-file must be given together".to_string())
        }
    };
    let (text, explicit) = match listen {
        Some(l) => (l, true),
        None => (DEFAULT_ADMIN, false),
    };
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let listen: SocketAddr = text.parse().map_err(|_| {
        format!("--admin-listen {text}: expected ADDR:PORT (for example 127.0.0.1:8080) or off")
    })?;
    Ok(Some(AdminConfig {
        listen,
        explicit,
        auth,
    }))
}

/// The running listener; stops its threads on drop.
pub(crate) struct AdminHandle {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Bind and serve. A failed bind of the default address is a warning (the
/// target runs without its page); of an address the operator gave, an error.
pub(crate) fn spawn(cfg: &AdminConfig, src: Arc<Source>) -> Result<Option<AdminHandle>, String> {
    let listener = match TcpListener::bind(cfg.listen) {
        Ok(l) => l,
        Err(e) if !cfg.explicit => {
            tracing::warn!(
                "admin page off: cannot listen on {}: {e} (choose a free port with --admin-listen ADDR:PORT, or off)",
                cfg.listen
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(format!(
                "--admin-listen {}: cannot listen: {e} (choose a free port, or off)",
                cfg.listen
            ))
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--admin-listen {}: {e}", cfg.listen))?;
    let wake = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    tracing::info!("admin page on http://{addr}/ (status.json, metrics)");
    if cfg.auth.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "admin page on {addr} is open to every host that reaches it; protect it with --admin-user and --admin-password-file"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    status::start_sampler(src.clone(), stop.clone());
    let auth = cfg.auth.clone().map(Arc::new);
    let stop2 = stop.clone();
    let accept = std::thread::Builder::new()
        .name("bootlun-admin".into())
        .spawn(move || accept_loop(listener, src, auth, stop2))
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    Ok(Some(AdminHandle {
        stop,
        addr: wake,
        accept: Some(accept),
    }))
}

fn accept_loop(
    listener: TcpListener,
    src: Arc<Source>,
    auth: Option<Arc<Credentials>>,
    stop: Arc<AtomicBool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let sock = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of
                // spinning on the same error.
                tracing::debug!("admin: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!("admin: too many connections; closing one");
            continue;
        }
        let (src, auth, active2) = (src.clone(), auth.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("bootlun-admin-conn".into())
            .spawn(move || {
                http::serve_one(sock, &src, auth.as_deref());
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
