//! The server's secret for ack inboxes. An ack inbox names the subscription it acknowledges
//! (`<prefix><sub id>.<generation>.<tag>`), so that any core routes it without a lookup; the
//! tag, a keyed MAC of the id and generation, makes it unguessable: a connection that was not
//! handed the inbox cannot ack another client's messages (the reference's inboxes are random).
//! The key is kept in the file store's `server.dat`, so that inboxes handed out before a
//! restart still work after it.

use ring::hmac;

/// Bytes of key material.
pub const KEY_LEN: usize = 32;

#[derive(Clone)]
pub struct AckKey(hmac::Key);

impl std::fmt::Debug for AckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckKey(..)")
    }
}

impl AckKey {
    pub fn new(material: &[u8; KEY_LEN]) -> Self {
        AckKey(hmac::Key::new(hmac::HMAC_SHA256, material))
    }

    /// A fresh random key (memory store: inboxes do not outlive the process).
    pub fn random() -> Result<Self, ring::error::Unspecified> {
        Ok(Self::new(&random_material()?))
    }

    /// The tag of subscription `id`'s ack inbox of `generation`: 64 bits of HMAC-SHA256.
    pub fn tag(&self, id: u64, generation: u32) -> u64 {
        let mut msg = [0u8; 12];
        msg[..8].copy_from_slice(&id.to_le_bytes());
        msg[8..].copy_from_slice(&generation.to_le_bytes());
        let mac = hmac::sign(&self.0, &msg);
        let mut first = [0u8; 8];
        first.copy_from_slice(&mac.as_ref()[..8]);
        u64::from_le_bytes(first)
    }
}

/// Key material from the operating system's random source.
pub fn random_material() -> Result<[u8; KEY_LEN], ring::error::Unspecified> {
    let mut material = [0u8; KEY_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut material)?;
    Ok(material)
}

/// A tag as it appears in an inbox: 16 lower-case hex digits.
pub fn format_tag(tag: u64) -> String {
    format!("{tag:016x}")
}

/// The tag of an inbox, if `text` is 16 hex digits.
pub fn parse_tag(text: &[u8]) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    // By hand: every ack goes through here.
    text.iter().try_fold(0u64, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_key_id_and_generation() {
        let a = AckKey::new(&[1; KEY_LEN]);
        let b = AckKey::new(&[2; KEY_LEN]);
        assert_eq!(a.tag(5, 0), a.tag(5, 0));
        assert_ne!(a.tag(5, 0), b.tag(5, 0));
        assert_ne!(a.tag(5, 0), a.tag(6, 0));
        assert_ne!(a.tag(5, 0), a.tag(5, 1));
        let t = a.tag(5, 0);
        assert_eq!(parse_tag(format_tag(t).as_bytes()), Some(t));
        assert_eq!(parse_tag(b"12"), None);
        assert_eq!(parse_tag(b"zzzzzzzzzzzzzzzz"), None);
        assert_eq!(
            parse_tag(b"00000000000000fF"),
            None,
            "lower-case only, as written"
        );
        assert_eq!(parse_tag(b"ffffffffffffffff"), Some(u64::MAX));
    }
}
