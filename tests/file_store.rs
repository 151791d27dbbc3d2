//! The FILE store against the real binary: every acknowledged message survives kill -9 at a
//! random moment (conformance 13), a store written for another cluster ID is refused (49),
//! a corrupt record is a clear start-up error naming file and offset unless
//! --file_truncate_bad_eof, and a torn tail is dropped.
//!
//! Soak: STANZA_CRASH_ITERATIONS=1000 cargo test --test file_store crash -- --nocapture

mod common;

use common::{run_client, Server, TempDir};
use rand::Rng;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn stan_go() -> Option<std::path::PathBuf> {
    common::go_program("stan-go")
}

/// A temporary directory (removed when dropped) and an empty `data` store directory in it.
fn store_dir(name: &str) -> (TempDir, std::path::PathBuf) {
    let store = TempDir::new(name);
    let data = store.0.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    (store, data)
}

fn file_server(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--cores",
        "2",
        "-st",
        "file",
        "--dir",
        dir.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn item13_acknowledged_messages_survive_kill_9() {
    let Some(bin) = stan_go() else {
        return;
    };
    let iterations: usize = std::env::var("STANZA_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rng = rand::rng();
    for i in 0..iterations {
        let (store, data) = store_dir("crash");
        let acks = store.0.join("acks.txt");
        // One run in three without sync (slices through the page cache, which a killed process
        // leaves to the kernel): a PubAck still means the message survives the process; one in
        // three synced without zeroes written ahead (the SD-card setting).
        let flags: &[&str] = match i % 3 {
            1 => &["--file_sync=false"],
            2 => &["--file_zero_ahead=false"],
            _ => &[],
        };
        let mut srv = file_server(&data, flags);
        let mut publisher = Command::new(&bin)
            .args(["crash_publisher", &srv.url()])
            .env("STANZA_ACK_FILE", &acks)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("publisher");
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1200)));
        srv.signal(libc::SIGKILL);
        srv.wait_exit(Duration::from_secs(5));
        let _ = publisher.kill();
        let _ = publisher.wait();
        let srv = file_server(&data, &[]);
        assert_no_zeroes_left(&data);
        let mut verify = Command::new(&bin);
        verify
            .args(["crash_verify", &srv.url()])
            .env("STANZA_ACK_FILE", &acks);
        let out = run_client(verify, Duration::from_secs(120));
        if i == 0 {
            println!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// After recovery no slice ends with the zeroes its writer wrote ahead of the records: each
/// ends with the last byte of a record (a timestamp varint, never 0) or is empty.
fn assert_no_zeroes_left(data: &Path) {
    let channels = std::fs::read_dir(data.join("channels")).expect("channels dir");
    for channel in channels.flatten() {
        for file in std::fs::read_dir(channel.path())
            .expect("channel dir")
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("slice.") && name.ends_with(".dat")) {
                continue;
            }
            let bytes = std::fs::read(file.path()).expect("read slice");
            assert!(
                bytes.last().is_none_or(|b| *b != 0),
                "{name}: {} bytes ending in zeroes after recovery",
                bytes.len()
            );
        }
    }
}

#[test]
fn item49_another_cluster_id_is_refused() {
    let store = TempDir::new("cid");
    let dir = store.0.to_str().expect("utf-8").to_string();
    drop(file_server(&store.0, &[]));
    let err = common::fails_cleanly(&["-st", "file", "--dir", &dir, "-cid", "other"]);
    assert!(
        err.contains("cluster ID \"other\" does not match recovered value of \"test-cluster\""),
        "{err}"
    );
}

/// The sequences a fresh deliver-all subscriber gets from `channel` (up to `count`).
fn channel_seqs(bin: &Path, srv: &Server, channel: &str, count: usize) -> Vec<u64> {
    let mut cmd = Command::new(bin);
    cmd.args(["channel_seqs", &srv.url()])
        .env("STANZA_CHANNEL", channel)
        .env("STANZA_COUNT", count.to_string());
    let out = run_client(cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("seqs "))
        .unwrap_or_default();
    line.split(',').filter_map(|s| s.parse().ok()).collect()
}

