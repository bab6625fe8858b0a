//! A serde `Deserializer` over a spanned [`Node`], so the typed settings structs of
//! `model::stages` can be filled straight from the raw layer while every error keeps the span
//! of the node it is about.
//!
//! Two things differ from a plain data format, both for diagnostics:
//! - unknown keys of a struct are not an error that stops deserialization: they are collected
//!   (with the struct's field list, for did-you-mean) and skipped, so one pass reports all of
//!   them;
//! - an error raised without a span (serde's own, a `try_from` conversion) gets the span of the
//!   innermost node being deserialized when it surfaced.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::spec::{suggestion_help, Key, Node, Resolved, ScalarStyle, Span, Value};

/// A key that the target struct does not have.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnknownField {
    pub key: String,
    pub span: Span,
    pub expected: &'static [&'static str],
}

/// A deserialization error, placed at a node when one is known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeError {
    pub message: String,
    pub help: Option<String>,
    pub span: Option<Span>,
    /// The param definition the offending value was substituted from.
    pub from_param: Option<Span>,
}

impl DeError {
    fn new(message: String) -> DeError {
        DeError {
            message,
            help: None,
            span: None,
            from_param: None,
        }
    }

    /// Places a span-less error at `node` (a mapping or list is placed at its key, because a
    /// label over a 20-line block says less than one on the key).
    fn placed(mut self, node: &Node, key_span: Option<Span>) -> DeError {
        if self.span.is_none() {
            self.span = Some(match (&node.value, key_span) {
                (Value::Scalar(_), _) | (_, None) => node.span,
                (Value::Map(_) | Value::Seq(_), Some(key)) => key,
            });
            self.from_param = node.from_param;
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> DeError {
        DeError::new(message.to_string())
    }

    fn missing_field(field: &'static str) -> DeError {
        let mut error = DeError::new(format!("missing setting `{field}`"));
        error.help = Some(format!(
            "add `{field}: …`; see docs/spec.md for what it takes"
        ));
        error
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> DeError {
        let mut error = DeError::new(format!("unknown value `{variant}`"));
        error.help = Some(suggestion_help(variant, expected, "value"));
        error
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> DeError {
        let mut error = DeError::new(format!("unknown setting `{field}`"));
        error.help = Some(suggestion_help(field, expected, "setting"));
        error
    }
}

/// Deserializes one node. `unknown` collects the unknown keys of every struct below it.
pub(crate) struct NodeDeserializer<'a> {
    pub node: &'a Node,
    pub key_span: Option<Span>,
    pub unknown: &'a RefCell<Vec<UnknownField>>,
}

impl<'a> NodeDeserializer<'a> {
    fn mismatch(&self, expected: &str) -> DeError {
        DeError::new(format!(
            "expected {expected}, found {}",
            self.node.describe()
        ))
        .placed(self.node, self.key_span)
    }

    fn resolved(&self) -> Option<Resolved<'a>> {
        match &self.node.value {
            Value::Scalar(scalar) => Some(scalar.resolve()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    fn child(&self, node: &'a Node, key_span: Option<Span>) -> NodeDeserializer<'a> {
        NodeDeserializer {
            node,
            key_span,
            unknown: self.unknown,
        }
    }
}

macro_rules! integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.resolved() {
                Some(Resolved::Int(value)) => visitor.visit_i64(value).map_err(|error: DeError| error.placed(self.node, self.key_span)),
                _ => Err(self.mismatch("an integer")),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Scalar(scalar) => match scalar.resolve() {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(value) => visitor.visit_bool(value),
                Resolved::Int(value) => visitor.visit_i64(value),
                Resolved::Float(value) => visitor.visit_f64(value),
                Resolved::Str(text) => visitor.visit_str(text),
            },
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                parent: &self,
            }),
            Value::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
                fields: None,
                parent: &self,
            }),
        };
        result.map_err(|error: DeError| error.placed(self.node, self.key_span))
    }

