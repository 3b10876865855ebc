//! ISO 7816-4 command/response APDUs, command chaining and `61xx`/GET RESPONSE.
//!
//! [`Command::parse`] reads short and extended APDUs of all four cases. [`Link`] sits
//! between the transport and the PIV state machine: it joins chained commands
//! (CLA bit `0x10`) into one and hands out long responses in 256-byte pieces that
//! the client collects with GET RESPONSE (`00 C0`).

/// Status words the emulator answers with.
pub mod sw {
    /// Success.
    pub const OK: u16 = 0x9000;
    /// More response bytes available (low byte: how many, 0 = 256 or more).
    pub const MORE_DATA: u16 = 0x6100;
    /// Wrong PIN; low nibble holds the remaining tries.
    pub const VERIFY_FAIL: u16 = 0x63C0;
    /// Wrong length.
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Last command of a chain expected.
    pub const CHAIN_EXPECTED: u16 = 0x6883;
    /// Security status not satisfied (PIN or management key needed).
    pub const SECURITY: u16 = 0x6982;
    /// Authentication method blocked.
    pub const BLOCKED: u16 = 0x6983;
    /// Conditions of use not satisfied.
    pub const CONDITIONS: u16 = 0x6985;
    /// Incorrect parameters in the data field.
    pub const BAD_DATA: u16 = 0x6A80;
    /// File or application not found.
    pub const NOT_FOUND: u16 = 0x6A82;
    /// Incorrect P1/P2.
    pub const BAD_P1P2: u16 = 0x6A86;
    /// Referenced data (key reference) not found.
    pub const REF_NOT_FOUND: u16 = 0x6A88;
    /// Wrong P1/P2 (Yubico uses it for an invalid slot).
    pub const WRONG_P1P2: u16 = 0x6B00;
    /// Instruction not supported.
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    /// Class not supported.
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
}

/// Why bytes are not a command APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    /// Shorter than the four header bytes.
    #[error("APDU shorter than its header")]
    TooShort,
    /// Lc/Le do not match the number of bytes.
    #[error("APDU length fields do not match its size")]
    BadLength,
}

/// A parsed command APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (empty when there is no Lc).
    pub data: Vec<u8>,
    /// Whether the command used extended lengths.
    pub extended: bool,
}

impl Command {
    /// Parses a short or extended APDU (cases 1–4).
    pub fn parse(bytes: &[u8]) -> Result<Self, ApduError> {
        let (header, body) = bytes.split_at_checked(4).ok_or(ApduError::TooShort)?;
        let mut cmd = Self {
            cla: header[0],
            ins: header[1],
            p1: header[2],
            p2: header[3],
            data: Vec::new(),
            extended: false,
        };
        match body.len() {
            // Case 1, or case 2 short (one Le byte).
            0 | 1 => {}
            _ if body[0] != 0 || body.len() == 2 => {
                // Short case 3/4: Lc, data, optional Le.
                let lc = usize::from(body[0]);
                if lc == 0 || (body.len() != 1 + lc && body.len() != 2 + lc) {
                    return Err(ApduError::BadLength);
                }
                cmd.data = body[1..1 + lc].to_vec();
            }
            3 => cmd.extended = true, // Extended case 2: 00 Le Le.
            _ => {
                // Extended case 3/4: 00 Lc Lc data [Le Le].
                cmd.extended = true;
                let lc = usize::from(u16::from_be_bytes([body[1], body[2]]));
                if lc == 0 || (body.len() != 3 + lc && body.len() != 5 + lc) {
                    return Err(ApduError::BadLength);
                }
                cmd.data = body[3..3 + lc].to_vec();
            }
        }
        Ok(cmd)
    }

    /// Whether the chaining bit says more parts of this command follow.
    pub fn chained(&self) -> bool {
        self.cla & 0x10 != 0
    }
}

/// A response APDU: data plus status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// Status word (SW1 << 8 | SW2).
    pub sw: u16,
}

impl Response {
    /// A bare status word.
    pub fn status(sw: u16) -> Self {
        Self {
            data: Vec::new(),
            sw,
        }
    }

    /// Data with `90 00`.
    pub fn ok(data: Vec<u8>) -> Self {
        Self { data, sw: sw::OK }
    }

    /// Data followed by SW1 SW2, as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_be_bytes());
        out
    }
}

/// Something that answers complete (unchained) commands.
pub trait Applet {
    /// Processes one complete command.
    fn process(&mut self, cmd: &Command) -> Response;
}

/// Largest response piece for short APDUs.
const SHORT_CHUNK: usize = 256;

/// Chaining and GET RESPONSE state between the transport and an [`Applet`].
#[derive(Debug, Default)]
pub struct Link {
    /// Data of the chained parts received so far, with the chain's INS/P1/P2.
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// Response bytes not yet collected with GET RESPONSE.
    pending: Vec<u8>,
}

impl Link {
    /// Forgets chaining and pending response data (card reset).
    pub fn reset(&mut self) {
        self.chain = None;
        self.pending.clear();
    }

    /// Handles one wire APDU and returns the wire response.
    pub fn transmit(&mut self, applet: &mut impl Applet, bytes: &[u8]) -> Vec<u8> {
        self.exchange(applet, bytes).to_bytes()
    }

