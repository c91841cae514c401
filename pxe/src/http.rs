//! A small HTTP/1.1 file server for boot menus, kernels and initrds.
//!
//! One mio thread. GET and HEAD only; single byte ranges; keep-alive and
//! pipelining; bodies of files go out with `sendfile(2)` straight from the
//! page cache, so serving a kernel never holds it in memory. Only the exact
//! URL paths in the route table exist: there is no directory to escape
//! from, and paths with `..` are refused and logged.

use hashbrown::HashMap;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use nom::bytes::complete::tag_no_case;
use nom::character::complete::{char, digit1, space0};
use nom::combinator::{eof, map_res, opt};
use nom::sequence::{delimited, separated_pair};
use nom::{IResult, Parser};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8192;
/// Largest request body skipped (GET/HEAD bodies are ignored).
const MAX_BODY: usize = 8192;
/// Largest single `sendfile` call.
const SENDFILE_CHUNK: usize = 1 << 20;

/// What a URL serves.
#[derive(Debug, Clone)]
pub enum Body {
    /// Generated content.
    Memory(Arc<[u8]>),
    /// A file, opened per request (canonical path inside the jail).
    File(PathBuf),
}

/// One entry of the route table.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Body source.
    pub body: Body,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Needs the menu credentials.
    pub auth: bool,
}

impl Resource {
    /// Generated text.
    pub fn text(s: impl Into<String>, content_type: &'static str) -> Resource {
        Resource {
            body: Body::Memory(Arc::from(s.into().into_bytes())),
            content_type,
            auth: false,
        }
    }
    /// A file on disk.
    pub fn file(p: PathBuf) -> Resource {
        Resource {
            body: Body::File(p),
            content_type: "application/octet-stream",
            auth: false,
        }
    }
}

/// Route table and credentials: everything request handling depends on.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// URL path (decoded, starting with `/`) → resource.
    pub routes: HashMap<String, Resource>,
    /// Basic-auth user and password for resources marked `auth`.
    pub auth: Option<(String, String)>,
}

/// Builds a new route table; `None` keeps the current one.
pub type RebuildFn = Arc<dyn Fn() -> Option<Router> + Send + Sync>;

/// Rebuild the route table before answering a request for one of `paths`
/// (the boot menus), so that what the menu names is what the disk holds
/// now, not what it held at start-up.
#[derive(Clone)]
pub struct Refresh {
    /// Normalized URL paths that trigger a rebuild.
    pub paths: Vec<String>,
    /// The rebuild itself; runs on the HTTP thread.
    pub rebuild: RebuildFn,
}

impl std::fmt::Debug for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresh")
            .field("paths", &self.paths)
            .finish()
    }
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// What is served.
    pub router: Router,
    /// Rebuild `router` on requests for some paths.
    pub refresh: Option<Refresh>,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A request head must arrive completely within this time.
    pub head_timeout: Duration,
    /// Connections beyond this are refused.
    pub max_conns: usize,
}

impl HttpConfig {
    /// Defaults: 30 s idle, 10 s for a request head, 128 connections.
    pub fn new(listen: SocketAddr, router: Router) -> HttpConfig {
        HttpConfig {
            listen,
            router,
            refresh: None,
            idle_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(10),
            max_conns: 128,
        }
    }
}

/// Body still to send.
#[derive(Debug)]
pub enum OutBody {
    /// Nothing.
    None,
    /// `data[pos..end]`.
    Mem(Arc<[u8]>, usize, usize),
    /// `file[pos..end]` via sendfile.
    File(File, u64, u64),
}

impl OutBody {
    fn remaining(&self) -> u64 {
        match self {
            OutBody::None => 0,
            OutBody::Mem(_, p, e) => (e - p) as u64,
            OutBody::File(_, p, e) => e - p,
        }
    }
}

/// A response ready to go out.
#[derive(Debug)]
pub struct Response {
    /// Status code (for the log).
    pub status: u16,
    /// Status line and headers.
    pub head: Vec<u8>,
    /// Body.
    pub body: OutBody,
}

