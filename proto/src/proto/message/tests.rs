//! Tests of request decoding and response encoding.

use super::*;

fn decode(s: &str) -> Result<Request, RequestError> {
    decode_request(s.as_bytes())
}

#[test]
fn a_member_named_twice_is_refused_at_any_depth() {
    for frame in [
        r#"{"id":1,"op":"public_key","key":"hsm/a","key":"hsm/b"}"#,
        r#"{"id":1,"id":2,"op":"list_keys"}"#,
        r#"{"id":1,"op":"list_keys","x":{"a":1,"a":2}}"#,
        r#"{"id":1,"op":"list_keys","x":[{"a":1,"a":1}]}"#,
    ] {
        let e = decode(frame).unwrap_err();
        assert!(e.malformed, "{frame}");
        assert!(
            e.error.message.contains("appears twice"),
            "{}",
            e.error.message
        );
    }
    assert!(decode(r#"{"id":1,"op":"public_key","key":"hsm/a","x":{"key":"b"}}"#).is_ok());
}

#[test]
fn client_strings_are_bounded_and_free_of_control_characters() {
    let sign = |name: &str| {
        decode(&format!(
            r#"{{"id":3,"op":"sign","key":"hsm/r","purpose":"blob","hash":"sha256","digest":"{}","name":{}}}"#,
            B64.encode([0u8; 32]),
            serde_json::to_string(name).unwrap()
        ))
    };
    assert!(sign(&"a".repeat(MAX_NAME)).is_ok());
    let e = sign(&"a".repeat(MAX_NAME + 1)).unwrap_err();
    assert_eq!(e.id, Some(3));
    assert!(
        e.error.message.contains("at most 1024"),
        "{}",
        e.error.message
    );
    assert!(
        !e.error.message.contains("aaaa"),
        "the string is not echoed"
    );
    let e = sign(
        "release.tar.gz
Asked by uid 0",
    )
    .unwrap_err();
    assert!(
        e.error.message.contains("control character"),
        "{}",
        e.error.message
    );
    let long_key = format!(
        r#"{{"id":4,"op":"public_key","key":"hsm/{}"}}"#,
        "k".repeat(300)
    );
    assert!(decode(&long_key)
        .unwrap_err()
        .error
        .message
        .contains("`key`"));
}

#[test]
fn design_examples_decode() {
    assert_eq!(
        decode(r#"{"id":0,"op":"hello","version":1}"#).unwrap(),
        Request {
            id: 0,
            op: Op::Hello(Hello { version: 1 })
        }
    );
    assert_eq!(
        decode(r#"{"id":1,"op":"list_keys"}"#).unwrap().op,
        Op::ListKeys
    );
    assert_eq!(
        decode(r#"{"id":2,"op":"public_key","key":"hsm/release"}"#)
            .unwrap()
            .op,
        Op::PublicKey(KeyRef {
            key: "hsm/release".into()
        })
    );
    let sign = decode(
        r#"{"id":3,"op":"sign","key":"hsm/release","purpose":"digest","hash":"sha256","digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
    )
    .unwrap();
    let Op::Sign(s) = sign.op else {
        panic!("not sign")
    };
    assert_eq!(s.purpose, Purpose::Digest);
    assert_eq!(s.hash, Some(HashAlg::Sha256));
    assert_eq!(s.digest.0, (0u8..32).collect::<Vec<_>>());
}

#[test]
fn request_round_trip() {
    let ops = vec![
        Op::Hello(Hello { version: 1 }),
        Op::Status,
        Op::ListKeys,
        Op::PublicKey(KeyRef { key: "a/b".into() }),
        Op::GenerateKey(GenerateKey {
            key: "a/b".into(),
            alg: KeyAlg::Rsa(3072),
            touch: None,
            pin_policy: None,
            id: None,
            pcrs: None,
            pcr_values: None,
        }),
        Op::GenerateKey(GenerateKey {
            key: "a/fulcio".into(),
            alg: KeyAlg::P256,
            touch: None,
            pin_policy: None,
            id: Some(Bytes(vec![0x00, 0x99, 0xff])),
            pcrs: None,
            pcr_values: None,
        }),
        Op::GenerateKey(GenerateKey {
            key: "yk/9c".into(),
            alg: KeyAlg::P256,
            touch: Some(TouchPolicy::Cached),
            pin_policy: Some(PinPolicy::Always),
            id: None,
            pcrs: None,
            pcr_values: None,
        }),
        Op::GenerateKey(GenerateKey {
            key: "tpm/root".into(),
            alg: KeyAlg::P384,
            touch: None,
            pin_policy: None,
            id: None,
            pcrs: Some(PcrSelection::parse("sha256:0,7").unwrap()),
            pcr_values: Some(vec![Bytes(vec![0; 32]), Bytes(vec![1; 32])]),
        }),
        Op::Unlock(Unlock {
            device: Some("yk".into()),
        }),
        Op::Unlock(Unlock { device: None }),
        Op::Lock,
        Op::AuditTail(AuditTail { n: Some(5) }),
        Op::Sign(Sign {
            key: "a/b".into(),
            purpose: Purpose::Blob,
            hash: Some(HashAlg::Sha384),
            digest: Bytes(vec![7; 48]),
            tbs: None,
            name: Some("release.tar.gz".into()),
            padding: Some(RsaPadding::Pss),
            message: None,
            statement: None,
        }),
        Op::Sign(Sign {
            key: "a/root".into(),
            purpose: Purpose::X509Tbs,
            hash: None,
            digest: Bytes::default(),
            tbs: Some(Bytes(vec![0x30, 0x00])),
            name: None,
            padding: None,
            message: None,
            statement: None,
        }),
        Op::Sign(Sign {
            key: "a/ed".into(),
            purpose: Purpose::Digest,
            hash: None,
            digest: Bytes::default(),
            tbs: None,
            name: None,
            padding: None,
            message: Some(Bytes(vec![1, 2, 3])),
            statement: None,
        }),
        Op::Sign(Sign {
            key: "a/release".into(),
            purpose: Purpose::Attest,
            hash: None,
            digest: Bytes::default(),
            tbs: None,
            name: None,
            padding: None,
            message: None,
            statement: Some(Bytes(b"{}".to_vec())),
        }),
        Op::StoreCertificate(StoreCertificate {
            key: "a/root".into(),
            object_id: Some("99".into()),
            id: None,
            label: None,
            cert: Bytes(vec![0x30, 0x00]),
        }),
        Op::StoreCertificate(StoreCertificate {
            key: "a/root".into(),
            object_id: None,
            id: Some(Bytes(vec![0x39, 0x39, 0x00])),
            label: Some("PKCS11CA".into()),
            cert: Bytes(vec![0x30, 0x00]),
        }),
    ];
    for (id, op) in ops.into_iter().enumerate() {
        let req = Request { id: id as u64, op };
        assert_eq!(decode_request(&req.to_json()).unwrap(), req);
    }
}

#[test]
fn unknown_members_are_ignored() {
    let r = decode(r#"{"id":9,"op":"status","future":[1,2,3]}"#).unwrap();
    assert_eq!(
        r,
        Request {
            id: 9,
            op: Op::Status
        }
    );
}

#[test]
fn non_utf8_is_malformed() {
    let e = decode_request(b"{\"id\":1,\"op\":\"\xff\"}").unwrap_err();
    assert!(e.malformed);
    assert_eq!(e.error.code, ErrorCode::BadRequest);
    assert!(e.error.message.contains("UTF-8"), "{}", e.error.message);
}

#[test]
fn non_json_is_malformed() {
    for bad in ["", "hello", "{\"id\":1", "[1,2", "{\"id\":1,}"] {
        let e = decode(bad).unwrap_err();
        assert!(e.malformed, "{bad:?}");
        assert_eq!(e.id, None);
        assert!(e.error.message.contains("not JSON"), "{}", e.error.message);
    }
}

#[test]
fn truncated_json_is_malformed() {
    let full = r#"{"id":3,"op":"sign","key":"hsm/release","purpose":"digest","digest":"AAAA"}"#;
    for cut in 1..full.len() {
        let e = decode(&full[..cut]).unwrap_err();
        assert!(e.malformed, "cut at {cut}");
    }
}

#[test]
fn non_object_json_is_bad_request() {
    for bad in ["[]", "1", "\"x\"", "null", "true"] {
        let e = decode(bad).unwrap_err();
        assert!(!e.malformed);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, None);
    }
}

#[test]
fn wrong_typed_id() {
    for bad in [
        r#"{"op":"status"}"#,
        r#"{"id":"1","op":"status"}"#,
        r#"{"id":-1,"op":"status"}"#,
        r#"{"id":1.5,"op":"status"}"#,
        r#"{"id":null,"op":"status"}"#,
    ] {
        let e = decode(bad).unwrap_err();
        assert_eq!(e.id, None, "{bad}");
        assert_eq!(e.error.code, ErrorCode::BadRequest);
    }
}

#[test]
fn wrong_typed_members_keep_the_id() {
    let cases = [
        (r#"{"id":4,"op":7}"#, "`op` must be a string"),
        (r#"{"id":4}"#, "missing `op`"),
        (r#"{"id":4,"op":"hello","version":"1"}"#, "invalid type"),
        (r#"{"id":4,"op":"hello"}"#, "missing field `version`"),
        (r#"{"id":4,"op":"public_key","key":5}"#, "invalid type"),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"digest","digest":"!!"}"#,
            "not base64",
        ),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"nope","digest":""}"#,
            "unknown Purpose",
        ),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"digest","hash":"md5","digest":""}"#,
            "unknown HashAlg",
        ),
        (
            r#"{"id":4,"op":"generate_key","key":"a/b","alg":"rsa1"}"#,
            "unknown key algorithm",
        ),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"digest"}"#,
            "missing field `digest`",
        ),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"x509-tbs","digest":"AAAA"}"#,
            "missing field `tbs`",
        ),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"x509-tbs","tbs":"MAA=","digest":"AAAA"}"#,
            "no `digest`",
        ),
        (
            r#"{"id":4,"op":"sign","key":"a/b","purpose":"blob","tbs":"MAA=","digest":"AAAA"}"#,
            "only for purpose x509-tbs",
        ),
        (
            r#"{"id":4,"op":"store_certificate","key":"a/b","object_id":"1"}"#,
            "missing field `cert`",
        ),
    ];
    for (bad, want) in cases {
        let e = decode(bad).unwrap_err();
        assert_eq!(e.id, Some(4), "{bad}");
        assert!(!e.malformed);
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{bad}");
        assert!(e.error.message.contains(want), "{bad}: {}", e.error.message);
    }
}

