//! Negotiation tests: every key, every stage, hostile text.
use super::*;
use LoginFailure::*;
use Stage::{FullFeature as FF, Operational as Op, Security as Sec};

const TGT: &str = "iqn.2026-01.org.example:boot";
const INI: &str = "iqn.2004-10.com.ubuntu:01:f00d";

fn exists(name: &str) -> bool {
    name == TGT
}

fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (k, v) in pairs {
        format_key(&mut t, k, v);
    }
    t
}

type Answer = Result<(bool, Vec<(String, String)>), LoginFailure>;

fn step(
    n: &mut Negotiator,
    csg: Stage,
    transit: bool,
    nsg: Stage,
    pairs: &[(&str, &str)],
) -> Answer {
    step_raw(n, csg, transit, nsg, &text(pairs))
}

fn step_raw(n: &mut Negotiator, csg: Stage, transit: bool, nsg: Stage, raw: &[u8]) -> Answer {
    let mut out = b"prefix".to_vec();
    let r = n.step(csg, transit, nsg, raw, &exists, &mut out);
    assert!(out.starts_with(b"prefix"));
    let body = &out[6..];
    match r {
        Ok(s) => {
            let pairs = parse_text(body).expect("response text must parse");
            Ok((
                s.transit,
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ))
        }
        Err(e) => {
            assert!(body.is_empty(), "no text on failure");
            Err(e)
        }
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn leading<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("InitiatorName", INI),
        ("TargetName", TGT),
        ("SessionType", "Normal"),
    ];
    v.extend_from_slice(extra);
    v
}

fn chap_limits() -> Limits {
    Limits {
        chap: Some(ChapSecret {
            user: "ipxe-user".to_owned(),
            secret: b"verysecretpw".to_vec(),
        }),
        ..Limits::default()
    }
}

fn chap_negotiator() -> Negotiator {
    let mut n = Negotiator::new(chap_limits());
    n.fixed_challenge = Some((0x2a, (1..=16).collect()));
    n
}

