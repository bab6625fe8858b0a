//! A serde `Deserializer` over a spanned [`Node`], so the typed settings structs of
//! `model::stages` can be filled straight from the raw layer while every error keeps the span
//! of the node it is about.
//!
//! Two things differ from a plain data format, both for diagnostics:
//! - unknown keys of a struct are not an error that stops deserialization: they are collected
//!   (with the struct's field list, for did-you-mean) and skipped, so one pass reports all of
//!   them;
//! - an error raised without a span (serde's own, a `try_from` conversion) gets the span of the
//!   innermost node being deserialized when it surfaced;
//! - a wrong value does not hide the ones after it: serde stops at the first error, so
//!   [`from_node`] records it, skips the entry that holds it (as if it were not written) and
//!   deserializes again, until the rest is clean. Errors that only follow from a skipped entry
//!   (the "missing setting" of a required one, a conversion over a block that lost an entry)
//!   are not reported again.
//!
//! Messages are in the user's words, not serde's: "expected a whole number ≥ 0, found -1",
//! never "invalid value: integer `-1`, expected usize".

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor};

use crate::spec::{
    resolve_plain, suggestion_help, Key, Node, ScalarStyle, ScalarValue, Span, Value,
};

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
    /// For "missing setting": the setting, so a required entry that recovery skipped is not
    /// reported missing as well.
    missing: Option<&'static str>,
}

