//! Reading configuration files into `Options`: the NATS format, or TOML for `.toml` files;
//! one file for both NATS and streaming, or `-c` and `-sc` as two; the `streaming { }` block;
//! unknown keys become warnings (with their position), wrong values errors.

use super::conf::{self, Pos, Spanned, Value};
use super::de;
use super::options::{ConfigError, Options};
use super::streaming::StreamingOptions;
use std::path::Path;

/// Parses a configuration file of either format into a value tree.
pub fn read_file(path: &Path) -> Result<Spanned, ConfigError> {
    let name = path.display().to_string();
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Toml {
            file: name.clone(),
            msg: e.to_string(),
        })?;
        return toml_to_value(&text, &name);
    }
    Ok(de::document(conf::parse_file(path)?, &name))
}

/// TOML documents become the same value tree as NATS-format ones, so one model reads both.
pub fn toml_to_value(text: &str, name: &str) -> Result<Spanned, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
        file: name.to_string(),
        msg: e.to_string(),
    })?;
    let pos = Pos {
        file: name.into(),
        line: 0,
        column: 0,
    };
    Ok(convert_toml(toml::Value::Table(table), &pos))
}

fn convert_toml(v: toml::Value, pos: &Pos) -> Spanned {
    let value = match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::Integer(i),
        toml::Value::Float(f) => Value::Float(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| convert_toml(i, pos)).collect())
        }
        toml::Value::Table(t) => Value::Map(
            t.into_iter()
                .map(|(k, v)| (k, convert_toml(v, pos)))
                .collect(),
        ),
    };
    Spanned {
        value,
        pos: pos.clone(),
    }
}

/// Applies the configuration files to `options`. With one file it configures both NATS and
/// streaming; its `streaming { }` block, when present, is the only place streaming keys are
/// read from (as in the reference). Returns the warnings to log.
pub fn apply_files(
    options: &mut Options,
    nats_file: Option<&Path>,
    stan_file: Option<&Path>,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    match (nats_file, stan_file) {
        (None, None) => {}
        (Some(a), Some(b)) if a != b => {
            let nats_root = read_file(a)?;
            let stan_root = read_file(b)?;
            let nats_unknown = apply_nats(options, &nats_root)?;
            let stan_unknown = apply_streaming(options, &stan_root)?;
            warn_unknown(&nats_root, &nats_unknown, &mut warnings)?;
            warn_unknown(&stan_root, &stan_unknown, &mut warnings)?;
        }
        (Some(path), _) | (None, Some(path)) => {
            let root = read_file(path)?;
            warnings = apply_one_file(options, &root)?;
        }
    }
    options.config_file = nats_file.or(stan_file).map(Path::to_path_buf);
    options.stan_config_file = stan_file.or(nats_file).map(Path::to_path_buf);
    Ok(warnings)
}

/// A configuration given as text (NATS format) applied to `options`, as one file for both
/// NATS and streaming; returns its warnings. The fuzz target drives the whole path with it.
pub fn apply_text(
    options: &mut Options,
    text: &str,
    name: &str,
) -> Result<Vec<String>, ConfigError> {
    let root = de::document(conf::parse_str(text, name)?, name);
    apply_one_file(options, &root)
}

/// One file for both NATS and streaming; returns its warnings.
fn apply_one_file(options: &mut Options, root: &Spanned) -> Result<Vec<String>, ConfigError> {
    let nats_unknown = apply_nats(options, root)?;
    let stan_unknown = apply_streaming(options, root)?;
    let unknown: Vec<String> = if has_streaming_block(root) {
        nats_unknown.into_iter().chain(stan_unknown).collect()
    } else {
        // Read twice from the same keys: unknown only if neither side knows it (the streaming
        // side, not knowing a NATS block, lists the block, not the key inside it).
        nats_unknown
            .into_iter()
            .filter(|p| {
                let mut prefix = String::new();
                p.split('.').any(|segment| {
                    if !prefix.is_empty() {
                        prefix.push('.');
                    }
                    prefix.push_str(segment);
                    stan_unknown.contains(&prefix)
                })
            })
            .collect()
    };
    let mut warnings = Vec::new();
    warn_unknown(root, &unknown, &mut warnings)?;
    Ok(warnings)
}

fn has_streaming_block(root: &Spanned) -> bool {
    matches!(&root.value, Value::Map(m) if conf::get(m, "streaming").is_some())
}

