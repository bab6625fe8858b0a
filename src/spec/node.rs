//! A spanned YAML tree: every scalar, sequence, mapping and key keeps its byte span.
//!
//! Built from yaml-rust2's pull parser with an explicit stack instead of recursion, and with a
//! nesting limit, so a hostile file (`[[[[…` ten thousand deep) is an error, not a stack
//! overflow. Anchors, aliases and tags are refused: a pipeline is data a reader should see
//! whole, and aliases would let one node appear at two places with one span.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::SpecError;
use super::source_text::{Span, Spanned};

/// Deepest nesting of sequences and mappings accepted. Real pipelines stay below 8.
pub const MAX_DEPTH: usize = 64;

/// Most entries one list may hold. Real pipelines list a few paths per stage (a directory
/// counts as one dep); without a bound, a file of one-character items (`[a,a,a,…]`, 4 million
/// of them in 8 MiB) took 1.4 GB to validate, over a hundred bytes per two bytes of text.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// The text of a scalar or key: inline up to 24 bytes, on the heap beyond. Most values of a
/// pipeline are short (`command`, `deps`, `out/data`), and a `String` per value cost a 32-byte
/// heap block even for one character.
pub type Text = compact_str::CompactString;

/// A mapping key.
pub type Key = Spanned<Text>;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
    /// Set when this node was substituted from `${params.<name>}`: the param's definition.
    /// Boxed: rarely set, and inline it made every node of the tree 16 bytes larger.
    pub from_param: Option<Box<Span>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: Text,
    pub style: ScalarStyle,
}

/// Only plain scalars are typed (`5` is a number, `"5"` a string), as in YAML 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    Quoted,
    Block,
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarValue<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Scalar {
    pub fn resolve(&self) -> ScalarValue<'_> {
        if self.style != ScalarStyle::Plain {
            return ScalarValue::Str(&self.text);
        }
        resolve_plain(&self.text)
    }
}

/// Types a plain scalar. `2e-5` and `0.00002` both become the same `f64` (Rust's correctly
/// rounded parser), so two spellings of one learning rate hash alike downstream.
pub fn resolve_plain(text: &str) -> ScalarValue<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarValue::Null,
        "true" | "True" | "TRUE" => return ScalarValue::Bool(true),
        "false" | "False" | "FALSE" => return ScalarValue::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return ScalarValue::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return ScalarValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return ScalarValue::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) {
        if let Ok(int) = text.parse::<i64>() {
            return ScalarValue::Int(int);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(int) = i64::from_str_radix(hex, 16) {
            return ScalarValue::Int(int);
        }
    }
    if let Some(octal) = text.strip_prefix("0o") {
        if let Ok(int) = i64::from_str_radix(octal, 8) {
            return ScalarValue::Int(int);
        }
    }
    // YAML 1.2 float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let looks_numeric = digits.bytes().any(|byte| byte.is_ascii_digit())
        && digits
            .bytes()
            .all(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b'e' | b'E' | b'-' | b'+'))
        && !digits.starts_with(['e', 'E']);
    if looks_numeric {
        if let Ok(float) = text.parse::<f64>() {
            return ScalarValue::Float(float);
        }
    }
    ScalarValue::Str(text)
}

impl Node {
    pub fn scalar(text: impl Into<Text>, style: ScalarStyle, span: Span) -> Node {
        Node {
            span,
            value: Value::Scalar(Scalar {
                text: text.into(),
                style,
            }),
            from_param: None,
        }
    }

