//! Stage keys: what makes a stage's cached result valid, and why it is not.
//!
//! A stage's **key** is the blake3 of a canonical encoding of everything that can change the
//! bytes it produces. Two runs with the same key produce the same outputs, so the second one is
//! skipped and its outputs are taken from the store. The key is computed *after* the upstream
//! stages have finished, from the content of their outputs, not from their keys: a stage that
//! reruns but produces byte-identical outputs leaves its dependents' keys unchanged (early
//! cutoff).
//!
//! # The recipe (key scheme v1)
//!
//! ```text
//! key = blake3("taper stage key v1\n" ++ canonical_json(StageHashable))
//! ```
//!
//! where `canonical_json` sorts object keys at every depth, writes no whitespace, writes
//! integer-valued numbers (within ±2^53) as integers and every other number in shortest
//! round-trip exponent form (`2e-5`), see [`canonical`]. [`StageHashable`] holds:
//!
//! | input | in the key? | as |
//! |---|---|---|
//! | key-scheme version | yes | `scheme: 1`, and in the domain prefix |
//! | stage kind | yes | `kind: "train"` |
//! | kind implementation version | yes | `implementation_version` ([`StageKind::implementation_version`]) |
//! | resolved settings (after params, `${…}`, `-S` overrides, defaults) | yes | `settings`: `serde_json::to_value(&stage.settings)`, canonicalized; includes a `command`'s `run`, `deps`, `outs`, `env` and `pass_env` names |
//! | upstream outputs a stage consumes | yes, by content | `upstream`: input slot (`model`, `data`, …) or, for `command` deps produced by another stage, the dep's relative path → `file:<blake3>` / `dir:<manifest digest>` of that content |
//! | external files and directories (`Stage::external_paths`) | yes, by content | `external`: relative path → `file:<blake3>` or `dir:<manifest digest>` (a Merkle manifest of `relative path → blake3, size, executable bit`, see [`manifest`]) |
//! | environment that changes the bytes | yes | `environment`: for ML kinds the CPU architecture and OS (float kernels differ); for `command` nothing beyond its `env:` settings |
//! | stage name | no | renaming a stage does not change what it computes; its outputs' location (`out/<stage>/`) is a materialization detail |
//! | absolute paths, pipeline location | no | every path is relative to the pipeline directory, so moving or cloning a project keeps it fresh |
//! | mtimes, inode numbers, owners | no | content is hashed; stat data only feeds the hash cache, never the key |
//! | thread count (`-j`, `RAYON_NUM_THREADS`), wall clock, taper's own version | no | stages must not let them change their bytes; a kind whose semantics change bumps its implementation version instead |
//! | the process environment (`PATH`, `HOME`, …) of a `command` | no | as in DVC and make; declare what matters in `env:` |
//! | `pass_env:` of a `command` | names only | the names are settings; the values (tokens, passwords) are read from taper's environment when the command starts and never hashed, printed or stored, so changing a token reruns nothing |
//! | upstream stage keys | no | that is what gives early cutoff: only their output content counts |
//!
//! The hashed JSON is kept in every action record (and the resolved settings in the lock
//! file), so [`compare`] can say which field changed, from what to what. It shows the value of
//! an `env:` key that looks secret ([`looks_secret`]) as `***`: the value is still hashed (it is
//! part of the declared command), but `plan` output ends up in CI logs and terminals.

pub mod canonical;
mod digest;
pub mod manifest;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::stages::looks_secret;
use crate::model::{Stage, StageKind};

pub use digest::{Digest, ParseDigestError};
pub use manifest::{ContentDigest, FileEntry, HashCache, Manifest};

/// Version of the recipe above; bump it (never migrate) when the encoding changes.
pub const KEY_SCHEME_VERSION: u32 = 1;

/// Exactly what is hashed into a stage key. Built only through [`StageHashable::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageHashable {
    pub scheme: u32,
    pub kind: StageKind,
    pub implementation_version: u32,
    /// Canonicalized resolved settings (without the `kind` tag, which has its own field).
    pub settings: Value,
    /// Consumed upstream content: input slot or dep path → tagged content digest.
    pub upstream: BTreeMap<String, String>,
    /// External files and directories: relative path → tagged content digest.
    pub external: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
}

