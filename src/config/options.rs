//! The server's options: defaults, then the configuration file, then command-line flags.
//! This module covers the embedded core NATS server's keys; streaming keys join it as their
//! features land.

use super::conf::{self, get, Map, Spanned, Value};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authorization {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub users: Vec<User>,
}

impl Authorization {
    pub fn required(&self) -> bool {
        self.user.is_some() || self.token.is_some() || !self.users.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub server_name: Option<String>,
    /// Number of shards (glommio executors); `None` means one per online CPU.
    pub cores: Option<usize>,
    pub max_payload: usize,
    pub max_control_line: usize,
    pub max_connections: usize,
    /// 0 means unlimited, as in nats-server.
    pub max_subscriptions: usize,
    pub max_pending: usize,
    pub write_deadline: Duration,
    pub ping_interval: Duration,
    pub ping_max: u32,
    pub auth: Authorization,
    pub auth_timeout: Duration,
    pub debug: bool,
    pub trace: bool,
    pub logtime: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "0.0.0.0".into(),
            port: 4222,
            server_name: None,
            cores: None,
            max_payload: 1024 * 1024,
            max_control_line: 4096,
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_pending: 64 * 1024 * 1024,
            write_deadline: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            auth: Authorization::default(),
            auth_timeout: Duration::from_secs(2),
            debug: false,
            trace: false,
            logtime: true,
            log_file: None,
            pid_file: None,
            config_file: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Parse(#[from] conf::ConfError),
    #[error("{pos}: '{key}' {msg}")]
    BadValue {
        pos: conf::Pos,
        key: String,
        msg: String,
    },
    #[error("invalid option: {0}")]
    Invalid(String),
}

fn bad(key: &str, v: &Spanned, msg: &str) -> ConfigError {
    ConfigError::BadValue {
        pos: v.pos.clone(),
        key: key.to_string(),
        msg: msg.to_string(),
    }
}

fn as_string(key: &str, v: &Spanned) -> Result<String, ConfigError> {
    match &v.value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        _ => Err(bad(key, v, "must be a string")),
    }
}

fn as_usize(key: &str, v: &Spanned) -> Result<usize, ConfigError> {
    match &v.value {
        Value::Integer(i) if *i >= 0 => Ok(*i as usize),
        Value::Integer(_) => Err(bad(key, v, "must not be negative")),
        _ => Err(bad(key, v, "must be an integer")),
    }
}

fn as_bool(key: &str, v: &Spanned) -> Result<bool, ConfigError> {
    match &v.value {
        Value::Bool(b) => Ok(*b),
        _ => Err(bad(key, v, "must be a boolean")),
    }
}

/// Durations are strings like "10s", or integers meaning seconds.
fn as_duration(key: &str, v: &Spanned) -> Result<Duration, ConfigError> {
    match &v.value {
        Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
        Value::Float(f) if *f >= 0.0 => Ok(Duration::from_secs_f64(*f)),
        Value::String(s) => {
            conf::parse_duration(s).ok_or_else(|| bad(key, v, "is not a valid duration"))
        }
        _ => Err(bad(key, v, "must be a duration such as \"10s\"")),
    }
}

impl Options {
    /// Applies the keys of a parsed NATS configuration (top level) to these options.
    pub fn apply_conf(&mut self, map: &Map) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        for (key, v) in map {
            match key.to_ascii_lowercase().as_str() {
                "host" | "net" | "listen_host" => self.host = as_string(key, v)?,
                "port" => {
                    self.port = u16::try_from(as_usize(key, v)?)
                        .map_err(|_| bad(key, v, "must be a port number"))?
                }
                "listen" => self.apply_listen(key, v)?,
                "server_name" => self.server_name = Some(as_string(key, v)?),
                "cores" => self.cores = Some(as_usize(key, v)?),
                "max_payload" => self.max_payload = as_usize(key, v)?,
                "max_control_line" => self.max_control_line = as_usize(key, v)?,
                "max_connections" | "max_conn" => self.max_connections = as_usize(key, v)?,
                "max_subscriptions" | "max_subs" => self.max_subscriptions = as_usize(key, v)?,
                "max_pending" => self.max_pending = as_usize(key, v)?,
                "write_deadline" => self.write_deadline = as_duration(key, v)?,
                "ping_interval" => self.ping_interval = as_duration(key, v)?,
                "ping_max" => {
                    self.ping_max =
                        u32::try_from(as_usize(key, v)?).map_err(|_| bad(key, v, "is too large"))?
                }
                "debug" => self.debug = as_bool(key, v)?,
                "trace" => self.trace = as_bool(key, v)?,
                "logtime" => self.logtime = as_bool(key, v)?,
                "log_file" | "logfile" => self.log_file = Some(as_string(key, v)?.into()),
                "pid_file" | "pidfile" => self.pid_file = Some(as_string(key, v)?.into()),
                "authorization" => self.apply_authorization(key, v)?,
                other => warnings.push(format!("{}: unknown configuration key '{other}'", v.pos)),
            }
        }
        Ok(warnings)
    }

