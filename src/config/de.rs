//! A serde `Deserializer` over parsed NATS-conf values, so the options model is plain serde
//! structs (aliases, defaults, types) and every error still names file:line:column.
//!
//! Struct keys are matched case-insensitively (nats-server lowercases them) and a repeated key
//! keeps its last value, as in nats-server; map keys that are data (channel names) keep their
//! case.

use super::conf::{Map, Pos, Spanned, Value};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    msg: String,
    key: Option<String>,
    pos: Option<Pos>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(pos) = &self.pos {
            write!(f, "{pos}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "'{key}' ")?;
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            msg: msg.to_string(),
            key: None,
            pos: None,
        }
    }
}

impl DeError {
    fn at(mut self, pos: &Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos.clone());
        }
        self
    }

    fn in_key(mut self, key: &str) -> Self {
        if self.key.is_none() {
            self.key = Some(key.to_string());
        }
        self
    }
}

/// Deserializes `T` from a value of a parsed configuration.
pub fn from_value<'a, T: Deserialize<'a>>(value: &'a Spanned) -> Result<T, DeError> {
    T::deserialize(ValueDeserializer(value))
}

/// Deserializes `T` from a value, collecting the dotted paths of keys `T` does not know.
pub fn from_value_collecting_unknown<'a, T: Deserialize<'a>>(
    value: &'a Spanned,
    unknown: &mut Vec<String>,
) -> Result<T, DeError> {
    serde_ignored::deserialize(ValueDeserializer(value), |path| {
        unknown.push(path.to_string())
    })
}

/// Wraps a top-level map as a value positioned at the start of `file`.
pub fn document(map: Map, file: &str) -> Spanned {
    Spanned {
        value: Value::Map(map),
        pos: Pos {
            file: file.into(),
            line: 1,
            column: 1,
        },
    }
}

/// Where a dotted key path (as serde_ignored prints it) was written, when it can be found.
pub fn position_of(root: &Spanned, path: &str) -> Option<Pos> {
    let mut at = root;
    for segment in path.split('.') {
        match &at.value {
            Value::Map(map) => {
                at = map
                    .iter()
                    .rev()
                    .find(|(k, _)| k.eq_ignore_ascii_case(segment))
                    .map(|(_, v)| v)?;
            }
            Value::Array(items) => at = items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        }
    }
    Some(at.pos.clone())
}

struct ValueDeserializer<'a>(&'a Spanned);

impl<'de, 'a> de::Deserializer<'de> for ValueDeserializer<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.0.value {
            Value::String(s) => visitor.visit_str(s),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Array(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            Value::Map(map) => visitor.visit_map(MapAccess::new(map, false)),
        };
        result.map_err(|e: DeError| e.at(&self.0.pos))
    }

    /// Bare words that look like numbers (`user: 1234`) are still strings where a string is
    /// expected, as in nats-server.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.0.value {
            Value::Integer(i) => visitor.visit_string(i.to_string()),
            Value::Float(f) => visitor.visit_string(f.to_string()),
            _ => return self.deserialize_any(visitor),
        };
        result.map_err(|e: DeError| e.at(&self.0.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.0.value {
            Value::Map(map) => visitor.visit_map(MapAccess::new(map, true)),
            _ => return self.deserialize_any(visitor),
        };
        result.map_err(|e: DeError| e.at(&self.0.pos))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.0.value {
            Value::String(s) => {
                visitor.visit_enum(IntoDeserializer::<DeError>::into_deserializer(s.as_str()))
            }
            _ => return self.deserialize_any(visitor),
        };
        result.map_err(|e: DeError| e.at(&self.0.pos))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Spanned>,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqAccess<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(item) => seed.deserialize(ValueDeserializer(item)).map(Some),
            None => Ok(None),
        }
    }
}

struct MapAccess<'a> {
    entries: std::vec::IntoIter<(String, &'a Spanned)>,
    current: Option<(String, &'a Spanned)>,
}

impl<'a> MapAccess<'a> {
    /// Struct keys are lowercased and only the last of equal keys is kept.
    fn new(map: &'a Map, struct_keys: bool) -> Self {
        let mut entries: Vec<(String, &'a Spanned)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            let key = if struct_keys {
                key.to_ascii_lowercase()
            } else {
                key.clone()
            };
            entries.retain(|(k, _)| *k != key);
            entries.push((key, value));
        }
        MapAccess {
            entries: entries.into_iter(),
            current: None,
        }
    }
}

impl<'de, 'a> de::MapAccess<'de> for MapAccess<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                let result = seed
                    .deserialize(IntoDeserializer::<DeError>::into_deserializer(key.as_str()))
                    .map_err(|e| e.at(&value.pos));
                self.current = Some((key, value));
                result.map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.current.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        seed.deserialize(ValueDeserializer(value))
            .map_err(|e| e.in_key(&key).at(&value.pos))
    }
}

/// Sizes: an integer (the parser already applied `1MB`-style suffixes to bare words) or a
/// quoted string with a suffix.
pub mod size {
    use super::*;

    pub fn deserialize<'de, D: de::Deserializer<'de>, T: TryFrom<i64>>(
        d: D,
    ) -> Result<T, D::Error> {
        let n = deserialize_i64(d)?;
        T::try_from(n).map_err(|_| de::Error::custom(format!("size {n} is out of range")))
    }

    pub fn deserialize_i64<'de, D: de::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 1024, 1KB or \"64MB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
                i64::try_from(v).map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
                crate::config::conf::parse_sized_integer(v.trim())
                    .ok_or_else(|| E::custom(format!("'{v}' is not a valid size")))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// Durations: Go's `time.ParseDuration` strings (`"10s"`, `"1h30m"`), or a number of seconds.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: de::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"1h30m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("duration {v} cannot be negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                crate::config::conf::within_go_range(Duration::from_secs(v))
                    .ok_or_else(|| E::custom(format!("duration of {v} seconds is too long")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(v)
                    .ok()
                    .and_then(crate::config::conf::within_go_range)
                    .ok_or_else(|| E::custom(format!("duration {v} is not valid")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                crate::config::conf::parse_duration(v)
                    .ok_or_else(|| E::custom(format!("'{v}' is not a valid duration")))
            }
        }
        d.deserialize_any(DurationVisitor)
    }

    pub fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::go_duration::format(*v))
    }

    /// For `Option<Duration>` fields.
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: de::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }

        pub fn serialize<S: serde::Serializer>(
            v: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}
