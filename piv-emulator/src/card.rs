//! The PIV applet of an emulated YubiKey 5 (firmware 5.4.3): NIST SP 800-73-4
//! commands plus Yubico's extensions, as a pure state machine.
//!
//! [`Card`] owns the persistent state (PIN, PUK, management key, slot keys, data
//! objects, attestation key) and the volatile security status. It implements
//! [`Applet`]: one complete command in, one response out. Chaining and GET RESPONSE
//! live in [`crate::apdu::Link`]; [`Card::transmit`] combines both.
//!
//! The only side effect is the touch emulation: a sign with touch policy
//! "always" (or "cached" outside the 15 s window) sleeps for the configured delay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::apdu::{sw, Applet, Command, Link, Response};
use crate::crypto::{self, Algorithm, AttestedKey, MgmAlgorithm, MgmKey, PrivateKey};
use crate::tlv;

/// ATR of a YubiKey 5 NFC (CCID interface).
pub const ATR: [u8; 23] = [
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];
/// PIV application identifier (prefix; the full AID adds the version `00 00 10 00 01 00`).
pub const PIV_AID: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// Firmware version reported by GET VERSION and in attestations.
pub const FIRMWARE: [u8; 3] = [5, 4, 3];
/// Factory PIN.
pub const DEFAULT_PIN: &[u8] = b"123456";
/// Factory PUK.
pub const DEFAULT_PUK: &[u8] = b"12345678";
/// Slot of the management key.
pub const SLOT_MGM: u8 = 0x9B;
/// Slot of the attestation key.
pub const SLOT_ATTESTATION: u8 = 0xF9;
/// Data object holding the attestation certificate.
pub const OBJ_ATTESTATION: u32 = 0x5F_FF01;
/// How long a "cached" touch stays valid.
pub const TOUCH_CACHE: Duration = Duration::from_secs(15);

const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;
const DEFAULT_RETRIES: u8 = 3;
const POLICY_DEFAULT: u8 = 0;
const PIN_NEVER: u8 = 1;
const PIN_ONCE: u8 = 2;
const PIN_ALWAYS: u8 = 3;
const TOUCH_NEVER: u8 = 1;
const TOUCH_ALWAYS: u8 = 2;
const TOUCH_CACHED: u8 = 3;
const ORIGIN_GENERATED: u8 = 1;
const ORIGIN_IMPORTED: u8 = 2;
const OBJ_CHUID: u32 = 0x5F_C102;
const OBJ_CCC: u32 = 0x5F_C107;
const OBJ_PRINTED: u32 = 0x5F_C109;
const OBJ_DISCOVERY: u32 = 0x7E;

/// Why a card could not be created or restored.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Key generation or certificate creation failed.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// The saved state is not valid JSON of the expected shape.
    #[error("state file: {0}")]
    Json(#[from] serde_json::Error),
    /// The saved state has a field with an impossible value.
    #[error("state file: invalid {0}")]
    Invalid(&'static str),
}

/// Settings of the emulated card that are not part of its persistent state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// How long a sign that needs a touch waits (the emulated user touching the key).
    pub touch_delay: Duration,
}

/// A key in a slot with its policies.
#[derive(Debug, Clone)]
struct SlotKey {
    key: PrivateKey,
    /// Resolved PIN policy (never/once/always).
    pin_policy: u8,
    /// Resolved touch policy (never/always/cached).
    touch_policy: u8,
    origin: u8,
}

/// Volatile security status; cleared by reset, power-off and SELECT.
#[derive(Debug, Default)]
struct Session {
    pin_verified: bool,
    /// Set by a successful VERIFY, consumed by a sign with PIN policy "always".
    pin_fresh: bool,
    mgm_authenticated: bool,
    /// Witness sent in step one of mutual authentication.
    witness: Option<Zeroizing<Vec<u8>>>,
    /// Challenge sent for external (one-way) authentication.
    challenge: Option<Zeroizing<Vec<u8>>>,
}

/// The emulated YubiKey PIV applet.
#[derive(Debug)]
pub struct Card {
    serial: u32,
    pin: Zeroizing<Vec<u8>>,
    puk: Zeroizing<Vec<u8>>,
    pin_max: u8,
    pin_left: u8,
    puk_max: u8,
    puk_left: u8,
    mgm: MgmKey,
    mgm_touch: bool,
    slots: BTreeMap<u8, SlotKey>,
    objects: BTreeMap<u32, Vec<u8>>,
    root_key: p256::SecretKey,
    root_cert: Vec<u8>,
    session: Session,
    last_touch: Option<Instant>,
    /// Touches waited for since the emulator started (the control socket's `touches`).
    touches: u64,
    link: Link,
    options: Options,
    dirty: bool,
}

impl Card {
    /// A factory-fresh card with a new attestation root and f9 key.
    pub fn new(serial: u32, options: Options) -> Result<Self, CardError> {
        let (root_key, root_cert) = crypto::new_attestation_root(serial)?;
        let mut card = Self {
            serial,
            pin: Zeroizing::new(DEFAULT_PIN.to_vec()),
            puk: Zeroizing::new(DEFAULT_PUK.to_vec()),
            pin_max: DEFAULT_RETRIES,
            pin_left: DEFAULT_RETRIES,
            puk_max: DEFAULT_RETRIES,
            puk_left: DEFAULT_RETRIES,
            mgm: MgmKey::factory_default(),
            mgm_touch: false,
            slots: BTreeMap::new(),
            objects: BTreeMap::new(),
            root_key,
            root_cert,
            session: Session::default(),
            last_touch: None,
            touches: 0,
            link: Link::default(),
            options,
            dirty: true,
        };
        card.new_attestation_key()?;
        card.default_objects();
        Ok(card)
    }

    /// How many touches the card has waited for (a signature with touch policy
    /// `always`, or `cached` past the cache), so a test can tell that a signature
    /// waited for one without timing it.
    pub fn touches(&self) -> u64 {
        self.touches
    }

    /// Serial number.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// DER of the emulated attestation root CA certificate.
    pub fn attestation_root(&self) -> &[u8] {
        &self.root_cert
    }

