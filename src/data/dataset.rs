//! The dataset artifact on disk.
//!
//! Layout of a dataset directory (`taper-dataset-v1`):
//! - `dataset.json`: [`DatasetInfo`]: format tag, label names in id order, `max_length`, the
//!   tokenizer's blake3, and per split the example and token counts.
//! - `<split>.bin` for each split (`train`, `validation`, `test`), little-endian:
//!   magic `TPDS0001`, `n: u64`, `tokens: u64`, then `n` × `u32` lengths, `n` × `u32` label ids,
//!   `tokens` × `u32` token ids (examples back to back). Loading is one read and three slice
//!   conversions: no parsing, no per-example allocation.
//! - `<split>.jsonl`: one `{"text", "label", "line"}` object per example, same order (an
//!   augmented copy also has `"copy": n`, n ≥ 1, and the `line` of its original), for
//!   people and for the explain stage; never read by training.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::DataError;
use crate::fingerprint::Digest;
use crate::model::stages::SplitName;

pub const FORMAT: &str = "taper-dataset-v1";
const MAGIC: &[u8; 8] = b"TPDS0001";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: String,
    pub labels: Vec<String>,
    pub max_length: usize,
    pub tokenizer_blake3: Digest,
    pub splits: BTreeMap<SplitName, SplitInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub examples: usize,
    pub tokens: usize,
}

/// The tokenized examples of one split.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SplitData {
    /// All token ids, examples back to back.
    pub ids: Vec<u32>,
    /// `offsets[i]..offsets[i + 1]` are example `i`'s ids; `len() == examples + 1`.
    pub offsets: Vec<usize>,
    pub labels: Vec<u32>,
}

impl SplitData {
    pub fn from_examples(examples: &[(Vec<u32>, u32)]) -> Self {
        let mut data = SplitData {
            offsets: vec![0],
            ..SplitData::default()
        };
        for (ids, label) in examples {
            data.ids.extend_from_slice(ids);
            data.offsets.push(data.ids.len());
            data.labels.push(*label);
        }
        data
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn example(&self, index: usize) -> &[u32] {
        &self.ids[self.offsets[index]..self.offsets[index + 1]]
    }

    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        let mut bytes = Vec::with_capacity(24 + 4 * (2 * self.len() + self.ids.len()));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        for window in self.offsets.windows(2) {
            bytes.extend_from_slice(&((window[1] - window[0]) as u32).to_le_bytes());
        }
        for label in &self.labels {
            bytes.extend_from_slice(&label.to_le_bytes());
        }
        for id in &self.ids {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        let mut file = fs::File::create(path).map_err(|error| DataError::io(path, error))?;
        file.write_all(&bytes)
            .map_err(|error| DataError::io(path, error))
    }

    pub fn read(path: &Path) -> Result<Self, DataError> {
        let bytes = fs::read(path).map_err(|error| DataError::io(path, error))?;
        let malformed = |message: &str| DataError::Malformed {
            path: path.to_path_buf(),
            message: message.to_owned(),
        };
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(malformed("not a `taper-dataset-v1` split file"));
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let (n, tokens) = (word(8) as usize, word(16) as usize);
        if bytes.len() != 24 + 4 * (2 * n + tokens) {
            return Err(malformed("the file size does not match its header"));
        }
        let u32s = |start: usize, count: usize| -> Vec<u32> {
            bytes[start..start + 4 * count]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("chunks of 4")))
                .collect()
        };
        let lengths = u32s(24, n);
        let labels = u32s(24 + 4 * n, n);
        let ids = u32s(24 + 8 * n, tokens);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for length in lengths {
            offsets.push(offsets[offsets.len() - 1] + length as usize);
        }
        if offsets[n] != tokens {
            return Err(malformed(
                "the example lengths do not add up to the token count",
            ));
        }
        Ok(SplitData {
            ids,
            offsets,
            labels,
        })
    }
}

/// A loaded dataset artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub info: DatasetInfo,
    pub splits: BTreeMap<SplitName, SplitData>,
}

impl Dataset {
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let info_path = dir.join("dataset.json");
        let text =
            fs::read_to_string(&info_path).map_err(|error| DataError::io(&info_path, error))?;
        let info: DatasetInfo =
            serde_json::from_str(&text).map_err(|error| DataError::Malformed {
                path: info_path.clone(),
                message: error.to_string(),
            })?;
        if info.format != FORMAT {
            return Err(DataError::Malformed {
                path: info_path,
                message: format!("format `{}`, expected `{FORMAT}`", info.format),
            });
        }
        let mut splits = BTreeMap::new();
        for name in info.splits.keys() {
            let path = dir.join(format!("{}.bin", name.as_str()));
            splits.insert(*name, SplitData::read(&path)?);
        }
        Ok(Dataset { info, splits })
    }
}

/// The texts of `<split>.jsonl` in `dir`, in dataset order (what `explain` shows, `evaluate`
/// perturbs and `consistency` training gives typos), which must be one per example of the
/// tokenized split (`examples` of them).
pub fn read_texts(dir: &Path, split: SplitName, examples: usize) -> Result<Vec<String>, DataError> {
    /// One line as `prepare-data` writes it; the other fields are not needed here.
    #[derive(Deserialize)]
    struct Line {
        text: String,
    }
    let path = dir.join(format!("{}.jsonl", split.as_str()));
    let text = fs::read_to_string(&path).map_err(|error| DataError::io(&path, error))?;
    let texts = text
        .lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str::<Line>(line)
                .map(|line| line.text)
                .map_err(|error| DataError::Malformed {
                    path: path.clone(),
                    message: format!("line {}: {error}", index + 1),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if texts.len() != examples {
        return Err(DataError::Malformed {
            message: format!(
                "{} texts for {examples} examples; rerun `prepare-data`",
                texts.len()
            ),
            path,
        });
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_file_round_trips_and_rejects_truncation() {
        let data = SplitData::from_examples(&[(vec![2, 9, 3], 1), (vec![2, 3], 0)]);
        assert_eq!(data.example(1), [2, 3]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        data.write(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 24 + 4 * (4 + 5));
        assert_eq!(SplitData::read(&path).unwrap(), data);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(matches!(
            SplitData::read(&path),
            Err(DataError::Malformed { .. })
        ));
    }
}