/// Result of looking at the start of a connection's input.
#[derive(Debug)]
pub enum Step {
    /// Need more bytes.
    Incomplete,
    /// A response; `consumed` input bytes belong to the request; close the
    /// connection after sending when `close`.
    Respond {
        /// Bytes of input used.
        consumed: usize,
        /// The response.
        resp: Response,
        /// Close after this response.
        close: bool,
        /// `METHOD PATH` for the log.
        summary: String,
    },
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A bodyless-or-short error response.
pub fn error_response(code: u16, head_only: bool, close: bool, extra: &str) -> Response {
    let body = format!("{code} {}\n", reason(code));
    let mut h = format!(
        "HTTP/1.1 {code} {}\r\nServer: bootlun\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}",
        reason(code),
        body.len()
    );
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    let b: Arc<[u8]> = Arc::from(body.into_bytes());
    let len = b.len();
    Response {
        status: code,
        head: h.into_bytes(),
        body: if head_only {
            OutBody::None
        } else {
            OutBody::Mem(b, 0, len)
        },
    }
}

/// Percent-decode a request path; `None` on bad escapes, NUL or non-UTF-8.
pub fn percent_decode(p: &str) -> Option<String> {
    // The decoder passes a malformed escape (`%zz`, a `%` at the end)
    // through as text; a path that carries one is refused instead, so
    // that no two spellings reach the same file by different rules.
    let escapes_ok = p.split('%').skip(1).all(|s| {
        s.as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return None;
    }
    let out: Vec<u8> = percent_encoding::percent_decode_str(p).collect();
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not decodable or not a path.
    Bad,
    /// Tries to leave the served tree.
    Traversal,
}

/// Request target → normalised route key (`/a/b`). Handles absolute-form
/// targets, query strings, `.` segments and duplicate slashes; refuses `..`
/// (also encoded) and backslashes.
pub fn normalize_target(target: &str) -> Result<String, PathError> {
    let mut t = target;
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("HTTP://"))
    {
        t = match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        };
    }
    if !t.starts_with('/') {
        return Err(PathError::Bad);
    }
    let t = t.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(t).ok_or(PathError::Bad)?;
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => return Err(PathError::Traversal),
            s if s.contains('\\') => return Err(PathError::Traversal),
            s => segs.push(s),
        }
    }
    Ok(format!("/{}", segs.join("/")))
}

fn authorized(auth: &(String, String), header: Option<&[u8]>) -> bool {
    let Some(h) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let h = h.trim();
    let Some(cred) = h
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("basic "))
        .map(|_| h[6..].trim())
    else {
        return false;
    };
    // Padding is optional in practice (some clients leave it off), so
    // decode without it; a credential that is not base64 is no match.
    let Ok(dec) = data_encoding::BASE64_NOPAD.decode(cred.trim_end_matches('=').as_bytes()) else {
        return false;
    };
    let want = format!("{}:{}", auth.0, auth.1);
    // Constant time, so a client cannot find the password byte by byte
    // from how long a refusal takes.
    subtle::ConstantTimeEq::ct_eq(dec.as_slice(), want.as_bytes()).into()
}

/// Parsed `Range` header against a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) range: send everything.
    Full,
    /// `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parse a `Range` value. Syntax errors and multiple ranges mean the whole
/// body (both allowed by RFC 9110).
pub fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Ok((_, (first, last))) = range_grammar(v) else {
        return RangeSpec::Full;
    };
    let start = match (first, last) {
        (None, None) => return RangeSpec::Full,
        // `-N`: the last N bytes.
        (None, Some(n)) => {
            if n == 0 || len == 0 {
                return RangeSpec::Unsatisfiable;
            }
            return RangeSpec::Part(len.saturating_sub(n), len - 1);
        }
        (Some(start), _) => start,
    };
    let end = match last {
        None => u64::MAX,
        Some(e) if e >= start => e,
        Some(_) => return RangeSpec::Full,
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(start, end.min(len - 1))
}