/// Security stage with AuthMethod=None, operational stage with the values
/// open-iscsi sends by default.
#[test]
fn open_iscsi_login() {
    let mut n = Negotiator::new(Limits::default());
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            ("InitiatorName", INI),
            ("InitiatorAlias", "host1"),
            ("TargetName", TGT),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(
        r,
        Ok((
            true,
            owned(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")])
        ))
    );
    assert!(n.authenticated());
    let ops = [
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ];
    let r = step(&mut n, Op, true, FF, &ops);
    assert_eq!(
        r,
        Ok((
            true,
            owned(&[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
                ("IFMarker", "Reject"),
                ("OFMarker", "Reject"),
                ("ErrorRecoveryLevel", "0"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "1048576"),
                ("FirstBurstLength", "262144"),
                ("MaxOutstandingR2T", "1"),
                ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
            ])
        ))
    );
    assert!(n.is_complete());
    let p = n.params();
    assert_eq!(p.session_type, SessionType::Normal);
    assert_eq!(p.initiator_name, INI);
    assert_eq!(p.initiator_alias, "host1");
    assert_eq!(p.target_name, TGT);
    assert!(!p.header_digest && !p.data_digest);
    assert_eq!(p.initiator_max_recv_dsl, 262144);
    assert_eq!(p.target_max_recv_dsl, 262144);
    assert_eq!(p.max_burst_length, 1048576);
    assert_eq!(p.first_burst_length, 262144);
    assert!(!p.initial_r2t && p.immediate_data);
    assert_eq!(p.max_outstanding_r2t, 1);
    assert_eq!(p.error_recovery_level, 0);
    assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
    // Nothing may follow the transition to full feature phase.
    assert_eq!(step(&mut n, FF, false, FF, &[]), Err(InitiatorError));
}

const IPXE_OPS: [(&str, &str); 14] = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxConnections", "1"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
    ("MaxRecvDataSegmentLength", "8192"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("DefaultTime2Wait", "0"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"),
];

/// iPXE: CHAP (MD5) in the security stage, then its operational values.
#[test]
fn ipxe_login_with_chap() {
    let mut n = chap_negotiator();
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            (
                "InitiatorName",
                "iqn.2010-04.org.ipxe:00000000-0000-0000-0000-000000000000",
            ),
            ("TargetName", TGT),
            ("SessionType", "Normal"),
            ("AuthMethod", "CHAP,None"),
        ],
    );
    // Authentication has only started: no transit yet.
    assert_eq!(
        r,
        Ok((
            false,
            owned(&[("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "1")])
        ))
    );
    assert!(n.auth_in_progress());
    let r = step(&mut n, Sec, true, Op, &[("CHAP_A", "5")]);
    assert_eq!(
        r,
        Ok((
            false,
            owned(&[
                ("CHAP_A", "5"),
                ("CHAP_I", "42"),
                ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
            ])
        ))
    );
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", "0xdcff8b6a836896fa609ec24c742b0517"),
        ],
    );
    assert_eq!(r, Ok((true, vec![])));
    assert!(n.authenticated() && !n.auth_in_progress());
    let r = step(&mut n, Op, true, FF, &IPXE_OPS);
    let mut expected: Vec<(&str, &str)> = IPXE_OPS
        .iter()
        .copied()
        .filter(|(k, _)| *k != "MaxRecvDataSegmentLength")
        .collect();
    expected.push(("MaxRecvDataSegmentLength", "262144"));
    assert_eq!(r, Ok((true, owned(&expected))));
    let p = n.params();
    assert_eq!(p.initiator_max_recv_dsl, 8192);
    assert_eq!(p.target_max_recv_dsl, 262144);
    assert_eq!((p.max_burst_length, p.first_burst_length), (262144, 65536));
    assert!(p.initial_r2t && !p.immediate_data);
    assert_eq!((p.default_time2wait, p.default_time2retain), (0, 0));
    assert!(n.is_complete());
}

/// Agree on CHAP and get the (fixed) challenge.
fn to_challenge(n: &mut Negotiator) {
    let r = step(n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")]));
    assert!(matches!(r, Ok((false, _))));
    let r = step(n, Sec, false, Op, &[("CHAP_A", "5")]);
    assert!(matches!(r, Ok((false, _))));
}

#[test]
fn chap_failures() {
    let good_r = "0xdcff8b6a836896fa609ec24c742b0517";
    let bad_r = "0xdcff8b6a836896fa609ec24c742b0518";
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("CHAP_N", "ipxe-user"), ("CHAP_R", bad_r)],
        vec![("CHAP_N", "other-user"), ("CHAP_R", good_r)],
        vec![
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", "dcff8b6a836896fa609ec24c742b0517"),
        ],
        vec![("CHAP_N", "ipxe-user"), ("CHAP_R", "0xdcff")],
        vec![("CHAP_N", "ipxe-user")],
        vec![("CHAP_R", good_r)],
        // Mutual CHAP without target credentials configured.
        vec![
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", good_r),
            ("CHAP_I", "7"),
            ("CHAP_C", "0xa0a1"),
        ],
    ];
    for case in cases {
        let mut n = chap_negotiator();
        to_challenge(&mut n);
        assert_eq!(
            step(&mut n, Sec, true, Op, &case),
            Err(AuthFailed),
            "{case:?}"
        );
        assert!(!n.authenticated());
        // The login is over.
        assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(InitiatorError));
    }
}

#[test]
fn chap_negotiation_failures() {
    // Initiator offers only None while a secret is configured.
    let mut n = chap_negotiator();
    assert_eq!(
        step(&mut n, Sec, true, Op, &leading(&[("AuthMethod", "None")])),
        Err(AuthFailed)
    );
    // No AuthMethod at all, asking to move on.
    let mut n = chap_negotiator();
    assert_eq!(step(&mut n, Sec, true, Op, &leading(&[])), Err(AuthFailed));
    // Skipping the security stage.
    let mut n = chap_negotiator();
    assert_eq!(step(&mut n, Op, true, FF, &leading(&[])), Err(AuthFailed));
    // Only unsupported algorithms (4 and 9 are not CHAP digests we know).
    let mut n = chap_negotiator();
    step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
    assert_eq!(
        step(&mut n, Sec, false, Op, &[("CHAP_A", "4,9")]),
        Err(AuthFailed)
    );
    assert!(n.failure_reason().unwrap_or("").contains("CHAP_A"));
    // Response before the challenge.
    let mut n = chap_negotiator();
    step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
    assert_eq!(
        step(
            &mut n,
            Sec,
            true,
            Op,
            &[("CHAP_N", "ipxe-user"), ("CHAP_R", "0x00")]
        ),
        Err(AuthFailed)
    );
    // CHAP keys without CHAP agreed.
    let mut n = Negotiator::new(Limits::default());
    assert_eq!(
        step(
            &mut n,
            Sec,
            false,
            Op,
            &leading(&[("AuthMethod", "None"), ("CHAP_A", "5")])
        ),
        Err(InitiatorError)
    );
    // Without a secret, CHAP alone is rejected, and transit then fails.
    let mut n = Negotiator::new(Limits::default());
    assert_eq!(
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])),
        Ok((
            false,
            owned(&[("AuthMethod", "Reject"), ("TargetPortalGroupTag", "1")])
        ))
    );
    assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(AuthFailed));
}