    /// Changes the runtime options (touch delay).
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// Handles one wire APDU (with chaining and GET RESPONSE) and returns the wire
    /// response.
    pub fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let mut link = std::mem::take(&mut self.link);
        let out = link.transmit(self, apdu);
        self.link = link;
        out
    }

    /// Power-off, power-on or warm reset: forget the security status and any
    /// half-finished chaining.
    pub fn reset_session(&mut self) {
        self.session = Session::default();
        self.link.reset();
    }

    /// Whether persistent state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    fn new_attestation_key(&mut self) -> Result<(), CardError> {
        let (key, cert) = crypto::new_attestation_key(&self.root_key, &self.root_cert)?;
        self.slots.insert(
            SLOT_ATTESTATION,
            SlotKey {
                key: PrivateKey::P256(key),
                pin_policy: PIN_NEVER,
                touch_policy: TOUCH_NEVER,
                origin: ORIGIN_IMPORTED,
            },
        );
        self.objects.insert(OBJ_ATTESTATION, cert_object(&cert));
        Ok(())
    }

    /// CHUID and CCC as `ykman piv objects generate` would write them.
    fn default_objects(&mut self) {
        let mut guid = [0u8; 16];
        OsRng.fill_bytes(&mut guid);
        // FASC-N for "no agency" (Yubico's default), GUID, expiry, empty signature.
        const FASCN: [u8; 25] = [
            0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58,
            0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
        ];
        let mut chuid = tlv::encode(0x30, &FASCN);
        tlv::write(&mut chuid, 0x34, &guid);
        tlv::write(&mut chuid, 0x35, b"20301231");
        tlv::write(&mut chuid, 0x3E, &[]);
        tlv::write(&mut chuid, 0xFE, &[]);
        self.objects.insert(OBJ_CHUID, chuid);

        let mut card_id = vec![0xA0, 0x00, 0x00, 0x01, 0x16, 0xFF, 0x02];
        let mut random = [0u8; 14];
        OsRng.fill_bytes(&mut random);
        card_id.extend_from_slice(&random);
        let mut ccc = tlv::encode(0xF0, &card_id);
        for (tag, value) in [
            (0xF1, &[0x21][..]),
            (0xF2, &[0x21]),
            (0xF3, &[]),
            (0xF4, &[0x00]),
            (0xF5, &[0x10]),
            (0xF6, &[]),
            (0xF7, &[]),
            (0xFA, &[]),
            (0xFB, &[]),
            (0xFC, &[]),
            (0xFD, &[]),
            (0xFE, &[]),
        ] {
            tlv::write(&mut ccc, tag, value);
        }
        self.objects.insert(OBJ_CCC, ccc);
    }

    fn select(&mut self, cmd: &Command) -> Response {
        if cmd.p1 != 0x04 {
            return Response::status(sw::BAD_P1P2);
        }
        if cmd.data.len() < PIV_AID.len() || !cmd.data.starts_with(&PIV_AID) {
            return Response::status(sw::NOT_FOUND);
        }
        self.session = Session::default();
        // Application property template: AID (PIX part) and coexistent tag allocation.
        let mut inner = tlv::encode(0x4F, &[0x00, 0x00, 0x10, 0x00, 0x01, 0x00]);
        tlv::write(&mut inner, 0x79, &tlv::encode(0x4F, &PIV_AID));
        Response::ok(tlv::encode(0x61, &inner))
    }

    fn verify(&mut self, cmd: &Command) -> Response {
        if cmd.p2 != PIN_REF {
            return Response::status(sw::REF_NOT_FOUND);
        }
        match cmd.p1 {
            0x00 => {}
            0xFF if cmd.data.is_empty() => {
                self.session.pin_verified = false;
                self.session.pin_fresh = false;
                return Response::status(sw::OK);
            }
            _ => return Response::status(sw::BAD_P1P2),
        }
        if cmd.data.is_empty() {
            return if self.pin_left == 0 {
                Response::status(sw::BLOCKED)
            } else if self.session.pin_verified {
                Response::status(sw::OK)
            } else {
                Response::status(sw::VERIFY_FAIL | u16::from(self.pin_left))
            };
        }
        let Some(pin) = unpad_pin(&cmd.data) else {
            return Response::status(sw::WRONG_LENGTH);
        };
        if self.pin_left == 0 {
            return Response::status(sw::BLOCKED);
        }
        if pin == self.pin.as_slice() {
            self.pin_left = self.pin_max;
            self.session.pin_verified = true;
            self.session.pin_fresh = true;
            self.dirty = true;
            Response::status(sw::OK)
        } else {
            self.pin_left -= 1;
            self.session.pin_verified = false;
            self.session.pin_fresh = false;
            self.dirty = true;
            Response::status(sw::VERIFY_FAIL | u16::from(self.pin_left))
        }
    }

    /// CHANGE REFERENCE DATA (`24`) and RESET RETRY COUNTER (`2C`).
    fn change_reference(&mut self, cmd: &Command, unblock: bool) -> Response {
        if cmd.p1 != 0 {
            return Response::status(sw::BAD_P1P2);
        }
        let check_puk = match (cmd.p2, unblock) {
            (PIN_REF, false) => false,
            (PUK_REF, false) | (PIN_REF, true) => true,
            _ => return Response::status(sw::REF_NOT_FOUND),
        };
        if cmd.data.len() != 16 {
            return Response::status(sw::WRONG_LENGTH);
        }
        let (Some(old), Some(new)) = (unpad_pin(&cmd.data[..8]), unpad_pin(&cmd.data[8..])) else {
            return Response::status(sw::WRONG_LENGTH);
        };
        let (secret, left, max) = if check_puk {
            (&self.puk, &mut self.puk_left, self.puk_max)
        } else {
            (&self.pin, &mut self.pin_left, self.pin_max)
        };
        if *left == 0 {
            return Response::status(sw::BLOCKED);
        }
        if old != secret.as_slice() {
            *left -= 1;
            self.dirty = true;
            if !check_puk {
                self.session.pin_verified = false;
            }
            return Response::status(sw::VERIFY_FAIL | u16::from(*left));
        }
        *left = max;
        self.dirty = true;
        if new.len() < 6 {
            return Response::status(sw::BAD_DATA);
        }
        let new = Zeroizing::new(new.to_vec());
        match (cmd.p2, unblock) {
            (PUK_REF, _) => self.puk = new,
            (_, false) => self.pin = new,
            (_, true) => {
                self.pin = new;
                self.pin_left = self.pin_max;
            }
        }
        Response::status(sw::OK)
    }

    fn general_authenticate(&mut self, cmd: &Command) -> Response {
        let Ok(inner) = tlv::parse_single(&cmd.data, 0x7C) else {
            return Response::status(sw::BAD_DATA);
        };
        let Ok(items) = tlv::parse_all(inner) else {
            return Response::status(sw::BAD_DATA);
        };
        if cmd.p2 == SLOT_MGM {
            self.management_auth(cmd.p1, &items)
        } else {
            self.private_key_op(cmd.p1, cmd.p2, &items)
        }
    }

    fn management_auth(&mut self, alg: u8, items: &[tlv::Tlv<'_>]) -> Response {
        if MgmAlgorithm::from_byte(alg) != Some(self.mgm.algorithm()) {
            return Response::status(sw::BAD_P1P2);
        }
        let block = self.mgm.algorithm().block_len();
        let witness = tlv::find(items, 0x80);
        let challenge = tlv::find(items, 0x81);
        let response = tlv::find(items, 0x82);
        let result = match (witness, challenge, response) {
            // Mutual authentication, step 1: card sends an encrypted witness.
            (Some([]), None, None) => {
                self.session.mgm_authenticated = false;
                let mut w = Zeroizing::new(vec![0u8; block]);
                OsRng.fill_bytes(&mut w);
                let enc = self.mgm.encrypt_block(&w);
                self.session.witness = Some(w);
                enc.map(|e| tlv::encode(0x7C, &tlv::encode(0x80, &e)))
            }
            // Step 2: host returns the decrypted witness and its own challenge.
            (Some(w), Some(c), None) => {
                let expected = self.session.witness.take();
                if expected.as_deref().map(Vec::as_slice) != Some(w) || c.len() != block {
                    return Response::status(sw::SECURITY);
                }
                self.session.mgm_authenticated = true;
                self.mgm
                    .encrypt_block(c)
                    .map(|e| tlv::encode(0x7C, &tlv::encode(0x82, &e)))
            }
            // External authentication, step 1: card sends a plain challenge.
            (None, Some([]), None) => {
                self.session.mgm_authenticated = false;
                let mut c = Zeroizing::new(vec![0u8; block]);
                OsRng.fill_bytes(&mut c);
                let out = tlv::encode(0x7C, &tlv::encode(0x81, &c));
                self.session.challenge = Some(c);
                Ok(out)
            }
            // Step 2: host returns the encrypted challenge.
            (None, None, Some(r)) => {
                let Some(c) = self.session.challenge.take() else {
                    return Response::status(sw::CONDITIONS);
                };
                match self.mgm.encrypt_block(&c) {
                    Ok(expected) if expected == r => {
                        self.session.mgm_authenticated = true;
                        Ok(Vec::new())
                    }
                    _ => return Response::status(sw::SECURITY),
                }
            }
            _ => return Response::status(sw::BAD_DATA),
        };
        match result {
            Ok(data) => Response::ok(data),
            Err(_) => Response::status(sw::BAD_DATA),
        }
    }

    fn private_key_op(&mut self, alg: u8, slot: u8, items: &[tlv::Tlv<'_>]) -> Response {
        if !is_key_slot(slot) && slot != SLOT_ATTESTATION {
            return Response::status(sw::BAD_P1P2);
        }
        let Some(entry) = self.slots.get(&slot) else {
            return Response::status(sw::BAD_DATA);
        };
        if Algorithm::from_byte(alg) != Some(entry.key.algorithm()) {
            return Response::status(sw::BAD_P1P2);
        }
        if tlv::find(items, 0x82) != Some(&[]) {
            return Response::status(sw::BAD_DATA);
        }
        match entry.pin_policy {
            PIN_ONCE if !self.session.pin_verified => return Response::status(sw::SECURITY),
            PIN_ALWAYS if !(self.session.pin_verified && self.session.pin_fresh) => {
                return Response::status(sw::SECURITY)
            }
            _ => {}
        }
        let result = match (tlv::find(items, 0x81), tlv::find(items, 0x85)) {
            (Some(input), None) => entry.key.sign(input),
            (None, Some(point)) => entry.key.ecdh(point),
            _ => return Response::status(sw::BAD_DATA),
        };
        let touch = entry.touch_policy;
        let Ok(out) = result else {
            return Response::status(sw::BAD_DATA);
        };
        if entry.pin_policy == PIN_ALWAYS {
            self.session.pin_fresh = false;
        }
        self.wait_for_touch(touch);
        Response::ok(tlv::encode(0x7C, &tlv::encode(0x82, &out)))
    }

    fn wait_for_touch(&mut self, policy: u8) {
        let cached =
            policy == TOUCH_CACHED && self.last_touch.is_some_and(|t| t.elapsed() < TOUCH_CACHE);
        if (policy == TOUCH_ALWAYS || policy == TOUCH_CACHED) && !cached {
            std::thread::sleep(self.options.touch_delay);
            self.last_touch = Some(Instant::now());
            self.touches += 1;
        }
    }

    fn generate(&mut self, cmd: &Command) -> Response {
        if cmd.p1 != 0 || !is_key_slot(cmd.p2) {
            return Response::status(sw::WRONG_P1P2);
        }
        if !self.session.mgm_authenticated {
            return Response::status(sw::SECURITY);
        }
        let Ok(inner) = tlv::parse_single(&cmd.data, 0xAC) else {
            return Response::status(sw::BAD_DATA);
        };
        let Ok(items) = tlv::parse_all(inner) else {
            return Response::status(sw::BAD_DATA);
        };
        let Some(algorithm) = tlv::find(&items, 0x80)
            .and_then(single_byte)
            .and_then(Algorithm::from_byte)
        else {
            return Response::status(sw::BAD_DATA);
        };
        let Some((pin_policy, touch_policy)) = policies(cmd.p2, &items) else {
            return Response::status(sw::BAD_DATA);
        };
        let Ok(key) = PrivateKey::generate(algorithm) else {
            return Response::status(sw::CONDITIONS);
        };
        let public = tlv::encode(0x7F49, &key.piv_public());
        self.slots.insert(
            cmd.p2,
            SlotKey {
                key,
                pin_policy,
                touch_policy,
                origin: ORIGIN_GENERATED,
            },
        );
        self.dirty = true;
        Response::ok(public)
    }

    fn import_key(&mut self, cmd: &Command) -> Response {
        if !is_key_slot(cmd.p2) && cmd.p2 != SLOT_ATTESTATION {
            return Response::status(sw::WRONG_P1P2);
        }
        let Some(algorithm) = Algorithm::from_byte(cmd.p1) else {
            return Response::status(sw::BAD_P1P2);
        };
        if !self.session.mgm_authenticated {
            return Response::status(sw::SECURITY);
        }
        let Ok(items) = tlv::parse_all(&cmd.data) else {
            return Response::status(sw::BAD_DATA);
        };
        let key = match algorithm {
            Algorithm::EccP256 | Algorithm::EccP384 => tlv::find(&items, 0x06)
                .ok_or(crypto::CryptoError::InvalidKey)
                .and_then(|d| PrivateKey::from_ec_scalar(algorithm, d)),
            Algorithm::Rsa1024 | Algorithm::Rsa2048 => {
                match (tlv::find(&items, 0x01), tlv::find(&items, 0x02)) {
                    (Some(p), Some(q)) => PrivateKey::from_rsa_primes(algorithm, p, q),
                    _ => Err(crypto::CryptoError::InvalidKey),
                }
            }
        };
        let (Ok(key), Some((pin_policy, touch_policy))) = (key, policies(cmd.p2, &items)) else {
            return Response::status(sw::BAD_DATA);
        };
        self.slots.insert(
            cmd.p2,
            SlotKey {
                key,
                pin_policy,
                touch_policy,
                origin: ORIGIN_IMPORTED,
            },
        );
        self.dirty = true;
        Response::status(sw::OK)
    }

    fn attest(&mut self, cmd: &Command) -> Response {
        if cmd.p2 != 0 || !is_key_slot(cmd.p1) {
            return Response::status(sw::WRONG_P1P2);
        }
        let (Some(entry), Some(f9)) = (self.slots.get(&cmd.p1), self.slots.get(&SLOT_ATTESTATION))
        else {
            return Response::status(sw::BAD_DATA);
        };
        if entry.origin != ORIGIN_GENERATED {
            return Response::status(sw::BAD_DATA);
        }
        let PrivateKey::P256(f9_key) = &f9.key else {
            return Response::status(sw::CONDITIONS);
        };
        let Some(f9_cert) = self
            .objects
            .get(&OBJ_ATTESTATION)
            .and_then(|o| cert_from_object(o))
        else {
            return Response::status(sw::CONDITIONS);
        };
        let facts = AttestedKey {
            slot: cmd.p1,
            firmware: FIRMWARE,
            serial: self.serial,
            pin_policy: entry.pin_policy,
            touch_policy: entry.touch_policy,
            form_factor: 0x01,
        };
        match crypto::attest(f9_key, f9_cert, &entry.key, &facts) {
            Ok(cert) => Response::ok(cert),
            Err(_) => Response::status(sw::CONDITIONS),
        }
    }

    fn get_data(&mut self, cmd: &Command) -> Response {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Response::status(sw::BAD_P1P2);
        }
        let Some(id) = tlv::parse_single(&cmd.data, 0x5C).ok().and_then(object_id) else {
            return Response::status(sw::BAD_DATA);
        };
        if id == OBJ_DISCOVERY {
            // PIV AID, PIN usage policy: application PIN only, satisfies PIV ACRs.
            let mut inner = tlv::encode(0x4F, &[0xA0, 0, 0, 3, 8, 0, 0, 0x10, 0, 1, 0]);
            tlv::write(&mut inner, 0x5F2F, &[0x40, 0x00]);
            return Response::ok(tlv::encode(0x7E, &inner));
        }
        if id == OBJ_PRINTED && !self.session.pin_verified {
            return Response::status(sw::SECURITY);
        }
        match self.objects.get(&id) {
            Some(content) => Response::ok(tlv::encode(0x53, content)),
            None => Response::status(sw::NOT_FOUND),
        }
    }

    fn put_data(&mut self, cmd: &Command) -> Response {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Response::status(sw::BAD_P1P2);
        }
        if !self.session.mgm_authenticated {
            return Response::status(sw::SECURITY);
        }
        let Ok((tag, rest)) = tlv::parse(&cmd.data) else {
            return Response::status(sw::BAD_DATA);
        };
        let id = match (tag.tag, object_id(tag.value)) {
            (0x5C, Some(id)) if id != OBJ_DISCOVERY => id,
            _ => return Response::status(sw::BAD_DATA),
        };
        let Ok(content) = tlv::parse_single(rest, 0x53) else {
            return Response::status(sw::BAD_DATA);
        };
        if content.is_empty() {
            self.objects.remove(&id);
        } else {
            self.objects.insert(id, content.to_vec());
        }
        self.dirty = true;
        Response::status(sw::OK)
    }

    fn set_management_key(&mut self, cmd: &Command) -> Response {
        if cmd.p1 != 0xFF || (cmd.p2 != 0xFF && cmd.p2 != 0xFE) {
            return Response::status(sw::BAD_P1P2);
        }
        if !self.session.mgm_authenticated {
            return Response::status(sw::SECURITY);
        }
        let [alg, slot, len, key @ ..] = cmd.data.as_slice() else {
            return Response::status(sw::WRONG_LENGTH);
        };
        let Some(algorithm) = MgmAlgorithm::from_byte(*alg) else {
            return Response::status(sw::BAD_DATA);
        };
        if *slot != SLOT_MGM || usize::from(*len) != key.len() {
            return Response::status(sw::BAD_DATA);
        }
        match MgmKey::new(algorithm, key) {
            Ok(k) => {
                self.mgm = k;
                self.mgm_touch = cmd.p2 == 0xFE;
                self.dirty = true;
                Response::status(sw::OK)
            }
            Err(_) => Response::status(sw::BAD_DATA),
        }
    }

    fn metadata(&self, cmd: &Command) -> Response {
        if cmd.p1 != 0 {
            return Response::status(sw::BAD_P1P2);
        }
        let mut out = Vec::new();
        match cmd.p2 {
            PIN_REF | PUK_REF => {
                let (max, left, default) = if cmd.p2 == PIN_REF {
                    (
                        self.pin_max,
                        self.pin_left,
                        self.pin.as_slice() == DEFAULT_PIN,
                    )
                } else {
                    (
                        self.puk_max,
                        self.puk_left,
                        self.puk.as_slice() == DEFAULT_PUK,
                    )
                };
                tlv::write(&mut out, 0x01, &[0xFF]);
                tlv::write(&mut out, 0x05, &[u8::from(default)]);
                tlv::write(&mut out, 0x06, &[max, left]);
            }
            SLOT_MGM => {
                let touch = if self.mgm_touch {
                    TOUCH_ALWAYS
                } else {
                    TOUCH_NEVER
                };
                tlv::write(&mut out, 0x01, &[self.mgm.algorithm().byte()]);
                tlv::write(&mut out, 0x02, &[POLICY_DEFAULT, touch]);
                tlv::write(&mut out, 0x05, &[u8::from(self.mgm.is_default())]);
            }
            slot if is_key_slot(slot) || slot == SLOT_ATTESTATION => {
                let Some(entry) = self.slots.get(&slot) else {
                    return Response::status(sw::NOT_FOUND);
                };
                tlv::write(&mut out, 0x01, &[entry.key.algorithm().byte()]);
                tlv::write(&mut out, 0x02, &[entry.pin_policy, entry.touch_policy]);
                tlv::write(&mut out, 0x03, &[entry.origin]);
                tlv::write(&mut out, 0x04, &entry.key.piv_public());
            }
            _ => return Response::status(sw::REF_NOT_FOUND),
        }
        Response::ok(out)
    }

    fn set_pin_retries(&mut self, cmd: &Command) -> Response {
        if !self.session.mgm_authenticated || !self.session.pin_verified {
            return Response::status(sw::SECURITY);
        }
        if cmd.p1 == 0 || cmd.p2 == 0 || cmd.p1 > 15 || cmd.p2 > 15 {
            return Response::status(sw::BAD_P1P2);
        }
        self.pin_max = cmd.p1;
        self.pin_left = cmd.p1;
        self.puk_max = cmd.p2;
        self.puk_left = cmd.p2;
        self.pin = Zeroizing::new(DEFAULT_PIN.to_vec());
        self.puk = Zeroizing::new(DEFAULT_PUK.to_vec());
        self.dirty = true;
        Response::status(sw::OK)
    }

    /// Yubico RESET: only when both PIN and PUK are blocked.
    fn factory_reset(&mut self) -> Response {
        if self.pin_left != 0 || self.puk_left != 0 {
            return Response::status(sw::CONDITIONS);
        }
        let attestation = self.slots.remove(&SLOT_ATTESTATION);
        let f9_cert = self.objects.remove(&OBJ_ATTESTATION);
        self.pin = Zeroizing::new(DEFAULT_PIN.to_vec());
        self.puk = Zeroizing::new(DEFAULT_PUK.to_vec());
        self.pin_max = DEFAULT_RETRIES;
        self.pin_left = DEFAULT_RETRIES;
        self.puk_max = DEFAULT_RETRIES;
        self.puk_left = DEFAULT_RETRIES;
        self.mgm = MgmKey::factory_default();
        self.mgm_touch = false;
        self.slots.clear();
        self.objects.clear();
        if let (Some(key), Some(cert)) = (attestation, f9_cert) {
            self.slots.insert(SLOT_ATTESTATION, key);
            self.objects.insert(OBJ_ATTESTATION, cert);
        }
        self.default_objects();
        self.session = Session::default();
        self.dirty = true;
        Response::status(sw::OK)
    }

    /// The persistent state as JSON (for `--state FILE`). Contains private keys.
    pub fn to_json(&self) -> Result<String, CardError> {
        let mut slots = BTreeMap::new();
        for (slot, entry) in &self.slots {
            slots.insert(
                format!("{slot:02x}"),
                SavedSlot {
                    algorithm: entry.key.algorithm(),
                    pin_policy: entry.pin_policy,
                    touch_policy: entry.touch_policy,
                    origin: entry.origin,
                    pkcs8: hex::encode(entry.key.to_pkcs8()?.as_slice()),
                },
            );
        }
        let saved = Saved {
            serial: self.serial,
            pin: hex::encode(self.pin.as_slice()),
            puk: hex::encode(self.puk.as_slice()),
            pin_max: self.pin_max,
            pin_left: self.pin_left,
            puk_max: self.puk_max,
            puk_left: self.puk_left,
            mgm: self.mgm.clone(),
            mgm_touch: self.mgm_touch,
            slots,
            objects: self
                .objects
                .iter()
                .map(|(id, v)| (format!("{id:x}"), hex::encode(v)))
                .collect(),
            root_key: hex::encode(
                PrivateKey::P256(self.root_key.clone())
                    .to_pkcs8()?
                    .as_slice(),
            ),
            root_cert: hex::encode(&self.root_cert),
        };
        Ok(serde_json::to_string_pretty(&saved)?)
    }

    /// Restores a card written by [`Card::to_json`].
    pub fn from_json(json: &str, options: Options) -> Result<Self, CardError> {
        let saved: Saved = serde_json::from_str(json)?;
        let bytes = |s: &str, what| hex::decode(s).map_err(|_| CardError::Invalid(what));
        let mut slots = BTreeMap::new();
        for (slot, s) in &saved.slots {
            let slot = u8::from_str_radix(slot, 16).map_err(|_| CardError::Invalid("slot"))?;
            let key =
                PrivateKey::from_pkcs8(s.algorithm, &Zeroizing::new(bytes(&s.pkcs8, "key")?))?;
            slots.insert(
                slot,
                SlotKey {
                    key,
                    pin_policy: s.pin_policy,
                    touch_policy: s.touch_policy,
                    origin: s.origin,
                },
            );
        }
        let mut objects = BTreeMap::new();
        for (id, v) in &saved.objects {
            let id = u32::from_str_radix(id, 16).map_err(|_| CardError::Invalid("object"))?;
            objects.insert(id, bytes(v, "object")?);
        }
        let root_key =
            match PrivateKey::from_pkcs8(Algorithm::EccP256, &bytes(&saved.root_key, "root")?)? {
                PrivateKey::P256(k) => k,
                _ => return Err(CardError::Invalid("root key")),
            };
        if saved.pin_left > saved.pin_max || saved.puk_left > saved.puk_max {
            return Err(CardError::Invalid("retry counter"));
        }
        Ok(Self {
            serial: saved.serial,
            pin: Zeroizing::new(bytes(&saved.pin, "pin")?),
            puk: Zeroizing::new(bytes(&saved.puk, "puk")?),
            pin_max: saved.pin_max,
            pin_left: saved.pin_left,
            puk_max: saved.puk_max,
            puk_left: saved.puk_left,
            mgm: saved.mgm,
            mgm_touch: saved.mgm_touch,
            slots,
            objects,
            root_key,
            root_cert: bytes(&saved.root_cert, "root certificate")?,
            session: Session::default(),
            last_touch: None,
            touches: 0,
            link: Link::default(),
            options,
            dirty: false,
        })
    }
}