    fn apply_listen(&mut self, key: &str, v: &Spanned) -> Result<(), ConfigError> {
        let listen = as_string(key, v)?;
        let (host, port) = listen
            .rsplit_once(':')
            .ok_or_else(|| bad(key, v, "must be host:port"))?;
        self.port = port
            .parse()
            .map_err(|_| bad(key, v, "has an invalid port"))?;
        if !host.is_empty() {
            self.host = host.trim_matches(['[', ']']).to_string();
        }
        Ok(())
    }

    fn apply_authorization(&mut self, key: &str, v: &Spanned) -> Result<(), ConfigError> {
        let Value::Map(map) = &v.value else {
            return Err(bad(key, v, "must be a map"));
        };
        let mut auth = Authorization::default();
        for (k, item) in map {
            match k.to_ascii_lowercase().as_str() {
                "user" | "username" => auth.user = Some(as_string(k, item)?),
                "pass" | "password" => auth.password = Some(as_string(k, item)?),
                "token" => auth.token = Some(as_string(k, item)?),
                "timeout" => self.auth_timeout = as_duration(k, item)?,
                "users" => {
                    let Value::Array(users) = &item.value else {
                        return Err(bad(k, item, "must be an array"));
                    };
                    for u in users {
                        let Value::Map(fields) = &u.value else {
                            return Err(bad(k, u, "entries must be maps"));
                        };
                        let user = get(fields, "user")
                            .or_else(|| get(fields, "username"))
                            .ok_or_else(|| bad(k, u, "entry has no user"))?;
                        let password = get(fields, "password").or_else(|| get(fields, "pass"));
                        auth.users.push(User {
                            user: as_string("user", user)?,
                            password: match password {
                                Some(p) => as_string("password", p)?,
                                None => String::new(),
                            },
                        });
                    }
                }
                _ => {}
            }
        }
        if auth.token.is_some() && (auth.user.is_some() || !auth.users.is_empty()) {
            return Err(bad(
                key,
                v,
                "can not have a token and a user/password at the same time",
            ));
        }
        if auth.user.is_some() && !auth.users.is_empty() {
            return Err(bad(
                key,
                v,
                "can not have a single user/pass and a users array",
            ));
        }
        self.auth = auth;
        Ok(())
    }

    /// Checks relations between options that no single key can check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_payload == 0 {
            return Err(ConfigError::Invalid("max_payload must be positive".into()));
        }
        if self.max_control_line < 16 {
            return Err(ConfigError::Invalid(
                "max_control_line must be at least 16".into(),
            ));
        }
        if self.max_payload > self.max_pending {
            return Err(ConfigError::Invalid(format!(
                "max_payload ({}) can not be higher than max_pending ({})",
                self.max_payload, self.max_pending
            )));
        }
        if self.cores == Some(0) {
            return Err(ConfigError::Invalid("cores must be at least 1".into()));
        }
        if self.auth.user.is_some() && self.auth.password.is_none() {
            return Err(ConfigError::Invalid(
                "authorization user has no password".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_core_keys() {
        let map = conf::parse_str(
            "listen: 127.0.0.1:4333\nmax_payload: 2MB\nping_interval: \"5s\"\nping_max: 3\nwrite_deadline: 2\nauthorization { users: [ {user: a, password: b} ], timeout: 0.5 }\nunknown_thing: 1",
            "t.conf",
        )
        .unwrap();
        let mut o = Options::default();
        let warnings = o.apply_conf(&map).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 4333);
        assert_eq!(o.max_payload, 2 << 20);
        assert_eq!(o.ping_interval, Duration::from_secs(5));
        assert_eq!(o.ping_max, 3);
        assert_eq!(o.write_deadline, Duration::from_secs(2));
        assert_eq!(o.auth_timeout, Duration::from_millis(500));
        assert_eq!(
            o.auth.users,
            vec![User {
                user: "a".into(),
                password: "b".into()
            }]
        );
        o.validate().unwrap();
    }

    #[test]
    fn logging_keys() {
        let map = conf::parse_str(
            "logtime: false\nlog_file: \"/var/log/stanza.log\"\npid_file: /run/stanza.pid\n",
            "t.conf",
        )
        .unwrap();
        let mut o = Options::default();
        assert!(o.apply_conf(&map).unwrap().is_empty());
        assert!(!o.logtime);
        assert_eq!(o.log_file, Some(PathBuf::from("/var/log/stanza.log")));
        assert_eq!(o.pid_file, Some(PathBuf::from("/run/stanza.pid")));
    }

    #[test]
    fn wrong_types_are_errors_with_positions() {
        let map = conf::parse_str("port: abc", "t.conf").unwrap();
        let err = Options::default().apply_conf(&map).unwrap_err();
        assert_eq!(err.to_string(), "t.conf:1:7: 'port' must be an integer");
        let map = conf::parse_str("authorization { token: x, user: y }", "t.conf").unwrap();
        assert!(Options::default().apply_conf(&map).is_err());
        let map = conf::parse_str("max_pending: 10\n", "t.conf").unwrap();
        let mut o = Options::default();
        o.apply_conf(&map).unwrap();
        assert!(o.validate().is_err());
    }
}
