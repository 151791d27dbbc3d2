//! The monitoring HTTP server: hyper (HTTP/1) on core 0's glommio executor through a small
//! I/O shim, one dispatch table of endpoints, and the reference's response conventions
//! (pretty JSON, `Access-Control-Allow-Origin: *`, JSONP with `?callback=`).

use super::{clusterz, nats_endpoints, streaming_endpoints, Monitor};
use crate::nats::transport::Transport;
use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpListener;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// A connection (plain or TLS) seen through hyper's I/O traits.
struct HyperIo(Transport);

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the slice is zeroed before it is viewed as initialized bytes, and only the
        // count the read reports is advanced.
        let slice = unsafe {
            let raw = buf.as_mut();
            for b in raw.iter_mut() {
                b.write(0);
            }
            &mut *(raw as *mut [std::mem::MaybeUninit<u8>] as *mut [u8])
        };
        match Pin::new(&mut self.0).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: n bytes were just written by the read.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Accepts monitoring connections (HTTPS when `tls` is given) until the listener fails.
pub async fn serve(
    listener: TcpListener,
    monitor: Rc<Monitor>,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::error!("Monitoring listener stopped: {e}");
                return;
            }
        };
        let monitor = monitor.clone();
        let tls = tls.clone();
        glommio::spawn_local(async move {
            let stream = match tls {
                None => Transport::Plain(stream),
                Some(acceptor) => {
                    let handshake =
                        crate::util::timeout::within(HANDSHAKE_LIMIT, acceptor.accept(stream));
                    match handshake.await {
                        Some(Ok(s)) => Transport::TlsServer(Box::new(s)),
                        Some(Err(e)) => {
                            log::debug!("Monitoring TLS handshake error: {e}");
                            return;
                        }
                        None => return,
                    }
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let monitor = monitor.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&monitor, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .keep_alive(true)
                .serve_connection(HyperIo(stream), service);
            if let Err(e) = conn.await {
                log::debug!("Monitoring connection ended: {e}");
            }
        })
        .detach();
    }
}

const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Query string parameters, percent-decoded.
pub type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What an endpoint answers.
pub enum Reply {
    Json(serde_json::Value),
    Status(StatusCode),
    NotFound(String),
    Html(&'static str),
}

async fn handle(monitor: &Monitor, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = parse_query(req.uri().query());
    monitor.count_request(&path);
    let reply = match path.as_str() {
        "" => Reply::Html(INDEX),
        "/varz" => nats_endpoints::varz(monitor).await,
        "/connz" => nats_endpoints::connz(monitor, &query).await,
        "/routez" => nats_endpoints::routez(monitor, &query),
        "/subsz" | "/subscriptionsz" => nats_endpoints::subsz(monitor, &query).await,
        "/healthz" => nats_endpoints::healthz(monitor),
        "/streaming" => Reply::Html(STREAMING_INDEX),
        "/streaming/serverz" => streaming_endpoints::serverz(monitor).await,
        "/streaming/storez" => streaming_endpoints::storez(monitor).await,
        "/streaming/clientsz" => streaming_endpoints::clientsz(monitor, &query).await,
        "/streaming/channelsz" => streaming_endpoints::channelsz(monitor, &query).await,
        "/streaming/clusterz" => clusterz::clusterz(monitor).await,
        "/streaming/isFTActive" => {
            // 200 only on the FT active server (standalone and standby: 204, as the reference).
            let active = is_ft_active(monitor);
            Reply::Status(if active {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            })
        }
        _ => Reply::NotFound("404 page not found\n".into()),
    };
    respond(reply, query.get("callback"))
}

/// 200 once the FT active server answers streaming requests: a load balancer that sends
/// clients to it then never sends them during the take-over's recovery (serverz already says
/// FT_ACTIVE then).
fn is_ft_active(monitor: &Monitor) -> bool {
    monitor.node.role.state() == crate::stan::role::State::Active
}

fn respond(reply: Reply, callback: Option<&String>) -> Response<Full<Bytes>> {
    let builder = Response::builder().header("Access-Control-Allow-Origin", "*");
    let result = match reply {
        Reply::Json(v) if callback.is_none() => {
            let body = serde_json::to_string_pretty(&v).unwrap_or_default();
            builder
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(body)))
        }
        Reply::Json(v) => {
            let body = serde_json::to_string_pretty(&v).unwrap_or_default();
            let name = callback.map(String::as_str).unwrap_or("callback");
            builder
                .header("Content-Type", "application/javascript")
                .body(Full::new(Bytes::from(format!("{name}({body})"))))
        }
        Reply::Status(code) => builder.status(code).body(Full::new(Bytes::new())),
        Reply::NotFound(text) => builder
            .status(StatusCode::NOT_FOUND)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(text))),
        Reply::Html(page) => builder
            .header("Content-Type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(page.as_bytes()))),
    };
    result.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

const INDEX: &str = r#"<html lang="en">
<head><title>stanza monitoring</title></head>
<body>
<a href="varz">General</a><br/>
<a href="connz">Connections</a><br/>
<a href="routez">Routes</a><br/>
<a href="subsz">Subscriptions</a><br/>
<a href="healthz">Health</a><br/>
<a href="streaming">Streaming</a><br/>
</body>
</html>
"#;

const STREAMING_INDEX: &str = r#"<html lang="en">
<head><title>stanza streaming monitoring</title></head>
<body>
<a href="streaming/serverz">server</a><br/>
<a href="streaming/storez">store</a><br/>
<a href="streaming/clientsz">clients</a><br/>
<a href="streaming/channelsz">channels</a><br/>
<a href="streaming/clusterz">cluster</a><br/>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "channel=foo%2Ebar&subs=1&callback=cb&x=a+b&bad=%zz&end=%4",
        ));
        assert_eq!(q["channel"], "foo.bar");
        assert_eq!(q["subs"], "1");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
