//! Unknown fields, refused or skipped (API.md §5): a serde deserializer adapter that
//! knows, at every struct of a request body, the fields that struct declares.
//!
//! serde's `deny_unknown_fields` is fixed at compile time and says only which fields were
//! expected; `api.unknown_fields = "ignore"` has to turn the check off at run time, and the
//! message has to suggest the closest known name (`unknown field "tags" (did you mean
//! "Tags"?)`), because a misspelt `Tags` once turned a segment broadcast into one to
//! everyone. The adapter wraps the JSON deserializer: where a derived struct asks for its
//! fields (`deserialize_struct`), it reads each key first and either passes it on (a known
//! field), fails with that message (`Refuse`), or skips the key and its value (`Ignore`).
//! Everything else is passed through, wrapped so that nested structs are checked too.
//! Duplicate known fields are refused by the derived structs themselves, duplicate keys in
//! maps by the map types of `decode.rs`.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, Unexpected,
    Visitor,
};

pub use crate::config::UnknownFields;

/// The adapter around a deserializer.
pub struct Strict<D> {
    inner: D,
    mode: UnknownFields,
}

impl<D> Strict<D> {
    pub fn new(inner: D, mode: UnknownFields) -> Self {
        Strict { inner, mode }
    }
}

/// The message for an unknown field `key` where `known` are the fields: the closest known
/// name when one is close (a different case, or a small edit), else the list.
pub fn unknown_field_message(key: &str, known: &[&str]) -> String {
    let shown = crate::signing::truncate(key, 64);
    match closest(key, known) {
        Some(near) => format!("unknown field {shown:?} (did you mean {near:?}?)"),
        None if known.is_empty() => format!("unknown field {shown:?}; this object takes none"),
        None => format!(
            "unknown field {shown:?}; the known fields here are {}",
            known.join(", ")
        ),
    }
}

/// The known name `key` most likely meant: another case, or a few edits (a third of
/// the name, at least 2).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    crate::api::names::closest(key, known.iter().copied(), (key.len() / 3).max(2))
}

