//! A subject trie (the NATS "sublist"): subscriptions by subject pattern, matched against a
//! literal subject. Generic over the stored item so one structure serves both a core's own
//! subscriptions and the replicated cross-core interest map. Results are cached per subject and
//! the cache is dropped on any change, because changes are rare next to matches.

use bytes::Bytes;
use fxhash::FxHashMap;
use std::rc::Rc;

const MAX_CACHE_ENTRIES: usize = 4096;

/// What a subject matched: plain subscribers, and members of each queue group.
#[derive(Debug)]
pub struct MatchResult<T> {
    pub plain: Vec<T>,
    pub queues: Vec<(Bytes, Vec<T>)>,
}

impl<T> MatchResult<T> {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

impl<T> Default for MatchResult<T> {
    fn default() -> Self {
        MatchResult {
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

struct Node<T> {
    next: Option<Box<Level<T>>>,
    plain: Vec<T>,
    queues: Vec<(Bytes, Vec<T>)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty()
            && self.queues.is_empty()
            && self.next.as_ref().is_none_or(|l| l.is_empty())
    }
}

struct Level<T> {
    literal: FxHashMap<Bytes, Node<T>>,
    star: Option<Box<Node<T>>>,
    tail: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literal: FxHashMap::default(),
            star: None,
            tail: None,
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.tail.is_none()
    }
}

/// Counters for monitoring (`/subsz`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SublistStats {
    pub count: u64,
    pub inserts: u64,
    pub removes: u64,
    pub matches: u64,
    pub cache_hits: u64,
}

pub struct Sublist<T> {
    root: Level<T>,
    cache: FxHashMap<Bytes, Rc<MatchResult<T>>>,
    stats: SublistStats,
}

impl<T: Clone + PartialEq> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    pub fn new() -> Self {
        Sublist {
            root: Level::default(),
            cache: FxHashMap::default(),
            stats: SublistStats::default(),
        }
    }

    pub fn stats(&self) -> SublistStats {
        self.stats
    }

    /// Changes with every insert and remove: a match result taken at one generation is valid
    /// while the generation stays the same.
    pub fn generation(&self) -> u64 {
        self.stats.inserts + self.stats.removes
    }

    /// Adds an item for a (validated) subject pattern and optional queue group. The same item
    /// may be added more than once; each insert needs its own remove.
    pub fn insert(&mut self, subject: &[u8], queue: Option<&Bytes>, item: T) {
        let mut level = &mut self.root;
        let mut tokens = subject.split(|b| *b == b'.').peekable();
        let node = loop {
            let token = tokens.next().unwrap_or_default();
            let node: &mut Node<T> = match token {
                b"*" => level.star.get_or_insert_with(Default::default),
                b">" => level.tail.get_or_insert_with(Default::default),
                _ => level
                    .literal
                    .entry(Bytes::copy_from_slice(token))
                    .or_default(),
            };
            if tokens.peek().is_none() {
                break node;
            }
            level = node.next.get_or_insert_with(Default::default);
        };
        match queue {
            None => node.plain.push(item),
            Some(q) => match node.queues.iter_mut().find(|(name, _)| name == q) {
                Some((_, members)) => members.push(item),
                None => node.queues.push((q.clone(), vec![item])),
            },
        }
        self.stats.count += 1;
        self.stats.inserts += 1;
        self.cache.clear();
    }

    /// Removes one occurrence of an item; returns whether it was there.
    pub fn remove(&mut self, subject: &[u8], queue: Option<&Bytes>, item: &T) -> bool {
        let tokens: Vec<&[u8]> = subject.split(|b| *b == b'.').collect();
        let removed = remove_from(&mut self.root, &tokens, queue, item);
        if removed {
            self.stats.count = self.stats.count.saturating_sub(1);
            self.stats.removes += 1;
            self.cache.clear();
        }
        removed
    }

    /// Whether some subscription may match a subject whose first token is `token` (a pattern
    /// that starts with it, `*` or `>`): one look at the root level, for the streaming front,
    /// which then routes its requests to ordinary subscribers too.
    pub fn may_match_first_token(&self, token: &[u8]) -> bool {
        self.root.star.is_some()
            || self.root.tail.is_some()
            || self.root.literal.contains_key(token)
    }