impl DeError {
    fn new(message: String) -> DeError {
        DeError {
            message,
            help: None,
            span: None,
            from_param: None,
            missing: None,
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
            self.from_param = node.from_param.as_deref().copied();
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

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> DeError {
        DeError::new(format!(
            "expected {}, found {}",
            expected_in_words(expected),
            unexpected_in_words(&unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> DeError {
        <DeError as de::Error>::invalid_type(unexpected, expected)
    }

    fn missing_field(field: &'static str) -> DeError {
        let mut error = DeError::new(format!("missing setting `{field}`"));
        error.missing = Some(field);
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

/// What serde's primitive visitors expect (`usize`, `f64`…), in the words of the pipeline file.
fn expected_in_words(expected: &dyn Expected) -> String {
    let expected = expected.to_string();
    match expected.as_str() {
        "usize" | "u64" => "a whole number ≥ 0".to_owned(),
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "u16" => format!("a whole number from 0 to {}", u16::MAX),
        "u8" => format!("a whole number from 0 to {}", u8::MAX),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        _ => expected,
    }
}

/// What was found instead, as the pipeline file spells it.
fn unexpected_in_words(unexpected: &Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Signed(value) => value.to_string(),
        Unexpected::Unsigned(value) => value.to_string(),
        Unexpected::Float(value) => value.to_string(),
        Unexpected::Bool(value) => format!("`{value}`"),
        Unexpected::Str(text) => format!("the string `{}`", crate::spec::abbreviate(text)),
        Unexpected::Unit => "nothing (null)".to_owned(),
        Unexpected::Seq => "a list".to_owned(),
        Unexpected::Map => "a mapping".to_owned(),
        other => other.to_string(),
    }
}

/// Deserializes one node. `unknown` collects the unknown keys of every struct below it;
/// entries whose key span is in `skipped` are passed over, as if not written.
pub(crate) struct NodeDeserializer<'a> {
    pub node: &'a Node,
    pub key_span: Option<Span>,
    pub unknown: &'a RefCell<Vec<UnknownField>>,
    pub skipped: &'a [Span],
}

impl<'a> NodeDeserializer<'a> {
    fn mismatch(&self, expected: &str) -> DeError {
        let mut error = DeError::new(format!(
            "expected {expected}, found {}",
            self.node.describe()
        ))
        .placed(self.node, self.key_span);
        // `epochs: "2"`: quoting makes a string; say so rather than leave the user puzzled.
        if let Value::Scalar(scalar) = &self.node.value {
            if scalar.style == ScalarStyle::Quoted
                && !matches!(
                    resolve_plain(&scalar.text),
                    ScalarValue::Str(_) | ScalarValue::Null
                )
            {
                error.help = Some(format!(
                    "write `{}` without quotes: a quoted value is a string",
                    scalar.text
                ));
            }
        }
        error
    }

    fn resolved(&self) -> Option<ScalarValue<'a>> {
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
            skipped: self.skipped,
        }
    }
}

macro_rules! integer {
    ($($method:ident => $type:literal),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.resolved() {
                Some(ScalarValue::Int(value)) => visitor.visit_i64(value).map_err(|error: DeError| error.placed(self.node, self.key_span)),
                _ => Err(self.mismatch(&expected_in_words(&$type))),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Scalar(scalar) => match scalar.resolve() {
                ScalarValue::Null => visitor.visit_unit(),
                ScalarValue::Bool(value) => visitor.visit_bool(value),
                ScalarValue::Int(value) => visitor.visit_i64(value),
                ScalarValue::Float(value) => visitor.visit_f64(value),
                ScalarValue::Str(text) => visitor.visit_str(text),
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

    integer!(
        deserialize_i8 => "i8",
        deserialize_i16 => "i16",
        deserialize_i32 => "i32",
        deserialize_i64 => "i64",
        deserialize_u8 => "u8",
        deserialize_u16 => "u16",
        deserialize_u32 => "u32",
        deserialize_u64 => "u64"
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.resolved() {
            Some(ScalarValue::Int(value)) => visitor.visit_f64(value as f64),
            Some(ScalarValue::Float(value)) => visitor.visit_f64(value),
            _ => return Err(self.mismatch("a number")),
        };
        result.map_err(|error: DeError| error.placed(self.node, self.key_span))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.resolved() {
            Some(ScalarValue::Bool(value)) => visitor
                .visit_bool(value)
                .map_err(|error: DeError| error.placed(self.node, self.key_span)),
            _ => Err(self.mismatch("`true` or `false`")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Scalar(scalar)
                if !(scalar.style == ScalarStyle::Plain
                    && scalar.resolve() == ScalarValue::Null) =>
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
            Some(ScalarValue::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.resolved() {
            Some(ScalarValue::Null) => visitor.visit_unit(),
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
                        .filter(|(key, _)| !self.skipped.contains(&key.span))
                        .map(|(key, _)| UnknownField {
                            key: key.value.to_string(),
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
                || self.parent.skipped.contains(&key.span)
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
                    skipped: self.parent.skipped,
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

/// Recovery passes per block at most: each pass skips one more entry, so a block of thousands
/// of wrong values would otherwise cost thousands of passes over it; the first ones are enough
/// to fix.
const MAX_PASSES: usize = 64;

/// What [`from_node`] found: every error (placed), the unknown keys, and the value read with
/// the entries in `skipped` left out (so their defaults), when that much could be read. The
/// node is valid exactly when `errors` is empty; with errors, `value` serves only to check
/// the entries that were fine.
pub(crate) struct Outcome<T> {
    pub value: Option<T>,
    pub errors: Vec<DeError>,
    pub unknown: Vec<UnknownField>,
    /// Key spans of the entries left out because they hold an error.
    pub skipped: Vec<Span>,
}

/// Fills `T` from `node`; `key_span` is the key the node sits under. Every wrong value is
/// reported, not only the first (see the module doc).
pub(crate) fn from_node<T: de::DeserializeOwned>(
    node: &Node,
    key_span: Option<Span>,
) -> Outcome<T> {
    let mut outcome = Outcome {
        value: None,
        errors: Vec::new(),
        unknown: Vec::new(),
        skipped: Vec::new(),
    };
    for _ in 0..MAX_PASSES {
        let skipped = &mut outcome.skipped;
        let unknown = RefCell::new(Vec::new());
        let result = T::deserialize(NodeDeserializer {
            node,
            key_span,
            unknown: &unknown,
            skipped: skipped.as_slice(),
        })
        .map_err(|error: DeError| error.placed(node, key_span));
        for field in unknown.into_inner() {
            if !outcome.unknown.contains(&field) {
                outcome.unknown.push(field);
            }
        }
        let error = match result {
            Ok(value) => {
                outcome.value = Some(value);
                return outcome;
            }
            Err(error) => error,
        };
        let chain = error
            .span
            .and_then(|span| entries_to(node, key_span, span))
            .unwrap_or_default();
        let at = chain.last().map_or(node, |(_, value)| *value);
        if !follows_from_skipped(&error, at, skipped) && !outcome.errors.contains(&error) {
            outcome.errors.push(error);
        }
        match chain
            .iter()
            .rev()
            .find(|(key, _)| !skipped.contains(&key.span))
        {
            Some((key, _)) => skipped.push(key.span),
            None => return outcome,
        }
    }
    outcome
}

/// Whether `error`, found at `node`, is only a consequence of entries that recovery skipped:
/// the required setting it says is missing was skipped, or (any other error of a block) an
/// entry inside the block was.
fn follows_from_skipped(error: &DeError, node: &Node, skipped: &[Span]) -> bool {
    match (error.missing, &node.value) {
        (Some(field), Value::Map(entries)) => entries
            .iter()
            .any(|(key, _)| key.value == field && skipped.contains(&key.span)),
        (Some(_), _) => false,
        (None, _) => contains_skipped(node, skipped),
    }
}

fn contains_skipped(node: &Node, skipped: &[Span]) -> bool {
    match &node.value {
        Value::Scalar(_) => false,
        Value::Seq(items) => items.iter().any(|item| contains_skipped(item, skipped)),
        Value::Map(entries) => entries
            .iter()
            .any(|(key, value)| skipped.contains(&key.span) || contains_skipped(value, skipped)),
    }
}

/// The map entries from `root` down to the node (or key) at `span`, outermost first; empty
/// when `span` is `root` itself (or the key it sits under), `None` when it is not below it.
fn entries_to(root: &Node, key_span: Option<Span>, span: Span) -> Option<Vec<(&Key, &Node)>> {
    if root.span == span || key_span == Some(span) {
        return Some(Vec::new());
    }
    match &root.value {
        Value::Scalar(_) => None,
        Value::Seq(items) => items.iter().find_map(|item| entries_to(item, None, span)),
        Value::Map(entries) => entries.iter().find_map(|(key, value)| {
            let mut chain = entries_to(value, Some(key.span), span)?;
            chain.insert(0, (key, value));
            Some(chain)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stages::Configure;
    use crate::spec::parse_yaml;

    fn configure(text: &str) -> (Result<Configure, DeError>, Vec<UnknownField>) {
        let outcome = parse(text);
        let result = match (outcome.value, outcome.errors.first()) {
            (Some(value), None) => Ok(value),
            (_, Some(error)) => Err(error.clone()),
            (None, None) => unreachable!("no value without an error"),
        };
        (result, outcome.unknown)
    }

    fn parse(text: &str) -> Outcome<Configure> {
        let (root, errors) = parse_yaml(text);
        assert!(errors.is_empty());
        from_node(&root.expect("document"), None)
    }

    fn messages(text: &str) -> Vec<(String, String)> {
        parse(text)
            .errors
            .iter()
            .map(|error| {
                let span = error.span.expect("placed");
                (
                    text[span.start()..span.end()].to_owned(),
                    error.message.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn every_wrong_value_of_a_block_is_reported() {
        let text = "epochs: -1\nbatch_size: x\nlearning_rate: 1e-4\nseed: -3\nschedule: cosin\n";
        assert_eq!(
            messages(text),
            [
                (
                    "-1".to_owned(),
                    "expected a whole number ≥ 0, found -1".to_owned()
                ),
                (
                    "x".to_owned(),
                    "expected a whole number ≥ 0, found the string `x`".to_owned()
                ),
                (
                    "-3".to_owned(),
                    "expected a whole number ≥ 0, found -3".to_owned()
                ),
                ("cosin".to_owned(), "unknown value `cosin`".to_owned()),
            ]
        );
    }

    #[test]
    fn wrong_values_in_nested_blocks_and_lists_are_all_reported() {
        let text = "early_stopping: { patience: -2, min_delta: x }\nmethod: { name: lora, r: 4 }\nepochs: 1.5\n";
        let found = messages(text);
        assert_eq!(
            found,
            [
                (
                    "-2".to_owned(),
                    "expected a whole number ≥ 0, found -2".to_owned()
                ),
                (
                    "x".to_owned(),
                    "expected a number, found the string `x`".to_owned()
                ),
                (
                    "1.5".to_owned(),
                    "expected a whole number ≥ 0, found the number `1.5`".to_owned()
                ),
            ]
        );
    }

    /// `method:` is a tagged block; each of its wrong values is reported at the value, like
    /// those of the `with:` block around it, and settings of another method are refused.
    #[test]
    fn every_wrong_value_inside_method_is_reported_at_the_value() {
        let text = "method: { name: lora, r: -1, alpha: x, dropout: [1] }\nepochs: 1.5\n";
        assert_eq!(
            messages(text),
            [
                (
                    "-1".to_owned(),
                    "expected a whole number ≥ 0, found -1".to_owned()
                ),
                (
                    "x".to_owned(),
                    "expected a number, found the string `x`".to_owned()
                ),
                // A list is labelled at its key, as everywhere (see `DeError::placed`).
                (
                    "dropout".to_owned(),
                    "expected a number, found a list".to_owned()
                ),
                (
                    "1.5".to_owned(),
                    "expected a whole number ≥ 0, found the number `1.5`".to_owned()
                ),
            ]
        );
        assert_eq!(
            messages("method: { name: lorra }\n"),
            [("lorra".to_owned(), "unknown value `lorra`".to_owned())]
        );
        assert_eq!(
            messages("method: { name: full, r: 4, targets: [query] }\n"),
            [(
                "method".to_owned(),
                "`r`, `targets` are not settings of method `full` (it takes no other settings)"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn a_method_block_reads_as_before_and_round_trips() {
        let outcome = parse("method: { name: lora, alpha: 32 }\n");
        assert!(outcome.errors.is_empty());
        let method = outcome.value.expect("valid").method;
        assert_eq!(
            method,
            crate::model::stages::Method::Lora {
                r: 8,
                alpha: 32.0,
                dropout: 0.0,
                targets: vec!["query".to_owned(), "value".to_owned()],
            }
        );
        let json = serde_json::to_value(&method).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({ "name": "lora", "r": 8, "alpha": 32.0, "dropout": 0.0, "targets": ["query", "value"] })
        );
        let back: crate::model::stages::Method = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, method);
    }

    #[test]
    fn a_skipped_required_setting_is_not_also_reported_missing() {
        let (root, errors) = parse_yaml("patience: x\n");
        assert!(errors.is_empty());
        let outcome: Outcome<crate::model::stages::EarlyStopping> =
            from_node(&root.expect("document"), None);
        let found: Vec<&str> = outcome.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(found, ["expected a whole number ≥ 0, found the string `x`"]);
        assert!(outcome.value.is_none());
    }

    #[test]
    fn the_value_without_the_wrong_entries_is_kept_for_further_checks() {
        let outcome = parse("epochs: x\nwarmup_ratio: 1.5\n");
        assert_eq!(outcome.errors.len(), 1);
        let value = outcome.value.expect("readable without `epochs`");
        assert_eq!((value.epochs, value.warmup_ratio), (1, 1.5));
        assert_eq!(outcome.skipped.len(), 1);
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
        assert_eq!(&text[span.start()..span.end()], "two");
        assert_eq!(
            error.message,
            "expected a whole number ≥ 0, found the string `two`"
        );
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