/// Forwards `deserialize_*` methods to the inner deserializer with the visitor wrapped.
macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.inner.$method(Wrap { inner: visitor, mode: self.mode })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_unit_struct(
            name,
            Wrap {
                inner: visitor,
                mode: self.mode,
            },
        )
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_newtype_struct(
            name,
            Wrap {
                inner: visitor,
                mode: self.mode,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_tuple(
            len,
            Wrap {
                inner: visitor,
                mode: self.mode,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_tuple_struct(
            name,
            len,
            Wrap {
                inner: visitor,
                mode: self.mode,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            StructVisitor {
                inner: visitor,
                fields,
                mode: self.mode,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // No request body has an enum; its content is passed through unchecked.
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor whose nested deserializers, sequences and maps are wrapped in turn.
struct Wrap<V> {
    inner: V,
    mode: UnknownFields,
}

/// Forwards `visit_*` methods of plain values unchanged.
macro_rules! forward_visit {
    ($($method:ident: $ty:ty)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool: bool visit_i8: i8 visit_i16: i16 visit_i32: i32 visit_i64: i64
        visit_i128: i128 visit_u8: u8 visit_u16: u16 visit_u32: u32 visit_u64: u64
        visit_u128: u128 visit_f32: f32 visit_f64: f64 visit_char: char visit_str: &str
        visit_borrowed_str: &'de str visit_string: String visit_bytes: &[u8]
        visit_borrowed_bytes: &'de [u8] visit_byte_buf: Vec<u8>
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Strict::new(d, self.mode))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Strict::new(d, self.mode))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(Seq {
            inner: seq,
            mode: self.mode,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            fields: None,
            mode: self.mode,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// The visitor of a derived struct: an object, whose keys are checked against `fields`.
struct StructVisitor<V> {
    inner: V,
    fields: &'static [&'static str],
    mode: UnknownFields,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for StructVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            fields: Some(self.fields),
            mode: self.mode,
        })
    }

    // serde would also fill a struct from a JSON list ([AppId, Users]); the API's objects
    // are objects.
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::invalid_type(Unexpected::Seq, &"an object"))
    }
}

struct Seq<A> {
    inner: A,
    mode: UnknownFields,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.inner.next_element_seed(Seed {
            inner: seed,
            mode: self.mode,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A JSON object: a struct's (`fields` known) or a map's (any key).
struct Map<A> {
    inner: A,
    fields: Option<&'static [&'static str]>,
    mode: UnknownFields,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(fields) = self.fields else {
            return self.inner.next_key_seed(Seed {
                inner: seed,
                mode: self.mode,
            });
        };
        loop {
            let Some(Key(key)) = self.inner.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            if fields.contains(&key.as_ref()) {
                return match key {
                    Cow::Borrowed(k) => seed.deserialize(BorrowedStrDeserializer::new(k)),
                    Cow::Owned(k) => seed.deserialize(StringDeserializer::new(k)),
                }
                .map(Some);
            }
            match self.mode {
                UnknownFields::Refuse => {
                    return Err(de::Error::custom(unknown_field_message(&key, fields)));
                }
                UnknownFields::Ignore => {
                    self.inner.next_value::<IgnoredAny>()?;
                }
            }
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.inner.next_value_seed(Seed {
            inner: seed,
            mode: self.mode,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A seed whose deserializer is wrapped.
struct Seed<S> {
    inner: S,
    mode: UnknownFields,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Strict::new(d, self.mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        user_id: i64,
        nick_name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Outer {
        app_id: i64,
        users: Vec<Inner>,
        tags: Option<Vec<String>>,
    }

    fn parse(body: &str, mode: UnknownFields) -> Result<Outer, String> {
        let mut de = serde_json::Deserializer::from_str(body);
        Outer::deserialize(Strict::new(&mut de, mode)).map_err(|e| e.to_string())
    }

    #[test]
    fn known_fields_pass_at_every_depth() {
        let body = r#"{"AppId":1,"Users":[{"UserId":2,"NickName":"a\"b"}],"Tags":["x"]}"#;
        let o = parse(body, UnknownFields::Refuse).unwrap();
        assert_eq!(o.users[0].nick_name.as_deref(), Some("a\"b"));
    }

    #[test]
    fn unknown_fields_are_refused_with_the_closest_name() {
        let e = parse(
            r#"{"AppId":1,"Users":[],"tags":["vip"]}"#,
            UnknownFields::Refuse,
        )
        .unwrap_err();
        assert!(
            e.contains(r#"unknown field "tags" (did you mean "Tags"?)"#),
            "{e}"
        );
        let e = parse(
            r#"{"AppId":1,"Users":[{"UserId":2,"Nickname":"x"}]}"#,
            UnknownFields::Refuse,
        )
        .unwrap_err();
        assert!(
            e.contains(r#""Nickname" (did you mean "NickName"?)"#),
            "{e}"
        );
        let e = parse(
            r#"{"AppId":1,"Users":[],"Zzzzzz":1}"#,
            UnknownFields::Refuse,
        )
        .unwrap_err();
        assert!(
            e.contains("known fields here are AppId, Users, Tags"),
            "{e}"
        );
    }

    #[test]
    fn ignore_skips_unknown_fields_and_their_values() {
        let body = r#"{"AppId":1,"x":{"deep":[1,{"y":2}]},"Users":[{"UserId":2,"q":null}]}"#;
        let o = parse(body, UnknownFields::Ignore).unwrap();
        assert_eq!(o.app_id, 1);
        assert_eq!(o.users[0].user_id, 2);
        assert!(parse(body, UnknownFields::Refuse).is_err());
    }

    #[test]
    fn a_struct_is_not_read_from_a_list() {
        let e = parse(r#"{"AppId":1,"Users":[[2,"x"]]}"#, UnknownFields::Ignore).unwrap_err();
        assert!(e.contains("expected an object"), "{e}");
    }

    #[test]
    fn duplicate_known_fields_are_still_refused() {
        let e = parse(r#"{"AppId":1,"AppId":2,"Users":[]}"#, UnknownFields::Refuse).unwrap_err();
        assert!(e.contains("duplicate field"), "{e}");
    }
}