    /// Every (pattern, queue) that holds an item, with its items.
    pub fn entries(&self) -> Vec<(Bytes, Option<Bytes>, Vec<T>)> {
        fn walk<T: Clone>(
            level: &Level<T>,
            prefix: &mut Vec<u8>,
            out: &mut Vec<(Bytes, Option<Bytes>, Vec<T>)>,
        ) {
            let literal = level.literal.iter().map(|(t, n)| (t.as_ref(), n));
            let star = level.star.as_deref().map(|n| (&b"*"[..], n));
            let tail = level.tail.as_deref().map(|n| (&b">"[..], n));
            for (token, node) in literal.chain(star).chain(tail) {
                let len = prefix.len();
                if !prefix.is_empty() {
                    prefix.push(b'.');
                }
                prefix.extend_from_slice(token);
                let subject = Bytes::copy_from_slice(prefix);
                if !node.plain.is_empty() {
                    out.push((subject.clone(), None, node.plain.clone()));
                }
                for (q, members) in &node.queues {
                    if !members.is_empty() {
                        out.push((subject.clone(), Some(q.clone()), members.clone()));
                    }
                }
                if let Some(next) = node.next.as_deref() {
                    walk(next, prefix, out);
                }
                prefix.truncate(len);
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut Vec::new(), &mut out);
        out
    }

    /// The items stored under exactly this pattern and queue (not what it matches).
    pub fn exact(&self, subject: &[u8], queue: Option<&Bytes>) -> Vec<T> {
        let mut level = &self.root;
        let mut tokens = subject.split(|b| *b == b'.').peekable();
        loop {
            let token = tokens.next().unwrap_or_default();
            let node = match token {
                b"*" => level.star.as_deref(),
                b">" => level.tail.as_deref(),
                t => level.literal.get(t),
            };
            let Some(node) = node else {
                return Vec::new();
            };
            if tokens.peek().is_none() {
                return match queue {
                    None => node.plain.clone(),
                    Some(q) => node
                        .queues
                        .iter()
                        .find(|(name, _)| name == q)
                        .map(|(_, members)| members.clone())
                        .unwrap_or_default(),
                };
            }
            match node.next.as_deref() {
                Some(next) => level = next,
                None => return Vec::new(),
            }
        }
    }

    /// Everything that a literal subject matches.
    pub fn matches(&mut self, subject: &[u8]) -> Rc<MatchResult<T>> {
        self.stats.matches += 1;
        if let Some(hit) = self.cache.get(subject) {
            self.stats.cache_hits += 1;
            return hit.clone();
        }
        let tokens: Vec<&[u8]> = subject.split(|b| *b == b'.').collect();
        let mut result = MatchResult::default();
        collect(&self.root, &tokens, &mut result);
        let result = Rc::new(result);
        if self.cache.len() >= MAX_CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache
            .insert(Bytes::copy_from_slice(subject), result.clone());
        result
    }
}

fn remove_from<T: PartialEq>(
    level: &mut Level<T>,
    tokens: &[&[u8]],
    queue: Option<&Bytes>,
    item: &T,
) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return false;
    };
    let node = match *token {
        b"*" => level.star.as_deref_mut(),
        b">" => level.tail.as_deref_mut(),
        t => level.literal.get_mut(t),
    };
    let Some(node) = node else {
        return false;
    };
    let removed = if rest.is_empty() {
        remove_item(node, queue, item)
    } else {
        match node.next.as_deref_mut() {
            Some(next) => remove_from(next, rest, queue, item),
            None => false,
        }
    };
    if removed && node.is_empty() {
        match *token {
            b"*" => level.star = None,
            b">" => level.tail = None,
            t => {
                level.literal.remove(t);
            }
        }
    }
    removed
}

fn remove_item<T: PartialEq>(node: &mut Node<T>, queue: Option<&Bytes>, item: &T) -> bool {
    match queue {
        None => remove_one(&mut node.plain, item),
        Some(q) => {
            let Some(idx) = node.queues.iter().position(|(name, _)| name == q) else {
                return false;
            };
            let removed = remove_one(&mut node.queues[idx].1, item);
            if node.queues[idx].1.is_empty() {
                node.queues.swap_remove(idx);
            }
            removed
        }
    }
}

fn remove_one<T: PartialEq>(items: &mut Vec<T>, item: &T) -> bool {
    match items.iter().position(|x| x == item) {
        Some(idx) => {
            items.swap_remove(idx);
            true
        }
        None => false,
    }
}

fn collect<T: Clone>(level: &Level<T>, tokens: &[&[u8]], out: &mut MatchResult<T>) {
    let Some((token, rest)) = tokens.split_first() else {
        return;
    };
    if let Some(tail) = level.tail.as_deref() {
        add_node(tail, out);
    }
    if let Some(star) = level.star.as_deref() {
        visit(star, rest, out);
    }
    if let Some(node) = level.literal.get(*token) {
        visit(node, rest, out);
    }
}

fn visit<T: Clone>(node: &Node<T>, rest: &[&[u8]], out: &mut MatchResult<T>) {
    if rest.is_empty() {
        add_node(node, out);
    } else if let Some(next) = node.next.as_deref() {
        collect(next, rest, out);
    }
}

fn add_node<T: Clone>(node: &Node<T>, out: &mut MatchResult<T>) {
    out.plain.extend(node.plain.iter().cloned());
    for (name, members) in &node.queues {
        match out.queues.iter_mut().find(|(n, _)| n == name) {
            Some((_, all)) => all.extend(members.iter().cloned()),
            None => out.queues.push((name.clone(), members.clone())),
        }
    }
}

#[cfg(test)]
mod first_token_tests {
    use super::*;

