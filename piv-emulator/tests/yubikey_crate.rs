//! The `yubikey` crate (0.8, a real client written by others) against the emulator,
//! through the real pcscd and its vpcd reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use p256::ecdsa::signature::Verifier;
use rsa::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::der::{asn1::ObjectIdentifier, Encode};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;
use yubikey::piv::{self, AlgorithmId, RetiredSlotId, SlotId};
use yubikey::{Certificate, MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};

fn open() -> YubiKey {
    YubiKey::open_by_serial(Serial::from(common::SERIAL)).expect("open the card by serial")
}

/// DER SPKI of a generated key.
fn spki_der(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    spki.to_der().unwrap()
}

/// Signs `msg` in `slot` through the card and verifies the signature locally.
fn sign_and_verify(yk: &mut YubiKey, slot: SlotId, alg: AlgorithmId, spki: &[u8]) {
    let msg = format!("message for {slot:?} {alg:?}");
    match alg {
        AlgorithmId::EccP256 => {
            let sig = piv::sign_data(yk, &Sha256::digest(&msg), alg, slot).unwrap();
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
            let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
            vk.verify(msg.as_bytes(), &sig)
                .expect("P-256 signature verifies");
        }
        AlgorithmId::EccP384 => {
            let sig = piv::sign_data(yk, &Sha384::digest(&msg), alg, slot).unwrap();
            let vk = p384::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
            let sig = p384::ecdsa::Signature::from_der(&sig).unwrap();
            vk.verify(msg.as_bytes(), &sig)
                .expect("P-384 signature verifies");
        }
        AlgorithmId::Rsa2048 | AlgorithmId::Rsa1024 => {
            let pk = rsa::RsaPublicKey::from_public_key_der(spki).unwrap();
            let digest = Sha256::digest(&msg);
            // EMSA-PKCS1-v1_5 with a SHA-256 DigestInfo, as a PIV host builds it.
            let prefix = [
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ];
            let mut block = vec![0x00, 0x01];
            block.resize(256 - prefix.len() - digest.len() - 1, 0xFF);
            block.push(0x00);
            block.extend_from_slice(&prefix);
            block.extend_from_slice(&digest);
            let sig = piv::sign_data(yk, &block, alg, slot).unwrap();
            pk.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
                .expect("RSA signature verifies");
        }
    }
}

#[test]
fn pin_retries_and_management_key() {
    let _h = common::start();
    let mut yk = open();
    assert_eq!(yk.serial(), Serial::from(common::SERIAL));
    let v = yk.version();
    assert_eq!((v.major, v.minor, v.patch), (5, 4, 3));

    assert_eq!(yk.get_pin_retries().unwrap(), 3);
    assert!(matches!(
        yk.verify_pin(b"000000"),
        Err(yubikey::Error::WrongPin { tries: 2 })
    ));
    assert_eq!(yk.get_pin_retries().unwrap(), 2);
    yk.verify_pin(b"123456").unwrap();
    // get_pin_retries re-selects the applet (which unverifies) and reads the counter.
    assert_eq!(yk.get_pin_retries().unwrap(), 3);

    let wrong = MgmKey::from_bytes([0x11; 24]).unwrap();
    assert!(matches!(
        yk.authenticate(wrong),
        Err(yubikey::Error::AuthenticationError)
    ));
    yk.authenticate(MgmKey::default()).unwrap();

    // Change the PIN, block it, unblock with the PUK.
    yk.change_pin(b"123456", b"24682468").unwrap();
    for tries in [2u8, 1, 0] {
        match yk.verify_pin(b"000000") {
            Err(yubikey::Error::WrongPin { tries: t }) => assert_eq!(t, tries),
            other => panic!("expected WrongPin, got {other:?}"),
        }
    }
    assert!(matches!(
        yk.verify_pin(b"24682468"),
        Err(yubikey::Error::WrongPin { tries: 0 })
    ));
    yk.unblock_pin(b"12345678", b"123456").unwrap();
    yk.verify_pin(b"123456").unwrap();
}