impl StageHashable {
    /// Classifies every field of `stage` (the destructuring fails to compile when a field is
    /// added, until it is classified in the table above).
    pub fn new(
        stage: &Stage,
        upstream: BTreeMap<String, ContentDigest>,
        external: BTreeMap<String, ContentDigest>,
    ) -> StageHashable {
        // `id`: not hashed (renames keep the cache). `inputs`: hashed through `upstream`, by
        // the content each slot receives.
        let Stage {
            id: _,
            settings,
            inputs: _,
        } = stage;
        let kind = settings.kind();
        StageHashable {
            scheme: KEY_SCHEME_VERSION,
            kind,
            implementation_version: kind.implementation_version(),
            settings: settings_value(stage),
            upstream: tagged(upstream),
            external: tagged(external),
            environment: environment_for(kind),
        }
    }

    /// The canonical text that is hashed (shown by `taper plan -v`).
    pub fn canonical_text(&self) -> String {
        let value = serde_json::to_value(self).expect("a stage hashable always serializes");
        canonical::canonical_json(&value)
    }

    pub fn key(&self) -> Digest {
        let mut bytes = format!("taper stage key v{KEY_SCHEME_VERSION}\n").into_bytes();
        bytes.extend_from_slice(self.canonical_text().as_bytes());
        Digest::of_bytes(&bytes)
    }
}

fn tagged(map: BTreeMap<String, ContentDigest>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(name, digest)| (name, digest.to_tagged()))
        .collect()
}

/// The resolved settings of `stage` as canonical JSON, without the kind tag.
pub fn settings_value(stage: &Stage) -> Value {
    let mut value =
        serde_json::to_value(&stage.settings).expect("typed stage settings always serialize");
    if let Value::Object(map) = &mut value {
        map.remove("kind");
    }
    canonical::canonicalize(&value)
}

/// The digest of the resolved settings alone (recorded in the lock file).
pub fn settings_digest(settings: &Value) -> Digest {
    Digest::of_bytes(canonical::canonical_json(settings).as_bytes())
}

/// Environment that changes a kind's bytes. ML kinds compute with floats whose rounding depends
/// on the CPU's vector kernels, so results from another architecture are not reused.
fn environment_for(kind: StageKind) -> BTreeMap<String, String> {
    match kind {
        StageKind::Command => BTreeMap::new(),
        StageKind::SelectModel
        | StageKind::PrepareData
        | StageKind::Configure
        | StageKind::Train
        | StageKind::Evaluate
        | StageKind::Explain
        | StageKind::Deploy => BTreeMap::from([
            ("arch".to_owned(), std::env::consts::ARCH.to_owned()),
            ("os".to_owned(), std::env::consts::OS.to_owned()),
        ]),
    }
}

/// Why a stage is not cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DirtyReason {
    /// No previous run of this stage is known.
    NewStage,
    /// `--force`.
    Forced,
    /// The key is unchanged but its outputs are not in the store (never stored, or gc'ed).
    OutputMissing,
    /// An upstream stage will run first; this stage's key is known only after it.
    UpstreamWillRun {
        stage: String,
    },
    SchemeChanged {
        old: u32,
        new: u32,
    },
    KindChanged {
        old: String,
        new: String,
    },
    ImplementationVersionChanged {
        old: u32,
        new: u32,
    },
    /// A resolved setting changed; `field` is a dotted path (`learning_rate`, `split.seed`).
    SettingChanged {
        field: String,
        old: String,
        new: String,
    },
    /// An external file or directory changed (or appeared, or disappeared).
    InputChanged {
        path: String,
    },
    /// The content a stage receives from upstream changed.
    UpstreamChanged {
        input: String,
    },
    EnvironmentChanged {
        name: String,
        old: String,
        new: String,
    },
    /// The key differs but no recorded field explains why (the previous record is unreadable).
    KeyChanged,
    /// The key is cached, but a stored output is damaged or gone (`problem` names the object);
    /// it was quarantined and the stage recomputes it.
    StoreFault {
        problem: String,
    },
}

