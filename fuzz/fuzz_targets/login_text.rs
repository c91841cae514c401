//! Drives `Negotiator::step` through login stages with structure-aware
//! text (known keys with plausible or hostile values, raw bytes), with and
//! without CHAP (one-way and mutual), and feeds the same text to
//! `discovery::answer_text`. A step may fail, but never panic; after a
//! failure every later step must fail too, and a failed step appends
//! nothing to the response.
#![no_main]

use arbitrary::Arbitrary;
use bootlun_frontends::iscsi::discovery::{answer_text, TargetRecord};
use bootlun_frontends::iscsi::negotiate::chap::ChapAlgorithm;
use bootlun_frontends::iscsi::negotiate::text::{decode_binary, encode_hex, parse_number};
use bootlun_frontends::iscsi::negotiate::{parse_text, ChapSecret, Limits, Negotiator, Stage};
use libfuzzer_sys::fuzz_target;

const TARGET: &str = "iqn.2026-11.org.bootlun:target";
const USER: &str = "fuzzuser";
const SECRET: &[u8] = b"fuzz-secret-1234";
const MUTUAL_SECRET: &[u8] = b"target-secret-5678";

const KEYS: &[&str] = &[
    "InitiatorName",
    "InitiatorAlias",
    "TargetName",
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "SessionType",
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
    "HeaderDigest",
    "DataDigest",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "OFMarker",
    "IFMarker",
    "OFMarkInt",
    "IFMarkInt",
    "TaskReporting",
    "X-com.example.private",
    "X#vendor",
    "SendTargets",
    "iSCSIProtocolLevel",
];

const VALUES: &[&str] = &[
    "",
    "None",
    "CHAP",
    "CHAP,None",
    "None,CHAP",
    "SRP,KRB5,CHAP",
    "Normal",
    "Discovery",
    "Yes",
    "No",
    "CRC32C",
    "CRC32C,None",
    "None,CRC32C",
    "0",
    "1",
    "2",
    "512",
    "8192",
    "262144",
    "16777215",
    "16777216",
    "4294967295",
    "18446744073709551616",
    "0x10",
    "0xffffffffffffffff",
    "0b",
    "0b0",
    "0x",
    "0x0",
    "0xZZ",
    "5",
    "7",
    "5,7",
    "7,5",
    "6,9,0",
    "NotUnderstood",
    "Irrelevant",
    "Reject",
    "All",
    TARGET,
    "iqn.2026-11.org.bootlun:other",
    "iqn.2026-11.org.bootlun:fuzz-initiator",
    USER,
    "1~10",
    "2048~1024",
    ",,,",
    "a=b",
];

#[derive(Arbitrary, Debug)]
enum Item {
    /// `KEY=VALUE\0` from the dictionaries.
    Known(u8, u8),
    /// A known key with an arbitrary value.
    KnownKey(u8, String),
    /// A numeric value for a known key.
    Number(u8, u64),
    /// A long value (length bound checks).
    Long(u8, u16, u8),
    /// The CHAP_N / CHAP_R a correct initiator would send for the last
    /// challenge the target issued (or garbage if none).
    ChapAnswer { wrong_user: bool, corrupt: bool },
    /// A mutual-CHAP challenge from the initiator.
    ChapChallenge { id: u8, challenge: Vec<u8>, base64: bool },
    /// Raw bytes, NUL or not.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Step {
    csg: u8,
    transit: bool,
    nsg: u8,
    items: Vec<Item>,
    /// Append a trailing NUL (well-formed text ends with one).
    terminate: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    chap: bool,
    mutual: bool,
    discovery_auth: bool,
    allow_digests: bool,
    mrdsl: u32,
    max_burst: u32,
    first_burst: u32,
    max_r2t: u32,
    /// Start with a plausible leading request so the fuzzer reaches the
    /// later stages quickly.
    leading: bool,
    steps: Vec<Step>,
}

fn stage(v: u8) -> Stage {
    match v % 4 {
        0 => Stage::Security,
        1 => Stage::Operational,
        _ => Stage::FullFeature,
    }
}

fn push_key(out: &mut Vec<u8>, k: &str, v: &str) {
    out.extend_from_slice(k.as_bytes());
    out.push(b'=');
    out.extend_from_slice(v.as_bytes());
    out.push(0);
}

/// The last CHAP_A / CHAP_I / CHAP_C the target sent.
#[derive(Default)]
struct Challenge {
    alg: Option<u64>,
    id: Option<u64>,
    c: Option<Vec<u8>>,
}