/// NATS keys from the top level; returns the paths it did not know (`streaming` excluded).
fn apply_nats(options: &mut Options, root: &Spanned) -> Result<Vec<String>, ConfigError> {
    let mut unknown = Vec::new();
    let mut parsed: Options = de::from_value_collecting_unknown(root, &mut unknown)?;
    unknown.retain(|p| !p.eq_ignore_ascii_case("streaming"));
    parsed.streaming = std::mem::take(&mut options.streaming);
    *options = parsed;
    Ok(unknown)
}

/// Streaming keys from the `streaming { }` block, else from the top level.
fn apply_streaming(options: &mut Options, root: &Spanned) -> Result<Vec<String>, ConfigError> {
    let mut unknown = Vec::new();
    let block = match &root.value {
        Value::Map(m) => conf::get(m, "streaming"),
        _ => None,
    };
    let (value, prefix) = match block {
        Some(b) => (b, "streaming."),
        None => (root, ""),
    };
    options.streaming = de::from_value_collecting_unknown::<StreamingOptions>(value, &mut unknown)?;
    Ok(unknown
        .into_iter()
        .map(|p| format!("{prefix}{p}"))
        .collect())
}

/// Where the first of `paths` (dotted key paths) set in the configuration file(s) is, as
/// `file:line:column`, and which path it is; `None` when no file sets any of them.
pub fn key_position<'a>(files: &[&Path], paths: &[&'a str]) -> Option<(String, &'a str)> {
    let roots: Vec<Spanned> = files.iter().filter_map(|f| read_file(f).ok()).collect();
    paths.iter().find_map(|path| {
        roots
            .iter()
            .find_map(|root| de::position_of(root, path))
            .map(|pos| (pos.to_string(), *path))
    })
}

