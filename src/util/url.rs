//! URLs that name another server: route URLs of the configuration
//! (`nats-route://[user:pass@]host:port`, `nats://...`, or a bare `host:port`) and NATS server
//! URLs (`-ns`, and the bench tools' `-s`). A leaf module, so that the configuration checks,
//! the route code, external NATS mode and the bench tools share one reading.

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

/// The addresses clients can reach this server at (nats-server's rule): `client_advertise`
/// when set; for a wildcard host every global unicast address of the machine's interfaces
/// (no loopback, no link-local), IPv6 in brackets; else the host itself.
pub fn client_urls(host: &str, port: u16, advertise: Option<&str>) -> Vec<String> {
    if let Some(a) = advertise {
        return vec![a.to_string()];
    }
    if host != "0.0.0.0" && host != "::" && !host.is_empty() {
        return vec![format!("{host}:{port}")];
    }
    interface_addresses()
        .into_iter()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_link_local(),
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        })
        .collect()
}

/// The IP addresses of the machine's interfaces.
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocates; it is walked only while
    // valid and freed once with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned (not freed yet).
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                    u32::from_be(sin.sin_addr.s_addr),
                )));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                    sin6.sin6_addr.s6_addr,
                )));
            }
        }
        at = entry.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(list) };
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
    /// `tls://`: TLS is required for this URL.
    pub tls: bool,
}

/// `nats://[user[:pass]@]host[:port]`, comma-separated; the scheme is optional.
pub fn parse_urls(text: &str) -> Result<Vec<NatsUrl>, String> {
    let mut urls = Vec::new();
    for raw in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (tls, rest) = match raw.split_once("://") {
            Some(("nats", r)) => (false, r),
            Some(("tls", r)) => (true, r),
            Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?} in {raw:?}")),
            None => (false, raw),
        };
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("invalid port in NATS URL {raw:?}"))?,
            ),
            None => (hostport.to_string(), 4222),
        };
        if host.is_empty() {
            return Err(format!("no host in NATS URL {raw:?}"));
        }
        let (user, pass) = match creds {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(c.to_string()), None),
            },
            None => (None, None),
        };
        urls.push(NatsUrl {
            host,
            port,
            user,
            pass,
            tls,
        });
    }
    if urls.is_empty() {
        return Err("no NATS server URL given".into());
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_urls("nats://u:p@127.0.0.1:4333, localhost,nats://[::1]:5000").unwrap();
        assert_eq!(
            u[0],
            NatsUrl {
                host: "127.0.0.1".into(),
                port: 4333,
                user: Some("u".into()),
                pass: Some("p".into()),
                tls: false
            }
        );
        assert_eq!((u[1].host.as_str(), u[1].port), ("localhost", 4222));
        assert_eq!((u[2].host.as_str(), u[2].port), ("::1", 5000));
        assert!(parse_urls("tls://x:1").unwrap()[0].tls);
        assert!(parse_urls("ws://x:1").is_err());
        assert!(parse_urls("nats://x:notaport").is_err());
        assert!(parse_urls(" , ").is_err());
    }

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

    #[test]
    fn client_url_rules() {
        assert_eq!(client_urls("10.1.2.3", 4222, None), vec!["10.1.2.3:4222"]);
        assert_eq!(
            client_urls("0.0.0.0", 4222, Some("nats.example:4222")),
            vec!["nats.example:4222"]
        );
        for url in client_urls("0.0.0.0", 4222, None) {
            assert!(!url.starts_with("127.") && url.ends_with(":4222"), "{url}");
        }
    }
}
