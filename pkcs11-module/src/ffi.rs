//! The C ABI: `C_GetFunctionList` and the functions of its table. Each function checks
//! that the module is initialised in this process, copies its arguments out of C
//! memory into Rust values, calls [`Module`] and copies the results back. This is the
//! only module of the crate with `unsafe` code; every block says why it is sound.
//! Nothing panics across the boundary: each body runs inside `catch_unwind`, and a
//! panic becomes `CKR_GENERAL_ERROR`.

#![allow(non_snake_case)] // the C names of PKCS#11

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, PoisonError, RwLock};

use cryptoki_sys::*;

use crate::mechanism::Info;
use crate::module::{Module, SignOut};
use crate::objects::Value;
use crate::template::{Attribute, Template};

/// `ulValueLen` of an attribute that cannot be read.
const UNAVAILABLE: CK_ULONG = !0;

/// The module, once `C_Initialize` ran.
static MODULE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

/// The module, if initialised in this process (a child after `fork()` must call
/// `C_Initialize` itself).
fn module() -> Result<Arc<Module>, CK_RV> {
    let m = MODULE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
    if m.pid() != std::process::id() {
        return Err(CKR_CRYPTOKI_NOT_INITIALIZED);
    }
    Ok(m)
}

/// Runs a function body: its error is the return value, a panic `CKR_GENERAL_ERROR`.
fn guard(body: impl FnOnce() -> Result<(), CK_RV>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Copies `s` into a fixed-size, blank-padded PKCS#11 text field, cut at a character
/// boundary.
fn pad(field: &mut [u8], s: &str) {
    field.fill(b' ');
    let mut end = s.len().min(field.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&s.as_bytes()[..end]);
}

/// The `len` bytes at `p` (none when `len` is 0).
///
/// # Safety
/// `p` must be null or point to `len` readable bytes that stay valid for `'a`.
unsafe fn bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8], CK_RV> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller vouches for `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// Writes `v` to the caller's `p`.
///
/// # Safety
/// `p` must be null or point to writable memory for a `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), CK_RV> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller vouches it is writable.
    unsafe { p.write(v) };
    Ok(())
}

/// Copies a template out of C memory.
///
/// # Safety
/// `p` must be null or point to `n` `CK_ATTRIBUTE`s whose `pValue` is null or points
/// to `ulValueLen` readable bytes.
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Template, CK_RV> {
    if n == 0 {
        return Ok(Template::default());
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, `n` attributes by the caller's contract.
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    let mut out = Vec::with_capacity(attrs.len());
    for a in attrs {
        // SAFETY: each attribute's value is readable by the caller's contract.
        let value = unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?;
        out.push(Attribute {
            ty: a.type_,
            value: value.to_vec(),
        });
    }
    Ok(Template(out))
}

/// Reads a `CK_MECHANISM`: its type and parameter bytes.
///
/// # Safety
/// `p` must be null or point to a `CK_MECHANISM` whose `pParameter` is null or points
/// to `ulParameterLen` readable bytes.
unsafe fn mechanism<'a>(
    p: *const CK_MECHANISM,
) -> Result<(CK_MECHANISM_TYPE, Option<&'a [u8]>), CK_RV> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null; the caller vouches for a whole CK_MECHANISM.
    let m = unsafe { &*p };
    let params = if m.pParameter.is_null() {
        None
    } else {
        // SAFETY: non-null, `ulParameterLen` readable bytes by the caller's contract.
        Some(unsafe { bytes(m.pParameter as *const u8, m.ulParameterLen) }?)
    };
    Ok((m.mechanism, params))
}

/// The length-query convention for lists: with `p` null, only the count is written;
/// with a buffer too small, the count and `CKR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `count` must be null or writable; `p` null or writable for `*count` items.
unsafe fn list<T: Copy>(items: &[T], p: *mut T, count: *mut CK_ULONG) -> Result<(), CK_RV> {
    if count.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, readable and writable by the caller's contract.
    let room = unsafe { *count } as usize;
    // SAFETY: as above.
    unsafe { *count = items.len() as CK_ULONG };
    if p.is_null() {
        return Ok(());
    }
    if room < items.len() {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `p` has room for `room` ≥ `items.len()` items; the regions are distinct
    // (ours is a fresh Vec or slice).
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), p, items.len()) };
    Ok(())
}