    integer!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.resolved() {
            Some(Resolved::Int(value)) => visitor.visit_f64(value as f64),
            Some(Resolved::Float(value)) => visitor.visit_f64(value),
            _ => return Err(self.mismatch("a number")),
        };
        result.map_err(|error: DeError| error.placed(self.node, self.key_span))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.resolved() {
            Some(Resolved::Bool(value)) => visitor
                .visit_bool(value)
                .map_err(|error: DeError| error.placed(self.node, self.key_span)),
            _ => Err(self.mismatch("`true` or `false`")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar(scalar)
                if !(scalar.style == ScalarStyle::Plain && scalar.resolve() == Resolved::Null) =>
            {
                visitor
                    .visit_str(&scalar.text)
                    .map_err(|error: DeError| error.placed(self.node, self.key_span))
            }
            _ => Err(self.mismatch("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.resolved() {
            Some(Resolved::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.resolved() {
            Some(Resolved::Null) => visitor.visit_unit(),
            _ => Err(self.mismatch("nothing (null)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => visitor
                .visit_seq(SeqAccess {
                    items: items.iter(),
                    parent: &self,
                })
                .map_err(|error: DeError| error.placed(self.node, self.key_span)),
            _ => Err(self.mismatch("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => visitor
                .visit_map(MapAccess {
                    entries: entries.iter(),
                    value: None,
                    fields: None,
                    parent: &self,
                })
                .map_err(|error: DeError| error.placed(self.node, self.key_span)),
            _ => Err(self.mismatch("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => {
                // Collected before visiting: a type error stops the visitor, and the unknown
                // keys after it would go unreported.
                self.unknown.borrow_mut().extend(
                    entries
                        .iter()
                        .filter(|(key, _)| !fields.contains(&key.value.as_str()))
                        .map(|(key, _)| UnknownField {
                            key: key.value.clone(),
                            span: key.span,
                            expected: fields,
                        }),
                );
                visitor
                    .visit_map(MapAccess {
                        entries: entries.iter(),
                        value: None,
                        fields: Some(fields),
                        parent: &self,
                    })
                    .map_err(|error: DeError| error.placed(self.node, self.key_span))
            }
            _ => Err(self.mismatch("a mapping")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Scalar(scalar) => visitor.visit_enum(scalar.text.as_str().into_deserializer()),
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor.visit_enum(EnumAccess {
                    key,
                    value: self.child(value, Some(key.span)),
                })
            }
            _ => return Err(self.mismatch("a name")),
        };
        result.map_err(|error: DeError| error.placed(self.node, self.key_span))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a, 'p> {
    items: std::slice::Iter<'a, Node>,
    parent: &'p NodeDeserializer<'a>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(self.parent.child(item, None))
            .map(Some)
            .map_err(|error: DeError| error.placed(item, None))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a, 'p> {
    entries: std::slice::Iter<'a, (Key, Node)>,
    value: Option<(&'a Key, &'a Node)>,
    /// The struct's fields when deserializing a struct: other keys are collected and skipped.
    fields: Option<&'static [&'static str]>,
    parent: &'p NodeDeserializer<'a>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (key, value) in self.entries.by_ref() {
            if self
                .fields
                .is_some_and(|fields| !fields.contains(&key.value.as_str()))
            {
                continue;
            }
            self.value = Some((key, value));
            let key_node = Node::scalar(key.value.clone(), ScalarStyle::Quoted, key.span);
            return seed
                .deserialize(NodeDeserializer {
                    node: &key_node,
                    key_span: None,
                    unknown: self.parent.unknown,
                })
                .map(Some)
                .map_err(|mut error| {
                    if error.span.is_none() {
                        error.span = Some(key.span);
                    }
                    error
                });
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, value) = self
            .value
            .take()
            .ok_or_else(|| DeError::new("a value was requested before its key".to_owned()))?;
        seed.deserialize(self.parent.child(value, Some(key.span)))
            .map_err(|error: DeError| error.placed(value, Some(key.span)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'a> {
    key: &'a Key,
    value: NodeDeserializer<'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = NodeDeserializer<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let key_span = self.key.span;
        let variant = seed
            .deserialize(self.key.value.as_str().into_deserializer())
            .map_err(|mut error: DeError| {
                error.span.get_or_insert(key_span);
                error
            })?;
        Ok((variant, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Err(self.mismatch("no settings for this variant"))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

/// Fills `T` from `node`; `key_span` is the key the node sits under.
pub(crate) fn from_node<T: de::DeserializeOwned>(
    node: &Node,
    key_span: Option<Span>,
) -> (Result<T, DeError>, Vec<UnknownField>) {
    let unknown = RefCell::new(Vec::new());
    let result = T::deserialize(NodeDeserializer {
        node,
        key_span,
        unknown: &unknown,
    })
    .map_err(|error: DeError| error.placed(node, key_span));
    (result, unknown.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stages::Configure;
    use crate::spec::parse_yaml;

    fn configure(text: &str) -> (Result<Configure, DeError>, Vec<UnknownField>) {
        let (root, errors) = parse_yaml(text);
        assert!(errors.is_empty());
        from_node(&root.expect("document"), None)
    }

    #[test]
    fn all_unknown_keys_are_collected_and_the_rest_still_deserializes() {
        let (result, unknown) = configure("learning_rat: 1e-4\nepochs: 2\nbatchsize: 8\n");
        let keys: Vec<&str> = unknown.iter().map(|field| field.key.as_str()).collect();
        assert_eq!(keys, ["learning_rat", "batchsize"]);
        assert_eq!(result.expect("known keys are valid").epochs, 2);
    }

    #[test]
    fn a_type_error_points_at_the_value() {
        let text = "epochs: two\n";
        let (result, _) = configure(text);
        let error = result.expect_err("`two` is not an integer");
        let span = error.span.expect("placed");
        assert_eq!(&text[span.start..span.end], "two");
        assert_eq!(error.message, "expected an integer, found the string `two`");
    }

    #[test]
    fn number_spellings_resolve_alike() {
        let (a, _) = configure("learning_rate: 2e-5\n");
        let (b, _) = configure("learning_rate: 0.00002\n");
        assert_eq!(
            a.expect("valid").learning_rate,
            b.expect("valid").learning_rate
        );
    }

    #[test]
    fn an_unknown_enum_value_suggests_the_closest() {
        let (result, _) = configure("schedule: cosin\n");
        let error = result.expect_err("not a schedule");
        assert_eq!(error.help.as_deref(), Some("did you mean `cosine`?"));
    }
}