impl Applet for Card {
    fn process(&mut self, cmd: &Command) -> Response {
        match cmd.ins {
            0xA4 => self.select(cmd),
            0xFD => Response::ok(FIRMWARE.to_vec()),
            0xF8 => Response::ok(self.serial.to_be_bytes().to_vec()),
            0x20 => self.verify(cmd),
            0x24 => self.change_reference(cmd, false),
            0x2C => self.change_reference(cmd, true),
            0x87 => self.general_authenticate(cmd),
            0x47 => self.generate(cmd),
            0xFE => self.import_key(cmd),
            0xF9 => self.attest(cmd),
            0xCB => self.get_data(cmd),
            0xDB => self.put_data(cmd),
            0xFF => self.set_management_key(cmd),
            0xF7 => self.metadata(cmd),
            0xFA => self.set_pin_retries(cmd),
            0xFB => self.factory_reset(),
            _ => Response::status(sw::INS_NOT_SUPPORTED),
        }
    }
}

/// Persistent state as stored in the state file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    serial: u32,
    pin: String,
    puk: String,
    pin_max: u8,
    pin_left: u8,
    puk_max: u8,
    puk_left: u8,
    mgm: MgmKey,
    mgm_touch: bool,
    slots: BTreeMap<String, SavedSlot>,
    objects: BTreeMap<String, String>,
    root_key: String,
    root_cert: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSlot {
    algorithm: Algorithm,
    pin_policy: u8,
    touch_policy: u8,
    origin: u8,
    pkcs8: String,
}

