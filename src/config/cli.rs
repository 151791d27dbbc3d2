//! Command-line flags. Go's flag package accepts `-name` and `--name` alike, so single-dash
//! long flags (`-port`, `-DV`, `-user`) are rewritten to their double-dash form before clap
//! sees them; true single-letter flags (`-p 4222`) are left alone.

use super::conf;
use super::options::{ConfigError, Options};
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser, Default)]
#[command(
    name = "stanza",
    version,
    about = "A NATS Streaming server, thread-per-core on glommio",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct Cli {
    /// Print help
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Print the version
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,

    /// Configuration file
    #[arg(short = 'c', long = "config", help_heading = "Server")]
    pub config: Option<PathBuf>,
    /// Bind to host address (default 0.0.0.0)
    #[arg(short = 'a', long = "addr", alias = "net", help_heading = "Server")]
    pub addr: Option<String>,
    /// Client port (default 4222)
    #[arg(short = 'p', long = "port", help_heading = "Server")]
    pub port: Option<u16>,
    /// Server name
    #[arg(
        short = 'n',
        long = "name",
        alias = "server_name",
        help_heading = "Server"
    )]
    pub name: Option<String>,
    /// Number of cores (shards) to run on (default: all online CPUs)
    #[arg(long = "cores", help_heading = "Server")]
    pub cores: Option<usize>,

    /// User required for connections
    #[arg(long = "user", help_heading = "Authorization")]
    pub user: Option<String>,
    /// Password required for connections
    #[arg(long = "pass", help_heading = "Authorization")]
    pub pass: Option<String>,
    /// Authorization token required for connections
    #[arg(long = "auth", help_heading = "Authorization")]
    pub auth: Option<String>,

    /// Enable debugging output
    #[arg(short = 'D', long = "debug", help_heading = "Logging")]
    pub debug: bool,
    /// Trace the raw protocol
    #[arg(short = 'V', long = "trace", help_heading = "Logging")]
    pub trace: bool,
    /// Debug and trace
    #[arg(long = "DV", help_heading = "Logging")]
    pub debug_and_trace: bool,
    /// Timestamp log lines (default true; -T=false turns it off)
    #[arg(short = 'T', long = "logtime", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, help_heading = "Logging")]
    pub logtime: Option<bool>,
    /// Log file (reopened on SIGUSR1)
    #[arg(short = 'l', long = "log", help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
    /// File to write the process id to
    #[arg(short = 'P', long = "pid", help_heading = "Logging")]
    pub pid_file: Option<PathBuf>,
}

/// Long flags that Go users write with one dash.
fn rewrite_go_flag(arg: String) -> String {
    let Some(rest) = arg.strip_prefix('-') else {
        return arg;
    };
    if rest.starts_with('-') || rest.len() < 2 || rest.starts_with(|c: char| c.is_ascii_digit()) {
        return arg;
    }
    let name = rest.split('=').next().unwrap_or(rest);
    // Single-letter flags take no glued value in Go's flag package, so any longer name is a
    // long flag.
    if name.len() >= 2 {
        return format!("-{arg}");
    }
    arg
}

pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut after_double_dash = false;
    for arg in iter {
        if after_double_dash {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            after_double_dash = true;
            out.push(arg);
            continue;
        }
        out.push(rewrite_go_flag(arg));
    }
    out
}

impl Cli {
    pub fn parse_from_env() -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(std::env::args()))
    }

    /// Builds options: defaults, then the config file, then flags. Returns warnings to log.
    pub fn build_options(&self) -> Result<(Options, Vec<String>), ConfigError> {
        let mut options = Options::default();
        let mut warnings = Vec::new();
        if let Some(path) = &self.config {
            let map = conf::parse_file(path)?;
            warnings = options.apply_conf(&map)?;
            options.config_file = Some(path.clone());
        }
        self.apply_flags(&mut options);
        options.validate()?;
        Ok((options, warnings))
    }

    /// Flags win over the file.
    pub fn apply_flags(&self, options: &mut Options) {
        if let Some(a) = &self.addr {
            options.host = a.clone();
        }
        if let Some(p) = self.port {
            options.port = p;
        }
        if let Some(n) = &self.name {
            options.server_name = Some(n.clone());
        }
        if let Some(c) = self.cores {
            options.cores = Some(c);
        }
        if let Some(u) = &self.user {
            options.auth.user = Some(u.clone());
            options.auth.users.clear();
        }
        if let Some(p) = &self.pass {
            options.auth.password = Some(p.clone());
        }
        if let Some(t) = &self.auth {
            options.auth.token = Some(t.clone());
        }
        if let Some(t) = self.logtime {
            options.logtime = t;
        }
        if let Some(l) = &self.log_file {
            options.log_file = Some(l.clone());
        }
        if let Some(p) = &self.pid_file {
            options.pid_file = Some(p.clone());
        }
        options.debug |= self.debug || self.debug_and_trace;
        options.trace |= self.trace || self.debug_and_trace;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_style_flags() {
        let cli = Cli::try_parse_from(normalize_args(args(&[
            "stanza", "-p", "4333", "-user", "u", "-pass=pw", "-DV", "--cores", "1",
        ])))
        .unwrap();
        assert_eq!(cli.port, Some(4333));
        assert_eq!(cli.user.as_deref(), Some("u"));
        assert_eq!(cli.pass.as_deref(), Some("pw"));
        assert!(cli.debug_and_trace);
        assert_eq!(cli.cores, Some(1));
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("stanza-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.conf");
        std::fs::write(&path, "port: 5000\nmax_payload: 1000\n").unwrap();
        let cli = Cli::try_parse_from(args(&[
            "stanza",
            "-c",
            path.to_str().unwrap(),
            "-p",
            "6000",
        ]))
        .unwrap();
        let (o, _) = cli.build_options().unwrap();
        assert_eq!(o.port, 6000);
        assert_eq!(o.max_payload, 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
