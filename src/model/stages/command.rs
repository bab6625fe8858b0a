use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
}
