//! The `params:` block and `${params.…}` substitution.
//!
//! Contract: param names are identifiers; a whole-value use (`"${params.lr}"`) keeps the
//! param's type and a use inside text splices its text; params may use params, and a loop is
//! one error naming it. Substitution is bounded ([`MAX_EXPANSION`]) and the error sits at the
//! use that passes the bound. A use that cannot be resolved leaves [`UNRESOLVED`] behind, so
//! the typed-settings step does not report it a second time.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use super::invalid;
use crate::model::error::ModelError;
use crate::spec::{abbreviate, suggestion_help, Node, RawPipeline, ScalarStyle, Span, Value};

pub(super) struct Param {
    pub(super) key_span: Span,
    pub(super) node: Node,
}

pub(super) fn check_params(
    raw: &RawPipeline,
    errors: &mut Vec<ModelError>,
) -> BTreeMap<String, Param> {
    let mut params = BTreeMap::new();
    let Some((_, node)) = &raw.params else {
        return params;
    };
    let Some(entries) = node.as_map() else {
        errors.push(invalid(
            format!(
                "`params` must be a mapping of names to values, not {}",
                node.describe()
            ),
            node,
            "expected `name: value` entries",
            "write e.g. `params: { lr: 5e-5, max_length: 64 }`".to_owned(),
        ));
        return params;
    };
    for (key, value) in entries {
        if !is_identifier(&key.value) {
            errors.push(ModelError::InvalidValue {
                message: format!("invalid param name `{}`", key.value),
                span: key.span.into(),
                label: "not a valid param name".to_owned(),
                param: None,
                help: "use letters, digits, `_` and `-`, starting with a letter or `_`, so `${params.<name>}` can refer to it".to_owned(),
            });
            continue;
        }
        params.insert(
            key.value.to_string(),
            Param {
                key_span: key.span,
                node: value.clone(),
            },
        );
    }
    params
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

/// The most `${params.…}` substitution may add to a pipeline: bytes of text, plus
/// [`NODE_COST`] for each node a whole-value use copies. Without a bound, a 266 KB file (one
/// 200 KB param used 6,000 times) took 2.4 GB to validate, and params using params could
/// double at each level. Real pipelines add kilobytes.
pub const MAX_EXPANSION: usize = 8 * 1024 * 1024;

/// About what one node of the tree costs in memory besides its text.
const NODE_COST: usize = 64;

/// The params while stages are substituted: each param's value with its own references
/// resolved (once, on its first use), and how much substitution has added so far.
pub(super) struct Substitution<'a> {
    params: &'a BTreeMap<String, Param>,
    resolved: RefCell<HashMap<String, Resolution>>,
    /// The params being resolved, outermost first: using one of them again is a loop.
    resolving: RefCell<Vec<String>>,
    expanded: Cell<usize>,
    /// Set when the bound is passed: later uses stay unresolved without another error.
    exceeded: Cell<bool>,
}

enum Resolution {
    Resolved {
        node: Node,
        cost: usize,
    },
    /// Its value has an error, reported once, at the value.
    Failed,
}