/// Corruption tests (issues 5 and 21.6): a flipped byte is found when the record is read (the
/// log names the file and offset, and delivery stops before the damaged message instead of
/// skipping it), or at start-up when the slice must be scanned (no index): a clear error
/// naming the file and offset, unless --file_truncate_bad_eof, which drops the rest and logs
/// how many messages. A missing index is rebuilt; a record cut short is a torn tail, dropped
/// and logged; a slice cut in half logs the messages its index listed; a zero-filled tail is
/// no damage at all.
#[test]
fn corruption_torn_tails_and_missing_indexes() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("corrupt");
    {
        let srv = file_server(&data, &[]);
        let mut cmd = Command::new(&bin);
        cmd.args(["item10_publish_sequences", &srv.url()]);
        run_client(cmd, Duration::from_secs(60));
    }
    let slice = data.join("channels").join("ch10").join("slice.1.dat");
    let index = slice.with_extension("idx");
    let original = std::fs::read(&slice).expect("read the slice");
    let original_index = std::fs::read(&index).expect("read the index");
    assert_eq!(original_index.len(), 200 * 16, "one entry per message");
    let (found, _) = shards::store::record::scan(&original).expect("scan");
    let all: Vec<u64> = (1..=200).collect();
    let put_back = || {
        std::fs::write(&slice, &original).expect("write");
        std::fs::write(&index, &original_index).expect("write");
    };

    // A flipped byte inside record 2, index present: found when read back.
    let mut flipped = original.clone();
    flipped[found[1].offset + 30] ^= 0xff;
    std::fs::write(&slice, &flipped).expect("write");
    {
        let srv = file_server(&data, &[]);
        let got = channel_seqs(&bin, &srv, "ch10", 199);
        assert_eq!(got, vec![1], "delivery stops before the damaged message");
        let needle = format!("CRC-32C mismatch at offset {}", found[1].offset);
        assert!(
            srv.wait_for_log(&needle, Duration::from_secs(5))
                && srv.log_text().contains("slice.1.dat"),
            "{}",
            srv.log_text()
        );
    }
    // The same without the index: the slice is scanned at start-up and refused.
    std::fs::remove_file(&index).expect("remove the index");
    let dir = data.to_str().expect("utf-8");
    let err = common::fails_cleanly(&["-st", "file", "--dir", dir]);
    assert!(
        err.contains("slice.1.dat")
            && err.contains(&format!("corrupt record at offset {}", found[1].offset)),
        "{err}"
    );
    // The operator's way out: what follows the damage is dropped, and counted in the log.
    {
        let srv = file_server(&data, &["--file_truncate_bad_eof"]);
        assert_eq!(channel_seqs(&bin, &srv, "ch10", 1), vec![1]);
        let needle = format!("dropped 199 message(s) at offset {}", found[1].offset);
        assert!(
            srv.wait_for_log(&needle, Duration::from_secs(5)),
            "{}",
            srv.log_text()
        );
    }

    // A missing index is rebuilt from its slice.
    put_back();
    std::fs::remove_file(&index).expect("remove the index");
    {
        let srv = file_server(&data, &[]);
        assert_eq!(channel_seqs(&bin, &srv, "ch10", 200), all);
    }
    assert_eq!(std::fs::read(&index).expect("rebuilt"), original_index);

    // A record cut short (a write a crash interrupted): dropped with a warning.
    put_back();
    let last = found.last().expect("records");
    std::fs::write(&slice, &original[..last.offset + 30]).expect("write");
    {
        let srv = file_server(&data, &[]);
        let needle = format!("dropped 1 message(s) at offset {}", last.offset);
        assert!(
            srv.wait_for_log(&needle, Duration::from_secs(5)),
            "{}",
            srv.log_text()
        );
        assert_eq!(channel_seqs(&bin, &srv, "ch10", 199), all[..199].to_vec());
    }

    // A slice cut in half at a record boundary, its index whole: the index no longer agrees,
    // the slice is rescanned, and the log says how many listed messages are gone.
    put_back();
    std::fs::write(&slice, &original[..found[100].offset]).expect("write");
    {
        let srv = file_server(&data, &[]);
        assert!(
            srv.wait_for_log("dropped 100 message(s)", Duration::from_secs(5)),
            "{}",
            srv.log_text()
        );
        assert_eq!(channel_seqs(&bin, &srv, "ch10", 100), all[..100].to_vec());
    }

    // A damaged index entry (the first entry's offset moved, the check unchanged): refused by
    // its check, the index is rebuilt from the slice and every message is served (an entry
    // that pointed at the next record used to make the server skip an intact message).
    put_back();
    let mut bad_index = original_index.clone();
    bad_index[16] = bad_index[16].wrapping_add(1);
    std::fs::write(&index, &bad_index).expect("write");
    {
        let srv = file_server(&data, &[]);
        assert_eq!(channel_seqs(&bin, &srv, "ch10", 200), all);
        assert!(
            srv.wait_for_log("rebuilding it", Duration::from_secs(5)),
            "{}",
            srv.log_text()
        );
    }
    assert_eq!(std::fs::read(&index).expect("rebuilt"), original_index);

    // A zero-filled tail (a page padded by DMA, or preallocated): no damage.
    put_back();
    let mut padded = original.clone();
    padded.extend_from_slice(&[0; 8192]);
    std::fs::write(&slice, &padded).expect("write");
    let srv = file_server(&data, &[]);
    assert_eq!(channel_seqs(&bin, &srv, "ch10", 200), all);
    assert!(!srv.log_text().contains("torn"), "{}", srv.log_text());
}

