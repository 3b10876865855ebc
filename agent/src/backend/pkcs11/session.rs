//! Reaching the token: finding its slot, opening sessions and logging in; which
//! module errors are which [`Fault`], and how a lane heals each.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use tracing::{info, warn};

use super::{lock, module, Conn, Lane, Link, Shared};
use crate::backend::fault::{self, Fault, Faulted, Recover};
use crate::backend::BackendError;
use crate::config::TokenSelector;
use crate::pin::PinSource;

/// The [`Fault`] of a module error, with the error to report if it is not healed:
/// the one place that says which `CKR_…` means what.
pub(super) fn classify(name: &str, e: CkError) -> Faulted {
    let CkError::Pkcs11(rv, f) = &e else {
        return Faulted::failed(BackendError::failed(name, e.to_string()));
    };
    let fault = match rv {
        // A session closes only with its token (the agent never calls
        // C_CloseAllSessions), so a closed session means the token went away.
        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SlotIdInvalid
        | RvError::CryptokiNotInitialized => Fault::Gone,
        RvError::UserNotLoggedIn => Fault::Relogin,
        RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => Fault::StaleHandle,
        _ => Fault::Failed,
    };
    let detail = match (fault, rv) {
        (Fault::Gone, _) => format!(
            "{f} failed: CKR_{}; the token is not reachable",
            ckr_name(rv)
        ),
        (Fault::Relogin, _) => format!("{f} failed: the token logged the agent out"),
        (Fault::StaleHandle, _) => format!(
            "{f} failed: CKR_{}; key handles changed under the agent",
            ckr_name(rv)
        ),
        (Fault::Failed, RvError::DeviceMemory | RvError::HostMemory) => {
            format!("{f} failed: out of memory on the token or host ({rv:?})")
        }
        (Fault::Failed, _) => format!("{f} failed: CKR_{}", ckr_name(rv)),
    };
    Faulted::new(fault, BackendError::failed(name, detail))
}

/// `RvError` debug names are CamelCase; show them as the CKR_ constants people search for.
fn ckr_name(rv: &RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Shared {
    pub(super) fn name(&self) -> &str {
        &self.settings.name
    }

    pub(super) fn connect(&self, conn: &mut Conn) -> Result<Link, BackendError> {
        if let Some(link) = &conn.link {
            return Ok(link.clone());
        }
        let ctx = module(self.name(), &self.settings.module)?;
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| BackendError::absent(self.name(), format!("C_GetSlotList failed: {e}")))?;
        let mut seen = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            let hit = match &self.settings.token {
                TokenSelector::Label(l) => info.label().trim_end() == l,
                TokenSelector::Serial(s) => info.serial_number().trim_end() == s,
            };
            if hit {
                conn.generation += 1;
                conn.logged_in = false;
                conn.keys.clear();
                conn.keys_loaded = false;
                let link = Link { ctx, slot };
                conn.link = Some(link.clone());
                self.live.store(conn.generation, Ordering::Release);
                info!(device = self.name(), slot = slot.id(), "token found");
                return Ok(link);
            }
            seen.push(format!("'{}'", info.label().trim_end()));
        }
        Err(BackendError::absent(
            self.name(),
            format!(
                "no {} in module {} (tokens present: {}); is the token inserted and initialised?",
                self.settings.token,
                self.settings.module.display(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            ),
        ))
    }

    pub(super) fn disconnect(&self, conn: &mut Conn) {
        self.live.store(0, Ordering::Release);
        if conn.link.take().is_some() {
            warn!(
                device = self.name(),
                "dropped the connection to the token; the next attempt finds it again"
            );
        }
        conn.logged_in = false;
        conn.keys.clear();
        conn.keys_loaded = false;
    }

    /// Logs in with the PIN source, at most once per PIN: a refused PIN is remembered
    /// and not offered again.
    fn login(&self, conn: &mut Conn, link: &Link, session: &Session) -> Result<(), Faulted> {
        if conn.logged_in {
            return Ok(());
        }
        let name = self.name();
        let token = link
            .ctx
            .get_token_info(link.slot)
            .map_err(|e| classify(name, e))?;
        if !token.login_required() {
            conn.logged_in = true;
            return Ok(());
        }
        if let Ok(info) = session.get_session_info() {
            if matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            ) {
                conn.logged_in = true;
                return Ok(());
            }
        }
        if token.user_pin_locked() {
            return Err(Faulted::failed(BackendError::pin_locked(name, "the token's user PIN is locked; unblock it with the SO PIN (e.g. pkcs11-tool --init-pin --login --login-type so)")));
        }
        let source = self.settings.pin.as_ref().ok_or_else(|| {
            BackendError::pin_required(
                name,
                "a PIN is needed and the [[device]] entry has no `pin` (add pin = \"file:/path\" or \"env:VAR\")",
            )
        })?;
        let pin = match source {
            PinSource::Prompt => conn.pending_pin.take().ok_or_else(|| {
                BackendError::pin_required(
                    name,
                    "the device asks for its PIN (pin = \"prompt\") and this request came from a client that cannot ask a person; log in from a terminal with the waxseal command first",
                )
            })?,
            _ => source
                .read_for(&format!("PIN of device {name} (token '{}')", token.label().trim_end()))
                .map_err(|e| BackendError::pin_required(name, e.to_string()))?,
        };
        let offer = conn.pins.offer(pin).map_err(|_| {
            BackendError::pin_refused(name, format!("the PIN from {source} was already refused by the token; the agent does not try it again. Put the right PIN there and retry"))
        })?;
        match session.login(UserType::User, Some(offer.secret())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                info!(device = name, "logged in");
                conn.logged_in = true;
                conn.pins.accepted();
                Ok(())
            }
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid,
                _,
            )) => {
                conn.pins.refused(&offer);
                let left = match link.ctx.get_token_info(link.slot) {
                    Ok(t) if t.user_pin_locked() => " The PIN is now locked.".to_string(),
                    Ok(t) if t.user_pin_final_try() => {
                        " One try is left before the PIN locks.".to_string()
                    }
                    Ok(t) if t.user_pin_count_low() => {
                        " The token reports few tries left.".to_string()
                    }
                    _ => String::new(),
                };
                warn!(device = name, source = %source, "token refused the PIN; it will not be retried");
                Err(Faulted::failed(BackendError::pin_refused(name, format!("the token refused the PIN from {source}.{left} The agent will not retry it; fix the PIN source and try again"))))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                Err(Faulted::failed(BackendError::pin_locked(
                    name,
                    "the user PIN is locked; unblock it with the SO PIN",
                )))
            }
            Err(e) => Err(classify(name, e)),
        }
    }
}