#[test]
fn generate_sign_and_attest_in_all_slots() {
    let h = common::start();
    let root = common::root(&h);
    let mut yk = open();
    yk.authenticate(MgmKey::default()).unwrap();

    let f9 = common::cert(
        &yk.fetch_object(0x5F_FF01)
            .map(|obj| {
                // 70 cert 71 00 FE 00
                let (cert_len_start, len) = match obj[1] {
                    0x82 => (4, usize::from(u16::from_be_bytes([obj[2], obj[3]]))),
                    0x81 => (3, usize::from(obj[2])),
                    l => (2, usize::from(l)),
                };
                obj[cert_len_start..cert_len_start + len].to_vec()
            })
            .unwrap(),
    );
    common::assert_signed_by(&f9, &root);

    let cases = [
        (SlotId::Authentication, AlgorithmId::EccP256),
        (SlotId::Signature, AlgorithmId::EccP384),
        (SlotId::KeyManagement, AlgorithmId::Rsa2048),
        (SlotId::Retired(RetiredSlotId::R1), AlgorithmId::EccP256),
        (SlotId::Authentication, AlgorithmId::Rsa2048),
        (SlotId::KeyManagement, AlgorithmId::EccP384),
    ];
    for (slot, alg) in cases {
        let spki = piv::generate(&mut yk, slot, alg, PinPolicy::Default, TouchPolicy::Never)
            .unwrap_or_else(|e| panic!("generate {alg:?} in {slot:?}: {e}"));
        let spki = spki_der(&spki);
        // 9C defaults to PIN policy "always": VERIFY right before each sign.
        yk.verify_pin(b"123456").unwrap();
        sign_and_verify(&mut yk, slot, alg, &spki);

        let attestation = common::cert(&piv::attest(&mut yk, slot).unwrap());
        common::assert_signed_by(&attestation, &f9);
        assert_eq!(
            attestation
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap(),
            spki,
            "attestation certifies the generated key"
        );
        let serial_ext = attestation
            .tbs_certificate
            .extensions
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.extn_id == ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7"))
            .unwrap();
        assert_eq!(
            serial_ext.extn_value.as_bytes(),
            common::SERIAL.to_der().unwrap()
        );

        let meta = piv::metadata(&mut yk, slot).unwrap();
        assert_eq!(meta.origin, Some(piv::Origin::Generated));
        assert_eq!(meta.public.unwrap().to_der().unwrap(), spki);
    }

    // Signing with PIN policy "always" fails without a fresh VERIFY.
    let spki = piv::generate(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::EccP256,
        PinPolicy::Always,
        TouchPolicy::Never,
    )
    .unwrap();
    yk.verify_pin(b"123456").unwrap();
    sign_and_verify(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::EccP256,
        &spki_der(&spki),
    );
    assert!(matches!(
        piv::sign_data(&mut yk, &[1; 32], AlgorithmId::EccP256, SlotId::Signature),
        Err(yubikey::Error::AuthenticationError)
    ));
}

/// Checks with OpenSSL, a verifier we did not write, that `der_sig` is a signature over
/// `digest` by the key `spki`.
fn openssl_verifies(spki: &[u8], digest: &[u8], der_sig: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.der"), spki).unwrap();
    std::fs::write(dir.path().join("digest"), digest).unwrap();
    std::fs::write(dir.path().join("sig"), der_sig).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "key.der", "-in",
            "digest", "-sigfile", "sig",
        ])
        .output()
        .expect("openssl is not installed: run scripts/install-deps");
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully")
}

