//! The control plane's state machine with a fake clock: connects, the duplicate client ID
//! probe, closes, heartbeats and their failure counts, and what waits for the store and the
//! shards.

use bytes::Bytes;
use shards::registry::{Effect, Registry, RegistryConfig, ERR_CLIENT_REGISTERED};
use shards::store::clients::StoredClient;

const MS: u64 = 1_000_000;

fn cfg() -> RegistryConfig {
    RegistryConfig {
        hb_interval_ns: 1_000 * MS,
        hb_timeout_ns: 200 * MS,
        hb_fail_count: 2,
        probe_timeout_ns: 500 * MS,
    }
}

fn client(id: &str, inbox: &str) -> StoredClient {
    StoredClient {
        id: id.into(),
        hb_inbox: inbox.into(),
        conn_id: Bytes::from(format!("conn-{inbox}")),
    }
}

/// Carries out the store and shard effects as a healthy server does (stored, applied) and
/// returns the rest.
fn settle(r: &mut Registry<&'static str>, now: u64) -> Vec<Effect<&'static str>> {
    let mut rest = Vec::new();
    loop {
        let effects = r.ready();
        if effects.is_empty() {
            return rest;
        }
        for e in effects {
            match e {
                Effect::Store { job, .. } => r.stored(now, job, Ok(())),
                Effect::AddOnShards { job, .. } | Effect::RemoveFromShards { job, .. } => {
                    r.applied(job)
                }
                Effect::Unstore { .. } => {}
                other => rest.push(other),
            }
        }
    }
}

/// Client "a" registered, and a second connect for "a" (answer "second") probing it at 10 ms:
/// returns the probe's ask.
fn probing(r: &mut Registry<&'static str>) -> u64 {
    connected(r, 0, "a", "hb.a");
    r.connect(10 * MS, client("a", "hb.new"), "second");
    let effects = settle(r, 10 * MS);
    let [Effect::Ask { ask, inbox }] = &effects[..] else {
        panic!("{effects:?}");
    };
    assert_eq!(inbox, "hb.a", "the old owner is asked");
    *ask
}

fn connected(r: &mut Registry<&'static str>, now: u64, id: &str, inbox: &str) {
    r.connect(now, client(id, inbox), "reply");
    assert_eq!(settle(r, now), vec![Effect::Connected("reply")]);
}

#[test]
fn a_connect_is_answered_after_the_store_and_every_shard() {
    let mut r = Registry::new(cfg());
    r.connect(0, client("a", "hb.a"), "reply");
    let effects = r.ready();
    let [Effect::Store { job, client }] = &effects[..] else {
        panic!("{effects:?}");
    };
    assert_eq!(client.id, "a");
    r.stored(0, *job, Ok(()));
    let effects = r.ready();
    let [Effect::AddOnShards { job, client_id, .. }] = &effects[..] else {
        panic!("{effects:?}");
    };
    assert_eq!(client_id, "a");
    assert!(r.ready().is_empty(), "no answer before every shard has it");
    r.applied(*job);
    assert_eq!(r.ready(), vec![Effect::Connected("reply")]);
    assert!(r.knows("a"));
}

#[test]
fn a_connect_that_cannot_be_stored_is_refused() {
    let mut r = Registry::new(cfg());
    r.connect(0, client("a", "hb.a"), "reply");
    let effects = r.ready();
    let [Effect::Store { job, .. }] = &effects[..] else {
        panic!("{effects:?}");
    };
    r.stored(0, *job, Err("disk full".into()));
    assert_eq!(
        r.ready(),
        vec![Effect::ConnectRefused(
            "reply",
            "stan: unable to store client: disk full".into()
        )]
    );
    assert!(!r.knows("a"));
    // The ID is free again.
    connected(&mut r, 0, "a", "hb.a2");
}

#[test]
fn a_duplicate_id_whose_owner_answers_is_refused() {
    let mut r = Registry::new(cfg());
    let ask = probing(&mut r);
    // A third connect while the probe is out is refused at once.
    r.connect(20 * MS, client("a", "hb.third"), "third");
    assert_eq!(
        r.ready(),
        vec![Effect::ConnectRefused(
            "third",
            ERR_CLIENT_REGISTERED.into()
        )]
    );
    r.answered(30 * MS, ask);
    assert_eq!(
        r.ready(),
        vec![Effect::ConnectRefused(
            "second",
            ERR_CLIENT_REGISTERED.into()
        )]
    );
    assert_eq!(
        r.clients().next().map(|c| c.hb_inbox.as_str()),
        Some("hb.a")
    );
}

#[test]
fn a_duplicate_id_whose_owner_is_silent_replaces_it() {
    let mut r = Registry::new(cfg());
    let ask = probing(&mut r);
    r.tick(500 * MS);
    assert!(r.ready().is_empty(), "the probe waits 500 ms");
    r.tick(510 * MS);
    let effects = r.ready();
    assert_eq!(effects[0], Effect::Forget { ask });
    assert!(
        effects.contains(&Effect::RemoveFromShards {
            job: match effects[1] {
                Effect::RemoveFromShards { job, .. } => job,
                _ => panic!("{effects:?}"),
            },
            client_id: "a".into()
        }),
        "the old client goes from every shard first: {effects:?}"
    );
    for e in effects {
        if let Effect::RemoveFromShards { job, .. } = e {
            r.applied(job);
        }
    }
    assert_eq!(settle(&mut r, 510 * MS), vec![Effect::Connected("second")]);
    assert_eq!(
        r.clients().next().map(|c| c.hb_inbox.as_str()),
        Some("hb.new")
    );
    // A late answer of the old owner changes nothing.
    r.answered(600 * MS, ask);
    assert!(r.ready().is_empty());
}

#[test]
fn a_duplicate_id_nobody_listens_for_is_replaced_at_once() {
    let mut r = Registry::new(cfg());
    let ask = probing(&mut r);
    r.no_responders(10 * MS, ask);
    assert_eq!(settle(&mut r, 10 * MS), vec![Effect::Connected("second")]);
}

#[test]
fn heartbeats_count_failures_and_close_after_too_many() {
    let mut r = Registry::new(cfg());
    connected(&mut r, 0, "a", "hb.a");
    let mut now = 0;
    let mut asks = Vec::new();
    // Interval 1 s, timeout 200 ms, 2 failures tolerated: the third closes.
    for round in 1..=3 {
        now += 1_000 * MS;
        r.tick(now);
        let effects = r.ready();
        let [Effect::Ask { ask, inbox }] = &effects[..] else {
            panic!("round {round}: {effects:?}");
        };
        assert_eq!(inbox, "hb.a");
        asks.push(*ask);
        now += 200 * MS;
        r.tick(now);
        let effects = r.ready();
        assert_eq!(effects[0], Effect::Forget { ask: *ask });
        match round {
            1 => assert_eq!(
                effects[1..],
                [Effect::HeartbeatState {
                    client_id: "a".into(),
                    failed: true
                }]
            ),
            2 => assert_eq!(effects.len(), 1, "told once: {effects:?}"),
            _ => {
                assert!(
                    matches!(&effects[1], Effect::RemoveFromShards { client_id, .. } if client_id == "a"),
                    "{effects:?}"
                );
                assert!(effects.contains(&Effect::Unstore {
                    client_id: "a".into()
                }));
            }
        }
    }
    assert!(!r.knows("a"));
    now += 10_000 * MS;
    r.tick(now);
    assert!(r.ready().is_empty(), "no heartbeat for a removed client");
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn an_answer_clears_the_failures_and_a_ping_hurries_the_next_heartbeat() {
    let mut r = Registry::new(cfg());
    connected(&mut r, 0, "a", "hb.a");
    r.tick(1_000 * MS);
    let _ = r.ready();
    r.tick(1_200 * MS);
    let effects = r.ready();
    assert!(effects.contains(&Effect::HeartbeatState {
        client_id: "a".into(),
        failed: true
    }));
    // The next is due at 2.2 s; the client pings at 1.5 s: asked at once.
    r.hurry(1_500 * MS, "a");
    assert_eq!(r.next_deadline(), Some(1_500 * MS));
    r.tick(1_500 * MS);
    let effects = r.ready();
    let [Effect::Ask { ask, .. }] = &effects[..] else {
        panic!("{effects:?}");
    };
    r.answered(1_510 * MS, *ask);
    assert_eq!(
        r.ready(),
        vec![Effect::HeartbeatState {
            client_id: "a".into(),
            failed: false
        }]
    );
    // Healthy again: the next goes out a whole interval after the answer, and a ping of a
    // healthy client changes nothing.
    r.hurry(1_600 * MS, "a");
    assert_eq!(r.next_deadline(), Some(2_510 * MS));
}

#[test]
fn a_close_is_answered_after_every_shard_and_an_unknown_one_at_once() {
    let mut r = Registry::new(cfg());
    connected(&mut r, 0, "a", "hb.a");
    r.close("a", "closing");
    let effects = r.ready();
    let job = match &effects[..] {
        [Effect::RemoveFromShards { job, client_id }, Effect::Unstore { .. }] => {
            assert_eq!(client_id, "a");
            *job
        }
        _ => panic!("{effects:?}"),
    };
    assert!(!r.knows("a"), "its heartbeats stop at once");
    r.applied(job);
    assert_eq!(r.ready(), vec![Effect::Closed("closing", "")]);
    r.close("a", "again");
    assert_eq!(
        r.ready(),
        vec![Effect::Closed("again", "stan: unknown clientID")]
    );
}

#[test]
fn a_client_closed_during_its_heartbeat_ignores_the_late_answer() {
    let mut r = Registry::new(cfg());
    connected(&mut r, 0, "a", "hb.a");
    r.tick(1_000 * MS);
    let effects = r.ready();
    let [Effect::Ask { ask, .. }] = &effects[..] else {
        panic!("{effects:?}");
    };
    let ask = *ask;
    r.close("a", "closing");
    let effects = r.ready();
    assert_eq!(effects[0], Effect::Forget { ask });
    r.answered(1_100 * MS, ask);
    r.tick(5_000 * MS);
    assert!(settle(&mut r, 5_000 * MS).is_empty());
}

#[test]
fn restored_clients_are_heartbeaten_after_a_whole_interval() {
    let mut r: Registry<&'static str> = Registry::new(cfg());
    r.restore(0, client("a", "hb.a"));
    assert!(r.knows("a"));
    r.tick(999 * MS);
    assert!(r.ready().is_empty());
    r.tick(1_000 * MS);
    assert!(matches!(&r.ready()[..], [Effect::Ask { inbox, .. }] if inbox == "hb.a"));
}
