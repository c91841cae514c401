//! Negotiation tests, continued.

use super::*;

#[test]
fn digests() {
    let (n, r) = op_answers(
        Limits::default(),
        &[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None,CRC32C"),
        ],
    );
    assert_eq!(
        r,
        owned(&[("HeaderDigest", "CRC32C"), ("DataDigest", "None")])
    );
    assert!(n.params().header_digest && !n.params().data_digest);
    let (_, r) = op_answers(
        Limits::default(),
        &[("HeaderDigest", "X-foo,CRC32C"), ("DataDigest", "CRC32C")],
    );
    assert_eq!(
        r,
        owned(&[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")])
    );
    let no = Limits {
        allow_digests: false,
        ..Limits::default()
    };
    let (n, r) = op_answers(
        no,
        &[("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")],
    );
    assert_eq!(
        r,
        owned(&[("HeaderDigest", "None"), ("DataDigest", "Reject")])
    );
    assert!(!n.params().header_digest && !n.params().data_digest);
    let (_, r) = op_answers(
        Limits::default(),
        &[("HeaderDigest", ""), ("DataDigest", "CRC32C,,None")],
    );
    assert_eq!(
        r,
        owned(&[("HeaderDigest", "Reject"), ("DataDigest", "Reject")])
    );
}

#[test]
fn rejects_bad_values_and_unknown_keys() {
    let (n, r) = op_answers(
        Limits::default(),
        &[
            ("MaxBurstLength", "100"),
            ("FirstBurstLength", "16777216"),
            ("InitialR2T", "yes"),
            ("ImmediateData", "Maybe"),
            ("ErrorRecoveryLevel", "3"),
            ("MaxConnections", "0"),
            ("MaxOutstandingR2T", "65536"),
            ("DefaultTime2Wait", "3601"),
            ("DefaultTime2Retain", "-1"),
            ("DataPDUInOrder", ""),
            ("MaxRecvDataSegmentLength", "511"),
            ("IFMarkInt", "2048"),
            ("OFMarkInt", "2048~4096"),
            ("TaskReporting", "FastAbort"),
            ("iSCSIProtocolLevel", "32"),
            ("X-com.example.Tuning", "1"),
            ("X#Vendor", "2"),
            ("FancyNewKey", "Yes"),
            ("SendTargets", "All"),
        ],
    );
    let expected: Vec<(&str, &str)> = vec![
        ("MaxBurstLength", "Reject"),
        ("FirstBurstLength", "Reject"),
        ("InitialR2T", "Reject"),
        ("ImmediateData", "Reject"),
        ("ErrorRecoveryLevel", "Reject"),
        ("MaxConnections", "Reject"),
        ("MaxOutstandingR2T", "Reject"),
        ("DefaultTime2Wait", "Reject"),
        ("DefaultTime2Retain", "Reject"),
        ("DataPDUInOrder", "Reject"),
        ("MaxRecvDataSegmentLength", "Reject"),
        ("IFMarkInt", "Reject"),
        ("OFMarkInt", "Reject"),
        ("TaskReporting", "Reject"),
        ("iSCSIProtocolLevel", "Reject"),
        ("X-com.example.Tuning", "NotUnderstood"),
        ("X#Vendor", "NotUnderstood"),
        ("FancyNewKey", "NotUnderstood"),
        ("SendTargets", "Irrelevant"),
    ];
    assert_eq!(r, owned(&expected));
    // Nothing changed.
    let d = SessionParams {
        initiator_name: INI.to_owned(),
        target_name: TGT.to_owned(),
        target_max_recv_dsl: 262144,
        ..SessionParams::default()
    };
    assert_eq!(n.params(), &d);
}

#[test]
fn negotiation_results() {
    let limits = Limits {
        max_burst_length: 131072,
        first_burst_length: 65536,
        max_outstanding_r2t: 4,
        ..Limits::default()
    };
    let (n, r) = op_answers(
        limits.clone(),
        &[
            ("MaxBurstLength", "0x100000"),
            ("FirstBurstLength", "4096"),
            ("MaxOutstandingR2T", "8"),
            ("MaxConnections", "4"),
            ("ErrorRecoveryLevel", "2"),
            ("DefaultTime2Wait", "5"),
            ("DefaultTime2Retain", "60"),
            ("DataPDUInOrder", "No"),
            ("DataSequenceInOrder", "No"),
            ("TaskReporting", "ResponseFence,RFC3720"),
            ("iSCSIProtocolLevel", "2"),
        ],
    );
    assert_eq!(
        r,
        owned(&[
            ("MaxBurstLength", "131072"),
            ("FirstBurstLength", "4096"),
            ("MaxOutstandingR2T", "4"),
            ("MaxConnections", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "5"),
            ("DefaultTime2Retain", "20"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("TaskReporting", "RFC3720"),
            ("iSCSIProtocolLevel", "1"),
        ])
    );
    let p = n.params();
    assert_eq!((p.max_burst_length, p.first_burst_length), (131072, 4096));
    assert_eq!((p.max_outstanding_r2t, p.max_connections), (4, 1));
    assert_eq!((p.default_time2wait, p.default_time2retain), (5, 20));
    assert!(p.data_pdu_in_order && p.data_sequence_in_order);
}

#[test]
fn first_burst_never_exceeds_max_burst() {
    // FirstBurstLength before MaxBurstLength in the same request.
    let (n, r) = op_answers(
        Limits::default(),
        &[("FirstBurstLength", "262144"), ("MaxBurstLength", "131072")],
    );
    assert_eq!(
        r,
        owned(&[("FirstBurstLength", "131072"), ("MaxBurstLength", "131072")])
    );
    assert_eq!(n.params().first_burst_length, 131072);
    // Without MaxBurstLength its default (262144) bounds FirstBurstLength.
    let limits = Limits {
        first_burst_length: 1 << 20,
        ..Limits::default()
    };
    let (_, r) = op_answers(limits, &[("FirstBurstLength", "1048576")]);
    assert_eq!(r, owned(&[("FirstBurstLength", "262144")]));
    // A small MaxBurstLength alone clamps the default FirstBurstLength
    // once the login completes.
    let mut n = Negotiator::new(Limits::default());
    let mut all = leading(&[]);
    all.push(("MaxBurstLength", "4096"));
    step(&mut n, Op, true, FF, &all).unwrap();
    assert_eq!(n.params().first_burst_length, 4096);
}

#[test]
fn skipping_security_and_operational_steps() {
    let mut n = Negotiator::new(Limits::default());
    let r = step(&mut n, Op, false, FF, &leading(&[("InitialR2T", "No")]));
    assert_eq!(
        r,
        Ok((
            false,
            owned(&[
                ("InitialR2T", "No"),
                ("TargetPortalGroupTag", "1"),
                ("MaxRecvDataSegmentLength", "262144"),
            ])
        ))
    );
    assert!(n.authenticated());
    // Second operational request: no repeated declarations.
    let r = step(&mut n, Op, true, FF, &[("ImmediateData", "No")]);
    assert_eq!(r, Ok((true, owned(&[("ImmediateData", "No")]))));
    assert!(n.is_complete());
}

#[test]
fn stage_sequencing() {
    // Full feature is not a login stage.
    let mut n = Negotiator::new(Limits::default());
    assert_eq!(
        step(&mut n, FF, true, FF, &leading(&[])),
        Err(InitiatorError)
    );
    // Transit must move forward.
    for (csg, nsg) in [(Sec, Sec), (Op, Op), (Op, Sec)] {
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step(&mut n, csg, true, nsg, &leading(&[])),
            Err(InitiatorError)
        );
    }
    // Changing stage without the target agreeing.
    let mut n = Negotiator::new(Limits::default());
    step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "None")])).unwrap();
    assert_eq!(step(&mut n, Op, true, FF, &[]), Err(InitiatorError));
    // Staying in the stage after the target agreed to leave it.
    let mut n = Negotiator::new(Limits::default());
    step(&mut n, Sec, true, Op, &leading(&[("AuthMethod", "None")])).unwrap();
    assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(InitiatorError));
    // Going back to security.
    let mut n = Negotiator::new(Limits::default());
    step(&mut n, Op, false, FF, &leading(&[])).unwrap();
    assert_eq!(step(&mut n, Sec, true, Op, &[]), Err(InitiatorError));
    // Security without AuthMethod and no secret: straight through.
    let mut n = Negotiator::new(Limits::default());
    assert_eq!(
        step(&mut n, Sec, true, FF, &leading(&[])),
        Ok((true, owned(&[("TargetPortalGroupTag", "1")])))
    );
    assert!(n.is_complete());
}