/// `bytes=FIRST-LAST` with either number optional, one range only (a list
/// fails at the comma), optional whitespace around the parts. Numbers too
/// large for u64 fail too.
fn range_grammar(v: &str) -> IResult<&str, (Option<u64>, Option<u64>)> {
    let num = || map_res(digit1, str::parse::<u64>);
    delimited(
        (space0, tag_no_case("bytes="), space0),
        separated_pair(opt(num()), (space0, char('-'), space0), opt(num())),
        (space0, eof),
    )
    .parse(v)
}

fn header<'a>(req: &'a httparse::Request, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(v: Option<&[u8]>, tok: &str) -> bool {
    v.and_then(|v| std::str::from_utf8(v).ok())
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(tok)))
        .unwrap_or(false)
}

/// Look at `buf` (a connection's unread input) and produce the response to
/// its first request. Never panics, whatever the bytes.
pub fn process(router: &Router, buf: &[u8]) -> Step {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hdrs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return bad(431, buf, "head too large")
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return bad(431, buf, "head too large")
        }
        Ok(httparse::Status::Partial) => return Step::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return bad(431, buf, "too many headers"),
        Err(httparse::Error::Version) => return bad(505, buf, "bad version"),
        Err(_) => return bad(400, buf, "unparsable request"),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let version = req.version.unwrap_or(1);
    let summary = format!("{method} {}", target.escape_debug());
    let conn_hdr = header(&req, "connection");
    let close = if version == 0 {
        !has_token(conn_hdr, "keep-alive")
    } else {
        has_token(conn_hdr, "close")
    };
    let head = method == "HEAD";
    let respond = |resp: Response, consumed: usize, close: bool| Step::Respond {
        consumed,
        resp,
        close,
        summary: summary.clone(),
    };

    // Request body (unusual for GET/HEAD): skip it to keep the stream in sync.
    if header(&req, "transfer-encoding").is_some() {
        return respond(error_response(501, head, true, ""), buf.len(), true);
    }
    let mut consumed = head_len;
    if let Some(cl) = header(&req, "content-length") {
        let n = std::str::from_utf8(cl)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        match n {
            None => return respond(error_response(400, head, true, ""), buf.len(), true),
            Some(n) if n > MAX_BODY => {
                return respond(error_response(413, head, true, ""), buf.len(), true)
            }
            Some(n) if buf.len() < head_len + n => return Step::Incomplete,
            Some(n) => consumed += n,
        }
    }
    match method {
        "GET" | "HEAD" => {}
        "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" | "TRACE" | "CONNECT" => {
            return respond(
                error_response(405, false, close, "Allow: GET, HEAD\r\n"),
                consumed,
                close,
            )
        }
        _ => return respond(error_response(501, false, true, ""), consumed, true),
    }
    if version == 1 && header(&req, "host").is_none() {
        return respond(error_response(400, head, true, ""), consumed, true);
    }
    let key = match normalize_target(target) {
        Ok(k) => k,
        Err(PathError::Traversal) => {
            tracing::warn!("http: refused path traversal {:?}", target);
            return respond(error_response(403, head, close, ""), consumed, close);
        }
        Err(PathError::Bad) => {
            return respond(error_response(400, head, close, ""), consumed, close)
        }
    };
    let Some(res) = router.routes.get(&key) else {
        return respond(error_response(404, head, close, ""), consumed, close);
    };
    if res.auth {
        if let Some(a) = &router.auth {
            if !authorized(a, header(&req, "authorization")) {
                return respond(
                    error_response(
                        401,
                        head,
                        close,
                        "WWW-Authenticate: Basic realm=\"bootlun\"\r\n",
                    ),
                    consumed,
                    close,
                );
            }
        }
    }
    let (len, body) = match &res.body {
        Body::Memory(d) => (d.len() as u64, OutBody::Mem(d.clone(), 0, d.len())),
        Body::File(p) => match File::open(p).and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok((f, m)) if m.is_file() => (m.len(), OutBody::File(f, 0, m.len())),
            Ok(_) => return respond(error_response(404, head, close, ""), consumed, close),
            Err(e) => {
                tracing::warn!("http: {}: {e}", p.display());
                let code = if e.kind() == io::ErrorKind::NotFound {
                    404
                } else {
                    500
                };
                return respond(error_response(code, head, close, ""), consumed, close);
            }
        },
    };
    let range = header(&req, "range")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(|v| parse_range(v, len))
        .unwrap_or(RangeSpec::Full);
    let (status, start, end_excl, extra) = match range {
        RangeSpec::Full => (200, 0, len, String::new()),
        RangeSpec::Part(a, b) => (
            206,
            a,
            b + 1,
            format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
        ),
        RangeSpec::Unsatisfiable => {
            let r = error_response(
                416,
                head,
                close,
                &format!("Content-Range: bytes */{len}\r\n"),
            );
            return respond(r, consumed, close);
        }
    };
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nServer: bootlun\r\nContent-Type: {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}",
        reason(status),
        res.content_type,
        end_excl - start
    );
    if version == 0 && !close {
        h.push_str("Connection: keep-alive\r\n");
    }
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    let body = if head {
        OutBody::None
    } else {
        match body {
            OutBody::Mem(d, _, _) => OutBody::Mem(d, start as usize, end_excl as usize),
            OutBody::File(f, _, _) => OutBody::File(f, start, end_excl),
            OutBody::None => OutBody::None,
        }
    };
    respond(
        Response {
            status,
            head: h.into_bytes(),
            body,
        },
        consumed,
        close,
    )
}