/// Slices roll at slice_max_bytes and slices holding only messages dropped by max_msgs are
/// deleted, so the disk stays bounded; a restart serves the kept messages.
#[test]
fn slices_roll_and_dropped_slices_are_deleted() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("roll");
    let limits = ["-mm", "100", "--file_slice_max_bytes", "10KB"];
    {
        let srv = file_server(&data, &limits);
        let mut cmd = Command::new(&bin);
        cmd.args(["fill_channel", &srv.url()])
            .env("STANZA_COUNT", "2000");
        run_client(cmd, Duration::from_secs(60));
    }
    let slices = std::fs::read_dir(data.join("channels").join("fill"))
        .expect("slices")
        .count();
    assert!(
        (2..=4).contains(&slices),
        "{slices} slice files for 100 kept messages of ~150 B in 10 KB slices"
    );
    let monitor = common::free_port().to_string();
    let mut args = limits.to_vec();
    args.extend_from_slice(&["-m", &monitor]);
    let _srv = file_server(&data, &args);
    let body = common::http_get(
        &format!("127.0.0.1:{monitor}"),
        "/streaming/channelsz?channel=fill",
    );
    assert!(body.contains("\"msgs\": 100"), "{body}");
    assert!(body.contains("\"first_seq\": 1901"), "{body}");
    assert!(body.contains("\"last_seq\": 2000"), "{body}");
}

/// With max_age, slices of messages that aged out are deleted even when nothing new arrives.
#[test]
fn aged_out_slices_are_deleted_without_new_writes() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("aged");
    let srv = file_server(&data, &["-ma", "3s", "--file_slice_max_bytes", "10KB"]);
    let mut cmd = Command::new(&bin);
    cmd.args(["fill_channel", &srv.url()])
        .env("STANZA_COUNT", "2000");
    run_client(cmd, Duration::from_secs(60));
    let count = || slice_dats(&data).len();
    assert!(count() > 3, "slices rolled: {}", count());
    let deadline = std::time::Instant::now() + Duration::from_secs(9);
    while count() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        count() <= 1,
        "{} slices left after every message expired",
        count()
    );
}

fn fill(bin: &Path, srv: &Server, count: usize) {
    let mut cmd = Command::new(bin);
    cmd.args(["fill_channel", &srv.url()])
        .env("STANZA_COUNT", count.to_string());
    run_client(cmd, Duration::from_secs(60));
}

/// The slice data files of channel "fill", sorted by name.
fn slice_dats(data: &Path) -> Vec<String> {
    slice_files(data)
        .into_iter()
        .filter(|n| n.ends_with(".dat"))
        .collect()
}

