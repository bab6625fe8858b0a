use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Pipeline, StageSettings};

/// `kind: command`: a shell command with declared dependencies and outputs, as in DVC.
/// Paths are relative to the pipeline file's directory. An edge to another command stage is
/// implied when a dep lies at or under one of its outs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Run with `sh -c` in the pipeline's directory.
    pub run: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outs: Vec<PathBuf>,
    /// Extra environment variables; part of the stage key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Variables passed through from taper's own environment at run time. The *names* are part
    /// of the stage key (they are settings); the values are read by the runner just before the
    /// spawn and never hashed, printed or stored, so a token can reach a command without
    /// landing in the committed lock file or the store. Skipped when empty so the keys of
    /// stages written before `pass_env` existed do not change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// JSON or YAML files the command writes with its metrics (nested objects flattened to
    /// dotted names): outputs like `outs` (validation adds any not listed there), read after
    /// the command succeeds into the lock file, `taper metrics` and experiments. Skipped when
    /// empty so the keys of existing stages do not change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<PathBuf>,
}

/// Words that mark an `env:` key as a secret by convention (`HF_TOKEN`, `DB_PASSWORD`,
/// `API_KEY`, `CLIENT_SECRET`), compared case-insensitively.
const SECRET_WORDS: [&str; 4] = ["TOKEN", "SECRET", "PASSWORD", "KEY"];

/// Whether an environment variable name suggests its value is a secret. Such values are shown
/// as `***` by `plan` and `run`, and `validate` warns that they are committed in the file.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
}

/// Whether `name` can be an environment variable name that every shell accepts:
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
}

impl Command {
    /// `env:` keys whose values look secret, and so are committed in the pipeline file.
    pub fn secret_env_keys(&self) -> impl Iterator<Item = &str> {
        self.env
            .keys()
            .map(String::as_str)
            .filter(|name| looks_secret(name))
    }
}

/// `validate`'s warning for a secret-looking value written under `env:`: it is valid, but the
/// value ends up in the pipeline file, the lock file and the store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("`{file}`: stage `{stage}` commits the value of `env.{name}` in the pipeline file")]
#[diagnostic(
    code(taper::model::committed_secret),
    severity(Warning),
    help(
        "values under `env:` are written to the lock file and the store; to pass a secret from the environment instead, remove `{name}` from `env:`, add `pass_env: [{name}]` and export `{name}` before `taper run`"
    )
)]
pub struct CommittedSecret {
    pub file: String,
    pub stage: String,
    pub name: String,
}

/// A warning for each secret-looking value under a `command` stage's `env:` in `file`.
pub fn committed_secrets(file: &Path, pipeline: &Pipeline) -> Vec<CommittedSecret> {
    pipeline
        .stages
        .iter()
        .filter_map(|stage| match &stage.settings {
            StageSettings::Command(command) => Some((stage, command)),
            _ => None,
        })
        .flat_map(|(stage, command)| {
            command.secret_env_keys().map(|name| CommittedSecret {
                file: file.display().to_string(),
                stage: stage.id.to_string(),
                name: name.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognized_case_insensitively() {
        for name in ["HF_TOKEN", "api_key", "DbPassword", "CLIENT_SECRET", "KEY"] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["PYTHONHASHSEED", "PATH", "LANG", "OMP_NUM_THREADS"] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn env_names_follow_the_shell_grammar() {
        for name in ["HF_TOKEN", "_x", "a1"] {
            assert!(is_env_name(name), "{name}");
        }
        for name in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(!is_env_name(name), "{name}");
        }
    }
}