fn build_text(step: &Step, ch: &Challenge) -> Vec<u8> {
    let mut t = Vec::new();
    for item in &step.items {
        match item {
            Item::Known(k, v) => push_key(
                &mut t,
                KEYS[*k as usize % KEYS.len()],
                VALUES[*v as usize % VALUES.len()],
            ),
            Item::KnownKey(k, v) => push_key(&mut t, KEYS[*k as usize % KEYS.len()], v),
            Item::Number(k, n) => push_key(&mut t, KEYS[*k as usize % KEYS.len()], &n.to_string()),
            Item::Long(k, n, c) => {
                let v: String = std::iter::repeat_n((b'a' + c % 26) as char, *n as usize % 20000).collect();
                push_key(&mut t, KEYS[*k as usize % KEYS.len()], &v)
            }
            Item::ChapAnswer { wrong_user, corrupt } => {
                let user = if *wrong_user { "nobody" } else { USER };
                push_key(&mut t, "CHAP_N", user);
                let alg = ch.alg.and_then(ChapAlgorithm::from_code);
                let r = match (alg, ch.id, &ch.c) {
                    (Some(a), Some(id), Some(c)) => {
                        let mut r = a.response(id as u8, SECRET, c);
                        if *corrupt {
                            r[0] ^= 1;
                        }
                        encode_hex(&r)
                    }
                    _ => "0x00".to_string(),
                };
                push_key(&mut t, "CHAP_R", &r);
            }
            Item::ChapChallenge { id, challenge, base64 } => {
                push_key(&mut t, "CHAP_I", &id.to_string());
                let v = if *base64 {
                    // Not real base64 necessarily: the decoder must cope.
                    format!("0b{}", String::from_utf8_lossy(challenge))
                } else {
                    encode_hex(challenge)
                };
                push_key(&mut t, "CHAP_C", &v);
            }
            Item::Raw(b) => t.extend_from_slice(b),
        }
    }
    if step.terminate && t.last() != Some(&0) {
        t.push(0);
    }
    t
}

fn remember_challenge(resp: &[u8], ch: &mut Challenge) {
    if let Ok(pairs) = parse_text(resp) {
        for (k, v) in pairs {
            match k {
                "CHAP_A" => ch.alg = parse_number(v),
                "CHAP_I" => ch.id = parse_number(v),
                "CHAP_C" => ch.c = decode_binary(v),
                _ => {}
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_recv_data_segment_length: input.mrdsl,
        max_burst_length: input.max_burst,
        first_burst_length: input.first_burst,
        max_outstanding_r2t: input.max_r2t,
        allow_digests: input.allow_digests,
        target_portal_group_tag: 1,
        chap: input.chap.then(|| ChapSecret {
            user: USER.into(),
            secret: SECRET.to_vec(),
        }),
        ..Limits::default()
    };
    let mut neg = Negotiator::new(limits).with_discovery_auth(input.discovery_auth);
    if input.mutual {
        neg = neg.with_mutual_chap(ChapSecret {
            user: "target".into(),
            secret: MUTUAL_SECRET.to_vec(),
        });
    }
    let exists = |n: &str| n.eq_ignore_ascii_case(TARGET);
    let mut ch = Challenge::default();
    let mut failed = false;

    let mut texts: Vec<Vec<u8>> = Vec::new();
    if input.leading {
        let mut t = Vec::new();
        push_key(&mut t, "InitiatorName", "iqn.2026-11.org.bootlun:fuzz-initiator");
        push_key(&mut t, "SessionType", "Normal");
        push_key(&mut t, "TargetName", TARGET);
        push_key(&mut t, "AuthMethod", if input.chap { "CHAP,None" } else { "None" });
        run_step(&mut neg, Stage::Security, false, Stage::Security, &t, &exists, &mut ch, &mut failed);
        texts.push(t);
    }
    for s in input.steps.iter().take(64) {
        let text = build_text(s, &ch);
        run_step(&mut neg, stage(s.csg), s.transit, stage(s.nsg), &text, &exists, &mut ch, &mut failed);
        texts.push(text);
    }

    // Parameters stay within what the target offered.
    let p = neg.params();
    if neg.is_complete() {
        // (Steps after completion fail; that is expected.)
        if !input.allow_digests {
            assert!(!p.header_digest && !p.data_digest);
        }
    }

    // The same texts as Text requests in a discovery and a normal session.
    let portals = vec!["127.0.0.1:3260,1".to_string(), "[::1]:3260,1".to_string()];
    let targets = [
        TargetRecord { name: TARGET, portals: &portals },
        TargetRecord { name: "iqn.2026-11.org.bootlun:other", portals: &portals },
    ];
    for text in &texts {
        let mut out = Vec::new();
        answer_text(text, &targets, None, &mut out);
        assert!(out.is_empty() || parse_text(&out).is_ok());
        let mut out = Vec::new();
        answer_text(text, &targets, Some(TARGET), &mut out);
        if let Ok(pairs) = parse_text(&out) {
            for (k, v) in pairs {
                if k == "TargetName" {
                    // Answers like NotUnderstood are fine; another
                    // target's name is not.
                    assert!(!v.eq_ignore_ascii_case("iqn.2026-11.org.bootlun:other"), "normal session reported {v}");
                }
            }
        }
    }
});

#[allow(clippy::too_many_arguments)]
fn run_step(
    neg: &mut Negotiator,
    csg: Stage,
    transit: bool,
    nsg: Stage,
    text: &[u8],
    exists: &dyn Fn(&str) -> bool,
    ch: &mut Challenge,
    failed: &mut bool,
) {
    let mut out = b"prefix".to_vec();
    let was_complete = neg.is_complete();
    match neg.step(csg, transit, nsg, text, exists, &mut out) {
        Ok(r) => {
            assert!(!*failed, "a step succeeded after a failure");
            assert!(!was_complete, "a step succeeded after completion");
            assert!(out.starts_with(b"prefix"));
            let resp = &out[6..];
            assert!(resp.is_empty() || resp.last() == Some(&0), "response text not NUL-terminated");
            assert!(parse_text(resp).is_ok(), "target produced unparsable text {resp:?}");
            remember_challenge(resp, ch);
            if r.transit && nsg == Stage::FullFeature {
                assert!(neg.is_complete());
            }
        }
        Err(f) => {
            assert_eq!(out, b"prefix", "failed step appended text");
            let (class, _) = f.status();
            assert!(class == 2 || class == 3);
            *failed = true;
        }
    }
}
