//! STAN conformance (shared/conformance.md), item by item, against the real binary, driven by
//! the reference client stan.go (tests/clients/stan-go; raw protobuf requests where a client
//! cannot express a case). Each test starts its own two-core server with the flags the case
//! needs. Without Go on the machine the cases are skipped with a printed reason.

mod common;

use common::available;
use std::time::Duration;

const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts a server with `flags` and runs one stan.go case against it.
fn case(name: &str, flags: &[&str]) {
    case_with_config(name, None, flags);
}

fn case_with_config(name: &str, config: Option<&str>, flags: &[&str]) {
    common::stan_go_case(name, config, flags, CASE_TIMEOUT);
}

#[test]
fn item01_connect_response() {
    case("item01_connect_response", &[]);
}

#[test]
fn item02_other_cluster_gets_no_reply() {
    case("item02_other_cluster_no_reply", &[]);
}

#[test]
fn item02_discover_prefix_moves_the_subject() {
    case_with_config(
        "item02_discover_prefix",
        Some("streaming { discover_prefix: \"_X.disc\" }"),
        &[],
    );
}

#[test]
fn item03_invalid_connect() {
    case("item03_invalid_connect", &[]);
}

#[test]
fn item04_invalid_client_id() {
    case("item04_invalid_client_id", &[]);
}

#[test]
fn item05_duplicate_client_id() {
    case("item05_duplicate_client_id", &[]);
}

#[test]
fn item06_replace_dead_client() {
    case("item06_replace_dead_client", &[]);
}

#[test]
fn item07_heartbeat_removal() {
    case(
        "item07_heartbeat_removal",
        &["-hbi", "200ms", "-hbt", "100ms", "-hbf", "1"],
    );
}

#[test]
fn item07_heartbeat_answered_keeps_client() {
    case(
        "item07_heartbeat_kept",
        &["-hbi", "200ms", "-hbt", "100ms", "-hbf", "1"],
    );
}

#[test]
fn item08_pings() {
    case("item08_pings", &[]);
}

#[test]
fn item09_close() {
    case("item09_close", &[]);
}

#[test]
fn item10_publish_sequences() {
    case("item10_publish_sequences", &[]);
}

#[test]
fn item11_invalid_publish() {
    case("item11_invalid_publish", &[]);
}

#[test]
fn item12_max_channels() {
    case("item12_max_channels", &["-mc", "1"]);
}

#[test]
fn item12_case_conflict() {
    case("item12_case_conflict", &[]);
}

#[test]
fn item14_rejected_never_delivered() {
    case("item14_rejected_never_delivered", &[]);
}

#[test]
fn item15_subscription_errors() {
    case("item15_subscription_errors", &[]);
}

#[test]
fn item16_reply_before_messages() {
    case("item16_reply_before_messages", &[]);
}

#[test]
fn item17_start_positions() {
    case("item17_start_positions", &[]);
}

#[test]
fn item18_sequence_start() {
    case("item18_sequence_start", &["-mm", "5"]);
}

#[test]
fn item19_time_delta() {
    case("item19_time_delta", &[]);
}

#[test]
fn item20_msg_fields() {
    case("item20_msg_fields", &[]);
}

#[test]
fn item21_max_subs() {
    case("item21_max_subs", &["-msu", "1"]);
}

#[test]
fn item22_max_inflight() {
    case("item22_max_inflight", &[]);
}

#[test]
fn item23_bad_acks_ignored() {
    case("item23_bad_acks_ignored", &[]);
}

#[test]
fn item24_redelivery() {
    case("item24_redelivery", &[]);
}

#[test]
fn item25_dropped_not_redelivered() {
    case("item25_dropped_not_redelivered", &["-mm", "1"]);
}

#[test]
fn item27_durable_resume() {
    case("item27_durable_resume", &[]);
}

#[test]
fn item28_durable_unsubscribe() {
    case("item28_durable_unsubscribe", &[]);
}

#[test]
fn item29_duplicate_durable() {
    case("item29_duplicate_durable", &[]);
}

