//! The `stanza` command: parse flags and the config file, start the cores, handle signals.

use stanza::config::banner;
use stanza::config::cli::Cli;
use stanza::config::Options;
use stanza::server;
use stanza::util::logging;
use std::path::Path;

/// Longest a graceful stop may take before the process exits anyway.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("nats-bench") => {
            std::process::exit(stanza::bench::nats_load::main(argv[1..].to_vec()))
        }
        Some("bench") => std::process::exit(stanza::bench::stan::run::main(argv[1..].to_vec())),
        _ => {}
    }
    let cli = match Cli::parse_from_env() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(spec) = &cli.signal {
        match stanza::util::process_signal::send(spec) {
            Ok(pid) => {
                println!("stanza: signal {spec:?} sent to process {pid}");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("stanza: {e}");
                std::process::exit(1);
            }
        }
    }
    let (options, warnings) = match cli.build_options() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stanza: configuration error: {e}");
            std::process::exit(1);
        }
    };
    let unbuilt = banner::unbuilt_features(&options);
    if !unbuilt.is_empty() {
        let files: Vec<&Path> = [cli.config.as_deref(), cli.stan_config.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        for u in &unbuilt {
            let at = stanza::config::load::key_position(&files, u.keys)
                .map(|(pos, key)| format!("{pos}: '{key}'"))
                .unwrap_or_else(|| format!("flag {}", u.flags));
            eprintln!(
                "stanza: configuration error: {at}: {} is not available in this build yet; remove it to start without it",
                u.what
            );
        }
        std::process::exit(1);
    }
    if cli.check_config {
        for w in &warnings {
            eprintln!("stanza: {w}");
        }
        println!("stanza: configuration is valid");
        std::process::exit(0);
    }
    let destination = logging::Destination {
        log_file: options.log_file.as_deref(),
        size_limit: u64::try_from(options.log_size_limit).unwrap_or(0),
        syslog: options.syslog,
        remote_syslog: options.remote_syslog.as_deref(),
        syslog_name: options.streaming.syslog_name.as_deref(),
    };
    if let Err(e) = logging::init(options.log_levels(), options.logtime, &destination) {
        let target = match (&options.remote_syslog, options.syslog, &options.log_file) {
            (Some(url), _, _) => format!("remote syslog {url}"),
            (None, true, _) => "syslog".to_string(),
            (None, false, file) => format!(
                "log file {}",
                file.as_deref().unwrap_or(Path::new("")).display()
            ),
        };
        eprintln!("stanza: cannot open {target}: {e}");
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
    for line in banner::streaming_lines(&current) {
        log::info!("STAN: {line}");
    }
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
/// once; every other changed key is reported as needing a restart. A bad file changes nothing.
fn reload(cli: &Cli, current: &mut Options, running: &server::Running) {
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
    if new.auth.credentials() != current.auth.credentials() {
        log::info!("Reloaded: authorization");
        running.reload_authorization(new.auth.clone());
    }
    if new.log_levels() != current.log_levels() {
        let l = new.log_levels();
        logging::set_levels(l);
        log::info!(
            "Reloaded: debug = {}, trace = {}, streaming debug = {}, streaming trace = {}",
            l.nats_debug,
            l.nats_trace,
            l.stan_debug,
            l.stan_trace
        );
    }
    let routes = |o: &Options| o.cluster.as_ref().map(|c| c.routes.clone());
    let mut applied = current.clone();
    if routes(&new) != routes(current) && current.cluster.is_some() && new.cluster.is_some() {
        let list = routes(&new).unwrap_or_default();
        running.reload_routes(list.clone());
        if let Some(c) = applied.cluster.as_mut() {
            c.routes = list;
        }
    }
    // Only what was applied changes; the rest still describes the running server.
    applied.auth.user.clone_from(&new.auth.user);
    applied.auth.password.clone_from(&new.auth.password);
    applied.auth.token.clone_from(&new.auth.token);
    applied.auth.users.clone_from(&new.auth.users);
    applied.debug = new.debug;
    applied.trace = new.trace;
    applied.streaming.stan_debug = new.streaming.stan_debug;
    applied.streaming.stan_trace = new.streaming.stan_trace;
    let needs_restart = changed_keys(&applied, &new);
    if !needs_restart.is_empty() {
        log::warn!(
            "Changed but not applied until a restart: {}",
            needs_restart.join(", ")
        );
    }
    *current = applied;
}

/// Dotted names of the options that differ, compared through their serde form.
fn changed_keys(old: &Options, new: &Options) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(
                        &path,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match (serde_json::to_value(old), serde_json::to_value(new)) {
        (Ok(a), Ok(b)) => walk("", &a, &b, &mut out),
        _ => out.push("(options could not be compared)".into()),
    }
    out
}