#[test]
fn store_certificate_takes_exactly_one_object_id() {
    let store = |ids: &str| {
        decode(&format!(
            r#"{{"id":6,"op":"store_certificate","key":"hsm/root",{ids}"cert":"MAA="}}"#
        ))
    };
    let Op::StoreCertificate(ascii) = store(r#""object_id":"99","#).unwrap().op else {
        panic!("not store_certificate")
    };
    assert_eq!(ascii.cka_id(), b"99");
    let Op::StoreCertificate(raw) = store(r#""raw_id":"AJn/","#).unwrap().op else {
        panic!("not store_certificate")
    };
    assert_eq!(raw.object_id, None);
    assert_eq!(raw.cka_id(), [0x00, 0x99, 0xff]);
    let max = B64.encode([7u8; MAX_OBJECT_ID]);
    assert!(store(&format!(r#""raw_id":"{max}","#)).is_ok());
    let over = B64.encode([7u8; MAX_OBJECT_ID + 1]);
    let ascii_max = "9".repeat(MAX_OBJECT_ID);
    let ascii_over = "9".repeat(MAX_OBJECT_ID + 1);
    assert!(store(&format!(r#""object_id":"{ascii_max}","#)).is_ok());
    for (ids, want) in [
        (
            r#""object_id":"99","raw_id":"OTk=","#.to_string(),
            "exclude each other",
        ),
        (String::new(), "missing `object_id` or `raw_id`"),
        (r#""raw_id":"","#.to_string(), "`raw_id` is empty"),
        (
            format!(r#""raw_id":"{over}","#),
            "65 bytes long; at most 64",
        ),
        (
            r#""object_id":"","#.to_string(),
            "`object_id` must be 1 to 64",
        ),
        (
            format!(r#""object_id":"{ascii_over}","#),
            "`object_id` must be 1 to 64",
        ),
        (r#""raw_id":"not base64!","#.to_string(), "not base64"),
    ] {
        let e = store(&ids).unwrap_err();
        assert_eq!(e.id, Some(6), "{ids}");
        assert!(!e.malformed, "{ids}");
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{ids}");
        assert!(e.error.message.contains(want), "{ids}: {}", e.error.message);
    }
}

#[test]
fn generate_key_pcrs_are_checked_on_decode() {
    let generate = |extra: &str| {
        decode(&format!(
            r#"{{"id":8,"op":"generate_key","key":"tpm/k","alg":"p256"{extra}}}"#
        ))
    };
    let Op::GenerateKey(g) = generate(r#","pcrs":{"bank":"sha256","pcrs":[0,7]}"#)
        .unwrap()
        .op
    else {
        panic!("not generate_key")
    };
    assert_eq!(g.pcrs.unwrap().to_string(), "sha256:0,7");
    let v32 = B64.encode([0u8; 32]);
    assert!(generate(&format!(
        r#","pcrs":{{"bank":"sha256","pcrs":[0]}},"pcr_values":["{v32}"]"#
    ))
    .is_ok());
    for (extra, want) in [
        (
            r#","pcrs":{"bank":"sha256","pcrs":[]}"#.to_string(),
            "at least one",
        ),
        (
            r#","pcrs":{"bank":"sha256","pcrs":[24]}"#.to_string(),
            "does not exist",
        ),
        (
            r#","pcrs":{"bank":"sha256","pcrs":[7,0]}"#.to_string(),
            "ascending",
        ),
        (format!(r#","pcr_values":["{v32}"]"#), "needs `pcrs`"),
        (
            format!(r#","pcrs":{{"bank":"sha1","pcrs":[0]}},"pcr_values":["{v32}"]"#),
            "sha1 PCRs are 20 bytes",
        ),
        (
            format!(r#","pcrs":{{"bank":"sha256","pcrs":[0,1]}},"pcr_values":["{v32}"]"#),
            "1 PCR values for 2 PCRs",
        ),
    ] {
        let e = generate(&extra).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{extra}");
        assert!(
            e.error.message.contains(want),
            "{extra}: {}",
            e.error.message
        );
    }
}

#[test]
fn generate_key_raw_id_is_one_to_64_bytes() {
    let generate = |id: &str| {
        decode(&format!(
            r#"{{"id":7,"op":"generate_key","key":"hsm/k","alg":"p256"{id}}}"#
        ))
    };
    let Op::GenerateKey(plain) = generate("").unwrap().op else {
        panic!("not generate_key")
    };
    assert_eq!(plain.id, None);
    let Op::GenerateKey(with) = generate(r#","raw_id":"OTk=""#).unwrap().op else {
        panic!("not generate_key")
    };
    assert_eq!(with.id, Some(Bytes(b"99".to_vec())));
    let max = B64.encode([1u8; MAX_OBJECT_ID]);
    assert!(generate(&format!(r#","raw_id":"{max}""#)).is_ok());
    let over = B64.encode([1u8; MAX_OBJECT_ID + 1]);
    for (id, want) in [
        (r#","raw_id":"""#.to_string(), "`raw_id` is empty"),
        (
            format!(r#","raw_id":"{over}""#),
            "65 bytes long; at most 64",
        ),
    ] {
        let e = generate(&id).unwrap_err();
        assert_eq!(e.id, Some(7), "{id}");
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{id}");
        assert!(e.error.message.contains(want), "{id}: {}", e.error.message);
    }
}

#[test]
fn new_optional_members_are_left_out_when_absent() {
    let info = KeyInfo {
        name: "tpm/k".into(),
        device: "tpm".into(),
        alg: KeyAlg::P256,
        purposes: vec![Purpose::Digest],
        uri: None,
        id: None,
        pcrs: None,
        imported: false,
    };
    let json = serde_json::to_string(&info).unwrap();
    assert!(!json.contains("imported"), "{json}");
    assert!(!json.contains("\"id\""), "{json}");
    assert!(!json.contains("\"pcrs\""), "{json}");
    let with_id = KeyInfo {
        id: Some(Bytes(vec![0x39, 0x39])),
        ..info
    };
    let json = serde_json::to_string(&with_id).unwrap();
    assert!(json.contains(r#""id":"OTk=""#), "{json}");
    // An older agent's answer, without the new members, still reads.
    let old: PublicKeyOk =
        serde_json::from_str(r#"{"spki_der":"MAA=","pem":"x","alg":"p256","certificate":"MAA="}"#)
            .unwrap();
    assert_eq!((old.certificate_id, old.certificate_label), (None, None));
    let old: KeyInfo = serde_json::from_str(
        r#"{"name":"hsm/k","device":"hsm","alg":"p256","purposes":["digest"]}"#,
    )
    .unwrap();
    assert_eq!(old.id, None);
}

#[test]
fn unknown_op_is_unsupported() {
    let e = decode(r#"{"id":5,"op":"format_disk"}"#).unwrap_err();
    assert_eq!(e.id, Some(5));
    assert_eq!(e.error.code, ErrorCode::Unsupported);
    assert!(e.error.message.contains("format_disk"));
}

#[test]
fn responses_encode_as_designed() {
    let hello = encode_ok(
        0,
        &HelloOk {
            version: 1,
            agent: "waxseal-agent 0.1.0".into(),
        },
    );
    assert_eq!(
        std::str::from_utf8(&hello).unwrap(),
        r#"{"id":0,"ok":{"version":1,"agent":"waxseal-agent 0.1.0"}}"#
    );
    let err = encode_error(Some(3), &WireError::new(ErrorCode::PolicyDenied, "no"));
    assert_eq!(
        std::str::from_utf8(&err).unwrap(),
        r#"{"id":3,"error":{"code":"policy-denied","message":"no"}}"#
    );
    let null = encode_error(None, &WireError::new(ErrorCode::FrameTooLarge, "big"));
    assert!(std::str::from_utf8(&null)
        .unwrap()
        .starts_with(r#"{"id":null,"#));
}

#[test]
fn attest_takes_a_statement_alone() {
    let bad = |json: &str, want: &str| {
        let e = decode(json).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert!(
            e.error.message.contains(want),
            "{want:?} not in {}",
            e.error.message
        );
    };
    bad(
        r#"{"id":1,"op":"sign","key":"a/b","purpose":"attest","digest":"AAAA"}"#,
        "missing field `statement`",
    );
    bad(
        r#"{"id":1,"op":"sign","key":"a/b","purpose":"attest","statement":"e30=","digest":"AAAA"}"#,
        "takes `statement` alone",
    );
    bad(
        r#"{"id":1,"op":"sign","key":"a/b","purpose":"blob","name":"n","digest":"AAAA","statement":"e30="}"#,
        "only for purpose attest",
    );
    bad(
        r#"{"id":1,"op":"sign","key":"a/b","purpose":"attest","statement":""}"#,
        "`statement` is empty",
    );
    let big = B64.encode(vec![b' '; crate::intoto::MAX_STATEMENT + 1]);
    bad(
        &format!(r#"{{"id":1,"op":"sign","key":"a/b","purpose":"attest","statement":"{big}"}}"#),
        "at most 524288",
    );
    let ok = decode(r#"{"id":1,"op":"sign","key":"a/b","purpose":"attest","statement":"e30="}"#)
        .unwrap();
    assert!(matches!(
        ok.op,
        Op::Sign(Sign {
            purpose: Purpose::Attest,
            ..
        })
    ));
}

#[test]
fn unknown_purposes_in_a_key_list_are_left_out() {
    let r = Response::decode(br#"{"id":1,"ok":{"keys":[{"name":"hsm/k","device":"hsm","alg":"p256","purposes":["digest","from-the-future","attest"]}]}}"#).unwrap();
    let keys: ListKeysOk = r.into_result().unwrap();
    assert_eq!(
        keys.keys[0].purposes,
        vec![Purpose::Digest, Purpose::Attest]
    );
}

#[test]
fn response_decode_and_typing() {
    let r = Response::decode(br#"{"id":1,"ok":{"keys":[{"name":"hsm/release","device":"hsm","alg":"p256","purposes":["digest","blob","ssh"]}]}}"#).unwrap();
    let keys: ListKeysOk = r.into_result().unwrap();
    assert_eq!(keys.keys[0].alg, KeyAlg::P256);
    assert_eq!(
        keys.keys[0].purposes,
        vec![Purpose::Digest, Purpose::Blob, Purpose::Ssh]
    );
    let r =
        Response::decode(br#"{"id":3,"error":{"code":"pin-incorrect","message":"m"}}"#).unwrap();
    match r.into_result::<SignOk>() {
        Err(ResponseError::Agent(e)) => assert_eq!(e.code, ErrorCode::PinIncorrect),
        other => panic!("{other:?}"),
    }
    assert!(Response::decode(br#"{"id":3}"#).is_err());
    assert!(
        Response::decode(br#"{"id":3,"ok":{},"error":{"code":"locked","message":""}}"#).is_err()
    );
}

#[test]
fn key_alg_words() {
    for alg in KeyAlg::GENERATABLE {
        assert_eq!(alg.to_string().parse::<KeyAlg>().unwrap(), alg);
    }
    assert_eq!("rsa8192".parse::<KeyAlg>().unwrap(), KeyAlg::Rsa(8192));
    assert!("rsa".parse::<KeyAlg>().is_err());
    assert!("p521".parse::<KeyAlg>().is_err());
    assert!(!KeyAlg::Rsa(1024).is_generatable());
    assert_eq!(KeyAlg::P384.default_hash(), HashAlg::Sha384);
}

#[test]
fn a_message_is_alone_for_purpose_digest_and_bounded() {
    let m = |extra: &str, message: &str| {
        decode(&format!(
            r#"{{"id":4,"op":"sign","key":"hsm/ed","purpose":"digest"{extra},"message":"{message}"}}"#
        ))
    };
    let r = m("", "aGVsbG8=").unwrap();
    let Op::Sign(s) = r.op else { panic!("{r:?}") };
    assert_eq!(s.message, Some(Bytes(b"hello".to_vec())));
    assert!(s.digest.is_empty());
    let refused = |extra: &str, message: &str, says: &str| {
        let e = m(extra, message).unwrap_err();
        assert_eq!(e.id, Some(4));
        assert!(!e.malformed);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert!(
            e.error.message.contains(says),
            "{says}: {}",
            e.error.message
        );
    };
    let digest = format!(r#","digest":"{}""#, B64.encode([0u8; 32]));
    refused(&digest, "aGVsbG8=", "exclude each other");
    refused(r#","hash":"sha512""#, "aGVsbG8=", "takes no `hash`");
    refused("", "", "`message` is empty");
    let big = B64.encode(vec![0u8; MAX_MESSAGE + 1]);
    refused("", &big, &format!("at most {MAX_MESSAGE}"));
    assert!(m("", &B64.encode(vec![0u8; MAX_MESSAGE])).is_ok());
    let blob = decode(
        r#"{"id":4,"op":"sign","key":"hsm/ed","purpose":"blob","name":"f","message":"aGVsbG8="}"#,
    )
    .unwrap_err();
    assert!(
        blob.error
            .message
            .contains("only for purpose digest, not blob"),
        "{}",
        blob.error.message
    );
    let tbs = decode(
        r#"{"id":4,"op":"sign","key":"hsm/ed","purpose":"x509-tbs","tbs":"MAA=","message":"aGVsbG8="}"#,
    )
    .unwrap_err();
    assert!(
        tbs.error.message.contains("only for purpose digest"),
        "{}",
        tbs.error.message
    );
    // `null` is the same as leaving it out.
    let none = decode(&format!(
        r#"{{"id":4,"op":"sign","key":"hsm/ed","purpose":"digest"{digest},"message":null}}"#
    ))
    .unwrap();
    let Op::Sign(s) = none.op else { panic!() };
    assert_eq!(s.message, None);
}

#[test]
fn approve_requests_are_bounded() {
    let ok =
        decode_request(br#"{"id":1,"op":"approve","approval":"ab12","signature":"x"}"#).unwrap();
    assert_eq!(ok.op.name(), "approve");
    let long = "s".repeat(MAX_APPROVAL_SIGNATURE + 1);
    let payload = format!(r#"{{"id":2,"op":"approve","approval":"ab12","signature":"{long}"}}"#);
    let e = decode_request(payload.as_bytes()).unwrap_err();
    assert!(e.error.message.contains("at most"), "{}", e.error);
    let e = decode_request(br#"{"id":3,"op":"approval_show","approval":"a\nb"}"#).unwrap_err();
    assert!(e.error.message.contains("`approval`"), "{}", e.error);
    let ok = decode_request(br#"{"id":4,"op":"approvals"}"#).unwrap();
    assert_eq!(ok.op, Op::Approvals);
}

#[test]
fn approval_ops_round_trip() {
    for op in [
        Op::Approve(Approve {
            approval: "0123abcd".into(),
            signature: "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n".into(),
        }),
        Op::Approvals,
        Op::ApprovalShow(ApprovalRef {
            approval: "0123abcd".into(),
        }),
    ] {
        let req = Request { id: 5, op };
        let back = decode_request(&req.to_json()).unwrap();
        assert_eq!(back, req);
    }
}

#[test]
fn import_key_takes_exactly_one_bounded_key() {
    let decode = |body: &str| {
        decode_request(format!(r#"{{"id":9,"op":"import_key","key":"tpm/k"{body}}}"#).as_bytes())
    };
    let dup = |n: usize| {
        let b = B64.encode(vec![0u8; n]);
        format!(r#","tpm_duplicate":{{"public":"{b}","duplicate":"{b}","seed":"{b}"}}"#)
    };
    let Op::ImportKey(ok) = decode(&dup(4)).unwrap().op else {
        panic!("not import_key")
    };
    assert!(ok.tpm_duplicate.is_some());
    for (body, want) in [
        (String::new(), "exactly one"),
        (format!(r#"{},"pem":"x""#, dup(4)), "exactly one"),
        (dup(4097), "2 to 4096"),
        (format!(r#"{},"touch":"never""#, dup(4)), "YubiKey"),
        (format!(r#","pem":"{}""#, "a".repeat(16 * 1024 + 1)), "at most 16384"),
        (
            r#","pkcs11_wrapped":{"wrapped":"AA==","unwrapping_key":"kek","mechanism":"des","public":"AA=="}"#.to_string(),
            "aes-key-wrap-pad",
        ),
    ] {
        let e = decode(&body).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{body}");
        assert!(e.error.message.contains(want), "{}: {}", want, e.error.message);
    }
    // A PEM key never shows in the request's debug form.
    let Op::ImportKey(pem) = decode(r#","pem":"-----BEGIN PRIVATE KEY-----secret""#)
        .unwrap()
        .op
    else {
        panic!("not import_key")
    };
    assert!(!format!("{pem:?}").contains("secret"));
}
