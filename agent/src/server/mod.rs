//! Listeners: the runtime directory and sockets ([`listen`]) and the native protocol
//! server ([`native`]).

pub mod listen;
pub mod native;
