//! One admin request on one connection: read a bounded head, answer, close.

use super::{Credentials, Source};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head accepted; longer ones get 431.
pub(crate) const MAX_HEAD: usize = 8192;
/// Time a client has to send its whole request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    pub(crate) extra: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn new(code: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            code,
            content_type,
            body: body.into(),
            extra: Vec::new(),
        }
    }

    fn error(code: u16, why: &str) -> Reply {
        Reply::new(
            code,
            "text/plain; charset=utf-8",
            format!("{code} {}: {why}\n", reason(code)),
        )
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// What the head of a request asks for, or the error to answer with.
pub(crate) enum Head {
    /// Need more bytes.
    Partial,
    Request {
        head_only: bool,
        path: String,
        authorization: Option<Vec<u8>>,
    },
    Bad(Reply),
}

/// Parse the request head in `buf` (pure, for tests and the fuzz-minded).
pub(crate) fn parse_head(buf: &[u8]) -> Head {
    let mut hdrs = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut hdrs);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            Head::Bad(Reply::error(431, "request head too long"))
        }
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => {
                    let mut r = Reply::error(405, "only GET and HEAD");
                    r.extra.push(("Allow", "GET, HEAD".into()));
                    return Head::Bad(r);
                }
            };
            let target = req.path.unwrap_or("/");
            let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
            let authorization = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .map(|h| h.value.to_vec());
            Head::Request {
                head_only,
                path,
                authorization,
            }
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Head::Bad(Reply::error(431, "request head too long"))
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Bad(Reply::error(431, "too many headers")),
        Err(httparse::Error::Version) => Head::Bad(Reply::error(505, "HTTP/1.x only")),
        Err(_) => Head::Bad(Reply::error(400, "not an HTTP request")),
    }
}

/// Serve one request on `sock` and close it.
pub(crate) fn serve_one(mut sock: TcpStream, src: &Source, auth: Option<&Credentials>) {
    let _ = sock.set_read_timeout(Some(IO_TIMEOUT));
    let _ = sock.set_write_timeout(Some(IO_TIMEOUT));
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (reply, head_only) = loop {
        match parse_head(&buf) {
            Head::Partial => {}
            Head::Bad(r) => break (r, false),
            Head::Request {
                head_only,
                path,
                authorization,
            } => {
                if let Some(a) = auth {
                    if !a.accepts(authorization.as_deref()) {
                        let mut r = Reply::error(401, "this page needs a user name and password");
                        r.extra
                            .push(("WWW-Authenticate", "Basic realm=\"bootlun\"".into()));
                        break (r, head_only);
                    }
                }
                break (route(&path, src), head_only);
            }
        }
        if started.elapsed() > HEAD_DEADLINE {
            break (Reply::error(408, "request head too slow"), false);
        }
        match sock.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n.min(MAX_HEAD + 1 - buf.len().min(MAX_HEAD))]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    };
    let _ = write_reply(&mut sock, &reply, head_only);
    let _ = sock.flush();
    let _ = sock.shutdown(std::net::Shutdown::Write);
    // Let the peer read the answer before the close: a few bytes of a
    // pipelined or oversized request still unread would turn it into a reset.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut drain = 0usize;
    while drain < 64 * 1024 {
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drain += n,
        }
    }
}

fn write_reply(sock: &mut TcpStream, r: &Reply, head_only: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        r.code,
        reason(r.code),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes())?;
    if !head_only {
        sock.write_all(&r.body)?;
    }
    Ok(())
}

fn route(path: &str, src: &Source) -> Reply {
    match path {
        "/" | "/index.html" => {
            let snap = src.snapshot();
            let mut r = Reply::new(200, "text/html; charset=utf-8", super::page::render(&snap));
            r.extra.push((
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:".into(),
            ));
            r
        }
        "/status.json" => {
            let snap = src.snapshot();
            let body = serde_json::to_vec_pretty(&snap).unwrap_or_default();
            Reply::new(200, "application/json", body)
        }
        "/metrics" => {
            let snap = src.snapshot();
            Reply::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                super::metrics::render(&snap),
            )
        }
        _ => Reply::error(404, "try /, /status.json or /metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\n"), Head::Partial));
        match parse_head(b"GET /metrics?x=1 HTTP/1.0\r\nAuthorization: Basic eDp5\r\n\r\n") {
            Head::Request {
                head_only,
                path,
                authorization,
            } => {
                assert!(!head_only);
                assert_eq!(path, "/metrics");
                assert_eq!(authorization.as_deref(), Some(&b"Basic eDp5"[..]));
            }
            _ => panic!("not parsed"),
        }
        let code = |b: &[u8]| match parse_head(b) {
            Head::Bad(r) => r.code,
            _ => 0,
        };
        assert_eq!(code(b"\x00\x01garbage\r\n\r\n"), 400);
        assert_eq!(code(b"POST / HTTP/1.1\r\n\r\n"), 405);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(code(&long), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend(format!("X{i}: y\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(code(&many), 431);
    }

    #[test]
    fn basic_auth() {
        let c = Credentials {
            user: "admin".into(),
            password: b"hunter22".to_vec(),
        };
        assert!(c.accepts(Some(c.header().as_bytes())));
        assert!(!c.accepts(None));
        assert!(!c.accepts(Some(b"Basic YWRtaW46d3Jvbmc=")));
        assert!(!c.accepts(Some(b"Basic !!!")));
        assert!(!c.accepts(Some(b"Bearer x")));
    }
}