#[test]
fn item29_replace_durable() {
    case("item29_replace_durable", &["--replace_durable"]);
}

#[test]
fn item30_durable_per_client() {
    case("item30_durable_per_client", &[]);
}

#[test]
fn item31_durable_survives_connection_close() {
    case("item31_durable_survives_connection_close", &[]);
}

#[test]
fn item32_queue_one_member() {
    case("item32_queue_one_member", &[]);
}

#[test]
fn item33_queue_join_ignores_start() {
    case("item33_queue_join_ignores_start", &[]);
}

#[test]
fn item34_queue_leave_redistributes() {
    case("item34_queue_leave_redistributes", &[]);
}

#[test]
fn item35_queue_gone() {
    case("item35_queue_gone", &[]);
}

#[test]
fn item36_durable_queue_group() {
    case("item36_durable_queue_group", &[]);
}

#[test]
fn item37_durable_queue_colon() {
    case("item37_durable_queue_colon", &[]);
}

#[test]
fn item38_unsubscribe_errors() {
    case("item38_unsubscribe_errors", &[]);
}

#[test]
fn item39_unsubscribe_by_delivery_inbox() {
    case("item39_unsubscribe_by_delivery_inbox", &[]);
}

#[test]
fn item40_ack_before_close() {
    case("item40_ack_before_close", &[]);
}

#[test]
fn item41_connection_close() {
    case("item41_connection_close", &["-msu", "2"]);
}

#[test]
fn item42_max_msgs() {
    case("item42_max_msgs", &["-mm", "5"]);
}

#[test]
fn item43_max_bytes_keeps_newest() {
    case("item43_max_bytes_keeps_newest", &["-mb", "100"]);
}

#[test]
fn item44_max_age() {
    case("item44_max_age", &["-ma", "1s"]);
}

#[test]
fn item45_per_channel_limits() {
    case_with_config(
        "item45_per_channel_limits",
        Some(
            "streaming { store_limits { max_msgs: 10, channels { \"foo.>\": { max_msgs: 2 }, \"foo.bar.>\": { max_age: \"0s\" } } } }",
        ),
        &[],
    );
}

#[test]
fn item46_max_inactivity() {
    case("item46_max_inactivity", &["-mi", "1s"]);
}

#[test]
fn item60_reference_server_sees_stanza() {
    if !available(
        "the Go nats-streaming-server",
        "nats-streaming-server",
        &["--version"],
    ) {
        return;
    }
    case("item60_go_server_sees_stanza", &[]);
}

#[test]
fn item22_stalled_in_monitoring() {
    case("item22_stalled_in_monitoring", &[]);
}

#[test]
fn item26_in_and_out_counters() {
    case("item26_counters", &[]);
}

#[test]
fn item31_offline_durable_in_monitoring() {
    case("item31_offline_durable_in_monitoring", &[]);
}

#[test]
fn item36_durable_queue_shadow_in_monitoring() {
    case("item36_durable_queue_shadow_in_monitoring", &[]);
}

#[test]
fn item41_subs_count_drops() {
    case("item41_subs_count_drops", &[]);
}

#[test]
fn item42_channelsz_after_limit() {
    case("item42_channelsz_after_limit", &["-mm", "5"]);
}

#[test]
fn item46_channel_disappears_from_channelsz() {
    case("item46_channel_disappears", &["-mi", "1s"]);
}

#[test]
fn item52_field_names() {
    case("item52_field_names", &[]);
}

#[test]
fn item53_paging() {
    case("item53_paging", &[]);
}

#[test]
fn item54_jsonp_and_headers() {
    case("item54_jsonp_and_headers", &[]);
}

#[test]
fn item55_is_ft_active() {
    case("item55_is_ft_active", &[]);
}

#[test]
fn item56_exporter_view() {
    case("item56_exporter_view", &[]);
}

#[test]
fn item57_nats_endpoints() {
    case("item57_nats_endpoints", &[]);
}
