//! The `stanza` command: parse flags and the config file, start the cores, handle signals.

use stanza::config::cli::Cli;
use stanza::server;
use stanza::util::logging;

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
    let (options, warnings) = match cli.into_options() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stanza: configuration error: {e}");
            std::process::exit(1);
        }
    };
    logging::init(options.debug, options.trace);
    for w in warnings {
        log::warn!("{w}");
    }
    let signals = server::block_signals();
    let running = match server::start(options) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}");
            std::process::exit(1);
        }
    };
    loop {
        match server::wait_signal(&signals) {
            libc::SIGINT | libc::SIGTERM => {
                log::info!("Server Exiting..");
                let cores = running.cores;
                let stopped = running.shutdown(SHUTDOWN_TIMEOUT);
                if stopped < cores {
                    log::warn!("{} of {cores} cores did not stop in time", cores - stopped);
                }
                std::process::exit(0);
            }
            libc::SIGHUP => log::warn!("Reloading the configuration is not supported yet"),
            _ => {}
        }
    }
}
