//! `waxseal-agent`: the daemon. Runs in the foreground and logs to stderr.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;
use tracing::{error, info, warn};

use waxseal_agent::audit::{self, Audit, AuditError, AuditOptions, Durability};
use waxseal_agent::config::{Config, ConfigError};
use waxseal_agent::confirm::ProgramConfirmer;
use waxseal_agent::keystore::KeyStore;
use waxseal_agent::paths;
use waxseal_agent::policy::Policy;
use waxseal_agent::server::listen::ListenError;
use waxseal_agent::server::{self, listen, native, ssh};

/// Keeps signing keys inside hardware and signs for local programs through a socket.
#[derive(Debug, Parser)]
#[command(
    name = "waxseal-agent",
    version,
    about,
    after_long_help = "Sockets (in the runtime directory): agent.sock, waxseal's own protocol \
                       (docs/protocol.md); ssh.sock, the OpenSSH agent protocol. Both may be \
                       handed over by systemd socket activation (waxseal-agent.socket, \
                       waxseal-ssh.socket).\n\n\
                       Signals: SIGTERM or SIGINT stop it; \
                       SIGHUP rereads the [[key]] policy of the config.\n\n\
                       Exit status: 0 after a clean stop, 1 when it cannot start (the log \
                       says why).\n\n\
                       See also: waxseal(1), and README.md and docs/ in the source."
)]
struct Args {
    /// Config file (default: $XDG_CONFIG_HOME/waxseal/config.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the sockets (default: $XDG_RUNTIME_DIR/waxseal).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Directory of the state: audit log, key files (default: $XDG_STATE_HOME/waxseal).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace (also WAXSEAL_LOG).
    #[arg(long, env = "WAXSEAL_LOG", default_value = "info")]
    log_level: tracing::Level,
    /// Print this program's manual page (roff) on stdout and exit; `scripts/install`
    /// installs it as waxseal-agent.1.
    #[arg(long, hide = true)]
    man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return print_man();
    }
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_max_level(args.log_level)
        .with_target(false)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The manual page, from the same definition that parses the arguments.
