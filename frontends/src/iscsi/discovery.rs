//! SendTargets discovery (RFC 7143 section 7.3 and appendix C).
//!
//! A Text request's `SendTargets=` key is answered with one `TargetName=`
//! item per target followed by one `TargetAddress=` item per portal. Other
//! keys are answered `NotUnderstood`. The transport splits answers larger
//! than the initiator's MaxRecvDataSegmentLength over several Text
//! Responses.

use super::negotiate::{format_key, parse_text};

/// One target as advertised by SendTargets.
#[derive(Debug, Clone)]
pub struct TargetRecord<'a> {
    pub name: &'a str,
    /// Portals as `ADDR:PORT,TPGT` (IPv6 addresses in brackets).
    pub portals: &'a [String],
}

/// iSCSI names compare without regard to ASCII case (they are normalised
/// to lower case, RFC 7143 section 4.2.7).
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn report(target: &TargetRecord<'_>, out: &mut Vec<u8>) {
    format_key(out, "TargetName", target.name);
    for portal in target.portals {
        format_key(out, "TargetAddress", portal);
    }
}

/// Report the target called `name`, if this portal serves it.
fn report_named(name: &str, targets: &[TargetRecord<'_>], out: &mut Vec<u8>) {
    if let Some(t) = targets.iter().find(|t| same_name(t.name, name)) {
        report(t, out);
    }
}

/// Answer a Text request's key=value text. `session_target` is the target
/// of a normal session (a SendTargets there may only report that target),
/// `None` in a discovery session. Appends the response text to `out`.
///
/// Malformed request text gets an empty answer.
pub fn answer_text(
    request: &[u8],
    targets: &[TargetRecord<'_>],
    session_target: Option<&str>,
    out: &mut Vec<u8>,
) {
    let Ok(pairs) = parse_text(request) else {
        return;
    };
    for (key, value) in pairs {
        if key != "SendTargets" {
            format_key(out, key, "NotUnderstood");
            continue;
        }
        match (session_target, value) {
            // Discovery session: every target, or the one named.
            (None, "All") => targets.iter().for_each(|t| report(t, out)),
            (None, "") => format_key(out, key, "Reject"),
            (None, name) => report_named(name, targets, out),
            // Normal session: only the session's own target.
            (Some(own), "All") | (Some(own), "") => report_named(own, targets, out),
            (Some(own), name) => {
                if same_name(own, name) {
                    report_named(own, targets, out);
                }
            }
        }
    }
}

/// The portals SendTargets advertises: the configured ones, or else the
/// address the initiator reached us on (`local`), as `ADDR:PORT,TPGT`.
pub fn portal_list(configured: &[String], local: Option<std::net::SocketAddr>) -> Vec<String> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    match local {
        Some(std::net::SocketAddr::V6(a)) => vec![format!("[{}]:{},1", a.ip(), a.port())],
        Some(a) => vec![format!("{a},1")],
        None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals_default_to_the_address_used() {
        let v4 = "10.0.0.1:3260".parse().ok();
        assert_eq!(portal_list(&[], v4), vec!["10.0.0.1:3260,1"]);
        let v6 = "[fe80::1]:3260".parse().ok();
        assert_eq!(portal_list(&[], v6), vec!["[fe80::1]:3260,1"]);
        let cfg = vec!["192.168.1.5:3260,1".to_string()];
        assert_eq!(portal_list(&cfg, v4), cfg);
        assert!(portal_list(&[], None).is_empty());
    }

    fn fixture() -> (Vec<String>, Vec<String>) {
        (
            vec!["10.0.0.1:3260,1".to_owned(), "[fd00::1]:3260,1".to_owned()],
            vec!["10.0.0.1:3260,1".to_owned()],
        )
    }

    fn answer(req: &[u8], session: Option<&str>) -> Vec<u8> {
        let (pa, pb) = fixture();
        let targets = [
            TargetRecord {
                name: "iqn.2026-01.org.example:boot-a",
                portals: &pa,
            },
            TargetRecord {
                name: "iqn.2026-01.org.example:boot-b",
                portals: &pb,
            },
        ];
        let mut out = Vec::new();
        answer_text(req, &targets, session, &mut out);
        out
    }

    #[test]
    fn send_targets_all_in_discovery_session() {
        let out = answer(b"SendTargets=All\0", None);
        assert_eq!(
            out,
            b"TargetName=iqn.2026-01.org.example:boot-a\0\
              TargetAddress=10.0.0.1:3260,1\0\
              TargetAddress=[fd00::1]:3260,1\0\
              TargetName=iqn.2026-01.org.example:boot-b\0\
              TargetAddress=10.0.0.1:3260,1\0"
                .to_vec()
        );
    }

    #[test]
    fn send_targets_named() {
        let out = answer(b"SendTargets=iqn.2026-01.org.example:boot-b\0", None);
        assert_eq!(
            out,
            b"TargetName=iqn.2026-01.org.example:boot-b\0TargetAddress=10.0.0.1:3260,1\0".to_vec()
        );
        // Case-insensitive name match, reported with the configured name.
        let out = answer(b"SendTargets=IQN.2026-01.org.example:BOOT-B\0", None);
        assert!(out.starts_with(b"TargetName=iqn.2026-01.org.example:boot-b\0"));
        // Unknown target: empty answer.
        assert!(answer(b"SendTargets=iqn.2026-01.org.example:nope\0", None).is_empty());
        // Empty value in a discovery session.
        assert_eq!(
            answer(b"SendTargets=\0", None),
            b"SendTargets=Reject\0".to_vec()
        );
    }

    #[test]
    fn send_targets_in_normal_session_reports_own_target_only() {
        let own = Some("iqn.2026-01.org.example:boot-b");
        let expected =
            b"TargetName=iqn.2026-01.org.example:boot-b\0TargetAddress=10.0.0.1:3260,1\0".to_vec();
        assert_eq!(answer(b"SendTargets=\0", own), expected);
        assert_eq!(answer(b"SendTargets=All\0", own), expected);
        assert_eq!(
            answer(b"SendTargets=iqn.2026-01.org.example:boot-b\0", own),
            expected
        );
        assert!(answer(b"SendTargets=iqn.2026-01.org.example:boot-a\0", own).is_empty());
    }

    #[test]
    fn unknown_keys_and_malformed_text() {
        assert_eq!(
            answer(b"X-com.example.Foo=1\0SendTargets=iqn.none\0", None),
            b"X-com.example.Foo=NotUnderstood\0".to_vec()
        );
        assert!(answer(b"SendTargets=All", None).is_empty());
        assert!(answer(b"\xff\xfe=\0", None).is_empty());
        assert!(answer(b"", None).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(req in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                       normal in proptest::prelude::any::<bool>()) {
            let _ = answer(&req, if normal { Some("iqn.2026-01.org.example:boot-a") } else { None });
        }
    }
}
