//! The HTTP sidecar over 127.0.0.1: ranges, HEAD, keep-alive, pipelining,
//! traversal, basic auth, malformed input, timeouts, and a 1 GiB file served
//! without the server's memory growing.

use bootlun_pxe::http::{self, Body, HttpConfig, HttpServer, Resource, Router};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// The server is dropped (stopped) before its files are removed.
struct Fixture {
    server: HttpServer,
    _dir: testkit::TempDir,
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn start(tag: &str, tweak: impl FnOnce(&mut HttpConfig)) -> Fixture {
    let dir_tmp = testkit::TempDir::new(&format!("http-{tag}"));
    let dir = dir_tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), pattern(100_000)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    let mut router = Router::default();
    router
        .routes
        .insert("/boot/vmlinuz".into(), Resource::file(dir.join("vmlinuz")));
    router
        .routes
        .insert("/boot/empty".into(), Resource::file(dir.join("empty")));
    router
        .routes
        .insert("/boot/gone".into(), Resource::file(dir.join("gone")));
    router.routes.insert(
        "/boot.ipxe".into(),
        Resource::text("#!ipxe\necho hi\n", "text/plain"),
    );
    let mut secret = Resource::text("#!ipxe\necho secret menu\n", "text/plain");
    secret.auth = true;
    router.routes.insert("/menu.ipxe".into(), secret);
    router.auth = Some(("admin".into(), "s3cret".into()));
    let mut cfg = HttpConfig::new("127.0.0.1:0".parse().unwrap(), router);
    tweak(&mut cfg);
    let server = http::spawn(cfg).unwrap();
    Fixture {
        server,
        _dir: dir_tmp,
    }
}

fn base(f: &Fixture) -> String {
    format!("http://{}", f.server.local_addr())
}

