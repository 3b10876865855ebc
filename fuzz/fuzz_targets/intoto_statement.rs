//! agent.sock, purpose `attest`: `intoto::Statement::parse` on arbitrary bytes (the
//! `statement` of a `sign` request, which the agent reads before it signs), and the
//! DSSE PAE built around them.
//!
//! - never panics;
//! - an accepted statement names 1 to `MAX_SUBJECTS` subjects, each with 64 lowercase
//!   hex characters of SHA-256 and a name without control characters, and a non-empty
//!   predicate type without control characters;
//! - the bytes re-encoded from their JSON value (what another writer of the same
//!   statement would send) read back as an equal statement;
//! - the PAE is `DSSEv1 28 application/vnd.in-toto+json LEN ` followed by the bytes.
#![no_main]
// Every `expect` here is an assertion of the target: a panic is a finding.

use libfuzzer_sys::fuzz_target;
use waxseal_agent::intoto::{pae, Statement, MAX_SUBJECTS, PAYLOAD_TYPE};

fuzz_target!(|data: &[u8]| {
    let head = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        data.len()
    );
    let built = pae(PAYLOAD_TYPE, data);
    assert_eq!(&built[..head.len()], head.as_bytes());
    assert_eq!(&built[head.len()..], data);

    let Ok(statement) = Statement::parse(data) else {
        return;
    };
    assert!((1..=MAX_SUBJECTS).contains(&statement.subjects.len()));
    assert!(!statement.predicate_type.is_empty());
    assert!(!statement.predicate_type.chars().any(char::is_control));
    for s in &statement.subjects {
        assert_eq!(s.sha256.len(), 64, "{s:?}");
        assert!(s
            .sha256
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert!(!s.name.chars().any(char::is_control), "{s:?}");
        let digest = hex::decode(&s.sha256).expect("64 hex characters decode");
        assert!(statement.names_sha256(&digest));
    }
    let value: serde_json::Value =
        serde_json::from_slice(data).expect("an accepted statement is JSON");
    let again = serde_json::to_vec(&value).expect("a JSON value serialises");
    assert_eq!(
        Statement::parse(&again).expect("the re-encoded statement reads"),
        statement
    );
});
