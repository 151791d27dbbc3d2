//! A connection moves, once, to the core of the channel of its first STAN publish or
//! subscription (src/nats/handover.rs): driven by stan.go with publishes in flight, live
//! publishing on the channel read, and core NATS traffic both ways on the moved connection,
//! on the memory store (two and three cores) and on the file store. (That subscribers end on
//! their channel's core is checked by tests/bench_tool.rs through `stanza bench`'s placement
//! report.)

mod common;

use common::{run_client, Server, TempDir};
use std::process::Command;
use std::time::Duration;

fn moves_case(cores: &str, extra: &[&str]) {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let mut args = vec!["--cores", cores];
    args.extend_from_slice(extra);
    let srv = Server::start(&args);
    let mut cmd = Command::new(bin);
    cmd.args(["connections_move_to_their_channel", &srv.url()]);
    run_client(cmd, Duration::from_secs(90));
}

#[test]
fn connections_move_to_their_channel_memory_store() {
    moves_case("2", &[]);
}

/// With three cores a third one routes to the moving connection too: it switches on the
/// `InterestMove` and tells the old core (`MoveApplied`) before the stubs go.
#[test]
fn connections_move_to_their_channel_three_cores() {
    moves_case("3", &[]);
}

#[test]
fn connections_move_to_their_channel_file_store() {
    let dir = TempDir::new("handover");
    let dir_arg = dir.0.to_string_lossy().into_owned();
    moves_case("2", &["-st", "file", "--dir", &dir_arg]);
}