fn slice_files(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("channels").join("fill"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("slice."))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// slice_max_msgs and slice_max_age start new slices; slices dropped by the channel limits are
/// renamed *.bak and handed to slice_archive_script (which here logs and deletes them).
#[test]
fn slices_roll_by_count_and_age_and_go_to_the_archive_script() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (store, data) = store_dir("archive");
    let log = store.0.join("archived.txt");
    let script = store.0.join("archive.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $2 $3\" >> {}\nrm -f \"$2\" \"$3\"\n",
            log.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let script_arg = script.to_string_lossy().into_owned();
    let srv = file_server(
        &data,
        &[
            "-mm",
            "100",
            "--file_slice_max_msgs",
            "50",
            "--file_slice_archive_script",
            &script_arg,
        ],
    );
    fill(&bin, &srv, 1000);
    // Sync publishes: one record per commit, so slices hold exactly 50: 1, 51, ..., 951. Those
    // wholly below the first kept message (901) are archived: 1 .. 851.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let archived = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    while archived().len() < 18 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = archived();
    assert_eq!(lines.len(), 18, "{lines:?}");
    let first = data.join("channels").join("fill").join("slice.1.dat");
    assert!(
        lines.contains(&format!(
            "fill {}.bak {}",
            first.display(),
            first.with_extension("idx.bak").display()
        )),
        "{lines:?}"
    );
    assert_eq!(
        slice_files(&data),
        vec![
            "slice.901.dat",
            "slice.901.idx",
            "slice.951.dat",
            "slice.951.idx"
        ]
    );
    drop(srv);

    let (_store, data) = store_dir("age");
    let srv = file_server(&data, &["--file_slice_max_age", "1s"]);
    fill(&bin, &srv, 10);
    std::thread::sleep(Duration::from_millis(1200));
    fill(&bin, &srv, 10);
    assert_eq!(
        slice_files(&data),
        vec!["slice.1.dat", "slice.1.idx", "slice.11.dat", "slice.11.idx"]
    );
}

/// Unmounts the test's tmpfs when the test ends, before its directory is removed.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_refuses_publishes_and_loses_nothing_acknowledged() {
    full_disk(&[]);
}

/// The same without sync: slices are then written through the page cache.
#[test]
fn full_disk_without_sync_refuses_publishes_and_loses_nothing_acknowledged() {
    full_disk(&["--file_sync=false"]);
}

fn full_disk(flags: &[&str]) {
    let Some(bin) = stan_go() else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip("the full-disk test mounts a 1 MiB tmpfs, which needs root");
        return;
    }
    let dir = TempDir::new("full-disk");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir.0)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        common::skip("cannot mount a tmpfs here (the full-disk test needs one)");
        return;
    }
    let mount = Mounted(dir.0.clone());
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");

    let mut srv = file_server(&data, flags);
    let mut cmd = Command::new(&bin);
    cmd.args(["full_disk_publish", &srv.url()]);
    let out = run_client(cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let acked: u64 = text
        .split_whitespace()
        .skip_while(|w| *w != "acked")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no acked count in {text:?}"));
    assert!(
        acked > 100,
        "a 1 MiB disk holds more than 100 2 KiB messages: {text}"
    );
    assert!(
        text.contains("no space left on device") || text.contains("No space left on device"),
        "the error PubAck says why: {text}"
    );
    srv.signal(libc::SIGTERM);
    srv.wait_exit(Duration::from_secs(10));

    // Room again (an operator freed space): everything acknowledged is there, once, in order,
    // and publishing goes on from the next sequence.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&dir.0)
        .status();
    assert!(grown.is_ok_and(|s| s.success()), "remount the tmpfs larger");
    let srv = file_server(&data, flags);
    let mut cmd = Command::new(&bin);
    cmd.args(["full_disk_verify", &srv.url()]);
    cmd.env("STANZA_COUNT", acked.to_string());
    run_client(cmd, Duration::from_secs(60));
    drop(srv);
    drop(mount);
}