impl<'a> Substitution<'a> {
    pub(super) fn new(params: &'a BTreeMap<String, Param>) -> Substitution<'a> {
        Substitution {
            params,
            resolved: RefCell::new(HashMap::new()),
            resolving: RefCell::new(Vec::new()),
            expanded: Cell::new(0),
            exceeded: Cell::new(false),
        }
    }

    /// Resolves the references in param `name`'s value (first use only); its cost, or `None`
    /// when it cannot be resolved (the error is already recorded).
    fn resolve(&self, name: &str, use_span: Span, errors: &mut Vec<ModelError>) -> Option<usize> {
        match self.resolved.borrow().get(name) {
            Some(Resolution::Resolved { cost, .. }) => return Some(*cost),
            Some(Resolution::Failed) => return None,
            None => {}
        }
        let param = self.params.get(name)?;
        let position = self.resolving.borrow().iter().position(|open| open == name);
        if let Some(position) = position {
            let mut path: Vec<String> = self.resolving.borrow()[position..]
                .iter()
                .map(|open| format!("`{open}`"))
                .collect();
            path.push(format!("`{name}`"));
            errors.push(ModelError::ParamCycle {
                param: name.to_owned(),
                path: path.join(" → "),
                span: use_span.into(),
            });
            return None;
        }
        self.resolving.borrow_mut().push(name.to_owned());
        let mut node = param.node.clone();
        let resolved = substitute(&mut node, self, errors);
        self.resolving.borrow_mut().pop();
        let (resolution, cost) = if resolved {
            let cost = cost(&node);
            (Resolution::Resolved { node, cost }, Some(cost))
        } else {
            (Resolution::Failed, None)
        };
        self.resolved
            .borrow_mut()
            .insert(name.to_owned(), resolution);
        cost
    }

    /// A copy of param `name`'s resolved value (call [`Substitution::resolve`] first).
    fn value(&self, name: &str) -> Option<Node> {
        match self.resolved.borrow().get(name) {
            Some(Resolution::Resolved { node, .. }) => Some(node.clone()),
            Some(Resolution::Failed) | None => None,
        }
    }

    /// Accounts for `size` more bytes from a use of `name`; `None` once past the bound.
    fn spend(
        &self,
        name: &str,
        size: usize,
        use_span: Span,
        errors: &mut Vec<ModelError>,
    ) -> Option<()> {
        if self.exceeded.get() {
            return None;
        }
        let expanded = self.expanded.get();
        if expanded.saturating_add(size) <= MAX_EXPANSION {
            self.expanded.set(expanded + size);
            return Some(());
        }
        self.exceeded.set(true);
        errors.push(ModelError::ExpansionTooLarge {
            param: name.to_owned(),
            limit: MAX_EXPANSION,
            size,
            expanded,
            span: use_span.into(),
            param_span: self.params.get(name).map(|param| param.key_span.into()),
            help: "each use of a param copies its value; keep large values in a file that a stage reads (list it in `deps`), or use the param fewer times".to_owned(),
        });
        None
    }
}

/// What a copy of `node` costs towards [`MAX_EXPANSION`].
fn cost(node: &Node) -> usize {
    NODE_COST
        + match &node.value {
            Value::Scalar(scalar) => scalar.text.len(),
            Value::Seq(items) => items.iter().map(cost).sum(),
            Value::Map(entries) => entries
                .iter()
                .map(|(key, value)| NODE_COST + key.value.len() + cost(value))
                .sum(),
        }
}

/// Replaces `${params.<name>}` in every scalar under `node`. A whole-value reference takes
/// the param's node (a number stays a number); inside a longer string the param's text is
/// spliced in. `$${` writes a literal `${`. Params may use other params, not themselves.
/// False when a reference could not be resolved: its error is recorded, and the value is
/// marked so the type check that follows does not report it again as "found the string `${…}`".
pub(super) fn substitute(
    node: &mut Node,
    params: &Substitution<'_>,
    errors: &mut Vec<ModelError>,
) -> bool {
    // Every item is substituted even after one fails, so each bad reference is reported.
    let mut resolved = true;
    match &mut node.value {
        Value::Seq(items) => {
            for item in items {
                resolved &= substitute(item, params, errors);
            }
            resolved
        }
        Value::Map(entries) => {
            for (_, value) in entries {
                resolved &= substitute(value, params, errors);
            }
            resolved
        }
        Value::Scalar(scalar) => {
            if !scalar.text.contains("${") {
                return true;
            }
            let text = std::mem::take(&mut scalar.text);
            match substitute_text(&text, node.span, params, errors) {
                Some(substituted) => {
                    *node = substituted;
                    true
                }
                None => {
                    *node = Node::scalar(UNRESOLVED, ScalarStyle::Block, node.span);
                    false
                }
            }
        }
    }
}

/// Whether `node` or a node under it would be changed by [`substitute`].
pub(super) fn mentions_param(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(scalar) => scalar.text.contains("${"),
        Value::Seq(items) => items.iter().any(mentions_param),
        Value::Map(entries) => entries.iter().any(|(_, value)| mentions_param(value)),
    }
}