#[test]
fn touch_policy_waits_for_a_touch_and_caches_it() {
    let h = common::start();
    let touches = || -> u64 { h.control("touches").unwrap().parse().unwrap() };
    let mut yk = open();
    yk.authenticate(MgmKey::default()).unwrap();
    yk.verify_pin(b"123456").unwrap();
    let slot = SlotId::Retired(RetiredSlotId::R2);
    let spki = spki_der(
        &piv::generate(
            &mut yk,
            slot,
            AlgorithmId::EccP256,
            PinPolicy::Once,
            TouchPolicy::Always,
        )
        .unwrap(),
    );
    assert_eq!(touches(), 0);
    for n in 1..=2 {
        let digest = Sha256::digest(format!("touch {n}"));
        let t = Instant::now();
        let sig = piv::sign_data(&mut yk, &digest, AlgorithmId::EccP256, slot).unwrap();
        // The card counts the touch it waited for; the emulated touch takes
        // `touch_delay` (tests/common/mod.rs), so the answer cannot come sooner.
        assert_eq!(touches(), n, "touch policy always: one touch per signature");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "waited for touch"
        );
        assert!(
            openssl_verifies(&spki, &digest, &sig),
            "the signature made after the touch verifies"
        );
        let mut other = digest;
        other[0] ^= 1;
        assert!(!openssl_verifies(&spki, &other, &sig));
    }
    let slot = SlotId::Retired(RetiredSlotId::R3);
    let spki = spki_der(
        &piv::generate(
            &mut yk,
            slot,
            AlgorithmId::EccP256,
            PinPolicy::Never,
            TouchPolicy::Cached,
        )
        .unwrap(),
    );
    // The touch above is cached for 15 s: no new one.
    let digest = Sha256::digest("cached");
    let sig = piv::sign_data(&mut yk, &digest, AlgorithmId::EccP256, slot).unwrap();
    assert_eq!(touches(), 2, "cached touch");
    assert!(openssl_verifies(&spki, &digest, &sig));
}

#[test]
fn write_and_read_certificate() {
    let _h = common::start();
    let mut yk = open();
    yk.authenticate(MgmKey::default()).unwrap();
    let spki = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Once,
        TouchPolicy::Never,
    )
    .unwrap();
    yk.verify_pin(b"123456").unwrap();
    let written = Certificate::generate_self_signed::<_, p256::NistP256>(
        &mut yk,
        SlotId::Authentication,
        SerialNumber::new(&[0x42]).unwrap(),
        Validity::from_now(Duration::from_secs(3600)).unwrap(),
        Name::from_str("CN=waxseal emulator test").unwrap(),
        spki.clone(),
        |_| Ok(()),
    )
    .unwrap();
    let read = Certificate::read(&mut yk, SlotId::Authentication).unwrap();
    assert_eq!(read.cert.to_der().unwrap(), written.cert.to_der().unwrap());
    assert_eq!(read.subject(), "CN=waxseal emulator test");
    // The self-signed certificate's signature was made by the card's key.
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki.to_der().unwrap()).unwrap();
    let sig = p256::ecdsa::Signature::from_der(read.cert.signature.raw_bytes()).unwrap();
    vk.verify(&read.cert.tbs_certificate.to_der().unwrap(), &sig)
        .unwrap();
    // Listed next to the attestation certificate in f9, as on a real YubiKey.
    let keys = yk.piv_keys().unwrap();
    let slots: Vec<SlotId> = keys.iter().map(|k| k.slot()).collect();
    assert_eq!(slots, [SlotId::Authentication, SlotId::Attestation]);
    assert_eq!(keys[0].certificate().subject(), "CN=waxseal emulator test");
}

#[test]
fn removed_card_fails_and_reinserted_card_works() {
    let h = common::start();
    let mut yk = open();
    yk.verify_pin(b"123456").unwrap();
    assert_eq!(h.control("status").unwrap(), "inserted connected");

    h.remove().unwrap();
    assert_eq!(h.control("status").unwrap(), "removed");
    assert!(yk.verify_pin(b"123456").is_err(), "card is gone");
    assert!(YubiKey::open_by_serial(Serial::from(common::SERIAL)).is_err());
    drop(yk);

    h.insert().unwrap();
    let mut yk = open();
    // Security status does not survive removal.
    assert_eq!(yk.get_pin_retries().unwrap(), 3);
    yk.verify_pin(b"123456").unwrap();
    yk.authenticate(MgmKey::default()).unwrap();
}