    fn exchange(&mut self, applet: &mut impl Applet, bytes: &[u8]) -> Response {
        let cmd = match Command::parse(bytes) {
            Ok(cmd) => cmd,
            Err(_) => {
                self.reset();
                return Response::status(sw::WRONG_LENGTH);
            }
        };
        if cmd.cla & !0x10 != 0 {
            self.reset();
            return Response::status(sw::CLA_NOT_SUPPORTED);
        }
        if cmd.ins == 0xC0 && !cmd.chained() {
            return self.next_piece(cmd.extended);
        }
        self.pending.clear();

        if cmd.chained() {
            match &mut self.chain {
                Some((ins, p1, p2, data)) if (*ins, *p1, *p2) == (cmd.ins, cmd.p1, cmd.p2) => {
                    data.extend_from_slice(&cmd.data);
                }
                _ => self.chain = Some((cmd.ins, cmd.p1, cmd.p2, cmd.data)),
            }
            return Response::status(sw::OK);
        }
        let cmd = match self.chain.take() {
            Some((ins, p1, p2, mut data)) => {
                if (ins, p1, p2) != (cmd.ins, cmd.p1, cmd.p2) {
                    return Response::status(sw::CHAIN_EXPECTED);
                }
                data.extend_from_slice(&cmd.data);
                Command { data, ..cmd }
            }
            None => cmd,
        };
        let resp = applet.process(&cmd);
        if cmd.extended || resp.data.len() <= SHORT_CHUNK {
            return resp;
        }
        if resp.sw != sw::OK {
            return Response::status(resp.sw);
        }
        self.pending = resp.data;
        self.next_piece(false)
    }

    fn next_piece(&mut self, extended: bool) -> Response {
        if self.pending.is_empty() {
            return Response::status(sw::CONDITIONS);
        }
        let take = if extended {
            self.pending.len()
        } else {
            self.pending.len().min(SHORT_CHUNK)
        };
        let data: Vec<u8> = self.pending.drain(..take).collect();
        let left = self.pending.len();
        let sw = if left == 0 {
            sw::OK
        } else {
            // SW2 = 00 means "256 or more".
            sw::MORE_DATA | u16::from(u8::try_from(left).unwrap_or(0))
        };
        Response { data, sw }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    struct Echo(Vec<Command>);

    impl Applet for Echo {
        fn process(&mut self, cmd: &Command) -> Response {
            self.0.push(cmd.clone());
            Response::ok(
                cmd.data
                    .iter()
                    .cycle()
                    .take(cmd.p1 as usize * 100)
                    .copied()
                    .collect(),
            )
        }
    }

    #[test]
    fn parses_all_cases() {
        let c = Command::parse(&[0, 0xFD, 0, 0]).unwrap();
        assert!(c.data.is_empty());
        let c = Command::parse(&[0, 0xFD, 0, 0, 0]).unwrap();
        assert!(c.data.is_empty());
        let c = Command::parse(&[0, 0x20, 0, 0x80, 2, 1, 2]).unwrap();
        assert_eq!(c.data, [1, 2]);
        let c = Command::parse(&[0, 0x20, 0, 0x80, 2, 1, 2, 0]).unwrap();
        assert_eq!(c.data, [1, 2]);
        let c = Command::parse(&[0, 0x87, 7, 0x9A, 0, 0, 2, 1, 2, 0, 0]).unwrap();
        assert!(c.extended);
        assert_eq!(c.data, [1, 2]);
        assert_eq!(Command::parse(&[0, 1, 2]), Err(ApduError::TooShort));
        assert_eq!(
            Command::parse(&[0, 0x20, 0, 0x80, 3, 1, 2]),
            Err(ApduError::BadLength)
        );
    }

    #[test]
    fn chains_and_splits_long_responses() {
        let mut link = Link::default();
        let mut app = Echo(Vec::new());
        let r = link.transmit(&mut app, &[0x10, 0xDB, 6, 0, 2, 1, 2]);
        assert_eq!(r, [0x90, 0]);
        assert!(app.0.is_empty());
        let r = link.transmit(&mut app, &[0x00, 0xDB, 6, 0, 1, 3]);
        assert_eq!(app.0.len(), 1);
        assert_eq!(app.0[0].data, [1, 2, 3]);
        // 600 bytes: 256 + 61 00, 256 + 61 58, 88 + 90 00.
        assert_eq!(r.len(), 258);
        assert_eq!(&r[256..], [0x61, 0x00]);
        let r = link.transmit(&mut app, &[0, 0xC0, 0, 0, 0]);
        assert_eq!(&r[256..], [0x61, 88]);
        let r = link.transmit(&mut app, &[0, 0xC0, 0, 0, 0]);
        assert_eq!(r.len(), 90);
        assert_eq!(&r[88..], [0x90, 0]);
        let r = link.transmit(&mut app, &[0, 0xC0, 0, 0, 0]);
        assert_eq!(r, [0x69, 0x85]);
    }

    #[test]
    fn broken_chain_is_rejected() {
        let mut link = Link::default();
        let mut app = Echo(Vec::new());
        link.transmit(&mut app, &[0x10, 0xDB, 1, 0, 1, 1]);
        let r = link.transmit(&mut app, &[0x00, 0x87, 1, 0, 1, 1]);
        assert_eq!(r, [0x68, 0x83]);
        assert!(app.0.is_empty());
    }
}