/// Unknown keys are warned about, except those of nats-server features this build does not
/// have, which refuse the start (`banner::unbuilt_key`).
fn warn_unknown(
    root: &Spanned,
    unknown: &[String],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut refused = Vec::new();
    for path in unknown {
        // An optional block shows as a `?` step in the path: not a key anyone wrote.
        let path = &path
            .split('.')
            .filter(|s| *s != "?")
            .collect::<Vec<_>>()
            .join(".");
        let at = match de::position_of(root, path) {
            Some(pos) => pos.to_string(),
            None => root.pos.file.to_string(),
        };
        match super::banner::unbuilt_key(path) {
            Some(what) => refused.push(format!(
                "{at}: '{path}': {what} is not available in this build yet; remove it to start without it"
            )),
            None => warnings.push(format!(
                "{at}: unknown configuration key '{path}' (ignored)"
            )),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(refused.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::options::User;
    use crate::config::streaming::StoreType;
    use std::time::Duration;

    fn load_str(text: &str) -> Result<(Options, Vec<String>), ConfigError> {
        let root = de::document(conf::parse_str(text, "t.conf")?, "t.conf");
        let mut o = Options::default();
        let warnings = apply_one_file(&mut o, &root)?;
        o.finish()?;
        o.validate()?;
        Ok((o, warnings))
    }

    #[test]
    fn keys_of_features_not_built_refuse_to_start() {
        for (text, what) in [
            (
                "authorization { users: [ {user: a, password: b, permissions: { publish: \"x\" }} ] }",
                "'authorization.users.0.permissions': publish/subscribe permissions",
            ),
            (
                "authorization { default_permissions: { subscribe: \"x\" } }",
                "publish/subscribe permissions",
            ),
            (
                "cluster { listen: \"127.0.0.1:-1\", permissions: { import: \"x\" } }",
                "t.conf:1:48: 'cluster.permissions': route permissions",
            ),
            ("accounts { A: {} }", "accounts and JWT"),
            (
                "authorization { users: [ {user: a, password: b, nkey: UABC} ] }",
                "nkey authentication",
            ),
            ("leafnodes { port: 7422 }", "leaf nodes"),
            ("jetstream: enabled", "JetStream"),
        ] {
            let err = load_str(text).expect_err(text).to_string();
            assert!(err.contains(what), "{text}: {err}");
            assert!(err.contains("not available in this build"), "{err}");
        }
    }

    #[test]
    fn core_keys() {
        let (o, warnings) = load_str(
            "listen: 127.0.0.1:4333\nmax_payload: 2MB\nping_interval: \"5s\"\nping_max: 3\nwrite_deadline: 2\nauthorization { users: [ {user: a, password: b} ], timeout: 0.5 }\nunknown_thing: 1",
        )
        .unwrap();
        assert_eq!(
            warnings,
            vec!["t.conf:7:16: unknown configuration key 'unknown_thing' (ignored)"]
        );
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 4333));
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
    }

    #[test]
    fn wrong_types_are_errors_with_positions() {
        let err = load_str("port: abc").unwrap_err().to_string();
        assert!(err.starts_with("t.conf:1:7: 'port' invalid type"), "{err}");
        let err = load_str("streaming {\n  hb_interval: \"ten\"\n}")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.conf:2:16: 'hb_interval' 'ten' is not a valid duration"),
            "{err}"
        );
        let err = load_str("streaming { store: mongo }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported store type: mongo"), "{err}");
        assert!(load_str("authorization { token: x, user: y, password: z }").is_err());
        assert!(load_str("max_pending: 10\n").is_err());
    }

    #[test]
    fn keys_are_case_insensitive_and_last_wins() {
        let (o, _) = load_str("PORT: 1\nport: 2\nStreaming { Cluster_ID: abc }").unwrap();
        assert_eq!(o.port, 2);
        assert_eq!(o.streaming.cluster_id, "abc");
    }

    #[test]
    fn top_level_streaming_keys_without_a_block() {
        let (o, warnings) =
            load_str("port: 4444\ncluster_id: top\nstore_limits { max_msgs: 7 }\nbogus: 1\n")
                .unwrap();
        assert_eq!(o.port, 4444);
        assert_eq!(o.streaming.cluster_id, "top");
        assert_eq!(o.streaming.store_limits.max_msgs, 7);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("'bogus'"));
    }

    /// The constructs of typical production files, read into the expected options.
    #[test]
    fn production_style_file() {
        let text = r#"
# NATS part
listen: 0.0.0.0:4223
http: 8222
max_payload: 1MB
tls {
  cert_file: "/etc/nats/server.pem"
  key_file: "/etc/nats/server-key.pem"
  ca_file: "/etc/nats/ca.pem"
  verify: true
  timeout: 2
}
authorization {
  users = [
    { user: alice, password: "$2a$11$abcdefghijklmnopqrstuu7Jk3P0AqVQ0QkNzJ3xR/3o5wE1VZ0Ka" }
    { user: bob, password: s3cret }
  ]
}
cluster {
  listen: 0.0.0.0:6222
  routes: [
    nats-route://ruser:T0pS3cr3t@otherhost:6222
    nats-route://ruser:T0pS3cr3t@thirdhost:6222
  ]
  authorization { user: ruser, password: T0pS3cr3t, timeout: 0.75 }
}
streaming {
  id: prod-cluster
  store: file
  dir: "/data/stan"
  hb_interval: "10s"
  hb_timeout: "5s"
  hb_fail_count: 3
  store_limits {
    max_channels: 500
    max_msgs: 100000
    max_bytes: 1GB
    max_age: "24h"
    channels {
      "orders.>": { max_msgs: 0, max_age: "72h" }
      "orders.eu": { max_bytes: 10MB }
      "audit": { max_subs: 5 }
    }
  }
  file {
    compact_enabled: true
    compact_frag: 40
    buffer_size: 4MB
    sync_on_flush: false
    slice_max_bytes: 128MB
    slice_max_age: "1h"
    fds_limit: 100
    auto_sync: "30s"
    zero_ahead: false
  }
  cluster {
    node_id: "a"
    peers: ["b", "c"]
    log_path: /data/raft
    raft_election_timeout: "3s"
  }
}
"#;
        let (o, warnings) = load_str(text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(o.streaming.store_limits.channels.len(), 3);
        assert_eq!(o.streaming.file.file_descriptors_limit, 100);
        assert_eq!(o.http.as_deref(), Some("8222"));
    }

    #[test]
    fn production_style_file_values() {
        let text = r#"
listen: 0.0.0.0:4223
http_port: 8222
tls { cert_file: "/etc/nats/server.pem", key_file: "/etc/nats/key.pem", verify: true }
authorization { users = [ { user: alice, password: a1 }, { user: bob, password: b2 } ] }
cluster {
  listen: 0.0.0.0:6222
  routes: [ nats-route://ruser:T0pS3cr3t@otherhost:6222 ]
  authorization { user: ruser, password: T0pS3cr3t, timeout: 0.75 }
}
streaming {
  id: prod-cluster
  store: file
  dir: "/data/stan"
  hb_fail_count: 3
  store_limits {
    max_channels: 500
    max_bytes: 1GB
    max_age: "24h"
    channels {
      "orders.>": { max_msgs: 0, max_age: "72h" }
      "orders.eu": { max_bytes: 10MB }
    }
  }
  file { compact_frag: 40, buffer_size: 4MB, sync_on_flush: false, slice_max_age: "1h", zero_ahead: false }
  cluster { node_id: "a", peers: ["b", "c"], log_path: /data/raft, raft_election_timeout: "3s" }
}
"#;
        let root = de::document(conf::parse_str(text, "p.conf").unwrap(), "p.conf");
        let mut o = Options::default();
        assert!(apply_nats(&mut o, &root).unwrap().is_empty());
        assert!(apply_streaming(&mut o, &root).unwrap().is_empty());
        o.finish().unwrap();
        assert_eq!(o.port, 4223);
        assert_eq!(o.http_port, Some(8222));
        let tls = o.tls.as_ref().unwrap();
        assert!(tls.verify);
        assert_eq!(
            tls.key_file.as_deref(),
            Some(Path::new("/etc/nats/key.pem"))
        );
        assert_eq!(o.auth.users.len(), 2);
        let c = o.cluster.as_ref().unwrap();
        assert_eq!(
            c.routes,
            vec!["nats-route://ruser:T0pS3cr3t@otherhost:6222"]
        );
        assert_eq!(c.authorization.user.as_deref(), Some("ruser"));
        assert_eq!(c.authorization.timeout, Some(Duration::from_millis(750)));
        let s = &o.streaming;
        assert_eq!(s.cluster_id, "prod-cluster");
        assert_eq!(s.store, StoreType::File);
        assert_eq!(s.hb_fail_count, 3);
        assert_eq!(s.store_limits.max_channels, 500);
        assert_eq!(s.store_limits.max_bytes, 1 << 30);
        assert_eq!(s.store_limits.max_age, Duration::from_secs(86400));
        let orders = &s.store_limits.channels["orders.>"];
        assert_eq!(orders.max_msgs, Some(0));
        assert_eq!(orders.max_age, Some(Duration::from_secs(72 * 3600)));
        assert_eq!(
            s.store_limits.channels["orders.eu"].max_bytes,
            Some(10 << 20)
        );
        assert_eq!(s.file.compact_frag, 40);
        assert_eq!(s.file.buffer_size, 4 << 20);
        assert!(!s.file.sync);
        assert!(!s.file.zero_ahead);
        assert_eq!(s.file.slice_max_age, Duration::from_secs(3600));
        let sc = s.cluster.as_ref().unwrap();
        assert_eq!(sc.peers, vec!["b", "c"]);
        assert_eq!(sc.raft_election_timeout, Duration::from_secs(3));
        // Inheritance: orders.eu inherits unlimited msgs and 72h from orders.>.
        let limits = s.store_limits.to_limits().build().unwrap();
        let eu = limits.for_channel("orders.eu");
        assert_eq!(eu.max_msgs, 0);
        assert_eq!(eu.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(eu.max_bytes, 10 << 20);
        assert_eq!(limits.for_channel("other").max_bytes, 1 << 30);
    }

    #[test]
    fn toml_file_with_the_same_keys() {
        let root = toml_to_value(
            r#"
port = 4555
max_payload = "2MB"
[authorization]
user = "u"
password = "p"
[streaming]
cluster_id = "tomlc"
hb_interval = "3s"
[streaming.store_limits]
max_msgs = 10
[streaming.store_limits.channels."foo.>"]
max_msgs = 0
"#,
            "s.toml",
        )
        .unwrap();
        let mut o = Options::default();
        assert!(apply_nats(&mut o, &root).unwrap().is_empty());
        assert!(apply_streaming(&mut o, &root).unwrap().is_empty());
        o.finish().unwrap();
        o.validate().unwrap();
        assert_eq!(o.port, 4555);
        assert_eq!(o.max_payload, 2 << 20);
        assert_eq!(o.auth.user.as_deref(), Some("u"));
        assert_eq!(o.streaming.cluster_id, "tomlc");
        assert_eq!(o.streaming.hb_interval, Duration::from_secs(3));
        assert_eq!(o.streaming.store_limits.channels["foo.>"].max_msgs, Some(0));
        let err = toml_to_value("port = ", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.toml: "), "{err}");
    }
}
