//! Default locations of the socket, config and state, shared by the agent and the CLI.
//!
//! XDG base directories: sockets under `$XDG_RUNTIME_DIR/waxseal`, config under
//! `$XDG_CONFIG_HOME/waxseal`, state under `$XDG_STATE_HOME/waxseal`. Without
//! `XDG_RUNTIME_DIR` the runtime dir is `/tmp/waxseal-UID` (the agent creates it 0700
//! and refuses one owned by somebody else).

use std::env;
use std::path::PathBuf;

/// File name of the native socket inside the runtime dir.
pub const AGENT_SOCKET: &str = "agent.sock";
/// File name of the OpenSSH agent socket inside the runtime dir.
pub const SSH_SOCKET: &str = "ssh.sock";
/// Environment variable naming the native socket (the CLI's `--socket`).
pub const SOCKET_ENV: &str = "WAXSEAL_SOCK";

fn non_empty(var: &str) -> Option<PathBuf> {
    env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> PathBuf {
    non_empty("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

/// `$XDG_RUNTIME_DIR/waxseal`, or `/tmp/waxseal-UID`.
pub fn runtime_dir() -> PathBuf {
    match non_empty("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("waxseal"),
        None => PathBuf::from(format!(
            "/tmp/waxseal-{}",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// `$XDG_STATE_HOME/waxseal`, or `~/.local/state/waxseal`.
pub fn state_dir() -> PathBuf {
    non_empty("XDG_STATE_HOME")
        .unwrap_or_else(|| home().join(".local/state"))
        .join("waxseal")
}

/// `$XDG_CONFIG_HOME/waxseal/config.toml`, or `~/.config/waxseal/config.toml`.
pub fn config_file() -> PathBuf {
    non_empty("XDG_CONFIG_HOME")
        .unwrap_or_else(|| home().join(".config"))
        .join("waxseal/config.toml")
}

/// The native socket a client should use: `$WAXSEAL_SOCK`, else the default.
pub fn client_socket() -> PathBuf {
    non_empty(SOCKET_ENV).unwrap_or_else(|| runtime_dir().join(AGENT_SOCKET))
}
