//! A parser for the NATS configuration format (the one nats-server and nats-streaming-server
//! read): `key: value`, `key = value` or `key value`; maps and arrays; `#` and `//` comments;
//! quoted and bare strings; integers with size suffixes; booleans; `include`; `$VARIABLES`.
//! Keys are compared case-insensitively by the option mapping, as nats-server does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Spanned>),
    Map(Map),
}

/// A value with where it was written, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    pub value: Value,
    pub pos: Pos,
}

pub type Map = Vec<(String, Spanned)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Pos {
    pub file: Rc<str>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Formats without positions (TOML here) name only the file.
            return write!(f, "{}", self.file);
        }
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, Error)]
pub enum ConfError {
    #[error("{pos}: {msg}")]
    Syntax { pos: Pos, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

const MAX_INCLUDE_DEPTH: usize = 10;

/// Parses a configuration file (following includes relative to its directory).
pub fn parse_file(path: &Path) -> Result<Map, ConfError> {
    parse_file_at_depth(path, 0)
}

fn parse_file_at_depth(path: &Path, depth: usize) -> Result<Map, ConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Lexer::new(&text, path.display().to_string().into(), dir, depth).parse_document()
}

/// Parses configuration text; includes are resolved against the current directory.
pub fn parse_str(text: &str, name: &str) -> Result<Map, ConfError> {
    Lexer::new(text, name.into(), PathBuf::from("."), 0).parse_document()
}

/// Looks a key up case-insensitively.
pub fn get<'a>(map: &'a Map, key: &str) -> Option<&'a Spanned> {
    map.iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
    file: Rc<str>,
    dir: PathBuf,
    depth: usize,
    /// Variables visible from enclosing maps, innermost last.
    scopes: Vec<Map>,
    _text: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str, file: Rc<str>, dir: PathBuf, depth: usize) -> Self {
        Lexer {
            chars: text.chars().collect(),
            at: 0,
            line: 1,
            column: 1,
            file,
            dir,
            depth,
            scopes: Vec::new(),
            _text: text,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
        }
    }

    fn error<T>(&self, msg: impl Into<String>) -> Result<T, ConfError> {
        Err(ConfError::Syntax {
            pos: self.pos(),
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek2(&self) -> Option<char> {
        self.chars.get(self.at + 1).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Skips blanks and comments; with `newlines`, line ends and `,`/`;` separators too.
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '\n' | ',' | ';' if newlines => {
                    self.bump();
                }
                '#' => self.skip_comment(),
                '/' if self.peek2() == Some('/') => self.skip_comment(),
                _ => break,
            }
        }
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    fn parse_document(mut self) -> Result<Map, ConfError> {
        self.scopes.push(Map::new());
        self.parse_pairs(None)?;
        Ok(self.scopes.pop().unwrap_or_default())
    }

    /// Parses `key value` pairs into the innermost scope until `end` (or end of input).
    fn parse_pairs(&mut self, end: Option<char>) -> Result<(), ConfError> {
        loop {
            self.skip(true);
            match self.peek() {
                None if end.is_none() => return Ok(()),
                None => {
                    return self.error(format!(
                        "unexpected end of input, expected '{}'",
                        end.unwrap_or('}')
                    ))
                }
                Some(c) if Some(c) == end => {
                    self.bump();
                    return Ok(());
                }
                Some(_) => self.parse_pair()?,
            }
        }
    }

    fn parse_pair(&mut self) -> Result<(), ConfError> {
        let key_pos = self.pos();
        let key = self.parse_key()?;
        self.skip(false);
        if key.eq_ignore_ascii_case("include") && !matches!(self.peek(), Some(':' | '=')) {
            return self.parse_include();
        }
        if matches!(self.peek(), Some(':' | '=')) {
            self.bump();
            self.skip(false);
        }
        if matches!(self.peek(), None | Some('\n')) {
            return Err(ConfError::Syntax {
                pos: key_pos,
                msg: format!("key '{key}' has no value"),
            });
        }
        let value = self.parse_value()?;
        self.expect_pair_end()?;
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((key, value));
        }
        Ok(())
    }

    fn expect_pair_end(&mut self) -> Result<(), ConfError> {
        self.skip(false);
        match self.peek() {
            None | Some('\n' | ',' | ';' | '}' | ']') => Ok(()),
            Some(c) => self.error(format!("unexpected '{c}' after value")),
        }
    }

    fn parse_key(&mut self) -> Result<String, ConfError> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => self.parse_quoted(q),
            _ => {
                let mut key = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace() || matches!(c, ':' | '=' | '{' | '[' | ',' | ';' | '#') {
                        break;
                    }
                    key.push(c);
                    self.bump();
                }
                if key.is_empty() {
                    return self.error(format!(
                        "expected a key, found '{}'",
                        self.peek().unwrap_or(' ')
                    ));
                }
                Ok(key)
            }
        }
    }

    fn parse_include(&mut self) -> Result<(), ConfError> {
        let pos = self.pos();
        let name = match self.peek() {
            Some(q @ ('"' | '\'')) => self.parse_quoted(q)?,
            _ => self.bare_token(),
        };
        if name.is_empty() {
            return self.error("include needs a file name");
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(ConfError::Syntax {
                pos,
                msg: format!("includes nested deeper than {MAX_INCLUDE_DEPTH} (a cycle?)"),
            });
        }
        let path = self.dir.join(&name);
        let included = parse_file_at_depth(&path, self.depth + 1).map_err(|e| match e {
            ConfError::Io { path, source } => ConfError::Syntax {
                pos: pos.clone(),
                msg: format!("cannot include {path}: {source}"),
            },
            other => other,
        })?;
        if let Some(scope) = self.scopes.last_mut() {
            scope.extend(included);
        }
        self.expect_pair_end()
    }

    fn parse_value(&mut self) -> Result<Spanned, ConfError> {
        let pos = self.pos();
        let value = match self.peek() {
            Some('{') => {
                self.bump();
                self.scopes.push(Map::new());
                let result = self.parse_pairs(Some('}'));
                let map = self.scopes.pop().unwrap_or_default();
                result?;
                Value::Map(map)
            }
            Some('[') => {
                self.bump();
                Value::Array(self.parse_array()?)
            }
            Some(q @ ('"' | '\'')) => Value::String(self.parse_quoted(q)?),
            Some('$') => {
                self.bump();
                let name = self.bare_token();
                return self.lookup_variable(&name, pos);
            }
            _ => {
                let token = self.bare_token();
                if token.is_empty() {
                    return self.error("expected a value");
                }
                scalar(&token)
            }
        };
        Ok(Spanned { value, pos })
    }

    fn parse_array(&mut self) -> Result<Vec<Spanned>, ConfError> {
        let mut items = Vec::new();
        loop {
            self.skip(true);
            match self.peek() {
                None => return self.error("unexpected end of input, expected ']'"),
                Some(']') => {
                    self.bump();
                    return Ok(items);
                }
                Some(_) => {
                    items.push(self.parse_value()?);
                    self.skip(false);
                    match self.peek() {
                        Some(',' | '\n' | ']' | ';') | None => {}
                        Some(c) => return self.error(format!("unexpected '{c}' in array")),
                    }
                }
            }
        }
    }

    fn bare_token(&mut self) -> String {
        let mut token = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, ',' | ';' | '}' | ']' | '#') {
                break;
            }
            if c == '/' && self.peek2() == Some('/') && !token.ends_with(':') {
                break;
            }
            token.push(c);
            self.bump();
        }
        token
    }

    fn parse_quoted(&mut self, quote: char) -> Result<String, ConfError> {
        let start = self.pos();
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(ConfError::Syntax {
                        pos: start,
                        msg: "unterminated string".into(),
                    })
                }
                Some(c) if c == quote => return Ok(s),
                Some('\\') if quote == '"' => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('r') => s.push('\r'),
                    Some('\\') => s.push('\\'),
                    Some('"') => s.push('"'),
                    Some(c) => {
                        s.push('\\');
                        s.push(c);
                    }
                    None => return self.error("unterminated string"),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn lookup_variable(&self, name: &str, pos: Pos) -> Result<Spanned, ConfError> {
        for scope in self.scopes.iter().rev() {
            if let Some(found) = scope.iter().rev().find(|(k, _)| k == name) {
                return Ok(Spanned {
                    value: found.1.value.clone(),
                    pos,
                });
            }
        }
        match std::env::var(name) {
            Ok(v) => Ok(Spanned {
                value: scalar(&v),
                pos,
            }),
            Err(_) => {
                let line = pos.line;
                Err(ConfError::Syntax {
                    pos,
                    msg: format!("variable reference for '{name}' on line {line} can not be found"),
                })
            }
        }
    }
}