    #[test]
    fn first_token_probe() {
        let mut s: Sublist<u32> = Sublist::new();
        assert!(!s.may_match_first_token(b"_STAN"));
        s.insert(b"foo.bar", None, 1);
        assert!(!s.may_match_first_token(b"_STAN"));
        s.insert(b"_STAN.pub.>", None, 2);
        assert!(s.may_match_first_token(b"_STAN"));
        s.remove(b"_STAN.pub.>", None, &2);
        assert!(!s.may_match_first_token(b"_STAN"));
        s.insert(b"*.x", None, 3);
        assert!(s.may_match_first_token(b"_STAN"));
        s.remove(b"*.x", None, &3);
        s.insert(b">", None, 4);
        assert!(s.may_match_first_token(b"_STAN"));
    }

    #[test]
    fn exact_entries() {
        let mut s: Sublist<u32> = Sublist::new();
        let q = Bytes::from_static(b"q");
        s.insert(b"a.*", None, 1);
        s.insert(b"a.*", None, 2);
        s.insert(b"a.*", Some(&q), 3);
        s.insert(b"a.b", None, 4);
        assert_eq!(s.exact(b"a.*", None), vec![1, 2]);
        assert_eq!(s.exact(b"a.*", Some(&q)), vec![3]);
        assert_eq!(s.exact(b"a.b", None), vec![4]);
        assert!(s.exact(b"a", None).is_empty());
        assert!(s.exact(b"a.b.c", None).is_empty());
        let mut all = s.entries();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let keys: Vec<String> = all
            .iter()
            .map(|(s, q, items)| {
                let q = q
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                format!("{}|{q}|{}", String::from_utf8_lossy(s), items.len())
            })
            .collect();
        assert_eq!(keys, vec!["a.*||2", "a.*|q|1", "a.b||1"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::subject;
    use proptest::prelude::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn literal_and_wildcards() {
        let mut sl = Sublist::new();
        sl.insert(b"foo.bar", None, 1);
        sl.insert(b"foo.*", None, 2);
        sl.insert(b"foo.>", None, 3);
        sl.insert(b">", None, 4);
        sl.insert(b"*.bar", None, 5);
        let mut r = sl.matches(&b("foo.bar")).plain.clone();
        r.sort();
        assert_eq!(r, vec![1, 2, 3, 4, 5]);
        let mut r = sl.matches(&b("foo.bar.baz")).plain.clone();
        r.sort();
        assert_eq!(r, vec![3, 4]);
        assert_eq!(sl.matches(&b("foo")).plain.as_slice(), &[4]);
    }

    #[test]
    fn queue_groups_are_grouped() {
        let mut sl = Sublist::new();
        let q = b("workers");
        sl.insert(b"jobs.*", Some(&q), 1);
        sl.insert(b"jobs.>", Some(&q), 2);
        sl.insert(b"jobs.a", Some(&b("other")), 3);
        sl.insert(b"jobs.a", None, 4);
        let r = sl.matches(&b("jobs.a"));
        assert_eq!(r.plain, vec![4]);
        assert_eq!(r.queues.len(), 2);
        let workers = &r.queues.iter().find(|(n, _)| n == &q).unwrap().1;
        assert_eq!(workers.len(), 2);
    }

    #[test]
    fn remove_and_cache_invalidation() {
        let mut sl = Sublist::new();
        sl.insert(b"a.b", None, 1);
        sl.insert(b"a.b", None, 1);
        assert_eq!(sl.matches(&b("a.b")).plain.len(), 2);
        assert!(sl.remove(b"a.b", None, &1));
        assert_eq!(sl.matches(&b("a.b")).plain.len(), 1);
        assert!(sl.remove(b"a.b", None, &1));
        assert!(!sl.remove(b"a.b", None, &1));
        assert!(sl.matches(&b("a.b")).is_empty());
        assert!(sl.root.is_empty(), "empty nodes are pruned");
        assert!(!sl.remove(b"x.y.z", None, &1));
        assert_eq!(sl.stats().count, 0);
    }

    proptest! {
        /// The trie agrees with a brute-force scan over (pattern, literal) pairs.
        #[test]
        fn agrees_with_brute_force(
            patterns in proptest::collection::vec("(a|b|\\*)(\\.(a|b|\\*)){0,2}(\\.>)?", 1..12),
            subject in "(a|b)(\\.(a|b)){0,3}",
        ) {
            let mut sl = Sublist::new();
            for (i, p) in patterns.iter().enumerate() {
                prop_assume!(subject::is_valid_subject(p.as_bytes()));
                sl.insert(p.as_bytes(), None, i);
            }
            let mut got = sl.matches(&b(&subject)).plain.clone();
            got.sort();
            let want: Vec<usize> = patterns.iter().enumerate()
                .filter(|(_, p)| subject::matches(p.as_bytes(), subject.as_bytes()))
                .map(|(i, _)| i).collect();
            prop_assert_eq!(got, want);
            for (i, p) in patterns.iter().enumerate() {
                prop_assert!(sl.remove(p.as_bytes(), None, &i));
            }
            prop_assert!(sl.root.is_empty());
        }
    }
}