/// Runs a stan.go case that prints "ready" where the server is to be restarted (on the same
/// port, stopped with each signal of `stops` in turn) and then reads a line from stdin; it
/// prints "done" at the end.
/// `stops`: how the server is stopped each time, and the core count it restarts with.
fn restart_dialogue(case: &str, stops: &[(i32, &str)]) {
    use std::io::{BufRead, BufReader, Write};
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir(case);
    let dir = data.to_string_lossy().into_owned();
    let args = ["--cores", "2", "-st", "file", "--dir", &dir];
    let port = common::free_port();
    let mut srv = Server::start_on(port, None, &args);
    let mut client = Command::new(&bin)
        .args([case, &srv.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    let stdout = client.stdout.take().expect("stdout");
    let mut stdin = client.stdin.take().expect("stdin");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut outcome = String::new();
    for &(stop, cores) in stops {
        let ready = rx.recv_timeout(Duration::from_secs(60));
        if ready.as_deref() != Ok("ready") {
            outcome = format!("the client did not get ready: {ready:?}");
            break;
        }
        srv.signal_and_wait(stop, Duration::from_secs(10));
        let restart = ["--cores", cores, "-st", "file", "--dir", &dir];
        srv = Server::start_on(port, None, &restart);
        stdin.write_all(b"restarted\n").expect("tell the client");
    }
    if outcome.is_empty() {
        let done = rx.recv_timeout(Duration::from_secs(60));
        if done.as_deref() != Ok("done") {
            outcome = format!("the client did not finish: {done:?}");
        }
    }
    let _ = client.kill();
    let out = client.wait_with_output().expect("client output");
    assert!(
        outcome.is_empty(),
        "{outcome}\nclient:\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log_text()
    );
}

/// Conformance 48, the client part: a client registered before a restart (here a kill -9) is
/// still registered after it: its publishes on the same connection are accepted, its client
/// ID is still taken while it answers heartbeats, and closing it frees the ID.
#[test]
fn item48_registered_clients_survive_a_restart() {
    restart_dialogue("client_survives_restart", &[(libc::SIGKILL, "2")]);
}

/// Conformance 48 and 31: subscriptions of a live client come back after kill -9 with their
/// unacked messages redelivered (flagged) and acked ones not; an offline durable survives a
/// clean restart and resumes where it was.
#[test]
fn item48_item31_subscriptions_and_durables_survive_restarts() {
    restart_dialogue(
        "subscriptions_survive_restart",
        &[(libc::SIGKILL, "2"), (libc::SIGTERM, "2")],
    );
}

/// A restart on another number of cores (an FT standby on other hardware, a moved store):
/// the ack inboxes handed out before it still acknowledge, whichever core now owns the channel
/// and whatever ID the subscription was given back; nothing acknowledged is redelivered.
#[test]
fn acks_count_after_a_restart_on_another_core_count() {
    restart_dialogue(
        "acks_survive_a_core_count_change",
        &[(libc::SIGKILL, "1"), (libc::SIGTERM, "3")],
    );
}

/// Runs a conformance case (tests/clients/stan-go) against a FILE-store server.
fn on_file(case: &str, flags: &[&str]) {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir(case);
    let monitor_port = common::free_port().to_string();
    let mut args = vec!["-m", &monitor_port];
    args.extend_from_slice(flags);
    let srv = file_server(&data, &args);
    let mut cmd = Command::new(bin);
    cmd.args([case, &srv.url()]);
    cmd.env("STANZA_MONITOR", format!("http://127.0.0.1:{monitor_port}"));
    run_client(cmd, Duration::from_secs(90));
}

#[test]
fn item24_item27_redelivery_and_durable_resume_on_file() {
    on_file("item24_redelivery", &[]);
    on_file("item27_durable_resume", &[]);
}

#[test]
fn item31_durables_on_file() {
    on_file("item31_durable_survives_connection_close", &[]);
    on_file("item31_offline_durable_in_monitoring", &[]);
}

#[test]
fn item42_item43_size_limits_on_file() {
    on_file("item42_max_msgs", &["-mm", "5"]);
    on_file("item42_channelsz_after_limit", &["-mm", "5"]);
    on_file("item43_max_bytes_keeps_newest", &["-mb", "100"]);
}

#[test]
fn item44_max_age_on_file() {
    on_file("item44_max_age", &["-ma", "1s"]);
}

#[test]
fn item46_max_inactivity_on_file() {
    on_file("item46_max_inactivity", &["-mi", "1s"]);
    on_file("item46_channel_disappears", &["-mi", "1s"]);
}

/// Conformance 47: a restart with smaller limits trims the stored messages at start-up (and
/// the slices left with nothing kept go).
#[test]
fn item47_smaller_limits_trim_at_start_up() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("item47");
    {
        let srv = file_server(&data, &["--file_slice_max_msgs", "5"]);
        fill(&bin, &srv, 20);
    }
    let srv = file_server(&data, &["-mm", "5"]);
    assert_eq!(
        channel_seqs(&bin, &srv, "fill", 20),
        (16..=20).collect::<Vec<u64>>()
    );
    let dats = slice_dats(&data);
    assert_eq!(
        dats,
        vec!["slice.16.dat"],
        "slices wholly trimmed are deleted"
    );
}

/// A channel deleted for inactivity loses its files: after a restart it is not there.
#[test]
fn item46_an_inactive_channel_is_deleted_from_disk() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("inactive");
    let srv = file_server(&data, &["-mi", "1s"]);
    fill(&bin, &srv, 3);
    let channel_dir = data.join("channels").join("fill");
    assert!(channel_dir.exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while channel_dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!channel_dir.exists(), "{}", srv.log_text());
}

/// With every slice limit 0, a channel's slices follow a quarter of its own limits.
#[test]
fn automatic_slice_limits_follow_the_channel_limits() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("autoslice");
    let srv = file_server(&data, &["--file_slice_max_bytes", "0", "-mm", "40"]);
    fill(&bin, &srv, 40);
    let dats = slice_dats(&data);
    assert_eq!(
        dats,
        vec![
            "slice.1.dat",
            "slice.11.dat",
            "slice.21.dat",
            "slice.31.dat"
        ]
    );
}

