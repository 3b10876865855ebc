//! Locking: `waxseal lock`/`unlock` and D-Bus `Lock`/`Unlock` (the user's lock),
//! `ssh-add -x`/`-X` (a passphrase lock), and a device's `unlock`. Every such
//! request is recorded in the audit log with its caller.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Map;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{wire, Event, KeyStore};
use crate::audit::{self, Record};
use crate::policy::Caller;
use crate::proto::{ErrorCode, UnlockOk, WireError};

impl KeyStore {
    /// `unlock`: the user's go-ahead to try `device`'s PIN again.
    pub fn unlock_device(&self, device: &str, caller: &Caller) -> Result<UnlockOk, WireError> {
        let unlocked = (|| {
            let d = self.device(device)?;
            d.lanes.run(|b| b.unlock())?.map_err(wire)
        })();
        self.audit_lock(
            audit::Event::Unlock,
            device,
            caller,
            unlocked.as_ref().err(),
        );
        let message = unlocked?;
        info!(device, %message, "unlock");
        Ok(UnlockOk {
            device: Some(device.to_string()),
            locked: self.is_locked(),
            message,
        })
    }

    pub(super) fn check_unlocked(&self) -> Result<(), WireError> {
        if self.user_locked.load(Ordering::Acquire) {
            return Err(WireError::new(
                ErrorCode::Locked,
                "the agent is locked (waxseal lock); unlock it with `waxseal unlock`",
            ));
        }
        if self.ssh_locked() {
            return Err(WireError::new(
                ErrorCode::Locked,
                "the agent is locked (ssh-add -x); unlock it with ssh-add -X",
            ));
        }
        Ok(())
    }

    pub(super) fn ssh_locked(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records a `lock` or `unlock` request (of the agent when `device` is empty) and
    /// who made it; `refused` when it was refused. A record that cannot be written is
    /// logged: locking must work even when the disk is full.
    fn audit_lock(
        &self,
        event: audit::Event,
        device: &str,
        caller: &Caller,
        refused: Option<&WireError>,
    ) {
        let Some(audit) = &self.audit else { return };
        let record = Record {
            event,
            key: device.to_string(),
            purpose: None,
            caller: caller.clone(),
            subject: Map::new(),
            outcome: refused.map(|e| (e.code, e.message.clone())),
            intent: None,
        };
        if let Err(err) = audit.append(&record) {
            warn!(error = %err, %event, "lock or unlock not recorded in the audit log");
        }
    }

    /// `waxseal lock` / D-Bus `Lock`: drops cached PINs and refuses signing until
    /// [`KeyStore::unlock_user`]. False if it was locked already.
    pub fn lock_user(&self, caller: &Caller) -> bool {
        self.audit_lock(audit::Event::Lock, "", caller, None);
        let was = self.user_locked.swap(true, Ordering::AcqRel);
        self.forget_pins();
        if !was {
            info!("agent locked by the user");
            self.emit(Event::Locked(true));
        }
        !was
    }

    /// Undoes [`KeyStore::lock_user`]. False if it was not locked that way.
    pub fn unlock_user(&self, caller: &Caller) -> bool {
        self.audit_lock(audit::Event::Unlock, "", caller, None);
        let was = self.user_locked.swap(false, Ordering::AcqRel);
        if was {
            info!("agent unlocked by the user");
            self.emit(Event::Locked(self.is_locked()));
        }
        was
    }

    /// Locks the agent with `passphrase`; false if it was locked already.
    pub fn lock(&self, passphrase: &[u8], caller: &Caller) -> bool {
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if lock.is_some() {
            drop(lock);
            let refused = WireError::new(ErrorCode::Locked, "the agent is already locked");
            self.audit_lock(audit::Event::Lock, "", caller, Some(&refused));
            return false;
        }
        self.audit_lock(audit::Event::Lock, "", caller, None);
        *lock = Some(Zeroizing::new(Sha256::digest(passphrase).into()));
        info!("agent locked");
        self.emit(Event::Locked(true));
        true
    }

    /// Unlocks the agent if `passphrase` is the one it was locked with. A wrong
    /// passphrase costs a second, against guessing.
    pub fn unlock(&self, passphrase: &[u8], caller: &Caller) -> bool {
        let given: Zeroizing<[u8; 32]> = Zeroizing::new(Sha256::digest(passphrase).into());
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match lock.as_ref() {
            Some(held)
                if held
                    .iter()
                    .zip(given.iter())
                    .fold(0u8, |d, (a, b)| d | (a ^ b))
                    == 0 =>
            {
                *lock = None;
                drop(lock);
                self.audit_lock(audit::Event::Unlock, "", caller, None);
                info!("agent unlocked");
                self.emit(Event::Locked(self.is_locked()));
                true
            }
            _ => {
                drop(lock);
                let refused = WireError::new(
                    ErrorCode::PolicyDenied,
                    "wrong passphrase, or the agent is not locked",
                );
                self.audit_lock(audit::Event::Unlock, "", caller, Some(&refused));
                warn!("unlock refused");
                // Not a wait for anything: the cost of a wrong guess, as the doc says
                // (ssh-agent does the same), paid by this connection's thread only.
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        }
    }
}
