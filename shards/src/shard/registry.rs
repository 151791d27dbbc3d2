//! The shard's replica of the client registry (the control plane owns it).

use super::*;

impl Shard {
    pub fn client_added(&mut self, client_id: &str, conn_id: Bytes) {
        if let Some(old) = self.clients.get(client_id) {
            self.conns.remove(&old.conn_id);
        }
        if !conn_id.is_empty() {
            self.conns.insert(conn_id.clone(), client_id.to_string());
        }
        self.clients.insert(
            client_id.to_string(),
            ClientEntry {
                conn_id,
                failed_heartbeat: false,
            },
        );
    }

    pub fn set_heartbeat_failed(&mut self, client_id: &str, failed: bool) {
        if let Some(c) = self.clients.get_mut(client_id) {
            c.failed_heartbeat = failed;
        }
    }

    /// The client is gone: its plain subscriptions end, durables go offline, queue members
    /// leave their groups.
    pub fn client_removed(&mut self, now: Now, client_id: &str) {
        if let Some(old) = self.clients.remove(client_id) {
            self.conns.remove(&old.conn_id);
        }
        let ids: Vec<u64> = self
            .subs
            .values()
            .filter(|s| s.client_id == client_id && !s.offline)
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.end_subscription(now, id, SubEnd::Close);
        }
    }

    pub(super) fn client_valid(&self, client_id: &str, conn_id: &[u8]) -> bool {
        match self.clients.get(client_id) {
            Some(c) => conn_id.is_empty() || c.conn_id.as_ref() == conn_id,
            None => false,
        }
    }

    /// The client registered with this connection ID, if any.
    pub fn client_for_conn(&self, conn_id: &[u8]) -> Option<&str> {
        self.conns.get(conn_id).map(String::as_str)
    }

    /// Whether the client has missed heartbeats (its PINGs then hurry the next one).
    pub fn heartbeat_failed(&self, client_id: &str) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|c| c.failed_heartbeat)
    }
}