#[test]
fn keys_in_wrong_stage_or_from_wrong_party() {
    let cases: Vec<(Stage, Vec<(&str, &str)>)> = vec![
        (
            Sec,
            vec![("AuthMethod", "None"), ("MaxBurstLength", "4096")],
        ),
        (Sec, vec![("AuthMethod", "None"), ("IFMarker", "No")]),
        (Op, vec![("AuthMethod", "None")]),
        (Op, vec![("CHAP_A", "5")]),
        (Sec, vec![("AuthMethod", "None"), ("TargetAlias", "x")]),
        (Op, vec![("TargetPortalGroupTag", "1")]),
        (Op, vec![("TargetAddress", "10.0.0.1:3260,1")]),
    ];
    for (stage, extra) in cases {
        let mut n = Negotiator::new(Limits::default());
        assert_eq!(
            step(&mut n, stage, true, FF, &leading(&extra)),
            Err(InitiatorError),
            "{extra:?}"
        );
    }
}

#[test]
fn max_recv_data_segment_length_may_be_redeclared() {
    let mut n = Negotiator::new(Limits::default());
    let first = leading(&[("MaxRecvDataSegmentLength", "8192")]);
    step(&mut n, Op, false, FF, &first).unwrap();
    let r = step(
        &mut n,
        Op,
        true,
        FF,
        &[("MaxRecvDataSegmentLength", "65536")],
    );
    assert_eq!(r, Ok((true, vec![])));
    assert_eq!(n.params().initiator_max_recv_dsl, 65536);
}