    pub fn empty_map(span: Span) -> Node {
        Node {
            span,
            value: Value::Map(Vec::new()),
            from_param: None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            Value::Scalar(_) | Value::Seq(_) => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(scalar) => Some(scalar),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// The value under `key` of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(entry_key, _)| entry_key.value == key)
            .map(|(_, node)| node)
    }

    /// Follows a path of mapping keys and sequence indexes (as decimal strings).
    pub fn lookup(&self, path: &[String]) -> Option<&Node> {
        let mut node = self;
        for step in path {
            node = match &node.value {
                Value::Map(_) => node.get(step)?,
                Value::Seq(items) => items.get(step.parse::<usize>().ok()?)?,
                Value::Scalar(_) => return None,
            };
        }
        Some(node)
    }

    /// Moves every span of the tree `by` bytes later: a spec file is parsed on its own and
    /// then placed after the pipeline in one [`super::SourceText`].
    pub fn shift(&mut self, by: usize) {
        let moved = |span: Span| Span::new(span.start() + by, span.end() + by);
        self.span = moved(self.span);
        if let Some(param) = &mut self.from_param {
            **param = moved(**param);
        }
        match &mut self.value {
            Value::Scalar(_) => {}
            Value::Seq(items) => items.iter_mut().for_each(|item| item.shift(by)),
            Value::Map(entries) => {
                for (key, value) in entries {
                    key.span = moved(key.span);
                    value.shift(by);
                }
            }
        }
    }

    /// The value as one line of flow YAML (`{ name: lora, r: 8 }`), for docs and lock files.
    pub fn flow_text(&self) -> String {
        match &self.value {
            Value::Scalar(scalar) => scalar.text.to_string(),
            Value::Seq(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Node::flow_text)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Map(entries) => format!(
                "{{ {} }}",
                entries
                    .iter()
                    .map(|(key, value)| format!("{}: {}", key.value, value.flow_text()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// A short description for "found …" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Map(_) => "a mapping".to_owned(),
            Value::Seq(_) => "a list".to_owned(),
            Value::Scalar(scalar) => match scalar.resolve() {
                ScalarValue::Null => "nothing (null)".to_owned(),
                ScalarValue::Bool(value) => format!("the boolean `{value}`"),
                ScalarValue::Int(value) => format!("the integer `{value}`"),
                ScalarValue::Float(_) => format!("the number `{}`", scalar.text),
                ScalarValue::Str(text) => format!("the string `{}`", abbreviate(text)),
            },
        }
    }
}

/// Keeps messages one line long whatever a user pasted into a value.
pub fn abbreviate(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or("");
    let mut short: String = first_line.chars().take(40).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// Converts yaml-rust2 markers (character indexes) to byte offsets.
struct Offsets<'a> {
    text: &'a str,
    /// Byte offset of each character; empty for ASCII text, where they are equal.
    char_to_byte: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Offsets<'a> {
        let char_to_byte = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices()
                .map(|(byte, _)| byte)
                .chain(std::iter::once(text.len()))
                .collect()
        };
        Offsets { text, char_to_byte }
    }

    fn byte(&self, marker: &Marker) -> usize {
        let index = marker.index();
        if self.char_to_byte.is_empty() {
            index.min(self.text.len())
        } else {
            self.char_to_byte
                .get(index)
                .copied()
                .unwrap_or(self.text.len())
        }
    }

    /// The end of a scalar token starting at `start` (yaml-rust2 reports only starts).
    fn scalar_end(&self, start: usize, value: &str, style: TScalarStyle) -> usize {
        let rest = &self.text[start..];
        // Searched only when needed: computed for every scalar, the search for the end of the
        // line made a one-line flow list of n items O(n²) (4 million items: minutes).
        let line_end = || start + rest.find('\n').unwrap_or(rest.len());
        match style {
            TScalarStyle::Plain if rest.starts_with(value) => start + value.len(),
            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                let quote = if style == TScalarStyle::SingleQuoted {
                    '\''
                } else {
                    '"'
                };
                let mut chars = rest.char_indices().skip(1).peekable();
                while let Some((index, character)) = chars.next() {
                    if character == '\\' && quote == '"' {
                        chars.next();
                    } else if character == quote {
                        if quote == '\'' && chars.peek().map(|(_, next)| *next) == Some('\'') {
                            chars.next();
                        } else {
                            return start + index + 1;
                        }
                    }
                }
                line_end()
            }
            _ => start + rest[..line_end() - start].trim_end().len(),
        }
    }

    /// Collection ends are reported at the next token; step back over blanks and comments.
    fn trim_back(&self, start: usize, end: usize) -> usize {
        let mut end = end.min(self.text.len()).max(start);
        loop {
            let trimmed = self.text[start..end].trim_end();
            let new_end = start + trimmed.len();
            // Drop a trailing comment line: the last line is a comment when, after its
            // indentation, it starts with `#`.
            let last_line_start = trimmed.rfind('\n').map_or(0, |index| index + 1);
            if new_end > start && trimmed[last_line_start..].trim_start().starts_with('#') {
                end = start + last_line_start;
                continue;
            }
            return new_end.max(start);
        }
    }
}

enum Frame {
    Seq {
        start: usize,
        items: Vec<Node>,
        /// Set once the list passed [`MAX_LIST_ENTRIES`] (reported once); later items are
        /// read and dropped.
        overflowed: bool,
    },
    Map {
        start: usize,
        entries: Vec<(Key, Node)>,
        /// The key waiting for its value; `false` when it duplicates an earlier key, so its
        /// value is dropped (the error was recorded when the key was read).
        pending_key: Option<(Key, bool)>,
        /// Hash of each key → its position in `entries`, to find a duplicate without
        /// comparing every pair. Hashes, not copies of the keys: the copies were a third of
        /// the parser's memory for the 50,000 keys of a large `stages:`.
        seen: HashMap<u64, usize>,
    },
}

/// Parses YAML text into a spanned tree, with every error found. Duplicate keys are
/// collected (the first one wins) and the tree is still returned; a syntax error ends parsing
/// and gives no tree. `None` without errors for a file without any document.
pub fn parse_yaml(text: &str) -> (Option<Node>, Vec<SpecError>) {
    let mut errors = Vec::new();
    match parse_into(text, &mut errors) {
        Ok(root) => (root, errors),
        Err(fatal) => {
            errors.push(fatal);
            (None, errors)
        }
    }
}

fn parse_into(text: &str, errors: &mut Vec<SpecError>) -> Result<Option<Node>, SpecError> {
    let offsets = Offsets::new(text);
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let key_hasher = RandomState::new();

    loop {
        let (event, marker) = match parser.next_token() {
            Ok(token) => token,
            Err(error) => {
                // An error at the end of the file (an unclosed `{`) would label an empty line
                // past the text; point at the last character instead.
                let content_end = text.trim_end().len();
                let at = offsets
                    .byte(error.marker())
                    .min(content_end.saturating_sub(1));
                // The scanner counts flow nesting (`[[[…`) in a u8 and fails first there.
                if error.info().contains("recursion limit") {
                    return Err(SpecError::TooDeep {
                        limit: MAX_DEPTH,
                        span: Span::new(at, at + 1).into(),
                    });
                }
                return Err(SpecError::Syntax {
                    message: error.info().to_owned(),
                    span: Span::new(at, at).into(),
                });
            }
        };
        let at = offsets.byte(&marker);
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(SpecError::MultipleDocuments {
                        span: Span::new(at, at + 3).into(),
                    });
                }
            }
            Event::Alias(_) => {
                let end = offsets.scalar_end(at, "", TScalarStyle::Literal);
                return Err(SpecError::Unsupported {
                    what: "aliases (`*name`)",
                    span: Span::new(at, end).into(),
                });
            }
            Event::Scalar(value, style, anchor, tag) => {
                check_anchor_and_tag(anchor, tag.is_some(), at, &offsets)?;
                let end = offsets.scalar_end(at, &value, style);
                let style = match style {
                    TScalarStyle::Plain => ScalarStyle::Plain,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => ScalarStyle::Quoted,
                    TScalarStyle::Literal | TScalarStyle::Folded => ScalarStyle::Block,
                };
                let node = Node::scalar(value, style, Span::new(at, end));
                push_value(&mut stack, &mut root, node, &key_hasher, errors)?;
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                let is_sequence = matches!(event, Event::SequenceStart(..));
                check_anchor_and_tag(anchor, tag.is_some(), at, &offsets)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(SpecError::TooDeep {
                        limit: MAX_DEPTH,
                        span: Span::new(at, at + 1).into(),
                    });
                }
                stack.push(if is_sequence {
                    Frame::Seq {
                        start: at,
                        items: Vec::new(),
                        overflowed: false,
                    }
                } else {
                    Frame::Map {
                        start: at,
                        entries: Vec::new(),
                        pending_key: None,
                        seen: HashMap::new(),
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = stack
                    .pop()
                    .expect("the parser balances collection start and end events");
                // A flow collection ends at its `}` or `]`, which belongs to it: a label over
                // `{ name: lora, r: 4 }` that stopped before the brace looked cut off. A block
                // collection ends at the next token; step back over blanks and comments.
                let end = |start: usize| match text.as_bytes().get(at) {
                    Some(b'}' | b']') => at + 1,
                    _ => offsets.trim_back(start, at),
                };
                // Exact capacities: the doubling growth left up to half of every list unused,
                // a fifth of the tree's memory for a file of many small mappings.
                let node = match frame {
                    Frame::Seq {
                        start, mut items, ..
                    } => {
                        items.shrink_to_fit();
                        Node {
                            span: Span::new(start, end(start)),
                            value: Value::Seq(items),
                            from_param: None,
                        }
                    }
                    Frame::Map {
                        start, mut entries, ..
                    } => {
                        entries.shrink_to_fit();
                        Node {
                            span: Span::new(start, end(start)),
                            value: Value::Map(entries),
                            from_param: None,
                        }
                    }
                };
                push_value(&mut stack, &mut root, node, &key_hasher, errors)?;
            }
        }
    }
    Ok(root)
}

