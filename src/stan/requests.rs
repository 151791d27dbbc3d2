//! Decoding and first checks of client requests, on the core that received them, with the
//! reference's error texts in the reference's order; and the encoding of the replies.

use bytes::Bytes;
use prost::Message;
use shards::channel::is_valid_channel;
use shards::pb::{
    ConnectRequest, ConnectResponse, SubscriptionRequest, SubscriptionResponse, UnsubscribeRequest,
};

pub const ERR_INVALID_SUB_REQ: &str = "stan: invalid subscription request";
pub const ERR_MISSING_CLIENT: &str = "stan: clientID missing";
pub const ERR_INVALID_ACK_WAIT: &str = "stan: invalid ack wait time, should be >= 1s";
pub const ERR_INVALID_MAX_INFLIGHT: &str = "stan: invalid MaxInflight, should be >= 1";
pub const ERR_INVALID_START: &str = "stan: invalid start position";
pub const ERR_INVALID_SUBJECT: &str = "stan: invalid subject";
pub const ERR_INVALID_UNSUB_REQ: &str = "stan: invalid unsubscribe request";
pub const ERR_INVALID_CONN_REQ: &str = "stan: invalid connection request";
pub const ERR_INVALID_CLIENT_ID: &str =
    "stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed";
pub const ERR_INVALID_CLOSE_REQ: &str = "stan: invalid close request";
pub const ERR_PING_UNKNOWN: &str = "client has been replaced or is no longer registered";

/// Checks 1-6 of a subscription request; the owner shard does the rest.
pub fn check_subscription(payload: &Bytes) -> Result<SubscriptionRequest, &'static str> {
    let req = SubscriptionRequest::decode(payload.clone()).map_err(|_| ERR_INVALID_SUB_REQ)?;
    if req.client_id.is_empty() {
        return Err(ERR_MISSING_CLIENT);
    }
    if req.ack_wait_in_secs < 1 {
        return Err(ERR_INVALID_ACK_WAIT);
    }
    if req.max_in_flight < 1 {
        return Err(ERR_INVALID_MAX_INFLIGHT);
    }
    if !(0..=4).contains(&req.start_position) {
        return Err(ERR_INVALID_START);
    }
    if !is_valid_channel(&req.subject) {
        return Err(ERR_INVALID_SUBJECT);
    }
    Ok(req)
}

pub fn decode_unsubscribe(payload: &Bytes) -> Result<UnsubscribeRequest, &'static str> {
    UnsubscribeRequest::decode(payload.clone()).map_err(|_| ERR_INVALID_UNSUB_REQ)
}

pub fn sub_error(error: &str) -> Bytes {
    Bytes::from(
        SubscriptionResponse {
            ack_inbox: String::new(),
            error: error.to_string(),
        }
        .encode_to_vec(),
    )
}

/// Checks a connect request's format and client ID.
pub fn check_connect(payload: &Bytes) -> Result<ConnectRequest, &'static str> {
    let req = ConnectRequest::decode(payload.clone()).map_err(|_| ERR_INVALID_CONN_REQ)?;
    if req.heartbeat_inbox.is_empty() {
        return Err(ERR_INVALID_CONN_REQ);
    }
    if !crate::config::options::is_valid_cluster_id(&req.client_id) {
        return Err(ERR_INVALID_CLIENT_ID);
    }
    Ok(req)
}

pub fn connect_error(error: &str) -> Bytes {
    Bytes::from(
        ConnectResponse {
            error: error.to_string(),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &SubscriptionRequest) -> Bytes {
        Bytes::from(r.encode_to_vec())
    }

    #[test]
    fn subscription_checks_in_the_reference_order() {
        assert_eq!(
            check_subscription(&Bytes::from_static(b"dummy")).unwrap_err(),
            ERR_INVALID_SUB_REQ
        );
        let mut r = SubscriptionRequest::default();
        assert_eq!(
            check_subscription(&enc(&r)).unwrap_err(),
            ERR_MISSING_CLIENT
        );
        r.client_id = "c".into();
        assert_eq!(
            check_subscription(&enc(&r)).unwrap_err(),
            ERR_INVALID_ACK_WAIT
        );
        r.ack_wait_in_secs = 1;
        assert_eq!(
            check_subscription(&enc(&r)).unwrap_err(),
            ERR_INVALID_MAX_INFLIGHT
        );
        r.max_in_flight = 1;
        r.start_position = 5;
        assert_eq!(check_subscription(&enc(&r)).unwrap_err(), ERR_INVALID_START);
        r.start_position = 4;
        r.subject = "foo.*".into();
        assert_eq!(
            check_subscription(&enc(&r)).unwrap_err(),
            ERR_INVALID_SUBJECT
        );
        r.subject = "foo".into();
        assert!(check_subscription(&enc(&r)).is_ok());
    }

    #[test]
    fn connect_checks() {
        assert_eq!(
            check_connect(&Bytes::from_static(b"dummy")).unwrap_err(),
            ERR_INVALID_CONN_REQ
        );
        let mut r = ConnectRequest {
            client_id: "a b".into(),
            ..Default::default()
        };
        let e = |r: &ConnectRequest| check_connect(&Bytes::from(r.encode_to_vec()));
        assert_eq!(e(&r).unwrap_err(), ERR_INVALID_CONN_REQ);
        r.heartbeat_inbox = "hb".into();
        assert_eq!(e(&r).unwrap_err(), ERR_INVALID_CLIENT_ID);
        r.client_id = "ok-id_1".into();
        assert!(e(&r).is_ok());
    }
}