/// Slots that hold user keys: 9A, 9C, 9D, 9E and the retired slots 82–95.
pub fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95)
}

/// The certificate object content Yubico writes: `70 cert, 71 00, FE 00`.
pub fn cert_object(cert: &[u8]) -> Vec<u8> {
    let mut out = tlv::encode(0x70, cert);
    tlv::write(&mut out, 0x71, &[0]);
    tlv::write(&mut out, 0xFE, &[]);
    out
}

fn cert_from_object(object: &[u8]) -> Option<&[u8]> {
    tlv::parse(object)
        .ok()
        .filter(|(t, _)| t.tag == 0x70)
        .map(|(t, _)| t.value)
}

/// PIN bytes without the `FF` padding; `None` unless the block is 8 bytes holding
/// 1–8 PIN bytes followed only by padding.
fn unpad_pin(block: &[u8]) -> Option<&[u8]> {
    if block.len() != 8 {
        return None;
    }
    let len = block.iter().position(|&b| b == 0xFF).unwrap_or(8);
    if len == 0 || block[len..].iter().any(|&b| b != 0xFF) {
        return None;
    }
    Some(&block[..len])
}

fn single_byte(v: &[u8]) -> Option<u8> {
    match v {
        [b] => Some(*b),
        _ => None,
    }
}

