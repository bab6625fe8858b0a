//! Tiny random models on disk, for tests and demos of every module (the stage tests need a
//! model directory without downloading one). The weights are random but deterministic per
//! seed, in the exact HF layout (`config.json` + `model.safetensors`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::{Architecture, EncoderConfig};
use super::error::{io_error, Result};
use super::rng;

/// How tensor names are spelled in the written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameStyle {
    /// As all-MiniLM-L6-v2: no prefix, `LayerNorm.weight`/`.bias`.
    Plain,
    /// As old HF BERT checkpoints: a `bert.`/`distilbert.` prefix and `gamma`/`beta`.
    PrefixedGammaBeta,
}

/// Writes `config.json` and `model.safetensors` of a random encoder (with a pooler for BERT,
/// and an unused `cls.predictions.bias` as real checkpoints have) into `dir`. LayerNorm
/// weights are `1 ± noise` and biases non-zero so that parity tests see every tensor.
pub fn write_random_model(
    dir: &Path,
    config: &EncoderConfig,
    seed: u64,
    style: NameStyle,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut rng = rng::seeded(seed, rng::INIT_STREAM);
    let h = config.hidden_size;
    let i = config.intermediate_size;
    let std = 0.2;
    let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![config.vocab_size, h],
            false,
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![config.max_position_embeddings, h],
            false,
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h], true),
        ("embeddings.LayerNorm.bias".into(), vec![h], false),
    ];
    let linear =
        |shapes: &mut Vec<(String, Vec<usize>, bool)>, name: String, inp: usize, out: usize| {
            shapes.push((format!("{name}.weight"), vec![out, inp], false));
            shapes.push((format!("{name}.bias"), vec![out], false));
        };
    let norm = |shapes: &mut Vec<(String, Vec<usize>, bool)>, name: String| {
        shapes.push((format!("{name}.weight"), vec![h], true));
        shapes.push((format!("{name}.bias"), vec![h], false));
    };
    match config.architecture {
        Architecture::Bert => {
            shapes.push((
                "embeddings.token_type_embeddings.weight".into(),
                vec![config.type_vocab_size, h],
                false,
            ));
            for l in 0..config.num_hidden_layers {
                let p = format!("encoder.layer.{l}");
                for part in ["query", "key", "value"] {
                    linear(&mut shapes, format!("{p}.attention.self.{part}"), h, h);
                }
                linear(&mut shapes, format!("{p}.attention.output.dense"), h, h);
                norm(&mut shapes, format!("{p}.attention.output.LayerNorm"));
                linear(&mut shapes, format!("{p}.intermediate.dense"), h, i);
                linear(&mut shapes, format!("{p}.output.dense"), i, h);
                norm(&mut shapes, format!("{p}.output.LayerNorm"));
            }
            linear(&mut shapes, "pooler.dense".into(), h, h);
        }
        Architecture::DistilBert => {
            for l in 0..config.num_hidden_layers {
                let p = format!("transformer.layer.{l}");
                for part in ["q_lin", "k_lin", "v_lin", "out_lin"] {
                    linear(&mut shapes, format!("{p}.attention.{part}"), h, h);
                }
                norm(&mut shapes, format!("{p}.sa_layer_norm"));
                linear(&mut shapes, format!("{p}.ffn.lin1"), h, i);
                linear(&mut shapes, format!("{p}.ffn.lin2"), i, h);
                norm(&mut shapes, format!("{p}.output_layer_norm"));
            }
        }
    }
    let prefix = match config.architecture {
        Architecture::Bert => "bert.",
        Architecture::DistilBert => "distilbert.",
    };
    let mut tensors = HashMap::new();
    for (name, dims, around_one) in shapes {
        let count: usize = dims.iter().product();
        let mut values = rng::normal(&mut rng, count, if around_one { 0.1 } else { std });
        if around_one {
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        let name = match style {
            NameStyle::Plain => name,
            NameStyle::PrefixedGammaBeta => {
                let name = if name.contains("LayerNorm") || name.contains("layer_norm") {
                    name.replace(".weight", ".gamma").replace(".bias", ".beta")
                } else {
                    name
                };
                format!("{prefix}{name}")
            }
        };
        tensors.insert(name, Tensor::from_vec(values, dims, &Device::Cpu)?);
    }
    tensors.insert(
        "cls.predictions.bias".to_owned(),
        Tensor::zeros(config.vocab_size, candle_core::DType::F32, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_hf_json()).map_err(io_error(&config_path))
}
