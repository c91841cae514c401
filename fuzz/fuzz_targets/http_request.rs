//! Feeds arbitrary bytes as a connection's input to `http::process`,
//! pipelined: each response's `consumed` is cut off and the rest processed
//! again. Responses must consume something, never more than there is,
//! start with a status line, and only serve byte ranges within the body.
//! The path, range and percent-decoding helpers are fed the same bytes.
#![no_main]

use bootlun_pxe::http::{normalize_target, parse_range, percent_decode, process, OutBody, RangeSpec, Resource, Router, Step};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bootlun-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("vmlinuz"), vec![7u8; 3000]).unwrap();
        let mut r = Router::default();
        r.routes.insert("/boot.ipxe".into(), Resource::text("#!ipxe\nchain menu.ipxe\n", "text/plain"));
        r.routes.insert("/empty".into(), Resource::text("", "text/plain"));
        let mut secret = Resource::text("secret menu", "text/plain");
        secret.auth = true;
        r.routes.insert("/menu.ipxe".into(), secret);
        r.routes.insert("/vmlinuz".into(), Resource::file(dir.join("vmlinuz")));
        r.routes.insert("/dir".into(), Resource::file(dir.join("sub")));
        r.routes.insert("/missing".into(), Resource::file(dir.join("nope")));
        r.auth = Some(("user".into(), "pass".into()));
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let r = router();
    let mut buf = data;
    for _ in 0..16 {
        match process(r, buf) {
            Step::Incomplete => break,
            Step::Respond { consumed, resp, close, summary: _ } => {
                assert!(consumed > 0, "response consumed nothing");
                assert!(consumed <= buf.len(), "consumed {consumed} of {}", buf.len());
                assert!(resp.head.starts_with(b"HTTP/1.1 "), "bad status line");
                assert!(resp.head.ends_with(b"\r\n\r\n"), "head not terminated");
                assert!((100..600).contains(&resp.status));
                match &resp.body {
                    OutBody::None => {}
                    OutBody::Mem(d, a, b) => assert!(a <= b && *b <= d.len(), "{a}..{b} of {}", d.len()),
                    OutBody::File(f, a, b) => {
                        let len = f.metadata().unwrap().len();
                        assert!(a <= b && *b <= len, "{a}..{b} of {len}");
                    }
                }
                if resp.status == 200 || resp.status == 206 {
                    let head = String::from_utf8_lossy(&resp.head);
                    assert!(!head.contains("secret"));
                }
                if close {
                    break;
                }
                buf = &buf[consumed..];
            }
        }
    }

    if let Ok(s) = std::str::from_utf8(data) {
        let _ = percent_decode(s);
        if let Ok(k) = normalize_target(s) {
            assert!(k.starts_with('/'));
            assert!(!k.contains("//") && !k.contains('\\'));
            assert!(k.split('/').all(|seg| seg != ".." && seg != "."), "{k}");
        }
        for len in [0u64, 1, 100, u64::MAX] {
            match parse_range(s, len) {
                RangeSpec::Part(a, b) => assert!(a <= b && b < len, "{a}-{b} of {len}"),
                RangeSpec::Full | RangeSpec::Unsatisfiable => {}
            }
        }
    }
});