/// Text of a value whose `${…}` could not be resolved (already reported).
pub(super) const UNRESOLVED: &str = "\u{0}unresolved";

/// The node that scalar `text`, written at `use_span`, stands for after substitution.
fn substitute_text(
    text: &str,
    use_span: Span,
    params: &Substitution<'_>,
    errors: &mut Vec<ModelError>,
) -> Option<Node> {
    if let Some(name) = text
        .strip_prefix("${params.")
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|name| !name.contains(['}', '$']))
    {
        let Some(param) = params.params.get(name) else {
            errors.push(unresolved_param(text, name, use_span, params.params));
            return None;
        };
        let cost = params.resolve(name, use_span, errors)?;
        params.spend(name, cost, use_span, errors)?;
        return Some(Node {
            span: use_span,
            value: params.value(name)?.value,
            from_param: Some(Box::new(param.key_span)),
        });
    }
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    let mut from_param = None;
    // A bad reference does not stop the scan: every bad reference of the text is reported.
    let mut failed = false;
    while let Some(position) = rest.find('$') {
        output.push_str(&rest[..position]);
        let after = &rest[position..];
        if let Some(escaped) = after.strip_prefix("$${") {
            output.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(reference) = after.strip_prefix("${") else {
            output.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = reference.find('}') else {
            errors.push(ModelError::UnresolvedReference {
                reference: abbreviate(after),
                span: use_span.into(),
                label: "`${` is never closed".to_owned(),
                help: "close it as `${params.<name>}`, or write `$${` for a literal `${`"
                    .to_owned(),
            });
            return None;
        };
        let inner = &reference[..end];
        let Some(name) = inner.strip_prefix("params.") else {
            errors.push(ModelError::UnresolvedReference {
                reference: format!("${{{inner}}}"),
                span: use_span.into(),
                label: "only `${params.<name>}` can be referenced".to_owned(),
                help: "define the value under `params:` and write `${params.<name>}`; write `$${` for a literal `${`".to_owned(),
            });
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        let Some(param) = params.params.get(name) else {
            errors.push(unresolved_param(
                &format!("${{{inner}}}"),
                name,
                use_span,
                params.params,
            ));
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        let Some(value) = params
            .resolve(name, use_span, errors)
            .and_then(|_| params.value(name))
        else {
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        let Some(scalar) = value.as_scalar() else {
            errors.push(ModelError::UnresolvedReference {
                reference: format!("${{{inner}}}"),
                span: use_span.into(),
                label: format!(
                    "`{inner}` is {}, which cannot be spliced into text",
                    value.describe()
                ),
                help: "use a list or mapping param only as a whole value: `key: ${params.<name>}`"
                    .to_owned(),
            });
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        params.spend(name, scalar.text.len(), use_span, errors)?;
        output.push_str(&scalar.text);
        from_param = Some(Box::new(param.key_span));
        rest = &reference[end + 1..];
    }
    if failed {
        return None;
    }
    output.push_str(rest);
    Some(Node {
        span: use_span,
        value: Value::Scalar(crate::spec::Scalar {
            text: output.into(),
            style: ScalarStyle::Quoted,
        }),
        from_param,
    })
}

fn unresolved_param(
    reference: &str,
    name: &str,
    span: Span,
    params: &BTreeMap<String, Param>,
) -> ModelError {
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    ModelError::UnresolvedReference {
        reference: reference.to_owned(),
        span: span.into(),
        label: format!("there is no param `{name}`"),
        help: if names.is_empty() {
            format!(
                "define it under `params:` at the top of the file, e.g. `params: {{ {name}: … }}`"
            )
        } else {
            suggestion_help(name, &names, "param")
        },
    }
}