/// Resolves the PIN (`AA`) and touch (`AB`) policies of GENERATE/IMPORT.
fn policies(slot: u8, items: &[tlv::Tlv<'_>]) -> Option<(u8, u8)> {
    let pin = match tlv::find(items, 0xAA).map(single_byte) {
        None | Some(Some(POLICY_DEFAULT)) if slot == 0x9C => PIN_ALWAYS,
        None | Some(Some(POLICY_DEFAULT)) => PIN_ONCE,
        Some(Some(p @ (PIN_NEVER | PIN_ONCE | PIN_ALWAYS))) => p,
        _ => return None,
    };
    let touch = match tlv::find(items, 0xAB).map(single_byte) {
        None | Some(Some(POLICY_DEFAULT)) => TOUCH_NEVER,
        Some(Some(t @ (TOUCH_NEVER | TOUCH_ALWAYS | TOUCH_CACHED))) => t,
        _ => return None,
    };
    Some((pin, touch))
}

/// Object identifier from the value of a `5C` tag (one to three bytes).
fn object_id(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 3 {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    use sha2::{Digest, Sha256, Sha384};
    use x509_cert::der::{Decode, Encode};
    use x509_cert::Certificate;

    /// A minimal host side: chains long commands, collects `61xx` responses.
    struct Host {
        card: Card,
    }

    impl Host {
        fn new() -> Self {
            Self::with(Options::default())
        }

        fn with(options: Options) -> Self {
            let mut host = Self {
                card: Card::new(12_345_678, options).unwrap(),
            };
            let (_, sw) = host.send(0xA4, 0x04, 0x00, &PIV_AID);
            assert_eq!(sw, 0x9000);
            host
        }

        fn send(&mut self, ins: u8, p1: u8, p2: u8, data: &[u8]) -> (Vec<u8>, u16) {
            let mut chunks: Vec<&[u8]> = data.chunks(255).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let mut wire = Vec::new();
            for (i, chunk) in chunks.iter().enumerate() {
                let cla = if i + 1 < chunks.len() { 0x10 } else { 0x00 };
                let mut apdu = vec![cla, ins, p1, p2];
                if !chunk.is_empty() {
                    apdu.push(chunk.len() as u8);
                    apdu.extend_from_slice(chunk);
                }
                wire = self.card.transmit(&apdu);
                if i + 1 < chunks.len() {
                    assert_eq!(wire, [0x90, 0x00], "intermediate chain response");
                }
            }
            let mut data = Vec::new();
            loop {
                let (body, sw) = wire.split_at(wire.len() - 2);
                data.extend_from_slice(body);
                let sw = u16::from_be_bytes([sw[0], sw[1]]);
                if sw & 0xFF00 != 0x6100 {
                    return (data, sw);
                }
                wire = self.card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
            }
        }

        fn verify_pin(&mut self, pin: &[u8]) -> u16 {
            self.send(0x20, 0x00, 0x80, &pad(pin)).1
        }

        fn auth_mgm(&mut self, key: &MgmKey) -> u16 {
            let alg = key.algorithm().byte();
            let (resp, sw) = self.send(0x87, alg, 0x9B, &[0x7C, 0x02, 0x80, 0x00]);
            if sw != 0x9000 {
                return sw;
            }
            let enc = tlv::find(
                &tlv::parse_all(tlv::parse_single(&resp, 0x7C).unwrap()).unwrap(),
                0x80,
            )
            .unwrap()
            .to_vec();
            let witness = key.decrypt_block(&enc).unwrap();
            let challenge = vec![0x5A; witness.len()];
            let mut inner = tlv::encode(0x80, &witness);
            tlv::write(&mut inner, 0x81, &challenge);
            let (resp, sw) = self.send(0x87, alg, 0x9B, &tlv::encode(0x7C, &inner));
            if sw != 0x9000 {
                return sw;
            }
            let items = tlv::parse_all(tlv::parse_single(&resp, 0x7C).unwrap()).unwrap();
            assert_eq!(
                tlv::find(&items, 0x82).unwrap(),
                key.encrypt_block(&challenge).unwrap(),
                "card proves it knows the key"
            );
            sw
        }

        fn generate(&mut self, slot: u8, alg: Algorithm, pin: u8, touch: u8) -> (Vec<u8>, u16) {
            let mut inner = tlv::encode(0x80, &[alg.byte()]);
            tlv::write(&mut inner, 0xAA, &[pin]);
            tlv::write(&mut inner, 0xAB, &[touch]);
            self.send(0x47, 0x00, slot, &tlv::encode(0xAC, &inner))
        }

        fn sign(&mut self, slot: u8, alg: Algorithm, input: &[u8]) -> (Vec<u8>, u16) {
            let mut inner = tlv::encode(0x82, &[]);
            tlv::write(&mut inner, 0x81, input);
            let (resp, sw) = self.send(0x87, alg.byte(), slot, &tlv::encode(0x7C, &inner));
            if sw != 0x9000 {
                return (resp, sw);
            }
            let items = tlv::parse_all(tlv::parse_single(&resp, 0x7C).unwrap()).unwrap();
            (tlv::find(&items, 0x82).unwrap().to_vec(), sw)
        }
    }

    fn pad(pin: &[u8]) -> Vec<u8> {
        let mut out = pin.to_vec();
        out.resize(8, 0xFF);
        out
    }

    fn point(public: &[u8]) -> Vec<u8> {
        let inner = tlv::parse_single(public, 0x7F49).unwrap();
        tlv::parse_single(inner, 0x86).unwrap().to_vec()
    }

    #[test]
    fn pin_retries_block_and_puk_unblocks() {
        let mut h = Host::new();
        assert_eq!(h.send(0x20, 0x00, 0x80, &[]).1, 0x63C3);
        assert_eq!(h.verify_pin(b"000000"), 0x63C2);
        assert_eq!(h.verify_pin(b"123456"), 0x9000);
        assert_eq!(h.send(0x20, 0x00, 0x80, &[]).1, 0x9000, "verified");
        assert_eq!(h.verify_pin(b"000000"), 0x63C2);
        assert_eq!(h.verify_pin(b"000000"), 0x63C1);
        assert_eq!(h.verify_pin(b"000000"), 0x63C0);
        assert_eq!(
            h.verify_pin(b"123456"),
            0x6983,
            "blocked even with the right PIN"
        );
        assert_eq!(h.send(0x20, 0x00, 0x80, &[]).1, 0x6983);

        // Wrong PUK costs a PUK try; the right one sets a new PIN.
        let mut body = pad(b"87654321");
        body.extend(pad(b"654321"));
        assert_eq!(h.send(0x2C, 0x00, 0x80, &body).1, 0x63C2);
        let mut body = pad(b"12345678");
        body.extend(pad(b"654321"));
        assert_eq!(h.send(0x2C, 0x00, 0x80, &body).1, 0x9000);
        assert_eq!(h.verify_pin(b"123456"), 0x63C2);
        assert_eq!(h.verify_pin(b"654321"), 0x9000);
        assert_eq!(h.send(0x20, 0x00, 0x80, &[]).1, 0x9000);

        // Malformed PIN blocks are rejected without costing a try.
        assert_eq!(h.send(0x20, 0x00, 0x80, &[0x31; 5]).1, 0x6700);
        assert_eq!(h.send(0x20, 0x00, 0x81, &pad(b"1")).1, 0x6A88);
    }

    #[test]
    fn change_pin_and_puk_and_block_puk_then_reset() {
        let mut h = Host::new();
        let mut body = pad(b"123456");
        body.extend(pad(b"11112222"));
        assert_eq!(h.send(0x24, 0x00, 0x80, &body).1, 0x9000);
        assert_eq!(h.verify_pin(b"11112222"), 0x9000);
        let mut body = pad(b"12345678");
        body.extend(pad(b"87654321"));
        assert_eq!(h.send(0x24, 0x00, 0x81, &body).1, 0x9000);

        // Reset is refused until PIN and PUK are both blocked.
        assert_eq!(h.send(0xFB, 0, 0, &[]).1, 0x6985);
        let mut wrong = pad(b"00000000");
        wrong.extend(pad(b"00000000"));
        for left in [2u16, 1, 0] {
            assert_eq!(h.send(0x24, 0x00, 0x81, &wrong).1, 0x63C0 | left);
            assert_eq!(h.send(0x24, 0x00, 0x80, &wrong).1, 0x63C0 | left);
        }
        assert_eq!(h.send(0x24, 0x00, 0x81, &wrong).1, 0x6983);
        assert_eq!(h.send(0xFB, 0, 0, &[]).1, 0x9000);
        assert_eq!(h.verify_pin(b"123456"), 0x9000);
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        // The attestation key and its certificate survive the reset.
        let (_, sw) = h.send(0xCB, 0x3F, 0xFF, &[0x5C, 0x03, 0x5F, 0xFF, 0x01]);
        assert_eq!(sw, 0x9000);
    }

    #[test]
    fn management_key_3des_and_aes192() {
        let mut h = Host::new();
        let wrong = MgmKey::new(MgmAlgorithm::TripleDes, &[9; 24]).unwrap();
        assert_eq!(h.auth_mgm(&wrong), 0x6982);
        assert_eq!(h.generate(0x9A, Algorithm::EccP256, 0, 0).1, 0x6982);
        // Another algorithm than the key's is refused.
        let aes = MgmKey::new(MgmAlgorithm::Aes192, &[7; 24]).unwrap();
        assert_eq!(h.auth_mgm(&aes), 0x6A86);
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);

        // SET MANAGEMENT KEY to AES-192.
        let mut body = vec![0x0A, 0x9B, 24];
        body.extend_from_slice(&[7; 24]);
        assert_eq!(h.send(0xFF, 0xFF, 0xFF, &body).1, 0x9000);
        let (meta, _) = h.send(0xF7, 0x00, 0x9B, &[]);
        assert_eq!(&meta[..3], [0x01, 0x01, 0x0A]);
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x6A86);
        let wrong_aes = MgmKey::new(MgmAlgorithm::Aes192, &[8; 24]).unwrap();
        assert_eq!(h.auth_mgm(&wrong_aes), 0x6982);
        assert_eq!(h.generate(0x9A, Algorithm::EccP256, 0, 0).1, 0x6982);
        assert_eq!(h.auth_mgm(&aes), 0x9000);
        assert_eq!(h.generate(0x9A, Algorithm::EccP256, 0, 0).1, 0x9000);

        // One-way (external) authentication as `yubikey::get_auth_challenge` does it.
        let (resp, sw) = h.send(0x87, 0x0A, 0x9B, &[0x7C, 0x02, 0x81, 0x00]);
        assert_eq!(sw, 0x9000);
        let c = tlv::find(&tlv::parse_all(&resp[2..]).unwrap(), 0x81)
            .unwrap()
            .to_vec();
        let r = aes.encrypt_block(&c).unwrap();
        let body = tlv::encode(0x7C, &tlv::encode(0x82, &r));
        assert_eq!(h.send(0x87, 0x0A, 0x9B, &body).1, 0x9000);
        // Without authentication SET MANAGEMENT KEY is refused.
        h.card.reset_session();
        let mut body = vec![0x03, 0x9B, 24];
        body.extend_from_slice(&DEFAULT_MGM_KEY_FOR_TEST);
        assert_eq!(h.send(0xFF, 0xFF, 0xFF, &body).1, 0x6982);
    }

    const DEFAULT_MGM_KEY_FOR_TEST: [u8; 24] = crypto::DEFAULT_MGM_KEY;

    #[test]
    fn generate_sign_verify_p256_and_p384() {
        let mut h = Host::new();
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        let (pub256, sw) = h.generate(0x9A, Algorithm::EccP256, PIN_ONCE, TOUCH_NEVER);
        assert_eq!(sw, 0x9000);
        let (pub384, sw) = h.generate(0x85, Algorithm::EccP384, PIN_NEVER, TOUCH_NEVER);
        assert_eq!(sw, 0x9000);

        let digest = Sha256::digest(b"hello");
        assert_eq!(
            h.sign(0x9A, Algorithm::EccP256, &digest).1,
            0x6982,
            "PIN needed"
        );
        assert_eq!(h.verify_pin(b"123456"), 0x9000);
        assert_eq!(
            h.sign(0x9A, Algorithm::EccP384, &digest).1,
            0x6A86,
            "wrong alg"
        );
        let (sig, sw) = h.sign(0x9A, Algorithm::EccP256, &digest);
        assert_eq!(sw, 0x9000);
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(&pub256)).unwrap();
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        vk.verify(b"hello", &sig).unwrap();

        h.card.reset_session();
        let digest = Sha384::digest(b"hello");
        let (sig, sw) = h.sign(0x85, Algorithm::EccP384, &digest);
        assert_eq!(sw, 0x9000, "PIN policy never");
        let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point(&pub384)).unwrap();
        let sig = p384::ecdsa::Signature::from_der(&sig).unwrap();
        vk.verify(b"hello", &sig).unwrap();

        // Metadata shows algorithm, policies, origin and the same public key.
        let (meta, sw) = h.send(0xF7, 0x00, 0x85, &[]);
        assert_eq!(sw, 0x9000);
        let items = tlv::parse_all(&meta).unwrap();
        assert_eq!(tlv::find(&items, 0x01), Some(&[0x14][..]));
        assert_eq!(tlv::find(&items, 0x02), Some(&[PIN_NEVER, TOUCH_NEVER][..]));
        assert_eq!(tlv::find(&items, 0x03), Some(&[ORIGIN_GENERATED][..]));
        assert_eq!(
            tlv::find(&items, 0x04).unwrap(),
            tlv::parse_single(&pub384, 0x7F49).unwrap()
        );
        assert_eq!(h.send(0xF7, 0x00, 0x9D, &[]).1, 0x6A82, "empty slot");
        let (meta, _) = h.send(0xF7, 0x00, 0x80, &[]);
        assert_eq!(
            tlv::find(&tlv::parse_all(&meta).unwrap(), 0x06),
            Some(&[3, 3][..])
        );
    }

    #[test]
    fn rsa_2048_generate_and_raw_sign() {
        let mut h = Host::new();
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        let (public, sw) = h.generate(0x9C, Algorithm::Rsa2048, 0, 0);
        assert_eq!(sw, 0x9000);
        // 7F49 82 xx xx: the yubikey crate relies on the three-byte length form.
        assert_eq!(&public[..3], [0x7F, 0x49, 0x82]);
        let items = tlv::parse_all(tlv::parse_single(&public, 0x7F49).unwrap()).unwrap();
        let n = rsa::BigUint::from_bytes_be(tlv::find(&items, 0x81).unwrap());
        let e = rsa::BigUint::from_bytes_be(tlv::find(&items, 0x82).unwrap());
        let pk = rsa::RsaPublicKey::new(n, e).unwrap();

        let digest = Sha256::digest(b"rsa message");
        let mut block = vec![0x00, 0x01];
        let prefix = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        block.resize(256 - prefix.len() - digest.len() - 1, 0xFF);
        block.push(0x00);
        block.extend_from_slice(&prefix);
        block.extend_from_slice(&digest);
        assert_eq!(h.verify_pin(b"123456"), 0x9000);
        let (sig, sw) = h.sign(0x9C, Algorithm::Rsa2048, &block);
        assert_eq!(sw, 0x9000);
        assert_eq!(sig.len(), 256);
        pk.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
            .unwrap();
        // 9C defaults to PIN policy "always": the next sign needs a new VERIFY.
        assert_eq!(h.sign(0x9C, Algorithm::Rsa2048, &block).1, 0x6982);
        assert_eq!(h.verify_pin(b"123456"), 0x9000);
        assert_eq!(h.sign(0x9C, Algorithm::Rsa2048, &block).1, 0x9000);
        assert_eq!(h.sign(0x9C, Algorithm::Rsa2048, &block[1..]).1, 0x6982);
    }

    #[test]
    fn touch_always_waits_and_cached_skips() {
        let delay = Duration::from_millis(150);
        let mut h = Host::with(Options { touch_delay: delay });
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        assert_eq!(
            h.generate(0x9A, Algorithm::EccP256, PIN_NEVER, TOUCH_ALWAYS)
                .1,
            0x9000
        );
        assert_eq!(
            h.generate(0x9E, Algorithm::EccP256, PIN_NEVER, TOUCH_CACHED)
                .1,
            0x9000
        );
        assert_eq!(
            h.generate(0x9D, Algorithm::EccP256, PIN_NEVER, TOUCH_NEVER)
                .1,
            0x9000
        );
        let digest = [0x11; 32];
        for slot in [0x9A, 0x9A] {
            let t = Instant::now();
            assert_eq!(h.sign(slot, Algorithm::EccP256, &digest).1, 0x9000);
            assert!(t.elapsed() >= delay);
        }
        let t = Instant::now();
        assert_eq!(h.sign(0x9D, Algorithm::EccP256, &digest).1, 0x9000);
        assert!(t.elapsed() < delay);
        // The 9A touch above is still cached for 9E.
        let t = Instant::now();
        assert_eq!(h.sign(0x9E, Algorithm::EccP256, &digest).1, 0x9000);
        assert!(t.elapsed() < delay);
    }

    #[test]
    fn certificate_object_chaining_and_get_response() {
        let mut h = Host::new();
        let cert: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let mut body = vec![0x5C, 0x03, 0x5F, 0xC1, 0x05];
        body.extend(tlv::encode(0x53, &cert_object(&cert)));
        assert_eq!(h.send(0xDB, 0x3F, 0xFF, &body).1, 0x6982, "needs mgm auth");
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        assert_eq!(h.send(0xDB, 0x3F, 0xFF, &body).1, 0x9000);

        // First piece comes with 61 00, then GET RESPONSE pieces.
        let first = h
            .card
            .transmit(&[0, 0xCB, 0x3F, 0xFF, 5, 0x5C, 3, 0x5F, 0xC1, 0x05]);
        assert_eq!(first.len(), 258);
        assert_eq!(&first[256..], [0x61, 0x00]);
        let (data, sw) = h.send(0xCB, 0x3F, 0xFF, &[0x5C, 0x03, 0x5F, 0xC1, 0x05]);
        assert_eq!(sw, 0x9000);
        let content = tlv::parse_single(&data, 0x53).unwrap();
        assert_eq!(cert_from_object(content).unwrap(), cert.as_slice());

        // Deleting with an empty 53.
        let body = [0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x53, 0x00];
        assert_eq!(h.send(0xDB, 0x3F, 0xFF, &body).1, 0x9000);
        assert_eq!(h.send(0xCB, 0x3F, 0xFF, &body[..5]).1, 0x6A82);
        // Discovery object, CHUID and CCC exist for OpenSC.
        let (disc, sw) = h.send(0xCB, 0x3F, 0xFF, &[0x5C, 0x01, 0x7E]);
        assert_eq!(sw, 0x9000);
        assert_eq!(disc[0], 0x7E);
        assert_eq!(
            h.send(0xCB, 0x3F, 0xFF, &[0x5C, 0x03, 0x5F, 0xC1, 0x02]).1,
            0x9000
        );
        assert_eq!(
            h.send(0xCB, 0x3F, 0xFF, &[0x5C, 0x03, 0x5F, 0xC1, 0x07]).1,
            0x9000
        );
        assert_eq!(h.send(0x42, 0, 0, &[]).1, 0x6D00);
        assert_eq!(h.card.transmit(&[0x80, 0xFD, 0, 0]), [0x6E, 0x00]);
    }

    #[test]
    fn attestation_chain_verifies() {
        let mut h = Host::new();
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        let (public, _) = h.generate(0x9E, Algorithm::EccP256, PIN_NEVER, TOUCH_CACHED);
        let (der, sw) = h.send(0xF9, 0x9E, 0x00, &[]);
        assert_eq!(sw, 0x9000);
        let slot_cert = Certificate::from_der(&der).unwrap();
        let (obj, sw) = h.send(0xCB, 0x3F, 0xFF, &[0x5C, 0x03, 0x5F, 0xFF, 0x01]);
        assert_eq!(sw, 0x9000);
        let f9_der = cert_from_object(tlv::parse_single(&obj, 0x53).unwrap()).unwrap();
        let f9_cert = Certificate::from_der(f9_der).unwrap();
        let root = Certificate::from_der(h.card.attestation_root()).unwrap();

        let check = |cert: &Certificate, issuer: &Certificate| {
            let spki = issuer
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap();
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
            let sig = p256::ecdsa::Signature::from_der(cert.signature.raw_bytes()).unwrap();
            vk.verify(&cert.tbs_certificate.to_der().unwrap(), &sig)
                .unwrap();
            assert_eq!(cert.tbs_certificate.issuer, issuer.tbs_certificate.subject);
        };
        check(&slot_cert, &f9_cert);
        check(&f9_cert, &root);
        check(&root, &root);

        // The attested key is the slot's key; Yubico's extensions carry the facts.
        let spki = slot_cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap();
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
        assert_eq!(vk.to_encoded_point(false).as_bytes(), point(&public));
        let ext = |oid| {
            slot_cert
                .tbs_certificate
                .extensions
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.extn_id == oid)
                .unwrap()
                .extn_value
                .as_bytes()
                .to_vec()
        };
        assert_eq!(ext(crypto::OID_FIRMWARE), FIRMWARE);
        assert_eq!(ext(crypto::OID_SERIAL), 12_345_678u32.to_der().unwrap());
        assert_eq!(ext(crypto::OID_POLICY), [PIN_NEVER, TOUCH_CACHED]);
        assert_eq!(ext(crypto::OID_FORM_FACTOR), [0x01]);
        // Empty slots cannot be attested.
        assert_eq!(h.send(0xF9, 0x9A, 0x00, &[]).1, 0x6A80);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut h = Host::new();
        assert_eq!(h.auth_mgm(&MgmKey::factory_default()), 0x9000);
        let (public, _) = h.generate(0x9A, Algorithm::EccP256, PIN_NEVER, TOUCH_NEVER);
        assert_eq!(h.verify_pin(b"999999"), 0x63C2);
        assert!(h.card.take_dirty());
        let json = h.card.to_json().unwrap();
        let card = Card::from_json(&json, Options::default()).unwrap();
        assert_eq!(card.attestation_root(), h.card.attestation_root());
        let mut h2 = Host { card };
        assert_eq!(h2.send(0x20, 0x00, 0x80, &[]).1, 0x63C2);
        let (meta, _) = h2.send(0xF7, 0x00, 0x9A, &[]);
        assert_eq!(
            tlv::find(&tlv::parse_all(&meta).unwrap(), 0x04).unwrap(),
            tlv::parse_single(&public, 0x7F49).unwrap()
        );
        let (sig, sw) = h2.sign(0x9A, Algorithm::EccP256, &Sha256::digest(b"x"));
        assert_eq!(sw, 0x9000);
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(&public)).unwrap();
        vk.verify(b"x", &p256::ecdsa::Signature::from_der(&sig).unwrap())
            .unwrap();
        assert!(Card::from_json("{}", Options::default()).is_err());
    }
}
