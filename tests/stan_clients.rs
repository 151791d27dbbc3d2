//! STAN through the other real clients: node-nats-streaming (npm) and asyncio-nats-streaming
//! (PyPI, in a Python 3.9 venv because it does not run on 3.10+), each with a smoke of
//! connect/publish/subscribe/durable/queue, and two languages talking through one server.
//! A client that is not installed is skipped with a printed reason (`.ci/run` installs both).

mod common;

use common::{repo_path, run_client, skip, Server};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

fn node() -> Option<Command> {
    if !repo_path("tests/clients/node/node_modules/node-nats-streaming").exists() {
        skip("npm node-nats-streaming is not installed in tests/clients/node (run .ci/run)");
        return None;
    }
    let mut cmd = Command::new("node");
    cmd.arg(repo_path("tests/clients/node/stan_smoke.mjs"));
    Some(cmd)
}

fn python39() -> Option<Command> {
    let python: PathBuf = repo_path("tests/clients/py/.venv39/bin/python");
    if !python.exists() {
        skip("asyncio-nats-streaming needs the Python 3.9 venv tests/clients/py/.venv39 (run .ci/run)");
        return None;
    }
    let mut cmd = Command::new(python);
    cmd.arg(repo_path("tests/clients/py/stan_smoke.py"));
    Some(cmd)
}

fn run(cmd: Option<Command>, args: &[&str]) -> Option<String> {
    let mut cmd = cmd?;
    cmd.args(args);
    let out = run_client(cmd, CLIENT_TIMEOUT);
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn node_nats_streaming_smoke() {
    let srv = Server::start(&["--cores", "2"]);
    run(node(), &["smoke", &srv.url()]);
}

#[test]
fn asyncio_nats_streaming_smoke() {
    let srv = Server::start(&["--cores", "2"]);
    run(python39(), &["smoke", &srv.url()]);
}

#[test]
fn python_publishes_node_consumes() {
    let srv = Server::start(&["--cores", "2"]);
    if run(python39(), &["publish", &srv.url(), "cross.py", "5"]).is_none() {
        return;
    }
    if let Some(out) = run(node(), &["consume", &srv.url(), "cross.py", "5"]) {
        assert!(out.contains("DATA py-1,py-2,py-3,py-4,py-5"), "{out}");
    }
}

#[test]
fn node_publishes_python_consumes() {
    let srv = Server::start(&["--cores", "2"]);
    if run(node(), &["publish", &srv.url(), "cross.node", "5"]).is_none() {
        return;
    }
    if let Some(out) = run(python39(), &["consume", &srv.url(), "cross.node", "5"]) {
        assert!(
            out.contains("DATA node-1,node-2,node-3,node-4,node-5"),
            "{out}"
        );
    }
}
