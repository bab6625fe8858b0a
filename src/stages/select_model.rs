//! `select-model`: resolve a pretrained encoder and check it before anything trains on it.
//!
//! Contract: the output directory holds `config.json`, `tokenizer.json`, the weights
//! (`model.safetensors`, or `pytorch_model.bin` only with `allow_pickle`), `vocab.txt` when the
//! source has one, and `model.json` ([`ModelRecord`]): the files' blake3, the architecture, and
//! the parameter count read from the safetensors header (without loading the weights).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata};
use serde::{Deserialize, Serialize};

use crate::data::sources::{hash_path, SourceResolver};
use crate::data::tokenize::load_tokenizer;
use crate::data::DataError;
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::fingerprint::Digest;
use crate::model::StageSettings;
use crate::stages::ml_common::{link_or_copy, write_json, wrong_runner, MlStageError};

/// Encoders whose `config.json` the model core reads.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert"];

/// What `model.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub source_blake3: Digest,
    pub model_type: String,
    pub hidden_size: u64,
    pub layers: u64,
    pub heads: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    /// Elements of the floating-point tensors (buffers such as `position_ids` excluded).
    pub parameters: u64,
    pub tensors: usize,
    pub weights: String,
    /// File name → blake3.
    pub files: BTreeMap<String, Digest>,
}

pub struct SelectModelRunner;

impl StageRunner for SelectModelRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::SelectModel(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "select-model").into());
        };
        let resolver = SourceResolver::new(ctx.pipeline_root, ctx.store_root);
        let resolved = resolver
            .resolve(&settings.source)
            .map_err(MlStageError::from)?;
        (ctx.log)(&format!("model source: {}", resolved.path.display()));
        let mut record = select(
            &resolved.path,
            &resolved.blake3,
            settings.allow_pickle,
            ctx.out_dir,
        )?;
        if let Some(layers) = settings.layers {
            record = keep_layers(ctx.stage.id.as_str(), record, layers, ctx.out_dir)?;
        }
        (ctx.log)(&format!(
            "{} model: {} layers, hidden {}, {} parameters",
            record.model_type, record.layers, record.hidden_size, record.parameters
        ));
        Ok(StageOutcome {
            metrics: BTreeMap::from([("parameters".to_owned(), record.parameters as f64)]),
        })
    }
}

/// Checks the model directory `dir` and writes the artifact into `out_dir`.
pub fn select(
    dir: &Path,
    source_blake3: &Digest,
    allow_pickle: bool,
    out_dir: &Path,
) -> Result<ModelRecord, MlStageError> {
    if !dir.is_dir() {
        return Err(MlStageError::ModelNotDirectory {
            path: dir.to_path_buf(),
        });
    }
    let require = |file: &str| -> Result<std::path::PathBuf, MlStageError> {
        let path = dir.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(DataError::IncompleteModel {
                dir: dir.to_path_buf(),
                file: file.to_owned(),
            }
            .into())
        }
    };
    let config_path = require("config.json")?;
    let tokenizer_path = require("tokenizer.json")?;
    let safetensors = dir.join("model.safetensors");
    let pickle = dir.join("pytorch_model.bin");
    let weights = if safetensors.is_file() {
        safetensors
    } else if pickle.is_file() {
        if !allow_pickle {
            return Err(DataError::PickleRefused { path: pickle }.into());
        }
        pickle
    } else {
        return Err(DataError::IncompleteModel {
            dir: dir.to_path_buf(),
            file: "model.safetensors".to_owned(),
        }
        .into());
    };

    let config = read_config(&config_path)?;
    let config_field = |name: &str| -> Result<u64, MlStageError> {
        config
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| MlStageError::InconsistentModel {
                path: config_path.clone(),
                message: format!("`{name}` is missing or not a whole number"),
            })
    };
    let model_type = config
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
        return Err(MlStageError::UnsupportedArchitecture {
            path: config_path,
            model_type,
            supported: SUPPORTED_MODEL_TYPES
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let hidden_size = config_field("hidden_size")?;
    let vocab_size = config_field("vocab_size")?;

    // The tokenizer must load, and never emit an id outside the embedding table.
    let tokenizer = load_tokenizer(&tokenizer_path, 8)?;
    let tokenizer_vocab = tokenizer.get_vocab_size(true) as u64;
    if tokenizer_vocab > vocab_size {
        return Err(MlStageError::InconsistentModel {
            path: tokenizer_path,
            message: format!(
                "the tokenizer has {tokenizer_vocab} tokens but the model embeds only {vocab_size}"
            ),
        });
    }

    let (parameters, tensors) = if weights.extension().is_some_and(|e| e == "safetensors") {
        let header = read_safetensors_header(&weights)?;
        let tensors = header.tensors();
        if let Some(shape) = tensors
            .iter()
            .find(|(name, _)| name.ends_with("embeddings.word_embeddings.weight"))
            .map(|(_, info)| &info.shape)
        {
            if shape.first().map(|&rows| rows as u64) != Some(vocab_size)
                || shape.get(1).map(|&columns| columns as u64) != Some(hidden_size)
            {
                return Err(MlStageError::InconsistentModel {
                    path: weights,
                    message: format!(
                        "word embeddings have shape {shape:?}, but `config.json` says [{vocab_size}, {hidden_size}]"
                    ),
                });
            }
        }
        let parameters = tensors
            .values()
            .filter(|info| {
                matches!(
                    info.dtype,
                    Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
                )
            })
            .map(|info| info.shape.iter().product::<usize>() as u64)
            .sum();
        (parameters, tensors.len())
    } else {
        (0, 0)
    };

    let mut files = BTreeMap::new();
    for path in [
        &config_path,
        &tokenizer_path,
        &weights,
        &dir.join("vocab.txt"),
    ] {
        if !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .expect("joined file names have a last component")
            .to_string_lossy()
            .into_owned();
        files.insert(name.clone(), hash_path(path)?);
        link_or_copy(path, &out_dir.join(&name))?;
    }
    let record = ModelRecord {
        source_blake3: *source_blake3,
        model_type,
        hidden_size,
        layers: config_field("num_hidden_layers")?,
        heads: config_field("num_attention_heads")?,
        vocab_size,
        max_position_embeddings: config_field("max_position_embeddings")?,
        parameters,
        tensors,
        weights: weights
            .file_name()
            .expect("weights path ends in a file name")
            .to_string_lossy()
            .into_owned(),
        files,
    };
    write_json(&out_dir.join("model.json"), &record)?;
    Ok(record)
}

/// The encoder layer a tensor belongs to (`encoder.layer.3.…`, `transformer.layer.3.…`, with
/// any prefix such as `bert.`), if any.
fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(3).find_map(|window| match window {
        [stack, "layer", index] if *stack == "encoder" || *stack == "transformer" => {
            index.parse().ok()
        }
        _ => None,
    })
}

