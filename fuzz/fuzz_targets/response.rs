//! agent.sock, client side: `Response::decode` on arbitrary bytes (what the CLI and the
//! KMS plug-in do with every frame the agent sends).
//!
//! - never panics;
//! - a decoded response is a notice, a prompt, or exactly one of `ok` / `error`;
//! - re-encoded as JSON it decodes to an equal response;
//! - its `ok`, typed as each result the client asks for (`into_result`), round-trips
//!   through the result type's own Serialize/Deserialize.
#![no_main]
// Every `expect`/`unwrap` here is an assertion of the target (a temp file that must
// write, a value that must serialise): a panic is a finding, which libFuzzer keeps.

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use waxseal_agent::proto::{
    ApprovalInfo, ApprovalsOk, ApproveOk, AttestOk, AuditTailOk, GenerateKeyOk, HelloOk, ListKeysOk, PublicKeyOk, Response, SignOk,
    StatusOk, StoreCertificateOk, UnlockOk,
};
use waxseal_fuzz::json_eq;

fn typed<T: DeserializeOwned + Serialize + std::fmt::Debug>(r: &Response) {
    if let Ok(t) = r.clone().into_result::<T>() {
        let v = serde_json::to_value(&t).expect("a result type does not serialise");
        let back: T = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{t:?} serialised as {v} does not deserialise: {e}"));
        let v2 = serde_json::to_value(&back).expect("serialise");
        assert!(json_eq(&v, &v2), "{v} came back as {v2}");
    }
}

fn encode(r: &Response) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("id".into(), r.id.map_or(Value::Null, Value::from));
    if let Some(ok) = &r.ok {
        m.insert("ok".into(), ok.clone());
    }
    if let Some(e) = &r.error {
        m.insert(
            "error".into(),
            serde_json::to_value(e).expect("WireError serialises"),
        );
    }
    if let Some(n) = &r.notice {
        m.insert("notice".into(), Value::String(n.clone()));
    }
    if let Some(p) = &r.prompt {
        m.insert("prompt".into(), Value::String(p.clone()));
    }
    if let Some(a) = &r.approval {
        m.insert(
            "approval".into(),
            serde_json::to_value(a).expect("ApprovalInfo serialises"),
        );
    }
    serde_json::to_vec(&Value::Object(m)).expect("serialise")
}

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Response::decode(data) else {
        return;
    };
    if r.notice.is_some() || r.prompt.is_some() {
        assert!(r.ok.is_none() && r.error.is_none(), "{r:?}");
    } else {
        assert!(r.ok.is_some() != r.error.is_some(), "{r:?}");
    }
    let json = encode(&r);
    let again = Response::decode(&json).unwrap_or_else(|e| {
        panic!(
            "{r:?} re-encoded as {} does not decode: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(again.id, r.id);
    assert_eq!(again.error, r.error);
    assert_eq!(again.notice, r.notice);
    assert_eq!(again.prompt, r.prompt);
    assert_eq!(again.approval, r.approval);
    match (&again.ok, &r.ok) {
        (Some(a), Some(b)) => assert!(json_eq(a, b), "{a} != {b}"),
        (None, None) => {}
        (a, b) => panic!("ok changed: {a:?} != {b:?}"),
    }
    typed::<HelloOk>(&r);
    typed::<StatusOk>(&r);
    typed::<ListKeysOk>(&r);
    typed::<PublicKeyOk>(&r);
    typed::<GenerateKeyOk>(&r);
    typed::<AttestOk>(&r);
    typed::<StoreCertificateOk>(&r);
    typed::<SignOk>(&r);
    typed::<UnlockOk>(&r);
    typed::<AuditTailOk>(&r);
    typed::<ApprovalsOk>(&r);
    typed::<ApprovalInfo>(&r);
    typed::<ApproveOk>(&r);
});
