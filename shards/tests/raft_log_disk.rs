//! A shard's raft groups with their log file on the machine's disk: each turn's records
//! appended (and synced) through `log_file::open`'s file, as the driver will; then the process
//! "dies" (the file dropped, never closed) and the groups are rebuilt from a replay of the
//! file: terms, votes, commit indexes and every entry come back, committed entries are handed
//! out again for the state to be rebuilt, and the groups go on.

mod common;

use bytes::Bytes;
use common::{run, scratch};
use shards::raft::log_file;
use shards::raft::{Group, GroupConfig, GroupLog, Outcome, ShardGroups};
use shards::store::journal::AppendFile;

const GROUPS: u32 = 3;

/// Turns until the groups want nothing, each write appended to `file` before `written`.
/// Returns the committed normal entries' data and the proposal outcomes seen.
async fn settle(shard: &mut ShardGroups, file: &AppendFile) -> (Vec<(u32, Bytes)>, Vec<Outcome>) {
    let mut committed = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..64 {
        let mut turn = shard.ready();
        if turn.is_empty() {
            break;
        }
        assert!(turn.errors.is_empty(), "{:?}", turn.errors);
        for (g, e) in turn.committed.drain(..) {
            if !e.data.is_empty() {
                committed.push((g, e.data.clone()));
            }
        }
        outcomes.extend(turn.outcomes.drain(..).map(|(_, o)| o));
        if let Some(mut write) = turn.write {
            let records = std::mem::take(&mut write.records);
            file.append_with(records, write.must_sync)
                .await
                .expect("append");
            assert!(
                shard.written(write).is_empty(),
                "a lone voter sends nothing"
            );
        }
    }
    (committed, outcomes)
}

/// Per group: term, commit index and last index.
fn positions(shard: &ShardGroups) -> Vec<(u64, u64, u64)> {
    shard
        .groups()
        .map(|g| (g.term(), g.commit_index(), g.log().last()))
        .collect()
}

/// Every group campaigns (a lone voter leads at once).
fn campaign_all(shard: &mut ShardGroups) {
    for g in 0..GROUPS {
        shard
            .group_mut(g)
            .expect("group")
            .campaign()
            .expect("campaign");
    }
}

fn groups_from(
    recovered: &mut std::collections::BTreeMap<u32, log_file::RecoveredGroup>,
) -> ShardGroups {
    let mut shard = ShardGroups::new(1);
    for g in 0..GROUPS {
        let r = recovered.remove(&g).expect("every group in the file");
        let applied = r.snapshot.get_metadata().index;
        let log = r.into_log().expect("a good log");
        shard.insert(Group::new(&GroupConfig::new(g, 1), log, applied).expect("restart"));
    }
    shard
}

#[test]
fn groups_come_back_from_their_log_file_after_a_crash() {
    run(|| async {
        let dir = scratch("raft-log-disk");
        let path = dir.join("raft-0.log");
        let (found, file) = log_file::open(&path, true).await.expect("open");
        assert!(found.is_empty());
        // Bootstrap: every group with this node as its only voter, durable before anything.
        let mut shard = ShardGroups::new(1);
        let mut boot = Vec::new();
        for g in 0..GROUPS {
            let group =
                Group::new(&GroupConfig::new(g, 1), GroupLog::with_voters(&[1]), 0).expect("group");
            log_file::encode_snapshot(&mut boot, g, group.log().last_snapshot(), (0, 0));
            shard.insert(group);
        }
        file.append_with(boot, true).await.expect("append");
        campaign_all(&mut shard);
        settle(&mut shard, &file).await;
        let mut token = 0;
        for n in 0..100 {
            for g in 0..GROUPS {
                token += 1;
                shard
                    .propose(g, Bytes::from(format!("{g}/{n}")), token)
                    .expect("a leader takes proposals");
            }
            if n % 10 == 9 {
                settle(&mut shard, &file).await;
            }
        }
        let (_, outcomes) = settle(&mut shard, &file).await;
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Committed(_))));
        let before = positions(&shard);
        // Snapshot and compact group 1 halfway, as `trailing_logs` would, then crash: the file
        // is dropped without a close.
        shard
            .make_snapshot(1, Bytes::from_static(b"state of group 1"), Some(0))
            .expect("snapshot");
        settle(&mut shard, &file).await;
        drop(file);
        drop(shard);

        let (mut recovered, file) = log_file::open(&path, true).await.expect("reopen");
        let mut shard = groups_from(&mut recovered);
        let after = positions(&shard);
        assert_eq!(after, before, "term, commit and last index per group");
        assert_eq!(
            shard.group(1).expect("group 1").log().last_snapshot().data,
            Bytes::from_static(b"state of group 1")
        );
        // Committed entries are handed out again (after the snapshot for group 1), in order.
        campaign_all(&mut shard);
        let (replayed, _) = settle(&mut shard, &file).await;
        for g in [0, 2] {
            let data: Vec<&Bytes> = replayed
                .iter()
                .filter(|(x, _)| *x == g)
                .map(|(_, d)| d)
                .collect();
            let expected: Vec<Bytes> = (0..100).map(|n| Bytes::from(format!("{g}/{n}"))).collect();
            assert_eq!(data, expected.iter().collect::<Vec<_>>(), "group {g}");
        }
        assert!(
            replayed.iter().all(|(g, _)| *g != 1),
            "group 1 starts from its snapshot: nothing before it again"
        );
        // And the groups go on: leaders again, taking proposals.
        shard
            .propose(0, Bytes::from_static(b"after"), 1_000)
            .expect("leader again");
        let (more, outcomes) = settle(&mut shard, &file).await;
        assert_eq!(more, vec![(0, Bytes::from_static(b"after"))]);
        assert_eq!(outcomes, vec![Outcome::Committed(1_000)]);
        file.close().await.expect("close");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