/// Rewrites the artifact in `out_dir` (from [`select`]) to its first `keep` encoder layers:
/// `config.json` says `num_hidden_layers: keep` and `model.safetensors` loses the tensors of
/// the layers above, so every later stage (`train`, `deploy`, `serve`) sees a plain, shallower
/// model.
///
/// The first layers rather than DistilBERT's every other one: each kept layer then reads the
/// very representation it was pretrained on, the model stays a prefix of the original (no
/// renaming), and the student's embeddings and lower layers match its teacher's at step 0.
pub fn keep_layers(
    stage: &str,
    mut record: ModelRecord,
    keep: usize,
    out_dir: &Path,
) -> Result<ModelRecord, MlStageError> {
    let weights = out_dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(MlStageError::LayersNeedSafetensors {
            stage: stage.to_owned(),
            path: out_dir.join(&record.weights),
        });
    }
    let config_path = out_dir.join("config.json");
    if keep == 0 || keep as u64 > record.layers {
        return Err(MlStageError::TooManyLayers {
            stage: stage.to_owned(),
            path: config_path,
            layers: keep,
            available: record.layers,
            half: (record.layers / 2).max(1),
        });
    }
    let mut config = read_config(&config_path)?;
    config.insert("num_hidden_layers".to_owned(), keep.into());
    let text = serde_json::to_string_pretty(&config)
        .map_err(|error| malformed(&config_path, error.to_string()))?;
    // Both files are hard links to the source: unlink before writing, or the source changes.
    let replace = |path: &Path| {
        fs::remove_file(path).map_err(|source| MlStageError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    replace(&config_path)?;
    fs::write(&config_path, text).map_err(|source| MlStageError::Write {
        path: config_path.clone(),
        source,
    })?;
    let bytes = fs::read(&weights).map_err(|error| DataError::io(&weights, error))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|error| malformed(&weights, error.to_string()))?;
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| layer_of(name).is_none_or(|layer| layer < keep))
        .collect();
    let (mut parameters, count) = (0u64, kept.len());
    for (_, view) in &kept {
        if matches!(
            view.dtype(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        ) {
            parameters += view.shape().iter().product::<usize>() as u64;
        }
    }
    replace(&weights)?;
    safetensors::tensor::serialize_to_file(kept, None, &weights)
        .map_err(|error| malformed(&weights, error.to_string()))?;
    for path in [&config_path, &weights] {
        let name = path
            .file_name()
            .expect("joined file names have a last component")
            .to_string_lossy()
            .into_owned();
        record.files.insert(name, hash_path(path)?);
    }
    record.layers = keep as u64;
    record.parameters = parameters;
    record.tensors = count;
    write_json(&out_dir.join("model.json"), &record)?;
    Ok(record)
}