/// Interprets a bare token: boolean, integer (with size suffix), float, or string.
fn scalar(token: &str) -> Value {
    match token.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => return Value::Bool(true),
        "false" | "no" | "off" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_sized_integer(token) {
        return Value::Integer(n);
    }
    if token.contains('.') && !token.ends_with('.') {
        if let Ok(f) = token.parse::<f64>() {
            if token
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'))
            {
                return Value::Float(f);
            }
        }
    }
    Value::String(token.to_string())
}

/// Integers with Go's suffixes: `k`/`m`/`g`/`t` are powers of 1000, `kb`/`mb`/`gb`/`tb`
/// (and `ki`/`kib`, ...) powers of 1024.
pub fn parse_sized_integer(token: &str) -> Option<i64> {
    let digits_end = token
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map(|(i, _)| i)
        .unwrap_or(token.len());
    let (digits, suffix) = token.split_at(digits_end);
    if digits.is_empty() || digits == "-" {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let multiplier: i64 = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1000,
        "kb" | "ki" | "kib" => 1 << 10,
        "m" => 1_000_000,
        "mb" | "mi" | "mib" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" | "gi" | "gib" => 1 << 30,
        "t" => 1_000_000_000_000,
        "tb" | "ti" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(multiplier)
}

/// Go-style durations: `10s`, `1h30m`, `500ms`, `2m`, `1.5s`; a bare integer is seconds.
/// The longest duration Go's `time.Duration` holds (an int64 of nanoseconds, about 292
/// years): every duration option is capped there, so arithmetic on deadlines cannot overflow
/// and a value Go would refuse is refused here too.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_nanos(i64::MAX as u64);

/// A duration in Go's `time.ParseDuration` syntax (`"1h30m"`, `"500ms"`) or a plain number of
/// seconds; `None` when it does not parse or exceeds [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return within_go_range(std::time::Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * unit;
    }
    within_go_range(std::time::Duration::try_from_secs_f64(total).ok()?)
}