fn bad(code: u16, buf: &[u8], why: &str) -> Step {
    let first: String = buf
        .iter()
        .take(60)
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        })
        .collect();
    Step::Respond {
        consumed: buf.len(),
        resp: error_response(code, false, true, ""),
        close: true,
        summary: format!("bad request ({why}): {first:?}"),
    }
}

/// A running server.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop the server and wait for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

struct Conn {
    sock: TcpStream,
    peer: SocketAddr,
    rbuf: Vec<u8>,
    out: Option<(Response, usize, String)>,
    /// The file body being sent, as the status page lists it.
    active: Option<crate::progress::ActiveTransfer>,
    close_after: bool,
    last: Instant,
    head_since: Option<Instant>,
}

/// Bind and start the server thread. Binding errors are returned here.
pub fn spawn(cfg: HttpConfig) -> Result<HttpServer, String> {
    let std_listener = socket2::Socket::new(
        socket2::Domain::for_address(cfg.listen),
        socket2::Type::STREAM,
        None,
    )
    .and_then(|s| {
        s.set_reuse_address(true)?;
        s.bind(&cfg.listen.into())?;
        s.listen(128)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .map_err(|e| format!("http: cannot listen on {}: {e}", cfg.listen))?;
    let listener = TcpListener::from_std(std_listener.into());
    let addr = listener.local_addr().map_err(|e| format!("http: {e}"))?;
    let poll = Poll::new().map_err(|e| format!("http: {e}"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| format!("http: {e}"))?);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("bootlun-http".into())
        .spawn(move || run(poll, listener, cfg, stop2))
        .map_err(|e| format!("http: {e}"))?;
    tracing::info!("http: serving on {addr}");
    Ok(HttpServer {
        addr,
        stop,
        waker,
        thread: Some(thread),
    })
}

fn run(mut poll: Poll, mut listener: TcpListener, mut cfg: HttpConfig, stop: Arc<AtomicBool>) {
    if let Err(e) = poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
    {
        tracing::error!("http: {e}");
        return;
    }
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 2usize;
    let mut events = Events::with_capacity(256);
    let mut scratch = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(500))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("http: poll: {e}");
            return;
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut sock, peer)) => {
                            if conns.len() >= cfg.max_conns {
                                tracing::warn!(
                                    "http: {peer}: too many connections ({}), refused",
                                    conns.len()
                                );
                                continue;
                            }
                            let _ = sock.set_nodelay(true);
                            let tok = next;
                            next = next.wrapping_add(1).max(2);
                            if poll
                                .registry()
                                .register(
                                    &mut sock,
                                    Token(tok),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .is_err()
                            {
                                continue;
                            }
                            conns.insert(
                                tok,
                                Conn {
                                    sock,
                                    peer,
                                    rbuf: Vec::new(),
                                    out: None,
                                    active: None,
                                    close_after: false,
                                    last: Instant::now(),
                                    head_since: None,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::warn!("http: accept: {e}");
                            break;
                        }
                    }
                },
                WAKER => {}
                Token(t) => {
                    let done = match conns.get_mut(&t) {
                        Some(c) => drive(c, &mut cfg.router, cfg.refresh.as_ref(), &mut scratch),
                        None => false,
                    };
                    if done {
                        if let Some(mut c) = conns.remove(&t) {
                            let _ = poll.registry().deregister(&mut c.sock);
                        }
                    }
                }
            }
        }
        // Timeouts.
        let now = Instant::now();
        let mut expired = Vec::new();
        for (t, c) in conns.iter_mut() {
            if now.duration_since(c.last) > cfg.idle_timeout {
                tracing::info!("http: {}: idle timeout", c.peer);
                expired.push(*t);
            } else if c.out.is_none()
                && c.head_since
                    .is_some_and(|s| now.duration_since(s) > cfg.head_timeout)
            {
                tracing::info!("http: {}: request head timeout", c.peer);
                let r = error_response(408, false, true, "");
                let mut bytes = r.head;
                if let OutBody::Mem(b, p, e) = &r.body {
                    bytes.extend_from_slice(&b[*p..*e]);
                }
                let _ = c.sock.write(&bytes);
                expired.push(*t);
            }
        }
        for t in expired {
            if let Some(mut c) = conns.remove(&t) {
                let _ = poll.registry().deregister(&mut c.sock);
            }
        }
    }
}

