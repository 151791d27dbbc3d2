//! A connection moves to the core of the channel of its first STAN subscription
//! (src/nats/handover.rs): driven by stan.go with publishes in flight, a live publisher on the
//! channel read, and core NATS traffic both ways on the moved connection, on the memory store
//! and on the file store. (That subscribers end on their channel's core is checked by
//! tests/bench_tool.rs through `stanza bench`'s placement report.)

mod common;

use common::{run_client, Server, TempDir};
use std::process::Command;
use std::time::Duration;

fn moves_case(extra: &[&str]) {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let mut args = vec!["--cores", "2"];
    args.extend_from_slice(extra);
    let srv = Server::start(&args);
    let mut cmd = Command::new(bin);
    cmd.args(["connections_move_to_their_channel", &srv.url()]);
    run_client(cmd, Duration::from_secs(90));
}

#[test]
fn connections_move_to_their_channel_memory_store() {
    moves_case(&[]);
}

#[test]
fn connections_move_to_their_channel_file_store() {
    let dir = TempDir::new("handover");
    let dir_arg = dir.0.to_string_lossy().into_owned();
    moves_case(&["-st", "file", "--dir", &dir_arg]);
}