/// `d` if Go's `time.Duration` can hold it.
pub fn within_go_range(d: std::time::Duration) -> Option<std::time::Duration> {
    (d <= MAX_DURATION).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Map {
        parse_str(text, "test.conf").unwrap()
    }

    fn val<'a>(map: &'a Map, key: &str) -> &'a Value {
        &get(map, key).unwrap().value
    }

    #[test]
    fn separators_and_types() {
        let m = parse("a: 1\nb = \"two\"\nc three\nd: true\ne: off\nf: 1.5\ng: 'raw\\n'");
        assert_eq!(val(&m, "a"), &Value::Integer(1));
        assert_eq!(val(&m, "b"), &Value::String("two".into()));
        assert_eq!(val(&m, "c"), &Value::String("three".into()));
        assert_eq!(val(&m, "d"), &Value::Bool(true));
        assert_eq!(val(&m, "e"), &Value::Bool(false));
        assert_eq!(val(&m, "f"), &Value::Float(1.5));
        assert_eq!(val(&m, "g"), &Value::String("raw\\n".into()));
    }

    #[test]
    fn maps_arrays_comments() {
        let m = parse(
            "# top\nauthorization {\n  user: foo // trailing\n  users = [\n {user: a, password: b}\n {user: c, password: d}, ]\n}\nroutes: [nats://u:p@127.0.0.1:6222, nats://127.0.0.1:6223]",
        );
        let Value::Map(auth) = val(&m, "AUTHORIZATION") else {
            panic!()
        };
        assert_eq!(val(auth, "user"), &Value::String("foo".into()));
        let Value::Array(users) = val(auth, "users") else {
            panic!()
        };
        assert_eq!(users.len(), 2);
        let Value::Array(routes) = val(&m, "routes") else {
            panic!()
        };
        assert_eq!(
            routes[0].value,
            Value::String("nats://u:p@127.0.0.1:6222".into())
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_sized_integer("1KB"), Some(1024));
        assert_eq!(parse_sized_integer("1K"), Some(1000));
        assert_eq!(parse_sized_integer("2mb"), Some(2 << 20));
        assert_eq!(parse_sized_integer("3G"), Some(3_000_000_000));
        assert_eq!(parse_sized_integer("-5"), Some(-5));
        assert_eq!(parse_sized_integer("10s"), None);
        let m = parse("max_payload: 2MB");
        assert_eq!(val(&m, "max_payload"), &Value::Integer(2 << 20));
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        // Beyond an int64 of nanoseconds (Go refuses them too): refused, never a panic.
        assert_eq!(parse_duration("99999999999999999999s"), None);
        assert_eq!(parse_duration("9999999999999999999"), None);
        assert_eq!(parse_duration("2562048h"), None);
        assert_eq!(
            parse_duration("2562047h"),
            Some(Duration::from_secs(2562047 * 3600))
        );
        assert_eq!(parse_duration("1e400s"), None);
        assert_eq!(parse_duration("xs"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn variables() {
        std::env::set_var("STANZA_CONF_TEST_VAR", "fromenv");
        let m = parse("pw: secret\nauth { password: $pw, other: $STANZA_CONF_TEST_VAR }");
        let Value::Map(auth) = val(&m, "auth") else {
            panic!()
        };
        assert_eq!(val(auth, "password"), &Value::String("secret".into()));
        assert_eq!(val(auth, "other"), &Value::String("fromenv".into()));
        let err = parse_str("a: $NOPE_NOT_DEFINED_ANYWHERE", "x.conf").unwrap_err();
        assert!(err.to_string().starts_with("x.conf:1:4"), "{err}");
    }

    #[test]
    fn error_positions() {
        let err = parse_str("a: 1\nb: {\n c: 2\n", "bad.conf").unwrap_err();
        assert!(err.to_string().starts_with("bad.conf:4:1"), "{err}");
        let err = parse_str("a: \"open\n", "bad.conf").unwrap_err();
        assert!(err.to_string().starts_with("bad.conf:1:4"), "{err}");
        let err = parse_str("\n  novalue\n", "bad.conf").unwrap_err();
        assert!(err.to_string().starts_with("bad.conf:2:3"), "{err}");
    }

    #[test]
    fn include() {
        let dir = std::env::temp_dir().join(format!("stanza-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("auth.conf"), "user: inc\n").unwrap();
        std::fs::write(
            dir.join("main.conf"),
            "port: 1\nauthorization {\n include auth.conf\n}\n",
        )
        .unwrap();
        let m = parse_file(&dir.join("main.conf")).unwrap();
        let Value::Map(auth) = val(&m, "authorization") else {
            panic!()
        };
        assert_eq!(val(auth, "user"), &Value::String("inc".into()));
        std::fs::write(dir.join("loop.conf"), "include loop.conf\n").unwrap();
        assert!(parse_file(&dir.join("loop.conf")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