/// Hands a signature (or its length) to the caller.
///
/// # Safety
/// `len` must be null or writable; `p` null or writable for `*len` bytes.
unsafe fn signature_out(
    call: impl FnOnce(Option<usize>) -> Result<SignOut, CK_RV>,
    p: *mut CK_BYTE,
    len: *mut CK_ULONG,
) -> Result<(), CK_RV> {
    if len.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null and readable by the caller's contract.
    let room = (!p.is_null()).then(|| unsafe { *len } as usize);
    match call(room)? {
        SignOut::Len(n) => {
            // SAFETY: writable by the caller's contract.
            unsafe { *len = n as CK_ULONG };
            Ok(())
        }
        SignOut::TooSmall(n) => {
            // SAFETY: as above.
            unsafe { *len = n as CK_ULONG };
            Err(CKR_BUFFER_TOO_SMALL)
        }
        SignOut::Signature(sig) => {
            // `Module` answers `TooSmall` unless the signature fits; checked again here
            // because the copy below relies on it.
            if room.is_none_or(|r| r < sig.len()) {
                return Err(CKR_GENERAL_ERROR);
            }
            // SAFETY: `p` is non-null here (a room was given) and holds `room` ≥
            // `sig.len()` bytes (checked above); `len` is writable.
            unsafe {
                std::ptr::copy_nonoverlapping(sig.as_ptr(), p, sig.len());
                *len = sig.len() as CK_ULONG;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------
// General purpose

/// The table handed out by `C_GetFunctionList`, read-only for the caller.
static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};

/// The module's entry point: hands out the function table.
///
/// # Safety
/// `pp` must be null or point to writable memory for a pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        // SAFETY: `put` checks for null; the caller vouches the rest. The table is a
        // static the caller only reads (PKCS#11 v2.40 5.2: it must not be modified).
        unsafe {
            put(
                pp,
                std::ptr::addr_of!(FUNCTION_LIST) as *mut CK_FUNCTION_LIST,
            )
        }
    })
}

unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        if !args.is_null() {
            // SAFETY: non-null; PKCS#11 says it then points to a CK_C_INITIALIZE_ARGS.
            let a = unsafe { &*(args as *const CK_C_INITIALIZE_ARGS) };
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // The module locks with the OS's primitives (std's Mutex) only.
            if given[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
        }
        let mut slot = MODULE.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.as_ref() {
            if old.pid() == std::process::id() {
                return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
            }
            // A child after fork(): the parent's connections are not ours to use.
            old.abandon();
            if let Some(old) = slot.take() {
                std::mem::forget(old);
            }
        }
        *slot = Some(Arc::new(Module::new(waxseal_proto::paths::client_socket())));
        Ok(())
    })
}

unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let mut slot = MODULE.write().unwrap_or_else(PoisonError::into_inner);
        let old = slot.take().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
        if old.pid() != std::process::id() {
            // A child after fork() finalizing its parent's state (python-pkcs11's
            // `reinitialize` does): forget it without touching the parent's
            // connections, as `C_Initialize` does (docs/pkcs11-module.md, "fork()").
            old.abandon();
            std::mem::forget(old);
        }
        Ok(())
    })
}

unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    guard(|| {
        module()?;
        let mut i = CK_INFO {
            cryptokiVersion: CK_VERSION {
                major: 2,
                minor: 40,
            },
            manufacturerID: [0; 32],
            flags: 0,
            libraryDescription: [0; 32],
            libraryVersion: CK_VERSION { major: 0, minor: 1 },
        };
        pad(&mut i.manufacturerID, "waxseal");
        pad(&mut i.libraryDescription, "waxseal-agent PKCS#11 module");
        // SAFETY: `put` checks for null.
        unsafe { put(info, i) }
    })
}

// ---------------------------------------------------------------------------------
// Slots and tokens

unsafe extern "C" fn C_GetSlotList(
    present: CK_BBOOL,
    p: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let slots = module()?.slots(present != 0);
        // SAFETY: `list` checks for null; the caller vouches for `*count` slots at `p`.
        unsafe { list(&slots, p, count) }
    })
}

unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let view = module()?.slot(slot)?;
        let mut i = CK_SLOT_INFO {
            slotDescription: [0; 64],
            manufacturerID: [0; 32],
            flags: CKF_REMOVABLE_DEVICE | if view.present { CKF_TOKEN_PRESENT } else { 0 },
            hardwareVersion: CK_VERSION { major: 0, minor: 0 },
            firmwareVersion: CK_VERSION { major: 0, minor: 0 },
        };
        pad(&mut i.slotDescription, &view.description);
        pad(&mut i.manufacturerID, "waxseal");
        // SAFETY: `put` checks for null.
        unsafe { put(info, i) }
    })
}

unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        let view = module()?.token(slot)?;
        let mut i = CK_TOKEN_INFO {
            label: [0; 32],
            manufacturerID: [0; 32],
            model: [0; 16],
            serialNumber: [0; 16],
            flags: view.flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: view.sessions.0 as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: view.sessions.1 as CK_ULONG,
            ulMaxPinLen: 256,
            ulMinPinLen: 0,
            ulTotalPublicMemory: UNAVAILABLE,
            ulFreePublicMemory: UNAVAILABLE,
            ulTotalPrivateMemory: UNAVAILABLE,
            ulFreePrivateMemory: UNAVAILABLE,
            hardwareVersion: CK_VERSION { major: 0, minor: 0 },
            firmwareVersion: CK_VERSION { major: 0, minor: 0 },
            utcTime: [b' '; 16],
        };
        pad(&mut i.label, &view.label);
        pad(&mut i.manufacturerID, "waxseal");
        pad(&mut i.model, &view.model);
        pad(&mut i.serialNumber, &view.serial);
        // SAFETY: `put` checks for null.
        unsafe { put(info, i) }
    })
}

unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    p: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let mechs: Vec<CK_MECHANISM_TYPE> = module()?
            .mechanisms(slot)?
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        // SAFETY: `list` checks for null; the caller vouches for `*count` items at `p`.
        unsafe { list(&mechs, p, count) }
    })
}

fn mechanism_info(info: Info) -> CK_MECHANISM_INFO {
    let mut flags = if info.sign {
        CKF_SIGN
    } else {
        CKF_GENERATE_KEY_PAIR
    };
    if info.ec {
        flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
    }
    CK_MECHANISM_INFO {
        ulMinKeySize: info.min as CK_ULONG,
        ulMaxKeySize: info.max as CK_ULONG,
        flags,
    }
}

unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(|| {
        let found = module()?
            .mechanisms(slot)?
            .into_iter()
            .find(|(m, _)| *m == ty)
            .ok_or(CKR_MECHANISM_INVALID)?;
        // SAFETY: `put` checks for null.
        unsafe { put(info, mechanism_info(found.1)) }
    })
}

// ---------------------------------------------------------------------------------
// Sessions

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let h = module()?.open_session(slot, flags)?;
        // SAFETY: checked non-null above; writable by the caller's contract.
        unsafe { put(out, h) }
    })
}

unsafe extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module()?.close_session(h))
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| module()?.close_all(slot))
}

unsafe extern "C" fn C_GetSessionInfo(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    guard(|| {
        let view = module()?.session_info(h)?;
        let i = CK_SESSION_INFO {
            slotID: view.slot,
            state: view.state,
            flags: view.flags,
            ulDeviceError: 0,
        };
        // SAFETY: `put` checks for null.
        unsafe { put(info, i) }
    })
}

unsafe extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        let pin = if pin.is_null() {
            None
        } else {
            // SAFETY: non-null; `len` readable bytes by the caller's contract.
            Some(unsafe { bytes(pin, len) }?)
        };
        m.login(h, user, pin)
    })
}

unsafe extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module()?.logout(h))
}

// ---------------------------------------------------------------------------------
// Objects

unsafe extern "C" fn C_CreateObject(
    h: CK_SESSION_HANDLE,
    tpl: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller vouches for `n` attributes at `tpl`.
        let tpl = unsafe { template(tpl, n) }?;
        let object = m.create_object(h, &tpl)?;
        // SAFETY: checked non-null above.
        unsafe { put(out, object) }
    })
}

unsafe extern "C" fn C_CopyObject(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    _tpl: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    _out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        module()?.check_object(h, object)?;
        Err(CKR_ACTION_PROHIBITED)
    })
}

unsafe extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
    guard(|| {
        module()?.check_object(h, object)?;
        Err(CKR_ACTION_PROHIBITED)
    })
}

unsafe extern "C" fn C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    _tpl: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
) -> CK_RV {
    guard(|| {
        module()?.check_object(h, object)?;
        Err(CKR_ACTION_PROHIBITED)
    })
}

unsafe extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    tpl: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        m.check_object(h, object)?;
        if n == 0 {
            return Ok(());
        }
        if tpl.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: non-null; the caller vouches for `n` writable attributes.
        let attrs = unsafe { std::slice::from_raw_parts_mut(tpl, n as usize) };
        let mut rv = CKR_OK;
        for a in attrs {
            match m.attribute(h, object, a.type_)? {
                Value::Bytes(v) => {
                    if a.pValue.is_null() {
                        a.ulValueLen = v.len() as CK_ULONG;
                    } else if (a.ulValueLen as usize) < v.len() {
                        a.ulValueLen = UNAVAILABLE;
                        rv = CKR_BUFFER_TOO_SMALL;
                    } else {
                        // SAFETY: `pValue` holds `ulValueLen` ≥ `v.len()` writable bytes
                        // by the caller's contract; `v` is our own buffer.
                        unsafe {
                            std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len())
                        };
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                }
                Value::Sensitive => {
                    a.ulValueLen = UNAVAILABLE;
                    rv = CKR_ATTRIBUTE_SENSITIVE;
                }
                Value::Invalid => {
                    a.ulValueLen = UNAVAILABLE;
                    rv = CKR_ATTRIBUTE_TYPE_INVALID;
                }
            }
        }
        if rv == CKR_OK {
            Ok(())
        } else {
            Err(rv)
        }
    })
}