fn read_config(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, MlStageError> {
    let text = fs::read_to_string(path).map_err(|error| DataError::io(path, error))?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(path, "expected a JSON object".to_owned())),
        Err(error) => Err(malformed(path, error.to_string())),
    }
}

fn malformed(path: &Path, message: String) -> MlStageError {
    DataError::Malformed {
        path: path.to_path_buf(),
        message,
    }
    .into()
}

/// The tensors of a safetensors file, name → dtype and shape, from its header alone.
///
/// The header is parsed and checked by the `safetensors` crate (offsets contiguous and in
/// bounds, shapes matching sizes), and the file's length must be exactly header plus data:
/// a truncated download is refused here rather than when training first reads a tensor.
pub fn read_safetensors_header(path: &Path) -> Result<Metadata, MlStageError> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(|error| DataError::io(path, error))?;
    let file_len = file
        .metadata()
        .map_err(|error| DataError::io(path, error))?
        .len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| malformed(path, "shorter than a safetensors header".to_owned()))?;
    let length = u64::from_le_bytes(length);
    // A corrupt length would otherwise allocate gigabytes before failing.
    if length > 100 << 20 || length + 8 > file_len {
        return Err(malformed(
            path,
            format!("header length {length} is implausible"),
        ));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header)
        .map_err(|error| DataError::io(path, error))?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|error| malformed(path, error.to_string()))?;
    let expected = 8 + length + metadata.data_len() as u64;
    if expected != file_len {
        return Err(malformed(
            path,
            format!("the header describes {expected} bytes but the file has {file_len}: it is truncated or damaged"),
        ));
    }
    Ok(metadata)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::tokenize::wordpiece_tokenizer_json;

    /// Writes a safetensors file with zeroed F32 tensors of the given shapes.
    pub(crate) fn write_safetensors(path: &Path, tensors: &[(&str, &[u64])]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (name, shape) in tensors {
            let bytes = 4 * shape.iter().product::<u64>();
            header.insert(
                (*name).to_owned(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.resize(bytes.len() + offset as usize, 0);
        fs::write(path, bytes).unwrap();
    }

    pub(crate) fn tiny_model_dir(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("config.json"),
            r#"{"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 2, "vocab_size": 8, "max_position_embeddings": 16}"#,
        )
        .unwrap();
        fs::write(
            dir.join("tokenizer.json"),
            wordpiece_tokenizer_json(&["good", "bad", "film", "##ly"]),
        )
        .unwrap();
        write_safetensors(
            &dir.join("model.safetensors"),
            &[
                ("embeddings.word_embeddings.weight", &[8, 4]),
                ("pooler.dense.bias", &[4]),
            ],
        );
    }

    #[test]
    fn records_parameters_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        tiny_model_dir(&model);
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let record = select(&model, &Digest::of_bytes(b"abc"), false, &out).unwrap();
        assert_eq!(record.parameters, 8 * 4 + 4);
        assert_eq!(record.tensors, 2);
        assert_eq!(record.layers, 1);
        assert_eq!(
            record.files.keys().collect::<Vec<_>>(),
            ["config.json", "model.safetensors", "tokenizer.json"]
        );
        assert!(out.join("model.safetensors").is_file());
        let written: ModelRecord =
            serde_json::from_str(&fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
        assert_eq!(written, record);
    }

    #[test]
    fn missing_tokenizer_pickle_and_wrong_shapes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        tiny_model_dir(&model);
        fs::remove_file(model.join("tokenizer.json")).unwrap();
        let error = select(&model, &Digest::of_bytes(b""), false, &out).unwrap_err();
        assert!(
            matches!(&error, MlStageError::Data(DataError::IncompleteModel { file, .. }) if file == "tokenizer.json"),
            "{error:?}"
        );

        tiny_model_dir(&model);
        fs::remove_file(model.join("model.safetensors")).unwrap();
        fs::write(model.join("pytorch_model.bin"), b"pickle").unwrap();
        let error = select(&model, &Digest::of_bytes(b""), false, &out).unwrap_err();
        assert!(matches!(
            error,
            MlStageError::Data(DataError::PickleRefused { .. })
        ));

        tiny_model_dir(&model);
        write_safetensors(
            &model.join("model.safetensors"),
            &[("embeddings.word_embeddings.weight", &[9, 4])],
        );
        let error = select(&model, &Digest::of_bytes(b""), false, &out).unwrap_err();
        assert!(
            matches!(error, MlStageError::InconsistentModel { .. }),
            "{error:?}"
        );

        // A download cut short: the header promises more bytes than the file has.
        tiny_model_dir(&model);
        let weights = model.join("model.safetensors");
        let bytes = fs::read(&weights).unwrap();
        fs::write(&weights, &bytes[..bytes.len() - 4]).unwrap();
        let error = select(&model, &Digest::of_bytes(b""), false, &out).unwrap_err();
        assert!(
            matches!(&error, MlStageError::Data(DataError::Malformed { message, .. }) if message.contains("truncated")),
            "{error:?}"
        );

        fs::write(
            model.join("config.json"),
            r#"{"model_type": "gpt2", "hidden_size": 4}"#,
        )
        .unwrap();
        let error = select(&model, &Digest::of_bytes(b""), false, &out).unwrap_err();
        assert!(matches!(
            error,
            MlStageError::UnsupportedArchitecture { .. }
        ));
    }

    /// `layers: 1` of a 2-layer model: the config says 1, the file keeps every tensor but
    /// those of layer 1 (prefixed names too), byte for byte, the record matches the files,
    /// and the source directory is left as it was (the artifact's files were hard links).
    #[test]
    fn keep_layers_drops_the_upper_layers() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        tiny_model_dir(&model);
        fs::write(
            model.join("config.json"),
            r#"{"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 2,
                "num_attention_heads": 2, "vocab_size": 8, "max_position_embeddings": 16}"#,
        )
        .unwrap();
        write_safetensors(
            &model.join("model.safetensors"),
            &[
                ("embeddings.word_embeddings.weight", &[8, 4]),
                ("encoder.layer.0.output.dense.weight", &[4, 4]),
                ("encoder.layer.1.output.dense.weight", &[4, 4]),
                ("bert.encoder.layer.1.output.LayerNorm.gamma", &[4]),
                ("pooler.dense.bias", &[4]),
            ],
        );
        let source_bytes = fs::read(model.join("model.safetensors")).unwrap();
        let source_config = fs::read(model.join("config.json")).unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let record = select(&model, &Digest::of_bytes(b""), false, &out).unwrap();
        let error = keep_layers("student", record.clone(), 3, &out).unwrap_err();
        assert!(
            matches!(error, MlStageError::TooManyLayers { available: 2, .. }),
            "{error:?}"
        );
        let record = keep_layers("student", record, 1, &out).unwrap();
        assert_eq!((record.layers, record.tensors), (1, 3));
        assert_eq!(record.parameters, 8 * 4 + 16 + 4);
        let header = read_safetensors_header(&out.join("model.safetensors")).unwrap();
        let mut names: Vec<String> = header.tensors().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "embeddings.word_embeddings.weight",
                "encoder.layer.0.output.dense.weight",
                "pooler.dense.bias"
            ]
        );
        let config = read_config(&out.join("config.json")).unwrap();
        assert_eq!(config["num_hidden_layers"], 1);
        assert_eq!(config["hidden_size"], 4);
        assert_eq!(
            record.files["model.safetensors"],
            hash_path(&out.join("model.safetensors")).unwrap()
        );
        let written: ModelRecord =
            serde_json::from_str(&fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
        assert_eq!(written, record);
        assert_eq!(
            fs::read(model.join("model.safetensors")).unwrap(),
            source_bytes
        );
        assert_eq!(fs::read(model.join("config.json")).unwrap(), source_config);
    }

    /// The real model, when the lead's CI provides it.
    #[test]
    fn minilm_when_available() {
        let Some(dir) = std::env::var_os("TAPER_MINILM_DIR") else {
            return;
        };
        let out = tempfile::tempdir().unwrap();
        let record = select(Path::new(&dir), &Digest::of_bytes(b""), false, out.path()).unwrap();
        assert_eq!(record.layers, 6);
        assert_eq!(record.hidden_size, 384);
        assert_eq!(record.parameters, 22_713_216);

        // Issue 13: its 3-layer student loads as a plain 3-layer BERT, every tensor used.
        let student = keep_layers("student", record, 3, out.path()).unwrap();
        assert_eq!(student.layers, 3);
        // Each MiniLM layer holds 1,774,464 parameters.
        assert_eq!(student.parameters, 22_713_216 - 3 * 1_774_464);
        let settings: crate::model::Configure = serde_json::from_str("{}").unwrap();
        let classifier =
            crate::ml::Classifier::new(out.path(), 2, &settings, crate::ml::DeviceChoice::Cpu)
                .unwrap();
        assert_eq!(classifier.config().num_hidden_layers, 3);
        let report = classifier.load_report();
        assert_eq!(
            report.freshly_initialised,
            ["classifier.weight", "classifier.bias"]
        );
        assert!(
            report
                .unused
                .iter()
                .all(|name| name.contains("position_ids")),
            "{:?}",
            report.unused
        );
    }
}