impl std::fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirtyReason::NewStage => f.write_str("new stage"),
            DirtyReason::Forced => f.write_str("forced"),
            DirtyReason::OutputMissing => f.write_str("output missing from the store"),
            DirtyReason::UpstreamWillRun { stage } => write!(f, "upstream `{stage}` will run"),
            DirtyReason::SchemeChanged { old, new } => {
                write!(f, "key scheme changed ({old} → {new})")
            }
            DirtyReason::KindChanged { old, new } => write!(f, "kind changed ({old} → {new})"),
            DirtyReason::ImplementationVersionChanged { old, new } => {
                write!(f, "implementation version changed ({old} → {new})")
            }
            DirtyReason::SettingChanged { field, old, new } => {
                write!(f, "setting `{field}` changed ({old} → {new})")
            }
            DirtyReason::InputChanged { path } => write!(f, "input `{path}` changed"),
            DirtyReason::UpstreamChanged { input } => {
                write!(f, "upstream input `{input}` changed")
            }
            DirtyReason::EnvironmentChanged { name, old, new } => {
                write!(f, "environment `{name}` changed ({old} → {new})")
            }
            DirtyReason::KeyChanged => f.write_str("stage key changed"),
            DirtyReason::StoreFault { problem } => write!(f, "cached output unusable: {problem}"),
        }
    }
}

/// Every difference between a previous and a current hashable, most fundamental first. Empty
/// exactly when the two keys are equal.
pub fn compare(old: &StageHashable, new: &StageHashable) -> Vec<DirtyReason> {
    let mut reasons = Vec::new();
    if old.scheme != new.scheme {
        reasons.push(DirtyReason::SchemeChanged {
            old: old.scheme,
            new: new.scheme,
        });
    }
    if old.kind != new.kind {
        reasons.push(DirtyReason::KindChanged {
            old: old.kind.to_string(),
            new: new.kind.to_string(),
        });
    }
    if old.implementation_version != new.implementation_version {
        reasons.push(DirtyReason::ImplementationVersionChanged {
            old: old.implementation_version,
            new: new.implementation_version,
        });
    }
    diff_settings("", &old.settings, &new.settings, &mut reasons);
    for path in changed_keys(&old.external, &new.external) {
        reasons.push(DirtyReason::InputChanged { path });
    }
    for input in changed_keys(&old.upstream, &new.upstream) {
        reasons.push(DirtyReason::UpstreamChanged { input });
    }
    for name in changed_keys(&old.environment, &new.environment) {
        let show = |map: &BTreeMap<String, String>| {
            map.get(&name)
                .cloned()
                .unwrap_or_else(|| "unset".to_owned())
        };
        reasons.push(DirtyReason::EnvironmentChanged {
            old: show(&old.environment),
            new: show(&new.environment),
            name,
        });
    }
    if reasons.is_empty() && old.key() != new.key() {
        reasons.push(DirtyReason::KeyChanged);
    }
    reasons
}

fn changed_keys(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|name| old.get(*name) != new.get(*name))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Describes setting differences as dotted paths with old → new values.
pub fn diff_settings(prefix: &str, old: &Value, new: &Value, out: &mut Vec<DirtyReason>) {
    if canonical::canonical_json(old) == canonical::canonical_json(new) {
        return;
    }
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match (old, new) {
        (Value::Object(old_map), Value::Object(new_map)) => {
            let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let old_value = old_map.get(key).unwrap_or(&Value::Null);
                let new_value = new_map.get(key).unwrap_or(&Value::Null);
                diff_settings(&join(key), old_value, new_value, out);
            }
        }
        _ => out.push(DirtyReason::SettingChanged {
            field: if prefix.is_empty() {
                "settings".to_owned()
            } else {
                prefix.to_owned()
            },
            old: show_value(&redacted(prefix, old)),
            new: show_value(&redacted(prefix, new)),
        }),
    }
}

/// How `plan` and `run` show the value of an `env:` key that looks secret.
pub const REDACTED: &str = "***";

/// `value`, found at dotted settings path `path`, with every `env.<NAME>` whose name looks
/// secret replaced by [`REDACTED`] (also inside a whole `env` map that appeared or vanished).
fn redacted(path: &str, value: &Value) -> Value {
    if path.strip_prefix("env.").is_some_and(looks_secret) && !value.is_null() {
        return Value::String(REDACTED.to_owned());
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| {
                    let inner = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    (key.clone(), redacted(&inner, item))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn show_value(value: &Value) -> String {
    match value {
        Value::Null => "unset".to_owned(),
        Value::String(text) => text.clone(),
        other => canonical::canonical_json(other),
    }
}

#[cfg(test)]
mod tests;