/// compact*: with the thresholds at their lowest, the subscription log and the client log are
/// rewritten as soon as most of their records are dead: after the client closed, both hold
/// nothing.
#[test]
fn subscription_and_client_logs_are_compacted_while_running() {
    let Some(bin) = stan_go() else {
        return;
    };
    let (_store, data) = store_dir("compact");
    let srv = file_server(
        &data,
        &[
            "--file_compact_min_size",
            "0",
            "--file_compact_interval",
            "0",
        ],
    );
    let mut cmd = Command::new(&bin);
    cmd.args(["item10_publish_sequences", &srv.url()]);
    run_client(cmd, Duration::from_secs(60));
    let subs = data.join("channels").join("ch10").join("subs.dat");
    let clients = data.join("clients.dat");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (size(&subs) > 0 || size(&clients) > 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((size(&subs), size(&clients)), (0, 0), "{}", srv.log_text());
    // Without compaction the same run leaves its history behind.
    let (_store, data) = store_dir("nocompact");
    let srv = file_server(&data, &["--file_compact_enabled=false"]);
    let mut cmd = Command::new(&bin);
    cmd.args(["item10_publish_sequences", &srv.url()]);
    run_client(cmd, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let subs = data.join("channels").join("ch10").join("subs.dat");
    assert!(size(&subs) > 0 && size(&data.join("clients.dat")) > 0);
}

/// Issue 21.1: a client and a durable whose fields exceed 65,535 bytes of two-byte characters
/// survive a kill -9 and restart (they were cut inside a character; the store then refused to
/// start).
#[test]
fn long_fields_survive_a_restart() {
    restart_dialogue(
        "hostile_long_fields_survive_restart",
        &[(libc::SIGKILL, "2")],
    );
}

/// Issue 21.1: one bad record in the middle of `clients.dat` is refused at start-up naming
/// the file and offset; with --file_truncate_bad_eof only that record is dropped (logged with
/// its offset), and the clients after it are still registered.
#[test]
fn a_bad_client_record_loses_only_itself() {
    use shards::store::clients::{encode_add, StoredClient};
    let (_store, data) = store_dir("bad-client-record");
    let mut log = Vec::new();
    let mut offsets = Vec::new();
    for id in ["first", "second", "third"] {
        offsets.push(log.len());
        encode_add(
            &mut log,
            &StoredClient {
                id: id.into(),
                hb_inbox: format!("_INBOX.{id}"),
                conn_id: bytes::Bytes::from(format!("conn-{id}")),
            },
        );
    }
    log[offsets[1] + 12] ^= 0xff;
    // Issue 21.6: and a torn last record (half of a fourth), which is dropped with a log line.
    let torn_at = log.len();
    let mut fourth = Vec::new();
    encode_add(
        &mut fourth,
        &StoredClient {
            id: "fourth".into(),
            hb_inbox: "_INBOX.fourth".into(),
            conn_id: bytes::Bytes::from_static(b"conn-fourth"),
        },
    );
    log.extend_from_slice(&fourth[..fourth.len() / 2]);
    std::fs::write(data.join("clients.dat"), &log).expect("write clients.dat");
    let dir = data.to_str().expect("utf-8");
    let err = common::fails_cleanly(&["-st", "file", "--dir", dir]);
    assert!(
        err.contains("clients.dat")
            && err.contains(&format!("corrupt record at offset {}", offsets[1])),
        "{err}"
    );
    let monitor = common::free_port().to_string();
    let srv = file_server(&data, &["--file_truncate_bad_eof", "-m", &monitor]);
    assert!(
        srv.wait_for_log(
            &format!("dropped a corrupt record at offset {}", offsets[1]),
            Duration::from_secs(5)
        ),
        "{}",
        srv.log_text()
    );
    assert!(
        srv.wait_for_log(
            &format!("dropped a torn last record at offset {torn_at}"),
            Duration::from_secs(5)
        ),
        "{}",
        srv.log_text()
    );
    let clients = common::http_get(&format!("127.0.0.1:{monitor}"), "/streaming/clientsz");
    assert!(
        clients.contains("\"first\"")
            && clients.contains("\"third\"")
            && !clients.contains("\"second\""),
        "{clients}"
    );
}