impl Lane {
    /// Ensures a connected, logged-in session; returns the locked state with it.
    fn ready(&mut self) -> Result<(MutexGuard<'_, Conn>, Link, &Session), Faulted> {
        let shared = &*self.shared;
        let mut conn = lock(&shared.conn);
        // Not finding the token is final: it has just been looked for.
        let link = shared.connect(&mut conn)?;
        if self
            .session
            .as_ref()
            .is_some_and(|(g, _)| *g != conn.generation)
        {
            self.session = None;
        }
        let session = match &mut self.session {
            Some((_, s)) => &*s,
            empty => match link.ctx.open_rw_session(link.slot) {
                Ok(s) => &empty.insert((conn.generation, s)).1,
                Err(e) => {
                    let mut faulted = classify(shared.name(), e);
                    if faulted.fault == Fault::Failed {
                        // The token was there a moment ago: treat it as gone.
                        faulted.fault = Fault::Gone;
                    }
                    return Err(faulted);
                }
            },
        };
        shared.login(&mut conn, &link, session)?;
        if !conn.keys_loaded {
            shared
                .load_keys(&mut conn, session)
                .map_err(|e| classify(shared.name(), e))?;
        }
        Ok((conn, link, session))
    }

    /// Runs `op` with a ready session; the backend kit's [`fault::recover`] heals a
    /// lost token, login or handle and tries once more.
    pub(super) fn with_retry<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn, &Link, &Session) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        fault::recover(self, |lane| {
            let shared = lane.shared.clone();
            let (mut conn, link, session) = lane.ready()?;
            op(&mut conn, &link, session).map_err(|e| match e {
                OpError::Ck(e) => classify(shared.name(), e),
                OpError::Backend(e) => Faulted::failed(e),
            })
        })
        .map_err(Faulted::into_error)
    }

    /// Whether the lane's session belongs to the live connection `conn` (a healing
    /// step must not undo another lane's reconnect). A lane without a session failed
    /// to open one on the live connection.
    fn current(&self, conn: &Conn) -> bool {
        self.session
            .as_ref()
            .is_none_or(|(generation, _)| *generation == conn.generation)
    }
}

impl Recover for Lane {
    fn device(&self) -> &str {
        self.shared.name()
    }

    fn reconnect(&mut self) {
        let shared = self.shared.clone();
        let mut conn = lock(&shared.conn);
        if self.current(&conn) {
            shared.disconnect(&mut conn);
        }
        self.session = None;
        self.keys.clear();
    }

    fn relogin(&mut self) {
        let shared = self.shared.clone();
        let mut conn = lock(&shared.conn);
        if self.current(&conn) {
            conn.logged_in = false;
        }
    }

    fn refind(&mut self) {
        let shared = self.shared.clone();
        let mut conn = lock(&shared.conn);
        if self.current(&conn) {
            conn.keys_loaded = false;
        }
        self.keys.clear();
    }
}

/// An error inside a retried operation: from the module (classified) or final.
pub(super) enum OpError {
    Ck(CkError),
    Backend(BackendError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        OpError::Ck(e)
    }
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        OpError::Backend(e)
    }
}

#[cfg(test)]
mod tests {
    use cryptoki::context::Function;

    use super::*;
    use crate::backend::Code;

    fn fault_of(rv: RvError) -> Faulted {
        classify("hsm", CkError::Pkcs11(rv, Function::Sign))
    }

    #[test]
    fn module_errors_sort_into_faults() {
        for rv in [
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
        ] {
            assert_eq!(fault_of(rv).fault, Fault::Gone, "{rv:?}");
        }
        assert_eq!(fault_of(RvError::UserNotLoggedIn).fault, Fault::Relogin);
        assert_eq!(
            fault_of(RvError::ObjectHandleInvalid).fault,
            Fault::StaleHandle
        );
        let failed = fault_of(RvError::FunctionFailed);
        assert_eq!(failed.fault, Fault::Failed);
        assert_eq!(
            failed.into_error().to_string(),
            "device hsm: Function::Sign failed: CKR_FUNCTION_FAILED"
        );
        // A token still gone after the reconnect is absent.
        assert_eq!(
            fault_of(RvError::DeviceRemoved).into_error().code,
            Code::Absent
        );
    }
}
