//! Subject and queue-name validation, with nats-server's rules: tokens separated by `.`,
//! no empty token, no whitespace, `*` and `>` only as whole tokens and `>` only last.

/// A subject a client may subscribe to (wildcards allowed).
pub fn is_valid_subject(subject: &[u8]) -> bool {
    valid_tokens(subject, true)
}

/// A subject a client may publish to (no wildcards).
pub fn is_valid_literal_subject(subject: &[u8]) -> bool {
    valid_tokens(subject, false)
}

/// A queue group name: non-empty, no whitespace.
pub fn is_valid_queue(queue: &[u8]) -> bool {
    !queue.is_empty() && !queue.iter().any(|b| b.is_ascii_whitespace())
}

fn valid_tokens(subject: &[u8], wildcards_allowed: bool) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut tokens = subject.split(|b| *b == b'.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
            return false;
        }
        if token.len() > 1 {
            continue;
        }
        match token[0] {
            b'*' if !wildcards_allowed => return false,
            b'>' if !wildcards_allowed || tokens.peek().is_some() => return false,
            _ => {}
        }
    }
    true
}

/// Whether a literal subject matches a pattern that may hold wildcards.
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut pat = pattern.split(|b| *b == b'.');
    let mut sub = subject.split(|b| *b == b'.');
    loop {
        match (pat.next(), sub.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subjects() {
        for s in [
            "foo",
            "foo.bar",
            "foo.*",
            "foo.>",
            ">",
            "*",
            "*.bar.>",
            "_INBOX.abc.1",
        ] {
            assert!(is_valid_subject(s.as_bytes()), "{s}");
        }
        for s in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            "foo bar",
            "foo\tbar",
        ] {
            assert!(!is_valid_subject(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn literal_subjects() {
        assert!(is_valid_literal_subject(b"foo.bar"));
        assert!(is_valid_literal_subject(b"foo.b*r"));
        assert!(!is_valid_literal_subject(b"foo.*"));
        assert!(!is_valid_literal_subject(b">"));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches(b"foo.*", b"foo.bar"));
        assert!(!matches(b"foo.*", b"foo.bar.baz"));
        assert!(matches(b"foo.>", b"foo.bar.baz"));
        assert!(!matches(b"foo.>", b"foo"));
        assert!(matches(b"*.bar", b"foo.bar"));
        assert!(!matches(b"foo", b"foo.bar"));
        assert!(matches(b">", b"a"));
    }

    #[test]
    fn queues() {
        assert!(is_valid_queue(b"workers"));
        assert!(!is_valid_queue(b""));
        assert!(!is_valid_queue(b"a b"));
    }
}
