//! TLS with certificates made at test time (rcgen): clients in two languages (nats.go/stan.go
//! and nats-py) connect over TLS, a plain client is refused on a TLS port, a client without a
//! certificate is refused when verify is on, and HTTPS monitoring answers.

mod common;

use common::{available, free_port, make_certs, run_client, Certs, Server, TempDir};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn tls_conf(c: &Certs, verify: bool) -> String {
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 2\n}}\n",
        c.path("server-cert.pem"),
        c.path("server-key.pem"),
        c.path("ca.pem")
    )
}

fn stan_go() -> Option<PathBuf> {
    common::go_program("stan-go")
}

fn go_case(case: &str, url: &str, c: &Certs, with_cert: bool, https: Option<String>) {
    let Some(bin) = stan_go() else {
        return;
    };
    let mut cmd = Command::new(bin);
    cmd.args([case, url]).env("STANZA_TLS_CA", c.path("ca.pem"));
    if with_cert {
        cmd.env("STANZA_TLS_CERT", c.path("client-cert.pem"))
            .env("STANZA_TLS_KEY", c.path("client-key.pem"));
    }
    if let Some(h) = https {
        cmd.env("STANZA_HTTPS", h);
    }
    run_client(cmd, Duration::from_secs(60));
}

#[test]
fn go_and_python_clients_over_tls_and_https_monitoring() {
    let certs = make_certs();
    let https = free_port().to_string();
    let srv = Server::start_with_config(Some(&tls_conf(&certs, false)), &["-ms", &https]);
    let url = format!("tls://localhost:{}", srv.port);
    go_case("tls_clients", &url, &certs, false, None);
    go_case(
        "https_monitoring",
        &url,
        &certs,
        false,
        Some(format!("https://localhost:{https}")),
    );
    if available("nats-py", "python3", &["-c", "import nats"]) {
        let script = format!(
            r#"
import asyncio, ssl, nats
async def main():
    ctx = ssl.create_default_context(cafile="{ca}")
    nc = await nats.connect("tls://localhost:{port}", tls=ctx, connect_timeout=5)
    sub = await nc.subscribe("py.tls")
    await nc.publish("py.tls", b"over tls")
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"over tls", msg.data
    await nc.close()
    print("OK")
asyncio.run(main())
"#,
            ca = certs.path("ca.pem"),
            port = srv.port
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script]);
        run_client(cmd, Duration::from_secs(60));
    }
}

#[test]
fn plain_client_is_refused_on_a_tls_port() {
    let certs = make_certs();
    let srv = Server::start_with_config(Some(&tls_conf(&certs, false)), &[]);
    let mut raw = srv.raw();
    assert_eq!(raw.info["tls_required"], true);
    raw.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    assert!(
        raw.closed_within(Duration::from_secs(4)),
        "a plain-text client stayed connected to a TLS port"
    );
}

#[test]
fn client_certificates_required_when_verify_is_on() {
    let certs = make_certs();
    let srv = Server::start_with_config(Some(&tls_conf(&certs, true)), &[]);
    let url = format!("tls://localhost:{}", srv.port);
    go_case("tls_no_client_cert_refused", &url, &certs, false, None);
    go_case("tls_clients", &url, &certs, true, None);
}

/// Issue 22.7: with `verify: true` on the client port, HTTPS monitoring still answers a client
/// without a certificate (a browser, curl, the prometheus exporter), as the reference does.
#[test]
fn https_monitoring_asks_no_client_certificate_when_verify_is_on() {
    let certs = make_certs();
    let https = free_port().to_string();
    let srv = Server::start_with_config(Some(&tls_conf(&certs, true)), &["-ms", &https]);
    let url = format!("tls://localhost:{}", srv.port);
    go_case(
        "https_monitoring",
        &url,
        &certs,
        false,
        Some(format!("https://localhost:{https}")),
    );
    // The client port still refuses a client without one.
    go_case("tls_no_client_cert_refused", &url, &certs, false, None);
}

#[test]
fn unreadable_certificate_is_a_clear_startup_error() {
    let dir = TempDir::new("badtls");
    let conf = dir.0.join("bad.conf");
    std::fs::write(
        &conf,
        "tls { cert_file: \"/nonexistent/cert.pem\", key_file: \"/nonexistent/key.pem\" }\n",
    )
    .expect("write");
    let err = common::fails_cleanly(&["-c", conf.to_str().expect("utf-8")]);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

/// External mode over TLS: Debian's nats-server with TLS, stanza connecting with
/// -tls_client_cacert (and another with -secure), stan.go through the NATS server.
#[test]
fn external_nats_server_over_tls() {
    if !available("Debian's nats-server", "nats-server", &["--version"]) {
        return;
    }
    let certs = make_certs();
    let port = free_port();
    let mut nats = Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--tls",
            "--tlscert",
            &certs.path("server-cert.pem"),
            "--tlskey",
            &certs.path("server-key.pem"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("tls://localhost:{port}");
    let ca = certs.path("ca.pem");
    let srv = Server::start_external(&["-ns", &url, "-tls_client_cacert", &ca, "--cores", "2"]);
    go_case("tls_clients", &url, &certs, false, None);
    drop(srv);
    // -secure: TLS without checking the server certificate.
    let insecure = Server::start_external(&[
        "-ns",
        &format!("nats://localhost:{port}"),
        "-secure",
        "-cid",
        "insecure",
    ]);
    assert!(insecure.log_text().contains("Connected to NATS Server"));
    let _ = nats.kill();
    let _ = nats.wait();
}
