//! The TPM's endorsement key (EK) certificates, as the manufacturer (or
//! `swtpm_setup --create-ek-cert`) stored them in NV: what an attestation CA checks
//! before it certifies the agent's attestation key. `attest` reports them
//! (docs/protocol.md, `attest`; docs/key-attestation.md says why they matter).

use tss_esapi::abstraction::nv;
use tss_esapi::handles::NvIndexTpmHandle;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;

use super::Conn;

/// The NV indices of the EK certificates (TCG EK Credential Profile for TPM 2.0,
/// §2.2.1.4 "Low Range"): RSA 2048 and ECC NIST P-256.
pub const EK_CERT_INDICES: [u32; 2] = [0x01c0_0002, 0x01c0_000a];

/// An EK certificate is far smaller; a bigger index is not one.
const MAX_EK_CERT: usize = 16 * 1024;

/// The EK certificates this TPM holds: (NV index, DER), read with the owner
/// hierarchy's authorization (empty, as the agent uses it everywhere). A missing or
/// unreadable index is left out: a TPM without EK certificates is common (many
/// firmware TPMs, a bare swtpm), and attestation still works without them; an owner
/// hierarchy with a password also hides them (the CLI's message says so).
pub(super) fn ek_certificates(conn: &mut Conn) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    for index in EK_CERT_INDICES {
        let Ok(handle) = NvIndexTpmHandle::new(index) else {
            continue;
        };
        let read = conn.cmd("TPM2_NV_Read (EK certificate)", |ctx| {
            ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                nv::read_full(ctx, NvAuth::Owner, handle)
            })
        });
        match read {
            Ok(der) if !der.is_empty() && der.len() <= MAX_EK_CERT => out.push((index, der)),
            _ => {}
        }
    }
    out
}
