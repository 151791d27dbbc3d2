//! Log lines to syslog, as nats-server's syslog logger sends them (Go's `log/syslog`): the
//! local daemon through its Unix socket (`/dev/log`, `/var/run/syslog` or `/var/run/log`), or a
//! remote one at `udp://host[:port]`, `tcp://host[:port]` or `unix:///path` (`remote_syslog`).
//! Facility daemon; `[INF]` and `[TRC]` lines at notice, `[WRN]` warning, `[ERR]` err, `[DBG]`
//! debug. A line that cannot be sent is dropped (a TCP connection is dialled again once).

use super::logging::Civil;
use log::Level;
use std::io::{self, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::SystemTime;

const FACILITY_DAEMON: u8 = 3 << 3;
const LOCAL_SOCKETS: [&str; 3] = ["/dev/log", "/var/run/syslog", "/var/run/log"];
const DEFAULT_PORT: u16 = 514;

enum Conn {
    UnixGram(UnixDatagram),
    UnixStream(UnixStream),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// Where and how a line travels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A Unix socket path: the local daemon's format (no hostname).
    Unix(String),
    Udp(String),
    Tcp(String),
}

pub struct Syslog {
    target: Target,
    conn: Conn,
    tag: String,
    hostname: String,
}

impl Syslog {
    /// The local syslog daemon.
    pub fn local(tag: &str) -> io::Result<Syslog> {
        for path in LOCAL_SOCKETS {
            if let Ok(conn) = dial(&Target::Unix(path.to_string())) {
                return Ok(Self::with(Target::Unix(path.to_string()), conn, tag));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no syslog daemon listens on {}", LOCAL_SOCKETS.join(", ")),
        ))
    }

    /// A syslog at `url` (`udp://host:port`, `tcp://host:port`, `unix:///path`; a bare
    /// `host:port` is UDP).
    pub fn remote(url: &str, tag: &str) -> io::Result<Syslog> {
        let target = parse_url(url).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("remote_syslog {url:?}: expected udp://host:port, tcp://host:port or unix:///path"),
            )
        })?;
        let conn = dial(&target)
            .map_err(|e| io::Error::new(e.kind(), format!("remote_syslog {url}: {e}")))?;
        Ok(Self::with(target, conn, tag))
    }

    fn with(target: Target, conn: Conn, tag: &str) -> Syslog {
        Syslog {
            target,
            conn,
            tag: tag.to_string(),
            hostname: hostname(),
        }
    }

    /// Sends one line (already tagged `[INF]`, ...).
    pub fn send(&mut self, level: Level, text: &str) {
        let line = self.format(level, text, SystemTime::now());
        if self.write(line.as_bytes()).is_err() && matches!(self.target, Target::Tcp(_)) {
            if let Ok(conn) = dial(&self.target) {
                self.conn = conn;
                let _ = self.write(line.as_bytes());
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match &mut self.conn {
            Conn::UnixGram(s) => s.send(line).map(|_| ()),
            Conn::UnixStream(s) => s.write_all(line),
            Conn::Udp(s) => s.send(line).map(|_| ()),
            Conn::Tcp(s) => s.write_all(line),
        }
    }

    /// Go's formats: locally `<pri>Mmm dd hh:mm:ss tag[pid]: msg`, remotely
    /// `<pri>RFC3339 hostname tag[pid]: msg`, each ending in a newline.
    fn format(&self, level: Level, text: &str, now: SystemTime) -> String {
        let pri = FACILITY_DAEMON | severity(level);
        let pid = std::process::id();
        match self.target {
            Target::Unix(_) => format!("<{pri}>{} {}[{pid}]: {text}\n", stamp(now), self.tag),
            _ => format!(
                "<{pri}>{} {} {}[{pid}]: {text}\n",
                rfc3339(now),
                self.hostname,
                self.tag
            ),
        }
    }
}

fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info | Level::Trace => 5,
        Level::Debug => 7,
    }
}

fn parse_url(url: &str) -> Option<Target> {
    let with_port = |hostport: &str| -> Option<String> {
        if hostport.is_empty() {
            return None;
        }
        let has_port = hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        Some(if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{DEFAULT_PORT}")
        })
    };
    match url.split_once("://") {
        Some(("udp", rest)) => with_port(rest).map(Target::Udp),
        Some(("tcp", rest)) => with_port(rest).map(Target::Tcp),
        Some(("unix", path)) if !path.is_empty() => Some(Target::Unix(path.to_string())),
        Some(_) => None,
        None => with_port(url).map(Target::Udp),
    }
}

fn dial(target: &Target) -> io::Result<Conn> {
    match target {
        Target::Unix(path) => {
            let gram = UnixDatagram::unbound().and_then(|s| s.connect(path).map(|_| s));
            match gram {
                Ok(s) => Ok(Conn::UnixGram(s)),
                Err(_) => UnixStream::connect(path).map(Conn::UnixStream),
            }
        }
        Target::Udp(addr) => {
            let s = UdpSocket::bind(if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })?;
            s.connect(addr.as_str())?;
            Ok(Conn::Udp(s))
        }
        Target::Tcp(addr) => TcpStream::connect(addr.as_str()).map(Conn::Tcp),
    }
}

/// This host's name (syslog lines; the FT lock file names its holder's host with it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `Jan _2 15:04:05` (Go's `time.Stamp`), UTC.
fn stamp(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::of(t);
    let month = MONTHS[(c.month as usize).saturating_sub(1) % 12];
    format!(
        "{month} {:>2} {:02}:{:02}:{:02}",
        c.day, c.hour, c.minute, c.second
    )
}

/// `2006-01-02T15:04:05Z`, UTC.
fn rfc3339(t: SystemTime) -> String {
    let c = Civil::of(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("udp://127.0.0.1:5514"),
            Some(Target::Udp("127.0.0.1:5514".into()))
        );
        assert_eq!(
            parse_url("tcp://localhost"),
            Some(Target::Tcp("localhost:514".into()))
        );
        assert_eq!(
            parse_url("unix:///dev/log"),
            Some(Target::Unix("/dev/log".into()))
        );
        assert_eq!(
            parse_url("127.0.0.1:600"),
            Some(Target::Udp("127.0.0.1:600".into()))
        );
        assert_eq!(parse_url("http://x"), None);
        assert_eq!(parse_url("udp://"), None);
    }

    #[test]
    fn lines_in_gos_formats() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let url = format!("udp://{}", socket.local_addr().unwrap());
        let s = Syslog::remote(&url, "stanza").unwrap();
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_575_492_040);
        let line = s.format(Level::Warn, "[WRN] careful", t);
        let pid = std::process::id();
        assert_eq!(
            line,
            format!(
                "<28>2019-12-04T20:40:40Z {} stanza[{pid}]: [WRN] careful\n",
                s.hostname
            )
        );
        let local = Syslog::with(
            Target::Unix("/dev/log".into()),
            Conn::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()),
            "stanza",
        );
        assert_eq!(
            local.format(Level::Info, "[INF] hello", t),
            format!("<29>Dec  4 20:40:40 stanza[{pid}]: [INF] hello\n")
        );
    }
}