fn check_anchor_and_tag(
    anchor: usize,
    tagged: bool,
    at: usize,
    offsets: &Offsets<'_>,
) -> Result<(), SpecError> {
    if anchor != 0 || tagged {
        // The event is marked at the node after the anchor or tag; label the `&name` or
        // `!tag` itself, the nearest one before it.
        let indicator = if anchor != 0 { '&' } else { '!' };
        let mut at = offsets.text[..at].rfind(indicator).unwrap_or(at);
        while at > 0 && offsets.text.as_bytes()[at - 1] == b'!' {
            at -= 1;
        }
        let rest = &offsets.text[at..];
        let width = rest.find([' ', '\n']).unwrap_or(rest.len()).max(1);
        return Err(SpecError::Unsupported {
            what: if anchor != 0 {
                "anchors (`&name`)"
            } else {
                "tags (`!tag`)"
            },
            span: Span::new(at, at + width).into(),
        });
    }
    Ok(())
}

fn push_value(
    stack: &mut [Frame],
    root: &mut Option<Node>,
    node: Node,
    key_hasher: &RandomState,
    errors: &mut Vec<SpecError>,
) -> Result<(), SpecError> {
    match stack.last_mut() {
        None => *root = Some(node),
        Some(Frame::Seq {
            start,
            items,
            overflowed,
        }) => {
            if items.len() < MAX_LIST_ENTRIES {
                items.push(node);
            } else if !*overflowed {
                *overflowed = true;
                errors.push(SpecError::TooManyEntries {
                    limit: MAX_LIST_ENTRIES,
                    span: Span::new(*start, *start + 1).into(),
                });
            }
        }
        Some(Frame::Map {
            entries,
            pending_key,
            seen,
            ..
        }) => match pending_key.take() {
            Some((key, keep)) => {
                if keep {
                    entries.push((key, node));
                }
            }
            None => {
                let Value::Scalar(scalar) = node.value else {
                    return Err(SpecError::NonScalarKey {
                        span: node.span.into(),
                    });
                };
                let key = Spanned {
                    value: scalar.text,
                    span: node.span,
                };
                let hash = key_hasher.hash_one(&key.value);
                // Two keys with one hash are compared in full; different keys with equal
                // 64-bit keyed hashes are found by the scan and cost only time.
                let first = match seen.get(&hash) {
                    Some(&position) if entries[position].0.value == key.value => {
                        Some(entries[position].0.span)
                    }
                    Some(_) => entries
                        .iter()
                        .find(|(other, _)| other.value == key.value)
                        .map(|(other, _)| other.span),
                    None => None,
                };
                if let Some(first) = first {
                    // Keep parsing so every duplicate in the file is reported in one pass.
                    errors.push(SpecError::DuplicateKey {
                        // A generated key can be megabytes long; the label shows where it is.
                        key: abbreviate(&key.value),
                        first: Some(first.into()),
                        note: String::new(),
                        second: key.span.into(),
                    });
                    *pending_key = Some((key, false));
                } else {
                    // The value arrives next and is pushed at this position.
                    seen.entry(hash).or_insert(entries.len());
                    *pending_key = Some((key, true));
                }
            }
        },
    }
    Ok(())
}
