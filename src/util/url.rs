//! URLs of the configuration that name another server: `nats-route://[user:pass@]host:port`,
//! `nats://...`, or a bare `host:port`. A leaf module, so that the configuration checks and the
//! route code share one reading.

/// A route URL of the configuration: `nats-route://[user:pass@]host:port` (or `nats://`), or
/// a bare `host:port`. Returns `host:port`, and whether it carried credentials.
pub fn route_address(url: &str) -> Option<(String, bool)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/');
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((_, h)) => (true, h),
        None => (false, rest),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    let port: i32 = port.parse().ok()?;
    if host.is_empty() {
        return None;
    }
    Some((format!("{host}:{port}"), creds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_urls() {
        assert_eq!(
            route_address("nats-route://127.0.0.1:6222"),
            Some(("127.0.0.1:6222".into(), false))
        );
        assert_eq!(
            route_address("nats://u:p@node-b:6223/"),
            Some(("node-b:6223".into(), true))
        );
        assert_eq!(
            route_address("node-c:6224"),
            Some(("node-c:6224".into(), false))
        );
        assert_eq!(route_address("nats-route://:6222"), None);
        assert_eq!(route_address("nats-route://host"), None);
    }
}