#[test]
fn chap_steps_without_keys_keep_waiting() {
    let mut n = chap_negotiator();
    step(
        &mut n,
        Sec,
        true,
        Op,
        &leading(&[("AuthMethod", "CHAP,None")]),
    )
    .unwrap();
    assert_eq!(step(&mut n, Sec, true, Op, &[]), Ok((false, vec![])));
    step(&mut n, Sec, true, Op, &[("CHAP_A", "5")]).unwrap();
    assert_eq!(step(&mut n, Sec, true, Op, &[]), Ok((false, vec![])));
    assert!(n.auth_in_progress());
}

#[test]
fn chap_algorithm_in_first_request_and_sha256() {
    let mut n = Negotiator::new(chap_limits());
    n.fixed_challenge = Some((0x2a, (1..=32).collect()));
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &leading(&[("AuthMethod", "CHAP"), ("CHAP_A", "9,7,5")]),
    );
    let challenge: Vec<u8> = (1..=32).collect();
    assert_eq!(
        r,
        Ok((
            false,
            owned(&[
                ("AuthMethod", "CHAP"),
                ("CHAP_A", "7"),
                ("CHAP_I", "42"),
                ("CHAP_C", &encode_hex(&challenge)),
                ("TargetPortalGroupTag", "1"),
            ])
        ))
    );
    let r = step(
        &mut n,
        Sec,
        true,
        FF,
        &[
            ("CHAP_N", "ipxe-user"),
            (
                "CHAP_R",
                "0xb22c82574ceb2c3ad6ac41f868697e6dfe3485001e2128dbebd96599ba4ac8a6",
            ),
        ],
    );
    // Straight from security to full feature phase.
    assert_eq!(r, Ok((true, vec![])));
    assert!(n.is_complete());
    // No operational stage: the RFC defaults stay.
    assert_eq!(n.params().target_max_recv_dsl, 8192);
    assert_eq!(n.params().initiator_max_recv_dsl, 8192);
}

#[test]
fn mutual_chap() {
    let target_creds = ChapSecret {
        user: "target-user".to_owned(),
        secret: b"targetsecret12".to_vec(),
    };
    let good_r = "0xdcff8b6a836896fa609ec24c742b0517";
    let mut n = chap_negotiator().with_mutual_chap(target_creds.clone());
    to_challenge(&mut n);
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", good_r),
            ("CHAP_I", "7"),
            ("CHAP_C", "0xa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
        ],
    );
    assert_eq!(
        r,
        Ok((
            true,
            owned(&[
                ("CHAP_N", "target-user"),
                ("CHAP_R", "0x30a9511cafc012c47f7f69c424fe4ac3")
            ])
        ))
    );
    // The initiator reflecting the target's own challenge.
    let mut n = chap_negotiator().with_mutual_chap(target_creds.clone());
    to_challenge(&mut n);
    let reflected = [
        ("CHAP_N", "ipxe-user"),
        ("CHAP_R", good_r),
        ("CHAP_I", "42"),
        ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
    ];
    assert_eq!(step(&mut n, Sec, true, Op, &reflected), Err(AuthFailed));
    // CHAP_I without CHAP_C, and a bad identifier.
    for extra in [
        vec![("CHAP_I", "7")],
        vec![("CHAP_I", "256"), ("CHAP_C", "0xa0")],
    ] {
        let mut n = chap_negotiator().with_mutual_chap(target_creds.clone());
        to_challenge(&mut n);
        let mut keys = vec![("CHAP_N", "ipxe-user"), ("CHAP_R", good_r)];
        keys.extend(extra);
        assert_eq!(step(&mut n, Sec, true, Op, &keys), Err(AuthFailed));
    }
    // The same secret in both directions is refused.
    let mut n = chap_negotiator().with_mutual_chap(ChapSecret {
        user: "t".to_owned(),
        secret: b"verysecretpw".to_vec(),
    });
    to_challenge(&mut n);
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", good_r),
            ("CHAP_I", "7"),
            ("CHAP_C", "0xa0a1"),
        ],
    );
    assert_eq!(r, Err(AuthFailed));
}

#[test]
fn random_challenge_round_trip() {
    let mut n = Negotiator::new(chap_limits());
    step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
    let (_, resp) = step(&mut n, Sec, false, Op, &[("CHAP_A", "5")]).unwrap();
    let id: u8 = resp[1].1.parse().unwrap();
    let challenge = decode_binary(&resp[2].1).unwrap();
    assert_eq!(challenge.len(), 16);
    let r = ChapAlgorithm::Md5.response(id, b"verysecretpw", &challenge);
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[("CHAP_N", "ipxe-user"), ("CHAP_R", &encode_hex(&r))],
    );
    assert_eq!(r, Ok((true, vec![])));
}