/// Make all possible progress on a connection; true when it is finished.
/// The normalized path of the complete request at the start of `buf`.
fn request_path(buf: &[u8]) -> Option<String> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hdrs);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => normalize_target(req.path?).ok(),
        _ => None,
    }
}

/// The Content-Length of a response head (0 when absent).
fn content_length(head: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn drive(c: &mut Conn, router: &mut Router, refresh: Option<&Refresh>, scratch: &mut [u8]) -> bool {
    loop {
        if let Some((resp, head_off, _)) = &mut c.out {
            match write_some(&mut c.sock, resp, head_off) {
                Ok(true) => {
                    c.last = Instant::now();
                    let (resp, _, summary) = c.out.take().expect("checked");
                    if let Some(mut a) = c.active.take() {
                        a.done();
                    }
                    tracing::info!("http: {} \"{}\" {}", c.peer, summary, resp.status);
                    if let Some(path) = summary.strip_prefix("GET ") {
                        crate::progress::file_served(
                            "http",
                            c.peer.ip(),
                            path,
                            content_length(&resp.head),
                            resp.status,
                        );
                    }
                    if c.close_after {
                        let _ = c.sock.shutdown(std::net::Shutdown::Write);
                        return true;
                    }
                    continue;
                }
                Ok(false) => {
                    c.last = Instant::now();
                    if let Some(a) = &c.active {
                        a.set_sent(a.total().saturating_sub(resp.body.remaining()));
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        if !c.rbuf.is_empty() {
            if let Some(r) = refresh {
                if request_path(&c.rbuf).is_some_and(|p| r.paths.contains(&p)) {
                    if let Some(new) = (r.rebuild)() {
                        *router = new;
                    }
                }
            }
            match process(router, &c.rbuf) {
                Step::Respond {
                    consumed,
                    resp,
                    close,
                    summary,
                } => {
                    c.rbuf.drain(..consumed.min(c.rbuf.len()));
                    c.head_since = if c.rbuf.is_empty() {
                        None
                    } else {
                        Some(Instant::now())
                    };
                    c.close_after = close;
                    c.active = match (&resp.body, summary.strip_prefix("GET ")) {
                        (OutBody::File(..), Some(path)) => {
                            Some(crate::progress::ActiveTransfer::begin(
                                "http",
                                c.peer.ip(),
                                path,
                                resp.body.remaining(),
                            ))
                        }
                        _ => None,
                    };
                    c.out = Some((resp, 0, summary));
                    continue;
                }
                Step::Incomplete => {
                    if c.head_since.is_none() {
                        c.head_since = Some(Instant::now());
                    }
                }
            }
        }
        match c.sock.read(scratch) {
            Ok(0) => return true,
            Ok(n) => {
                c.last = Instant::now();
                c.rbuf.extend_from_slice(&scratch[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Write some of the response. Ok(true) when it is all out, Ok(false) when
/// progress was made, WouldBlock when the socket is full.
fn write_some(sock: &mut TcpStream, resp: &mut Response, head_off: &mut usize) -> io::Result<bool> {
    if *head_off < resp.head.len() {
        let n = sock.write(&resp.head[*head_off..])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *head_off += n;
        return Ok(false);
    }
    if resp.body.remaining() == 0 {
        return Ok(true);
    }
    match &mut resp.body {
        OutBody::None => Ok(true),
        OutBody::Mem(d, pos, end) => {
            let n = sock.write(&d[*pos..*end])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            *pos += n;
            Ok(*pos == *end)
        }
        OutBody::File(f, pos, end) => {
            let want = ((*end - *pos) as usize).min(SENDFILE_CHUNK);
            let mut off = *pos;
            let n = rustix::fs::sendfile(&*sock, &*f, Some(&mut off), want)?;
            if n == 0 {
                // File shrank under us: the promised length cannot be met.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            *pos += n as u64;
            Ok(*pos == *end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeSpec::Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeSpec::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Full);
        assert_eq!(parse_range("bytes=9-1", 100), RangeSpec::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Full);
        assert_eq!(parse_range("bytes=0-0", 0), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(" Bytes= 1 - 2 ", 100), RangeSpec::Part(1, 2));
        assert_eq!(parse_range("bytes=-", 100), RangeSpec::Full);
        assert_eq!(parse_range("bytes=1-2x", 100), RangeSpec::Full);
        assert_eq!(parse_range("bytes=+1-2", 100), RangeSpec::Full);
        assert_eq!(
            parse_range("bytes=99999999999999999999-", 100),
            RangeSpec::Full
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            normalize_target("/boot//./vmlinuz?x=1").unwrap(),
            "/boot/vmlinuz"
        );
        assert_eq!(normalize_target("http://h:80/a%20b").unwrap(), "/a b");
        assert_eq!(
            normalize_target("/boot/../etc/passwd"),
            Err(PathError::Traversal)
        );
        assert_eq!(
            normalize_target("/boot/%2e%2e/etc"),
            Err(PathError::Traversal)
        );
        assert_eq!(
            normalize_target("/boot/%2E%2E%2Fetc"),
            Err(PathError::Traversal)
        );
        assert_eq!(normalize_target("/a%00b"), Err(PathError::Bad));
        assert_eq!(normalize_target("/a%zz"), Err(PathError::Bad));
        assert_eq!(normalize_target("/a%2"), Err(PathError::Bad));
        assert_eq!(normalize_target("/a%"), Err(PathError::Bad));
        assert_eq!(normalize_target("/a%ff"), Err(PathError::Bad));
        assert_eq!(normalize_target("*"), Err(PathError::Bad));
    }

    #[test]
    fn basic_auth() {
        let a = ("admin".to_string(), "s3cret".to_string());
        // "admin:s3cret"
        assert!(authorized(&a, Some(b"Basic YWRtaW46czNjcmV0")));
        assert!(!authorized(&a, Some(b"Basic YWRtaW46d3Jvbmc=")));
        assert!(!authorized(&a, None));
        assert!(!authorized(&a, Some(b"Bearer x")));
        assert!(!authorized(&a, Some(b"Basic !!!!")));
        // "admin:pw", with and without its padding.
        let b = ("admin".to_string(), "pw".to_string());
        assert!(authorized(&b, Some(b"Basic YWRtaW46cHc=")));
        assert!(authorized(&b, Some(b"basic  YWRtaW46cHc")));
        assert!(!authorized(&b, Some(b"Basic YWRtaW46cHd=")));
    }
}
