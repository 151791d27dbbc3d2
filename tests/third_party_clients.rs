//! Core NATS through real third-party clients: nats-py (PyPI), `nats` (npm) and nats.go.
//! Each case starts its own two-core server. A language whose client is not installed is
//! skipped with a printed reason (`.ci/run` installs all three).

mod common;

use common::{available, repo_path, run_client, Server};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn python_ready() -> bool {
    available("nats-py", "python3", &["-c", "import nats"])
}

fn node_ready() -> bool {
    let modules = repo_path("tests/clients/node/node_modules/nats");
    if !modules.exists() {
        common::skip("npm package nats is not installed in tests/clients/node (run .ci/run)");
        return false;
    }
    available("node", "node", &["--version"])
}

fn go_client() -> Option<PathBuf> {
    common::go_program("go")
}

fn python(case: &str, url: &str) {
    if !python_ready() {
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(repo_path("tests/clients/py/core_nats.py"))
        .args([case, url]);
    run_client(cmd, CLIENT_TIMEOUT);
}

fn node(case: &str, url: &str) {
    if !node_ready() {
        return;
    }
    let mut cmd = Command::new("node");
    cmd.arg(repo_path("tests/clients/node/core_nats.mjs"))
        .args([case, url]);
    run_client(cmd, CLIENT_TIMEOUT);
}

fn go(case: &str, url: &str) {
    let Some(bin) = go_client() else {
        return;
    };
    let mut cmd = Command::new(bin);
    cmd.args([case, url]);
    run_client(cmd, CLIENT_TIMEOUT);
}

fn two_cores() -> Server {
    Server::start(&["--cores", "2"])
}

#[test]
fn python_pubsub() {
    python("pubsub", &two_cores().url());
}

#[test]
fn python_wildcards() {
    python("wildcards", &two_cores().url());
}

#[test]
fn python_queue_group_members_on_both_cores() {
    python("queue_cross_core", &two_cores().url());
}

#[test]
fn python_request_reply_and_no_responders() {
    python("request_reply", &two_cores().url());
}

#[test]
fn python_headers() {
    python("headers", &two_cores().url());
}

#[test]
fn python_echo_off() {
    python("echo_off", &two_cores().url());
}

#[test]
fn python_auth_users_from_config() {
    let srv = Server::start_with_config(
        Some("authorization {\n  users = [\n    {user: alice, password: \"a-pw\"}\n    {user: bob, password: \"b-pw\"}\n  ]\n}\n"),
        &["--cores", "2"],
    );
    let urls = format!(
        "nats://bob:b-pw@127.0.0.1:{0} nats://bob:a-pw@127.0.0.1:{0}",
        srv.port
    );
    python("auth", &urls);
}

#[test]
fn node_pubsub() {
    node("pubsub", &two_cores().url());
}

#[test]
fn node_queue_group() {
    node("queue", &two_cores().url());
}

#[test]
fn node_request_reply() {
    node("request", &two_cores().url());
}

#[test]
fn node_headers() {
    node("headers", &two_cores().url());
}

#[test]
fn node_echo_off() {
    node("echo", &two_cores().url());
}

#[test]
fn node_auth_token() {
    let srv = Server::start(&["--cores", "2", "--auth", "t0ken"]);
    node("auth", &format!("{} t0ken wrong", srv.url()));
}

#[test]
fn go_pubsub() {
    go("pubsub", &two_cores().url());
}

#[test]
fn go_queue_group() {
    go("queue", &two_cores().url());
}

#[test]
fn go_request_reply() {
    go("request", &two_cores().url());
}

#[test]
fn go_headers() {
    go("headers", &two_cores().url());
}

#[test]
fn go_echo_off() {
    go("echo", &two_cores().url());
}

#[test]
fn go_auth_user_flags() {
    let srv = Server::start(&["--cores", "2", "-user", "alice", "-pass", "s3cret"]);
    let urls = format!(
        "nats://alice:s3cret@127.0.0.1:{0} nats://alice:bad@127.0.0.1:{0}",
        srv.port
    );
    go("auth", &urls);
}