fn print_man() -> ExitCode {
    use clap::CommandFactory;
    use io::Write as _;
    let mut page = Vec::new();
    let written = clap_mangen::Man::new(Args::command())
        .render(&mut page)
        .and_then(|()| io::stdout().lock().write_all(&page));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waxseal-agent: cannot write the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config, ConfigError> {
    match explicit {
        Some(path) => Config::load(&path),
        None => {
            let path = paths::config_file();
            if path.exists() {
                Config::load(&path)
            } else {
                warn!(path = %path.display(), "no config file; running with no devices (see README: Configuration)");
                Ok(Config::default())
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one: each connection holds two
/// descriptors (its socket and the copy shutdown uses), so 1024 connections need more
/// than the usual soft limit of 1024.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            limit.current = Some(hard);
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                warn!(error = %e, "cannot raise the open-files limit");
            }
        }
    }
}

/// Why the agent stops before serving, or could not serve.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The sockets systemd passed cannot be used.
    #[error("socket activation: {0}")]
    Activation(#[source] io::Error),
    /// The config file does not load.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// A directory or socket cannot be prepared.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A listening socket cannot be set up for the runtime.
    #[error("socket: {0}")]
    Socket(#[source] io::Error),
    /// The audit log does not open.
    #[error("cannot open the audit log in {}: {source} (the agent signs nothing it cannot record)", dir.display())]
    Audit {
        /// `STATE_DIR/audit`.
        dir: PathBuf,
        /// Why.
        source: AuditError,
    },
    /// The tokio runtime does not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
}

fn run(args: Args) -> Result<(), RunError> {
    // Socket activation first: it reads and clears LISTEN_* before any thread starts.
    let mut activated = listen::activated().map_err(RunError::Activation)?;
    let config_path = args.config.clone().or_else(|| {
        let p = paths::config_file();
        p.exists().then_some(p)
    });
    let mut config = load_config(args.config)?;
    raise_fd_limit();
    let runtime_dir = args
        .runtime_dir
        .or_else(|| config.agent.runtime_dir.clone())
        .unwrap_or_else(paths::runtime_dir);
    let state_dir = args
        .state_dir
        .or_else(|| config.agent.state_dir.clone())
        .unwrap_or_else(paths::state_dir);
    listen::prepare_dir(&state_dir)?;
    let mut take = |name: &str| -> Result<listen::Listener, ListenError> {
        if let Some(i) = activated.iter().position(|(n, _)| n == name) {
            info!(socket = name, "using the socket passed by systemd");
            return Ok(activated.remove(i).1);
        }
        listen::prepare_dir(&runtime_dir)?;
        listen::bind(&runtime_dir, name)
    };
    let agent_listener = take(paths::AGENT_SOCKET)?;
    let ssh_listener = match take(paths::SSH_SOCKET) {
        Ok(l) => l,
        Err(e) => {
            if let Some(p) = &agent_listener.created {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    if let (Some(gid), Some(socket)) = (config.agent.socket_group, &agent_listener.created) {
        listen::share_with_group(&runtime_dir, socket, gid)?;
        info!(gid, uids = ?config.agent.allow_uids, "agent.sock shared with the socket group");
    }
    for l in [&agent_listener, &ssh_listener] {
        l.socket.set_nonblocking(true).map_err(RunError::Socket)?;
    }
    config.agent.state_dir = Some(state_dir.clone());
    // The state directory, `audit/` and the log are opened without following links
    // and checked (README.md, "Policy, confirmation and the audit log"); the keys with
    // rate limits are counted from the log on the way.
    let audit_opts = AuditOptions {
        durability: Durability::from_config(
            config.agent.audit_fsync,
            config.agent.audit_group_commit,
        ),
        max_bytes: config.agent.audit_max_bytes,
        rate_keys: config
            .keys
            .iter()
            .filter(|k| k.max_per_hour.is_some() || k.max_per_day.is_some())
            .map(|k| k.name.clone())
            .collect(),
    };
    // After the sockets: a second agent on them stops there, before reading the log.
    let audit = match Audit::open(&state_dir, &audit_opts) {
        Ok(audit) => audit,
        Err(e) => {
            for l in [&agent_listener, &ssh_listener] {
                if let Some(p) = &l.created {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(RunError::Audit {
                dir: state_dir.join(audit::DIR),
                source: e,
            });
        }
    };
    let store = KeyStore::open(&config).with_audit(audit).start();
    if let Some(program) = &config.agent.confirm_program {
        store.set_confirmer(Arc::new(ProgramConfirmer {
            program: program.clone(),
            timeout: Duration::from_secs(config.agent.confirm_timeout_secs),
        }));
        info!(program = %program.display(), "confirmations are asked through confirm_program");
    }
    // The D-Bus face (its own thread); stops when `_dbus` drops at the end of `run`.
    #[cfg(feature = "dbus")]
    let _dbus = server::dbus::start(
        store.clone(),
        server::dbus::DbusOptions::from_config(&config),
    );
    let opts = server::ServeOptions {
        max_connections: config.agent.max_connections,
        idle_timeout: Duration::from_secs(config.agent.idle_timeout_secs),
        uid: rustix::process::geteuid().as_raw(),
        allow_uids: config.agent.allow_uids.clone(),
        forwarded_idle_timeout: Duration::from_secs(config.agent.ssh_forwarded_idle_secs),
        spin: Duration::from_micros(config.agent.spin_us),
    };
    // ssh.sock: the agent's own uid only, and its own, smaller cap (README → Security).
    let ssh_opts = server::ServeOptions {
        max_connections: config.agent.ssh_max_connections,
        allow_uids: Vec::new(),
        ..opts.clone()
    };
    // tokio only accepts and waits for signals; connections have their own threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let created: Vec<PathBuf> = [&agent_listener, &ssh_listener]
        .iter()
        .filter_map(|l| l.created.clone())
        .collect();
    let result = rt.block_on(async {
        let agent_socket =
            tokio::net::UnixListener::from_std(agent_listener.socket).map_err(RunError::Socket)?;
        let ssh_socket =
            tokio::net::UnixListener::from_std(ssh_listener.socket).map_err(RunError::Socket)?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop.send(true);
        });
        tokio::spawn(reload_on_sighup(
            store.clone(),
            config_path.clone(),
            config.clone(),
        ));
        info!(
            runtime_dir = %runtime_dir.display(),
            devices = config.devices.len(),
            "{} ready",
            waxseal_agent::proto::AGENT_NAME
        );
        tokio::join!(
            server::serve(
                agent_socket,
                store.clone(),
                opts.clone(),
                native::connection,
                stopped.clone()
            ),
            server::serve(
                ssh_socket,
                store.clone(),
                ssh_opts,
                ssh::connection,
                stopped
            ),
        );
        Ok::<(), RunError>(())
    });
    for path in &created {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(path = %path.display(), error = %e, "could not remove the socket");
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    store.shutdown();
    info!("stopped");
    result
}

/// SIGHUP reloads the config: the `[[key]]` policy takes effect at once; a file that
/// does not load keeps the old policy, and changes that need a restart are named.
async fn reload_on_sighup(store: Arc<KeyStore>, path: Option<PathBuf>, mut current: Config) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; config reloads need a restart");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            warn!("SIGHUP: there is no config file to reload");
            continue;
        };
        match Config::load(path) {
            Ok(new) => {
                store.set_policy(Policy::new(&new.keys));
                if new.devices != current.devices {
                    warn!("SIGHUP: [[device]] changes take effect at the next restart");
                }
                let mut agent = new.agent.clone();
                agent.state_dir = current.agent.state_dir.clone();
                if agent != current.agent {
                    warn!("SIGHUP: [agent] changes take effect at the next restart");
                }
                info!(path = %path.display(), keys = new.keys.len(), "SIGHUP: config reloaded; the new [[key]] policy applies");
                current.keys = new.keys;
            }
            Err(e) => error!("SIGHUP: the config does not load, the old one stays: {e}"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
