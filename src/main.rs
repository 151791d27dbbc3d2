//! The `stanza` command: parse flags and the config file, start the cores, handle signals.

use stanza::config::cli::Cli;
use stanza::server;
use stanza::util::logging;
use std::path::Path;

/// Longest a graceful stop may take before the process exits anyway.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("nats-bench") {
        std::process::exit(stanza::bench::nats_load::main(argv[1..].to_vec()));
    }
    let cli = match Cli::parse_from_env() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let (options, warnings) = match cli.build_options() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stanza: configuration error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = logging::init(
        options.debug,
        options.trace,
        options.logtime,
        options.log_file.as_deref(),
    ) {
        eprintln!(
            "stanza: cannot open log file {}: {e}",
            options
                .log_file
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        );
        std::process::exit(1);
    }
    for w in warnings {
        log::warn!("{w}");
    }
    let signals = server::block_signals();
    let mut current = options.clone();
    let running = match server::start(options) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}");
            std::process::exit(1);
        }
    };
    if let Some(path) = &current.pid_file {
        if let Err(e) = std::fs::write(path, std::process::id().to_string()) {
            log::error!("Could not write pidfile {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    loop {
        match server::wait_signal(&signals) {
            libc::SIGINT | libc::SIGTERM => {
                log::info!("Server Exiting..");
                let cores = running.cores;
                let stopped = running.shutdown(SHUTDOWN_TIMEOUT);
                if stopped < cores {
                    log::warn!("{} of {cores} cores did not stop in time", cores - stopped);
                }
                if let Some(path) = &current.pid_file {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            }
            libc::SIGHUP => reload(&cli, &mut current, &running),
            libc::SIGUSR1 => match logging::reopen() {
                Ok(()) => log::info!("Reopened log file"),
                Err(e) => eprintln!("stanza: cannot reopen log file: {e}"),
            },
            _ => {}
        }
    }
}

/// SIGHUP: read the configuration again. Authorization and logging levels take effect at
/// once; other changes are reported as needing a restart. A bad file changes nothing.
fn reload(cli: &Cli, current: &mut stanza::config::Options, running: &server::Running) {
    log::info!("Reloading server configuration");
    let (new, warnings) = match cli.build_options() {
        Ok(v) => v,
        Err(e) => {
            log::error!("Failed to reload server configuration: {e}");
            return;
        }
    };
    for w in warnings {
        log::warn!("{w}");
    }
    if new.auth != current.auth {
        log::info!("Reloaded: authorization");
        running.reload_authorization(new.auth.clone());
    }
    if new.debug != current.debug || new.trace != current.trace {
        logging::set_level(new.debug, new.trace);
        log::info!("Reloaded: debug = {}, trace = {}", new.debug, new.trace);
    }
    let needs_restart: Vec<&str> = [
        ("host", new.host != current.host),
        ("port", new.port != current.port),
        ("cores", new.cores != current.cores),
        ("max_payload", new.max_payload != current.max_payload),
        (
            "max_control_line",
            new.max_control_line != current.max_control_line,
        ),
        (
            "max_connections",
            new.max_connections != current.max_connections,
        ),
        (
            "max_subscriptions",
            new.max_subscriptions != current.max_subscriptions,
        ),
        ("max_pending", new.max_pending != current.max_pending),
        (
            "write_deadline",
            new.write_deadline != current.write_deadline,
        ),
        ("ping_interval", new.ping_interval != current.ping_interval),
        ("ping_max", new.ping_max != current.ping_max),
        (
            "authorization timeout",
            new.auth_timeout != current.auth_timeout,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !needs_restart.is_empty() {
        log::warn!(
            "Changed but not applied until a restart: {}",
            needs_restart.join(", ")
        );
    }
    // Only what was applied changes; the rest still describes the running server.
    current.auth = new.auth;
    current.debug = new.debug;
    current.trace = new.trace;
}