#[test]
fn discovery_without_auth() {
    let discovery = [
        ("InitiatorName", INI),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
    ];
    // By default a configured secret applies to discovery too.
    let mut n = chap_negotiator();
    assert_eq!(step(&mut n, Sec, true, Op, &discovery), Err(AuthFailed));
    let mut n = chap_negotiator().with_discovery_auth(false);
    assert_eq!(
        step(&mut n, Sec, true, Op, &discovery),
        Ok((
            true,
            owned(&[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")])
        ))
    );
    // Normal sessions still need CHAP.
    let mut n = chap_negotiator().with_discovery_auth(false);
    let normal = leading(&[("AuthMethod", "None")]);
    assert_eq!(step(&mut n, Sec, true, Op, &normal), Err(AuthFailed));
    let mut n = chap_negotiator().with_discovery_auth(false);
    assert_eq!(step(&mut n, Op, true, FF, &leading(&[])), Err(AuthFailed));
}

/// libiscsi: mutual CHAP with upper-case hex, then an operational stage
/// that repeats InitiatorName, TargetName and SessionType.
#[test]
fn libiscsi_style_login() {
    let mut n = chap_negotiator().with_mutual_chap(ChapSecret {
        user: "target-user".to_owned(),
        secret: b"targetsecret12".to_vec(),
    });
    let first = leading(&[("InitiatorAlias", "libiscsi"), ("AuthMethod", "CHAP,None")]);
    assert!(matches!(
        step(&mut n, Sec, true, Op, &first),
        Ok((false, _))
    ));
    assert!(matches!(
        step(&mut n, Sec, false, Op, &[("CHAP_A", "5")]),
        Ok((false, _))
    ));
    let their_challenge: Vec<u8> = (100..132).collect();
    let challenge_hex = encode_hex(&their_challenge)
        .to_uppercase()
        .replacen("0X", "0x", 1);
    let r = step(
        &mut n,
        Sec,
        true,
        Op,
        &[
            ("CHAP_N", "ipxe-user"),
            ("CHAP_R", "0xDCFF8B6A836896FA609EC24C742B0517"),
            ("CHAP_I", "1"),
            ("CHAP_C", &challenge_hex),
        ],
    );
    let expected = ChapAlgorithm::Md5.response(1, b"targetsecret12", &their_challenge);
    assert_eq!(
        r,
        Ok((
            true,
            owned(&[
                ("CHAP_N", "target-user"),
                ("CHAP_R", &encode_hex(&expected))
            ])
        ))
    );
    let ops = leading(&[
        ("InitiatorAlias", "libiscsi"),
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "None"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("MaxConnections", "1"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ]);
    let (transit, resp) = step(&mut n, Op, true, FF, &ops).unwrap();
    assert!(transit && n.is_complete());
    assert_eq!(resp[0], ("HeaderDigest".to_owned(), "None".to_owned()));
    assert!(resp.contains(&("FirstBurstLength".to_owned(), "262144".to_owned())));
    assert!(resp
        .iter()
        .all(|(k, _)| k != "InitiatorName" && k != "TargetName"));
    assert_eq!(n.params().first_burst_length, 262144);
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let n = chap_negotiator();
    let text = format!("{n:?}");
    assert!(text.contains("ipxe-user") && text.contains("<redacted>"));
    assert!(!text.contains("118, 101, 114, 121"), "{text}");
}

#[test]
fn login_size_is_bounded() {
    let mut n = Negotiator::new(Limits::default());
    step(&mut n, Op, false, FF, &leading(&[])).unwrap();
    let mut failed = false;
    for _ in 0..100 {
        match step(&mut n, Op, false, FF, &[]) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, InitiatorError);
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "endless login accepted");
    // Many distinct private keys adding up to more than 64 KiB.
    let mut n = Negotiator::new(Limits::default());
    step(&mut n, Op, false, FF, &leading(&[])).unwrap();
    let value = "v".repeat(200);
    let mut result = Ok((false, vec![]));
    for i in 0..40 {
        let keys: Vec<String> = (0..10).map(|j| format!("X-k{i}-{j}")).collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
        result = step(&mut n, Op, false, FF, &pairs);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(InitiatorError));
}

#[test]
fn duplicate_keys() {
    let mut n = Negotiator::new(Limits::default());
    let dup = leading(&[("AuthMethod", "None"), ("AuthMethod", "None")]);
    assert_eq!(step(&mut n, Sec, true, Op, &dup), Err(InitiatorError));
    let mut n = Negotiator::new(Limits::default());
    step(
        &mut n,
        Op,
        false,
        FF,
        &leading(&[("MaxBurstLength", "65536")]),
    )
    .unwrap();
    assert_eq!(
        step(&mut n, Op, true, FF, &[("MaxBurstLength", "65536")]),
        Err(InitiatorError)
    );
    let mut n = Negotiator::new(Limits::default());
    step(&mut n, Op, false, FF, &leading(&[("X-foo", "1")])).unwrap();
    assert_eq!(
        step(&mut n, Op, true, FF, &[("X-foo", "1")]),
        Err(InitiatorError)
    );
}

#[test]
fn malformed_text_fails_login() {
    let bad: [&[u8]; 7] = [
        b"InitiatorName=iqn.x",
        b"InitiatorName\0",
        b"=x\0",
        b"InitiatorName=\xff\0",
        b"InitiatorName=a\0\0TargetName=b\0",
        b"Initiator Name=a\0",
        b"\0\0x",
    ];
    for raw in bad {
        for stage in [Sec, Op] {
            let mut n = Negotiator::new(Limits::default());
            assert_eq!(
                step_raw(&mut n, stage, true, FF, raw),
                Err(InitiatorError),
                "{raw:?}"
            );
        }
    }
    let long = format!("InitiatorName={}\0TargetName={TGT}\0", "a".repeat(256));
    let mut n = Negotiator::new(Limits::default());
    assert_eq!(
        step_raw(&mut n, Sec, true, Op, long.as_bytes()),
        Err(InitiatorError)
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "InitiatorName",
        "TargetName",
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
        "InitialR2T",
        "ImmediateData",
        "IFMarker",
        "TaskReporting",
        "X-foo",
        "TargetAlias",
    ];
    const VALUES: &[&str] = &[
        "",
        "None",
        "CHAP",
        "CHAP,None",
        "5",
        "7,5",
        "Normal",
        "Discovery",
        TGT,
        INI,
        "ipxe-user",
        "0xdcff8b6a836896fa609ec24c742b0517",
        "0x",
        "0b",
        "0bAAAA",
        "Yes",
        "No",
        "CRC32C,None",
        "512",
        "16777215",
        "16777216",
        "0xffffffffffffffffff",
        "Reject",
        "ä",
    ];

    fn stage() -> impl Strategy<Value = Stage> {
        prop_oneof![Just(Sec), Just(Op), Just(FF)]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..12).prop_map(|kv| {
                let mut t = Vec::new();
                for (k, v) in kv {
                    format_key(&mut t, KEYS[k], VALUES[v]);
                }
                t
            }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_steps_never_panic(
            with_chap in any::<bool>(),
            steps in prop::collection::vec((stage(), any::<bool>(), stage(), body()), 1..6),
        ) {
            let limits = if with_chap { chap_limits() } else { Limits::default() };
            let mut n = Negotiator::new(limits);
            for (csg, transit, nsg, raw) in steps {
                let mut out = Vec::new();
                if n.step(csg, transit, nsg, &raw, &exists, &mut out).is_ok() {
                    prop_assert!(parse_text(&out).is_ok());
                } else {
                    prop_assert!(out.is_empty());
                }
                let _ = n.params();
            }
        }

        #[test]
        fn arbitrary_text_after_valid_start(
            csg_op in any::<bool>(),
            raw in body(),
        ) {
            let mut n = Negotiator::new(Limits::default());
            let first = leading(&[]);
            let csg = if csg_op { Op } else { Sec };
            step(&mut n, csg, false, FF, &first).unwrap();
            let mut out = Vec::new();
            let _ = n.step(csg, true, FF, &raw, &exists, &mut out);
        }
    }
}

mod security {
    use super::*;
    use std::sync::Arc;

    fn creds(user: &str, secret: &[u8]) -> ChapSecret {
        ChapSecret {
            user: user.to_owned(),
            secret: secret.to_vec(),
        }
    }

    /// A login's negotiator and its last step.
    type ChapOutcome = (
        Negotiator,
        Result<(bool, Vec<(String, String)>), LoginFailure>,
    );

    /// Run a one-way CHAP login with algorithm `code` against `limits`,
    /// answering with `user`/`secret`. Returns the final step.
    fn chap_login(
        limits: Limits,
        session: &str,
        code: u64,
        user: &str,
        secret: &[u8],
    ) -> ChapOutcome {
        let mut n = Negotiator::new(limits);
        let alg = chap::ChapAlgorithm::from_code(code).expect("known");
        let challenge: Vec<u8> = (1..=alg.digest_len() as u8).collect();
        n.fixed_challenge = Some((9, challenge.clone()));
        let mut first = vec![("InitiatorName", INI), ("SessionType", session)];
        if session == "Normal" {
            first.push(("TargetName", TGT));
        }
        first.push(("AuthMethod", "CHAP"));
        let r = step(&mut n, Sec, false, Op, &first);
        assert!(r.is_ok(), "{r:?}");
        let code_s = code.to_string();
        let r = step(&mut n, Sec, false, Op, &[("CHAP_A", code_s.as_str())]);
        let Ok((_, answer)) = r else {
            return (n, r);
        };
        assert!(answer.contains(&("CHAP_A".to_owned(), code_s.clone())));
        let resp = text::encode_hex(&alg.response(9, secret, &challenge));
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[("CHAP_N", user), ("CHAP_R", resp.as_str())],
        );
        (n, r)
    }

    #[test]
    fn every_algorithm_logs_in_and_wrong_secrets_fail_naming_the_key() {
        let limits = Limits {
            chap: Some(creds("alice", b"twelve-bytes")),
            ..Limits::default()
        };
        for code in [5, 6, 7, 8] {
            let (n, r) = chap_login(limits.clone(), "Normal", code, "alice", b"twelve-bytes");
            assert_eq!(r, Ok((true, vec![])), "CHAP_A={code}");
            assert!(n.authenticated());
            let (n, r) = chap_login(limits.clone(), "Normal", code, "alice", b"twelve-bytez");
            assert_eq!(r, Err(AuthFailed), "CHAP_A={code}");
            let why = n.failure_reason().unwrap_or_default();
            assert!(why.contains("CHAP_R"), "{why}");
            assert!(!why.contains("twelve"), "secret in {why}");
            let (n, r) = chap_login(limits.clone(), "Normal", code, "mallory", b"twelve-bytes");
            assert_eq!(r, Err(AuthFailed));
            assert!(n.failure_reason().unwrap_or_default().contains("CHAP_N"));
        }
    }

    #[test]
    fn discovery_sessions_use_the_discovery_credentials() {
        let limits = Limits {
            chap: Some(creds("alice", b"twelve-bytes")),
            discovery_chap: Some(creds("disco", b"discovery-secret")),
            ..Limits::default()
        };
        let (_, r) = chap_login(limits.clone(), "Discovery", 7, "disco", b"discovery-secret");
        assert_eq!(r, Ok((true, vec![])));
        // The normal session's credentials do not open discovery, and
        // the discovery credentials do not open the disk.
        let (_, r) = chap_login(limits.clone(), "Discovery", 7, "alice", b"twelve-bytes");
        assert_eq!(r, Err(AuthFailed));
        let (_, r) = chap_login(limits.clone(), "Normal", 7, "disco", b"discovery-secret");
        assert_eq!(r, Err(AuthFailed));
        // Discovery credentials alone protect discovery only.
        let only_disco = Limits {
            discovery_chap: Some(creds("disco", b"discovery-secret")),
            ..Limits::default()
        };
        let mut n = Negotiator::new(only_disco);
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("InitiatorName", INI),
                ("SessionType", "Discovery"),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(r, Err(AuthFailed));
    }

    #[test]
    fn mutual_credentials_come_from_the_limits() {
        let limits = Limits {
            chap: Some(creds("alice", b"twelve-bytes")),
            mutual_chap: Some(creds("target", b"target-secret")),
            ..Limits::default()
        };
        let mut n = Negotiator::new(limits);
        n.fixed_challenge = Some((9, (1..=20).collect()));
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
        step(&mut n, Sec, false, Op, &[("CHAP_A", "6")]).unwrap();
        let challenge: Vec<u8> = (1..=20).collect();
        let alg = chap::ChapAlgorithm::Sha1;
        let resp = text::encode_hex(&alg.response(9, b"twelve-bytes", &challenge));
        let theirs = [0xa5u8; 20];
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", resp.as_str()),
                ("CHAP_I", "200"),
                ("CHAP_C", text::encode_hex(&theirs).as_str()),
            ],
        );
        let want = text::encode_hex(&alg.response(200, b"target-secret", &theirs));
        assert_eq!(
            r,
            Ok((
                true,
                owned(&[("CHAP_N", "target"), ("CHAP_R", want.as_str())])
            ))
        );
        // Reflection: the initiator sends back our challenge.
        let limits = Limits {
            chap: Some(creds("alice", b"twelve-bytes")),
            mutual_chap: Some(creds("target", b"target-secret")),
            ..Limits::default()
        };
        let mut n = Negotiator::new(limits);
        n.fixed_challenge = Some((9, challenge.clone()));
        step(&mut n, Sec, false, Op, &leading(&[("AuthMethod", "CHAP")])).unwrap();
        step(&mut n, Sec, false, Op, &[("CHAP_A", "6")]).unwrap();
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", resp.as_str()),
                ("CHAP_I", "9"),
                ("CHAP_C", text::encode_hex(&challenge).as_str()),
            ],
        );
        assert_eq!(r, Err(AuthFailed));
        assert!(n.failure_reason().unwrap_or_default().contains("reflected"));
    }

    fn acl_step(acl: Acl, peer: &str, name: &str) -> (Negotiator, Result<bool, LoginFailure>) {
        let mut n = Negotiator::new(Limits {
            acl: Arc::new(acl),
            ..Limits::default()
        });
        n.set_peer(peer.parse().expect("address"));
        let r = step(
            &mut n,
            Sec,
            true,
            Op,
            &[
                ("InitiatorName", name),
                ("TargetName", "iqn.2026-01.org.example:nope"),
                ("AuthMethod", "None"),
            ],
        );
        (n, r.map(|(t, _)| t))
    }

    #[test]
    fn acl_refuses_with_authorization_failure_naming_initiator_and_address() {
        let acl = Acl {
            initiators: vec!["iqn.2026-01.org.example:good".to_owned()],
            addresses: vec!["10.1.0.0/16".parse().expect("cidr")],
        };
        let (n, r) = acl_step(acl.clone(), "10.2.0.1", "iqn.2026-01.org.example:good");
        assert_eq!(r, Err(NotAllowed));
        assert_eq!(NotAllowed.status(), (2, 2));
        let why = n.failure_reason().unwrap_or_default();
        assert!(
            why.contains("10.2.0.1") && why.contains("allow-address"),
            "{why}"
        );
        assert!(why.contains("iqn.2026-01.org.example:good"), "{why}");
        let (n, r) = acl_step(acl.clone(), "10.1.2.3", "iqn.2026-01.org.example:bad");
        assert_eq!(r, Err(NotAllowed));
        let why = n.failure_reason().unwrap_or_default();
        assert!(
            why.contains("allow-initiator") && why.contains("10.1.2.3"),
            "{why}"
        );
        // Allowed (an IPv4-mapped peer, a name in another case): the login
        // goes on to the target name, which does not exist here.
        let (n, r) = acl_step(acl, "::ffff:10.1.2.3", "IQN.2026-01.org.example:GOOD");
        assert_eq!(r, Err(TargetNotFound));
        assert!(n
            .failure_reason()
            .unwrap_or_default()
            .contains("TargetName"));
        // Empty lists allow everyone.
        let (_, r) = acl_step(Acl::default(), "192.0.2.1", "iqn.x");
        assert_eq!(r, Err(TargetNotFound));
    }

    #[test]
    fn failures_name_the_key() {
        let mut n = Negotiator::new(Limits::default());
        let r = step(&mut n, Sec, true, Op, &leading(&[("HeaderDigest", "None")]));
        assert_eq!(r, Err(InitiatorError));
        assert!(n
            .failure_reason()
            .unwrap_or_default()
            .contains("HeaderDigest"));
        let mut n = Negotiator::new(Limits::default());
        let r = step(&mut n, Sec, true, Op, &[("TargetName", TGT)]);
        assert_eq!(r, Err(MissingParameter));
        assert!(n
            .failure_reason()
            .unwrap_or_default()
            .contains("InitiatorName"));
    }
}
