//! `configure`: validate the training settings as a whole and write them, with derived values,
//! as `config.json` ([`ResolvedConfig`]) for `train`.
//!
//! Contract: `train` reads its hyperparameters only from this artifact, so changing one
//! reruns `configure`, and `train` reruns because its `config` input changed; a data or model
//! change never reruns `configure`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::model::stages::{Configure, Method};
use crate::model::StageSettings;
use crate::stages::ml_common::{write_json, wrong_runner, MlStageError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedConfig {
    pub settings: Configure,
    pub derived: Derived,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// Examples per optimizer step.
    pub effective_batch_size: usize,
    /// LoRA's `alpha / r`; absent for other methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_scaling: Option<f64>,
}

pub struct ConfigureRunner;

impl StageRunner for ConfigureRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Configure(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "configure").into());
        };
        let resolved = resolve(ctx.stage.id.as_str(), settings)?;
        write_json(&ctx.out_dir.join("config.json"), &resolved)?;
        (ctx.log)(&format!(
            "learning rate {}, {} epochs, effective batch {}",
            settings.learning_rate, settings.epochs, resolved.derived.effective_batch_size
        ));
        Ok(StageOutcome {
            metrics: BTreeMap::new(),
        })
    }
}

pub fn resolve(stage: &str, settings: &Configure) -> Result<ResolvedConfig, MlStageError> {
    let problems = settings.problems();
    if !problems.is_empty() {
        return Err(MlStageError::InvalidConfig {
            stage: stage.to_owned(),
            problems: problems
                .iter()
                .map(|problem| format!("`{}` {}", problem.field, problem.message))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(ResolvedConfig {
        settings: settings.clone(),
        derived: Derived {
            effective_batch_size: settings.batch_size * settings.gradient_accumulation,
            lora_scaling: match &settings.method {
                Method::Lora { r, alpha, .. } => Some(alpha / *r as f64),
                _ => None,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_values_and_rejects_invalid_settings() {
        let mut settings: Configure = serde_json::from_str(
            r#"{"batch_size": 8, "gradient_accumulation": 4, "method": {"name": "lora", "r": 4, "alpha": 8}}"#,
        )
        .unwrap();
        let resolved = resolve("configure", &settings).unwrap();
        assert_eq!(resolved.derived.effective_batch_size, 32);
        assert_eq!(resolved.derived.lora_scaling, Some(2.0));
        settings.learning_rate = -1.0;
        let error = resolve("configure", &settings).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid training settings of stage `configure`: `learning_rate` must be in (0, 1)"
        );
    }
}