unsafe extern "C" fn C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    tpl: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: the caller vouches for `n` attributes at `tpl`.
        let tpl = unsafe { template(tpl, n) }?;
        m.find_init(h, &tpl)
    })
}

unsafe extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        if count.is_null() || (out.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let found = m.find(h, max as usize)?;
        // SAFETY: `out` holds `max` ≥ `found.len()` handles and `count` is writable, by
        // the caller's contract (both checked non-null when used).
        unsafe {
            if !found.is_empty() {
                std::ptr::copy_nonoverlapping(found.as_ptr(), out, found.len());
            }
            *count = found.len() as CK_ULONG;
        }
        Ok(())
    })
}

unsafe extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module()?.find_final(h))
}

// ---------------------------------------------------------------------------------
// Signing

unsafe extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: the caller vouches for a CK_MECHANISM at `mech` (null is checked).
        let (ty, params) = unsafe { mechanism(mech) }?;
        m.sign_init(h, ty, params, key)
    })
}

unsafe extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: the caller vouches for `len` bytes at `data` (null is checked).
        let data = unsafe { bytes(data, len) }?;
        // SAFETY: the caller vouches for `*sig_len` writable bytes at `sig`.
        unsafe { signature_out(|room| m.sign(h, data, room), sig, sig_len) }
    })
}

unsafe extern "C" fn C_SignUpdate(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: the caller vouches for `len` bytes at `part` (null is checked).
        let part = unsafe { bytes(part, len) }?;
        m.sign_update(h, part)
    })
}

unsafe extern "C" fn C_SignFinal(
    h: CK_SESSION_HANDLE,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: the caller vouches for `*sig_len` writable bytes at `sig`.
        unsafe { signature_out(|room| m.sign_final(h, room), sig, sig_len) }
    })
}

// ---------------------------------------------------------------------------------
// Key generation

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    public: *mut CK_ATTRIBUTE,
    n_public: CK_ULONG,
    private: *mut CK_ATTRIBUTE,
    n_private: CK_ULONG,
    out_public: *mut CK_OBJECT_HANDLE,
    out_private: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        if out_public.is_null() || out_private.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller vouches for a CK_MECHANISM and the two templates.
        let (ty, _params) = unsafe { mechanism(mech) }?;
        // SAFETY: as above.
        let public = unsafe { template(public, n_public) }?;
        // SAFETY: as above.
        let private = unsafe { template(private, n_private) }?;
        let (pub_h, priv_h) = m.generate_key_pair(h, ty, &public, &private)?;
        // SAFETY: both checked non-null above.
        unsafe {
            put(out_public, pub_h)?;
            put(out_private, priv_h)
        }
    })
}

// ---------------------------------------------------------------------------------
// Refused: no keys leave or enter the agent this way, nothing is encrypted, verified
// or digested here (docs/pkcs11-module.md, "What is refused").

/// A function that checks initialisation and then answers `$rv`.
macro_rules! refuse {
    ($name:ident($($ty:ty),*) => $rv:expr) => {
        unsafe extern "C" fn $name($(_: $ty),*) -> CK_RV {
            guard(|| {
                module()?;
                Err($rv)
            })
        }
    };
}

refuse!(C_GetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_SetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_InitToken(CK_SLOT_ID, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_InitPIN(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_SetPIN(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_EncryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_Encrypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_EncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_EncryptFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DecryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_Decrypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DecryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DecryptFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DigestInit(CK_SESSION_HANDLE, *mut CK_MECHANISM) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_Digest(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DigestFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_SignRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_SignRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_VerifyInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_Verify(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_VerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_VerifyFinal(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_VerifyRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_VerifyRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DigestEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DecryptDigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_SignEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DecryptVerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_GenerateKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_WrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_UnwrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_DeriveKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_SeedRandom(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_GenerateRandom(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_WaitForSlotEvent(CK_FLAGS, *mut CK_SLOT_ID, *mut c_void) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_GetObjectSize(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED);
refuse!(C_GetFunctionStatus(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_PARALLEL);
refuse!(C_CancelFunction(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_PARALLEL);