/// A parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one response from `s` (whose earlier bytes are in `pending`).
fn read_resp(s: &mut TcpStream, pending: &mut Vec<u8>, head_req: bool) -> Option<Resp> {
    let mut buf = [0u8; 65536];
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
    pending.drain(..end);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let len = if head_req { 0 } else { len };
    while pending.len() < len {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
    let body = pending.drain(..len).collect();
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn connect(f: &Fixture) -> TcpStream {
    let s = TcpStream::connect(f.server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Send raw bytes, read one response.
fn raw(f: &Fixture, req: &[u8]) -> Resp {
    let mut s = connect(f);
    s.write_all(req).unwrap();
    read_resp(&mut s, &mut Vec::new(), req.starts_with(b"HEAD")).expect("a response")
}

fn get(f: &Fixture, path: &str, extra: &str) -> Resp {
    raw(
        f,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
}

/// True when the server closed the connection (EOF) within the timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0))
}

#[test]
fn get_head_and_ranges() {
    let f = start("ranges", |_| {});
    let all = pattern(100_000);
    let r = get(&f, "/boot/vmlinuz", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, all);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));

    let r = raw(
        &f,
        b"HEAD /boot/vmlinuz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert!(r.body.is_empty());

    let r = get(&f, "/boot/vmlinuz", "Range: bytes=10-19\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(r.body, &all[10..20]);

    let r = get(&f, "/boot/vmlinuz", "Range: bytes=99990-\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &all[99_990..]);

    let r = get(&f, "/boot/vmlinuz", "Range: bytes=-5\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 99995-99999/100000"));
    assert_eq!(r.body, &all[99_995..]);

    let r = get(&f, "/boot/vmlinuz", "Range: bytes=100000-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */100000"));

    let r = get(&f, "/boot/empty", "Range: bytes=0-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */0"));

    // Several ranges: the whole body (allowed).
    let r = get(&f, "/boot/vmlinuz", "Range: bytes=0-1,5-6\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);

    let r = get(&f, "/boot.ipxe", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"#!ipxe\necho hi\n");
    assert_eq!(get(&f, "/nope", "").status, 404);
    assert_eq!(get(&f, "/boot/gone", "").status, 404);
}

#[test]
fn keep_alive_and_pipelining() {
    let f = start("keepalive", |_| {});
    // Two requests in one write, then a third on the same connection.
    let mut s = connect(&f);
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\nHEAD /boot/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\nGET /boot/vmlinuz HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n\r\n").unwrap();
    let mut p = Vec::new();
    let a = read_resp(&mut s, &mut p, false).unwrap();
    assert_eq!(
        (a.status, a.body.as_slice()),
        (200, &b"#!ipxe\necho hi\n"[..])
    );
    let b = read_resp(&mut s, &mut p, true).unwrap();
    assert_eq!(
        (b.status, b.header("content-length")),
        (200, Some("100000"))
    );
    let c = read_resp(&mut s, &mut p, false).unwrap();
    assert_eq!((c.status, c.body.as_slice()), (206, &pattern(4)[..]));
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let d = read_resp(&mut s, &mut p, false).unwrap();
    assert_eq!(d.header("connection"), Some("close"));
    assert!(closed(&mut s));

    // HTTP/1.0 closes by default, stays open with keep-alive.
    let mut s = connect(&f);
    s.write_all(b"GET /boot.ipxe HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_resp(&mut s, &mut Vec::new(), false).unwrap().status,
        200
    );
    assert!(closed(&mut s));
    let mut s = connect(&f);
    s.write_all(b"GET /boot.ipxe HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    s.write_all(b"GET /boot.ipxe HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_resp(&mut s, &mut Vec::new(), false).unwrap().status,
        200
    );
}

#[test]
fn curl_reuses_the_connection() {
    if !testkit::require_tool("curl", "curl") {
        return;
    }
    let f = start("curl", |_| {});
    let out = Command::new("curl")
        .args(["-sS", "-v", "-o", "/dev/null", "-o", "/dev/null"])
        .arg(format!("{}/boot/vmlinuz", base(&f)))
        .arg(format!("{}/boot.ipxe", base(&f)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "second URL did not reuse the connection:\n{err}"
    );
    // A range through curl.
    let out = Command::new("curl")
        .args(["-sS", "-r", "100-199"])
        .arg(format!("{}/boot/vmlinuz", base(&f)))
        .output()
        .unwrap();
    assert_eq!(out.stdout, &pattern(100_000)[100..200]);
}

#[test]
fn traversal_and_jail() {
    let f = start("traversal", |_| {});
    for p in [
        "/boot/../etc/passwd",
        "/boot/%2e%2e/%2e%2e/etc/passwd",
        "/boot/%2E%2E%2Fetc",
        "/..",
        "/boot/..\\..\\x",
    ] {
        let r = get(&f, p, "");
        assert!(r.status == 403 || r.status == 404, "{p}: {}", r.status);
    }
    assert_eq!(get(&f, "/etc/passwd", "").status, 404);
    assert_eq!(
        raw(&f, b"GET etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n").status,
        400
    );
    assert_eq!(get(&f, "http://evil/boot.ipxe", "").status, 200);
}

#[test]
fn symlink_out_of_boot_dir_is_not_routed() {
    let d_tmp = testkit::TempDir::new("jail");
    let d = d_tmp.path().to_path_buf();
    std::fs::create_dir_all(d.join("boot")).unwrap();
    std::fs::write(d.join("outside.img"), b"secret").unwrap();
    std::fs::write(d.join("boot/vmlinuz-1"), b"k").unwrap();
    std::os::unix::fs::symlink("../outside.img", d.join("boot/initrd.img-1")).unwrap();
    std::fs::write(d.join("boot/vmlinuz-2"), b"k2").unwrap();
    std::fs::write(d.join("boot/initrd.img-2"), b"i2").unwrap();
    let (_, entries) = bootlun_pxe::bootentries::discover(&d.join("boot"), "").unwrap();
    let cfg = bootlun_pxe::menu::MenuConfig {
        server: "127.0.0.1".into(),
        http_port: 80,
        target_name: "iqn.x:y".into(),
        iscsi_port: 3260,
        luns: vec![0],
        initiator_name: "iqn.x:i".into(),
        chap: None,
        chap_on_cmdline: false,
        method: bootlun_pxe::BootMethod::Netroot,
        timeout: 1,
        login: false,
        strip: vec![],
    };
    let r = bootlun_pxe::routes(&cfg, &entries, &d.join("boot"), None).unwrap();
    assert!(r.routes.contains_key("/boot/vmlinuz-2"));
    assert!(r.routes.contains_key("/boot/initrd.img-2"));
    assert!(r.routes.contains_key("/boot/vmlinuz-1"));
    assert!(
        !r.routes.contains_key("/boot/initrd.img-1"),
        "symlink leaving the boot dir was routed"
    );
    assert!(r.routes.values().all(|x| match &x.body {
        Body::File(p) => p.starts_with(std::fs::canonicalize(d.join("boot")).unwrap()),
        Body::Memory(_) => true,
    }));
}

#[test]
fn basic_auth_on_the_menu() {
    let f = start("auth", |_| {});
    let r = get(&f, "/menu.ipxe", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"bootlun\"")
    );
    assert_eq!(
        get(
            &f,
            "/menu.ipxe",
            "Authorization: Basic YWRtaW46d3Jvbmc=\r\n"
        )
        .status,
        401
    );
    let r = get(
        &f,
        "/menu.ipxe",
        "Authorization: Basic YWRtaW46czNjcmV0\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"#!ipxe\necho secret menu\n");
    // Unprotected resources need nothing.
    assert_eq!(get(&f, "/boot.ipxe", "").status, 200);
    if testkit::require_tool("curl", "curl") {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-u",
                "admin:s3cret",
            ])
            .arg(format!("{}/menu.ipxe", base(&f)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
}

#[test]
fn bad_requests_get_the_right_status() {
    let f = start("bad", |_| {});
    assert_eq!(raw(&f, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").status, 400);
    assert_eq!(
        raw(&f, b"GET /boot.ipxe HTTP/1.1\r\n\r\n").status,
        400,
        "missing Host"
    );
    let r = raw(
        &f,
        b"POST /boot.ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        raw(&f, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n").status,
        501
    );
    assert_eq!(raw(&f, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").status, 505);
    let big = format!(
        "GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(raw(&f, big.as_bytes()).status, 431);
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_eq!(
        raw(
            &f,
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()
        )
        .status,
        431
    );
    assert_eq!(
        raw(
            &f,
            b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .status,
        501
    );
    // A body on GET is skipped, and the next pipelined request still works.
    let mut s = connect(&f);
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcdGET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut p = Vec::new();
    assert_eq!(read_resp(&mut s, &mut p, false).unwrap().status, 200);
    assert_eq!(read_resp(&mut s, &mut p, false).unwrap().status, 200);
    // Still serving.
    assert_eq!(get(&f, "/boot.ipxe", "").status, 200);
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let f = start("slow", |c| {
        c.head_timeout = Duration::from_millis(700);
        c.idle_timeout = Duration::from_millis(1500);
    });
    // Half a request head, then nothing: 408 and close.
    let mut s = connect(&f);
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHo").unwrap();
    // The client's 10 s read timeout bounds both waits: a 408 or an EOF
    // before it can only come from the server's own timers.
    let r = read_resp(&mut s, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 408);
    // Idle keep-alive connection: closed.
    let mut s = connect(&f);
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_resp(&mut s, &mut Vec::new(), false).unwrap();
    assert!(closed(&mut s));
}

#[test]
fn connection_limit() {
    let f = start("limit", |c| c.max_conns = 4);
    // A response on each held (keep-alive) connection proves the server
    // accepted and counts it before the fifth one arrives.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(&f);
            s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(
                read_resp(&mut s, &mut Vec::new(), false).unwrap().status,
                200
            );
            s
        })
        .collect();
    let mut extra = connect(&f);
    assert!(closed(&mut extra), "fifth connection should be refused");
    drop(held);
    // The server learns of the four closes asynchronously; until it has,
    // a new connection is refused. Each refused attempt is a full round
    // trip (connect, then EOF), bounded in number.
    let served = (0..1000).any(|_| {
        let mut s = connect(&f);
        s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_ok()
            && matches!(read_resp(&mut s, &mut Vec::new(), false), Some(r) if r.status == 200)
    });
    assert!(served, "a slot freed by closed connections is never reused");
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Server half of `one_gib_file_with_flat_rss`, run in a child process so
/// the other tests of this binary do not disturb its RSS. Does nothing
/// unless started by that test.
#[test]
fn rss_child_server() {
    let Some(path) = std::env::var_os("BOOTLUN_RSS_CHILD") else {
        return;
    };
    let mut router = Router::default();
    router
        .routes
        .insert("/boot/big.img".into(), Resource::file(PathBuf::from(path)));
    let server = http::spawn(HttpConfig::new("127.0.0.1:0".parse().unwrap(), router)).unwrap();
    println!("PORT {}", server.local_addr().port());
    std::io::stdout().flush().unwrap();
    // Serve until the parent closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
fn one_gib_file_with_flat_rss() {
    use std::io::BufRead;
    let dir_tmp = testkit::TempDir::new("http-big");
    let dir = dir_tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rss_child_server",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("BOOTLUN_RSS_CHILD", &path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        // libtest prints the test name on the same line first.
        if let Some(i) = line.find("PORT ") {
            port = Some(line[i + 5..].trim().parse::<u16>().unwrap());
            break;
        }
        line.clear();
    }
    let port = port.expect("child server started");
    let before = vm_rss_kib(pid).unwrap();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(v) = vm_rss_kib(pid) {
                    peak.fetch_max(v, std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // A raw client that discards the body as it comes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /boot/big.img HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut head = Vec::new();
    let mut in_body = false;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if in_body {
            total += n as u64;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                total += (head.len() - i - 4) as u64;
                assert!(head.starts_with(b"HTTP/1.1 200"));
                in_body = true;
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    drop(child.stdin.take());
    let _ = child.wait();
    let grown = peak
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(before);
    eprintln!("1 GiB served; server RSS before {before} KiB, peak growth {grown} KiB");
    assert_eq!(total, 1 << 30);
    assert!(
        grown < 32 * 1024,
        "server RSS grew by {grown} KiB while serving 1 GiB"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn router() -> Router {
        let mut r = Router::default();
        r.routes.insert(
            "/boot.ipxe".into(),
            Resource::text("#!ipxe\n", "text/plain"),
        );
        let mut m = Resource::text("menu", "text/plain");
        m.auth = true;
        r.routes.insert("/menu.ipxe".into(), m);
        r.auth = Some(("u".into(), "p".into()));
        r
    }

    fn check(r: &Router, input: &[u8]) {
        match http::process(r, input) {
            http::Step::Incomplete => assert!(input.len() <= http::MAX_HEAD + 8192),
            http::Step::Respond { consumed, resp, .. } => {
                assert!(consumed <= input.len());
                assert!(consumed > 0);
                assert!(resp.head.starts_with(b"HTTP/1.1 "));
                assert!(resp.head.ends_with(b"\r\n\r\n"));
                assert!((200..600).contains(&resp.status));
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check(&router(), &input);
        }

        #[test]
        fn mutated_requests_never_panic(
            method in prop_oneof![Just("GET".to_string()), Just("HEAD".to_string()), Just("POST".to_string()), "[A-Z]{1,8}"],
            path in "(/|/boot.ipxe|/menu.ipxe|/[ -~]{0,40}|%[0-9a-fA-F]{0,2}|/\\.\\./[a-z]{0,5})",
            version in prop_oneof![Just("HTTP/1.1".to_string()), Just("HTTP/1.0".to_string()), "[ -~]{0,10}"],
            headers in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,40}"), 0..6),
            range in proptest::option::of("bytes=[0-9]{0,6}-[0-9]{0,6}"),
        ) {
            let mut req = format!("{method} {path} {version}\r\n");
            for (n, v) in &headers {
                req.push_str(&format!("{n}: {v}\r\n"));
            }
            if let Some(r) = range {
                req.push_str(&format!("Range: {r}\r\n"));
            }
            req.push_str("\r\n");
            check(&router(), req.as_bytes());
        }
    }

    #[test]
    fn arbitrary_bytes_over_the_socket() {
        let f = start("fuzz", |_| {});
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 64,
            ..ProptestConfig::default()
        });
        runner
            .run(&proptest::collection::vec(any::<u8>(), 1..600), |input| {
                let mut s = connect(&f);
                let _ = s.write_all(&input);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                prop_assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 "));
                Ok(())
            })
            .unwrap();
        assert_eq!(get(&f, "/boot.ipxe", "").status, 200, "server survived");
    }
}
