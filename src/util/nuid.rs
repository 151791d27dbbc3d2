//! Random identifiers in the NATS style: server IDs, client IDs of the bench tools.

/// A 22-character base-62 identifier, like a NUID.
pub fn nuid() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..22)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