#[test]
fn leading_keys() {
    let cases: Vec<(Vec<(&str, &str)>, LoginFailure)> = vec![
        (
            vec![("TargetName", TGT), ("AuthMethod", "None")],
            MissingParameter,
        ),
        (
            vec![("InitiatorName", ""), ("TargetName", TGT)],
            MissingParameter,
        ),
        (
            vec![("InitiatorName", INI), ("AuthMethod", "None")],
            MissingParameter,
        ),
        (
            vec![("InitiatorName", INI), ("SessionType", "Normal")],
            MissingParameter,
        ),
        (
            vec![("InitiatorName", INI), ("TargetName", "iqn.x:other")],
            TargetNotFound,
        ),
        (
            vec![
                ("InitiatorName", INI),
                ("SessionType", "Bogus"),
                ("TargetName", TGT),
            ],
            SessionTypeUnsupported,
        ),
    ];
    for (pairs, fail) in cases {
        for stage in [Sec, Op] {
            let mut n = Negotiator::new(Limits::default());
            assert_eq!(
                step(&mut n, stage, true, FF, &pairs),
                Err(fail),
                "{pairs:?}"
            );
        }
    }
    // SessionType defaults to Normal.
    let mut n = Negotiator::new(Limits::default());
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[("InitiatorName", INI), ("TargetName", TGT)],
    );
    assert_eq!(r, Ok((true, owned(&[("TargetPortalGroupTag", "1")]))));
    assert_eq!(n.params().session_type, SessionType::Normal);
    // Leading keys repeated later: fine unchanged, fatal when changed.
    for (key, same, changed) in [
        ("InitiatorName", INI, "iqn.x:other"),
        ("TargetName", TGT, "iqn.x:other"),
        ("SessionType", "Normal", "Discovery"),
    ] {
        let mut n = Negotiator::new(Limits::default());
        step(&mut n, Sec, false, Op, &leading(&[])).unwrap();
        assert_eq!(
            step(&mut n, Sec, false, Op, &[(key, same)]),
            Ok((false, vec![]))
        );
        assert_eq!(
            step(&mut n, Sec, true, Op, &[(key, changed)]),
            Err(InitiatorError)
        );
    }
    // Leading keys first sent after the first request.
    let mut n = Negotiator::new(Limits::default());
    step(
        &mut n,
        Sec,
        false,
        Op,
        &[("InitiatorName", INI), ("TargetName", TGT)],
    )
    .unwrap();
    assert_eq!(
        step(&mut n, Sec, true, Op, &[("SessionType", "Normal")]),
        Err(InitiatorError)
    );
}

#[test]
fn discovery_session() {
    let mut n = Negotiator::new(Limits::default());
    // TargetName is ignored in a discovery session.
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            ("InitiatorName", INI),
            ("SessionType", "Discovery"),
            ("TargetName", "iqn.x:unknown"),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(
        r,
        Ok((
            true,
            owned(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")])
        ))
    );
    let r = step(
        &mut n,
        Op,
        true,
        FF,
        &[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None"),
            ("MaxBurstLength", "262144"),
            ("InitialR2T", "No"),
            ("MaxConnections", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "2"),
            ("MaxRecvDataSegmentLength", "32768"),
        ],
    );
    assert_eq!(
        r,
        Ok((
            true,
            owned(&[
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "None"),
                ("MaxBurstLength", "Irrelevant"),
                ("InitialR2T", "Irrelevant"),
                ("MaxConnections", "Irrelevant"),
                ("ErrorRecoveryLevel", "0"),
                ("DefaultTime2Wait", "2"),
                ("MaxRecvDataSegmentLength", "262144"),
            ])
        ))
    );
    let p = n.params();
    assert_eq!(p.session_type, SessionType::Discovery);
    assert_eq!(p.target_name, "");
    assert!(p.header_digest && !p.data_digest);
    assert_eq!(p.initiator_max_recv_dsl, 32768);
    assert_eq!(
        p.max_burst_length,
        SessionParams::default().max_burst_length
    );
}

fn op_answers(limits: Limits, pairs: &[(&str, &str)]) -> (Negotiator, Vec<(String, String)>) {
    let mut n = Negotiator::new(limits);
    let mut all = leading(&[]);
    all.extend_from_slice(pairs);
    let (_, mut resp) = step(&mut n, Op, false, FF, &all).unwrap();
    assert_eq!(resp.remove(resp.len() - 1).0, "MaxRecvDataSegmentLength");
    assert_eq!(resp.remove(resp.len() - 1).0, "TargetPortalGroupTag");
    (n, resp)
}

mod more;
