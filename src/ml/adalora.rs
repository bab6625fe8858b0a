//! AdaLoRA's rank allocation (Zhang et al. 2023, "Adaptive Budget Allocation for
//! Parameter-Efficient Fine-Tuning"), after PEFT's `RankAllocator` and
//! `AdaLoraModel.update_and_allocate`.
//!
//! Each adapted module holds a triplet: `A` `[r, in]`, `B` `[out, r]` and the singular values
//! `E` `[r, 1]` of its update `B (E ⊙ A)` (`encoder.rs`). The trainer:
//! 1. adds `orth_reg · mean_P ‖P Pᵀ − I‖_F` over every `A` (and `‖BᵀB − I‖_F` over every `B`) to
//!    the loss, keeping `A` and `B` near orthogonal so `E` acts as singular values
//!    ([`RankAllocator::orthogonality_penalty`]);
//! 2. after each optimizer step `t` (0-based), updates the importance of every entry of the
//!    triplets: the sensitivity `I = |θ · ∇θ|`, smoothed `Ī ← β1 Ī + (1 − β1) I`, and its
//!    uncertainty `Ū ← β2 Ū + (1 − β2) |I − Ī|`; the score of entry `i` of a triplet is
//!    `s(E_i) + mean_j s(A_ij) + mean_j s(B_ji)` with `s = Ī · Ū`;
//! 3. then zeroes the `E` entries with the lowest scores so that at most `b(t)` stay in the whole
//!    model, where the budget `b(t)` falls from `r · modules` to `target_r · modules` on a cubic
//!    schedule: `r · m` up to step `tinit`, then
//!    `⌊(r − target_r) · m · (1 − (t − tinit) / (T − tfinal − tinit))³⌋ + target_r · m`,
//!    pruning every `delta_t` steps; at step `T − tfinal` the pattern is fixed at the target and
//!    applied at every later step ([`RankAllocator::update_and_allocate`]).
//!
//! Everything evolving here (the two averages and the fixed pattern) goes into checkpoints
//! ([`RankAllocator::state_tensors`]), so a resumed run prunes exactly as an uninterrupted one.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use super::error::{MlError, Result};
use crate::model::stages::AdaLora;

/// The settings of `Method::Adalora`, and the run's optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdaLoraSchedule {
    pub(crate) settings: AdaLora,
    pub(crate) total_steps: usize,
}

/// One adapted module: the positions of its `A`, `B` and `E` in the parameter list.
#[derive(Debug, Clone)]
struct Triplet {
    module: String,
    a: usize,
    b: usize,
    e: usize,
}

pub(crate) struct RankAllocator {
    schedule: AdaLoraSchedule,
    triplets: Vec<Triplet>,
    /// Parameter position → (Ī, Ū), once it had a gradient.
    scores: BTreeMap<usize, (Tensor, Tensor)>,
    /// The keep mask (1/0) of each triplet's `E`, fixed at step `T − tfinal`.
    pattern: Option<Vec<Tensor>>,
}

impl RankAllocator {
    /// The allocator of the triplets among `vars` (named `<module>.lora_A.weight`,
    /// `<module>.lora_B.weight`, `<module>.lora_E`).
    pub(crate) fn new(vars: &[(String, Var)], schedule: AdaLoraSchedule) -> Result<Self> {
        let position = |name: &str| vars.iter().position(|(n, _)| n == name);
        let triplets: Vec<Triplet> = vars
            .iter()
            .enumerate()
            .filter_map(|(e, (name, _))| {
                let module = name.strip_suffix(".lora_E")?;
                Some(Triplet {
                    module: module.to_owned(),
                    a: position(&format!("{module}.lora_A.weight"))?,
                    b: position(&format!("{module}.lora_B.weight"))?,
                    e,
                })
            })
            .collect();
        if triplets.is_empty() {
            return Err(MlError::BadMethod {
                reason: "AdaLoRA found no adapted module".to_owned(),
            });
        }
        let (tinit, tfinal, total_steps) = (
            schedule.settings.tinit,
            schedule.settings.tfinal,
            schedule.total_steps,
        );
        if tinit + tfinal >= total_steps {
            return Err(MlError::BadMethod {
                reason: format!(
                    "AdaLoRA's `tinit` ({tinit}) and `tfinal` ({tfinal}) leave none of the run's {total_steps} optimizer steps to prune the rank in; lower them or train longer"
                ),
            });
        }
        Ok(Self {
            schedule,
            triplets,
            scores: BTreeMap::new(),
            pattern: None,
        })
    }

    /// The total rank budget after step `step`, and whether that step prunes to it.
    pub(crate) fn budget(&self, step: usize) -> (usize, bool) {
        let (s, total_steps) = (&self.schedule.settings, self.schedule.total_steps);
        let modules = self.triplets.len();
        let (initial, target) = (s.r * modules, s.target_r * modules);
        if step <= s.tinit {
            (initial, false)
        } else if step >= total_steps - s.tfinal {
            (target, true)
        } else {
            let progress = (step - s.tinit) as f64 / (total_steps - s.tfinal - s.tinit) as f64;
            let budget = ((initial - target) as f64 * (1.0 - progress).powi(3)) as usize + target;
            (budget, step.is_multiple_of(s.delta_t))
        }
    }

    /// `orth_reg · mean ‖P Pᵀ − I‖_F` over every `A` (`P Pᵀ`, `[r, r]`) and `B` (`PᵀP`).
    pub(crate) fn orthogonality_penalty(&self, vars: &[(String, Var)]) -> Result<Option<Tensor>> {
        if self.schedule.settings.orth_reg == 0.0 {
            return Ok(None);
        }
        let mut total: Option<Tensor> = None;
        for triplet in &self.triplets {
            for (position, rows) in [(triplet.a, true), (triplet.b, false)] {
                let p = vars[position].1.as_tensor();
                let cov = if rows {
                    p.matmul(&p.t()?)?
                } else {
                    p.t()?.matmul(p)?
                };
                let size = cov.dim(0)?;
                let eye = Tensor::eye(size, DType::F32, p.device())?;
                let norm = (cov - eye)?.sqr()?.sum_all()?.sqrt()?;
                total = Some(match total {
                    Some(sum) => (sum + norm)?,
                    None => norm,
                });
            }
        }
        let count = 2 * self.triplets.len();
        Ok(match total {
            Some(sum) => Some((sum * (self.schedule.settings.orth_reg / count as f64))?),
            None => None,
        })
    }

    /// After optimizer step `step` (0-based): update the scores from `grads` (each times
    /// `grad_scale`, the factor the optimizer applied) and the updated weights, then prune `E`
    /// to the step's budget (see the module docs).
    pub(crate) fn update_and_allocate(
        &mut self,
        vars: &[(String, Var)],
        grads: &[Tensor],
        grad_scale: f64,
        step: usize,
    ) -> Result<()> {
        let fixed_at = self.schedule.total_steps - self.schedule.settings.tfinal;
        if step > fixed_at {
            if let Some(pattern) = &self.pattern {
                for (triplet, keep) in self.triplets.iter().zip(pattern) {
                    let e = &vars[triplet.e].1;
                    e.set(&e.as_tensor().mul(keep)?)?;
                }
            }
            return Ok(());
        }
        self.update_scores(vars, grads, grad_scale)?;
        let (budget, prune) = self.budget(step);
        if step == fixed_at {
            self.pattern = Some(self.mask_to_budget(vars, budget)?);
            self.scores.clear();
        } else if prune {
            self.mask_to_budget(vars, budget)?;
        }
        Ok(())
    }

    fn update_scores(
        &mut self,
        vars: &[(String, Var)],
        grads: &[Tensor],
        grad_scale: f64,
    ) -> Result<()> {
        let (beta1, beta2) = (self.schedule.settings.beta1, self.schedule.settings.beta2);
        for triplet in &self.triplets {
            for position in [triplet.a, triplet.b, triplet.e] {
                let param = vars[position].1.as_tensor();
                let sensitivity = (param.mul(&grads[position])? * grad_scale)?.abs()?;
                let (importance, uncertainty) = match self.scores.get(&position) {
                    Some(previous) => previous.clone(),
                    None => (param.zeros_like()?, param.zeros_like()?),
                };
                let importance = ((importance * beta1)? + (&sensitivity * (1.0 - beta1))?)?;
                let uncertainty = ((uncertainty * beta2)?
                    + ((sensitivity - &importance)?.abs()? * (1.0 - beta2))?)?;
                self.scores.insert(position, (importance, uncertainty));
            }
        }
        Ok(())
    }

    /// The score `s` of every entry of a parameter: `Ī · Ū` (zeros before its first gradient).
    fn score(&self, vars: &[(String, Var)], position: usize) -> Result<Tensor> {
        match self.scores.get(&position) {
            Some((importance, uncertainty)) => Ok(importance.mul(uncertainty)?),
            None => Ok(vars[position].1.as_tensor().zeros_like()?),
        }
    }

    /// Zeroes the `E` entries scoring at or below the `(r · modules − budget)`-th lowest score
    /// (PEFT's `kthvalue` threshold); returns each triplet's keep mask `[r, 1]`.
    fn mask_to_budget(&self, vars: &[(String, Var)], budget: usize) -> Result<Vec<Tensor>> {
        let mut triplet_scores = Vec::with_capacity(self.triplets.len());
        for triplet in &self.triplets {
            let e = self.score(vars, triplet.e)?.flatten_all()?;
            let a = self.score(vars, triplet.a)?.mean(1)?;
            let b = self.score(vars, triplet.b)?.mean(0)?;
            triplet_scores.push(((e + a)? + b)?.to_vec1::<f32>()?);
        }
        let mut all: Vec<f32> = triplet_scores.iter().flatten().copied().collect();
        let pruned = all.len().saturating_sub(budget);
        let threshold = if pruned == 0 {
            f32::NEG_INFINITY
        } else {
            all.sort_by(f32::total_cmp);
            all[pruned - 1]
        };
        let mut pattern = Vec::with_capacity(self.triplets.len());
        for (triplet, scores) in self.triplets.iter().zip(triplet_scores) {
            let e = &vars[triplet.e].1;
            let keep: Vec<f32> = scores
                .iter()
                .map(|&score| f32::from(u8::from(score > threshold)))
                .collect();
            let keep = Tensor::from_vec(keep, e.dims(), e.device())?;
            e.set(&e.as_tensor().mul(&keep)?)?;
            pattern.push(keep);
        }
        Ok(pattern)
    }

    /// The rank each adapted module has now (its nonzero singular values), by module name.
    pub(crate) fn ranks(&self, vars: &[(String, Var)]) -> Result<Vec<(String, usize)>> {
        self.triplets
            .iter()
            .map(|triplet| {
                let values = vars[triplet.e]
                    .1
                    .as_tensor()
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let rank = values.iter().filter(|value| **value != 0.0).count();
                Ok((triplet.module.clone(), rank))
            })
            .collect()
    }

    /// What evolves here, under names for a checkpoint: `adalora.ipt.<param>`,
    /// `adalora.unc.<param>` and, once fixed, `adalora.keep.<module>`.
    pub(crate) fn state_tensors(&self, vars: &[(String, Var)]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (position, (importance, uncertainty)) in &self.scores {
            let name = &vars[*position].0;
            out.push((format!("adalora.ipt.{name}"), importance.clone()));
            out.push((format!("adalora.unc.{name}"), uncertainty.clone()));
        }
        for (triplet, keep) in self.triplets.iter().zip(self.pattern.iter().flatten()) {
            out.push((format!("adalora.keep.{}", triplet.module), keep.clone()));
        }
        out
    }

    /// Restores what [`Self::state_tensors`] wrote (names absent from `tensors` stay empty).
    pub(crate) fn restore(
        &mut self,
        vars: &[(String, Var)],
        tensors: &std::collections::HashMap<String, Tensor>,
    ) {
        self.scores.clear();
        for (position, (name, _)) in vars.iter().enumerate() {
            if let (Some(importance), Some(uncertainty)) = (
                tensors.get(&format!("adalora.ipt.{name}")),
                tensors.get(&format!("adalora.unc.{name}")),
            ) {
                self.scores
                    .insert(position, (importance.clone(), uncertainty.clone()));
            }
        }
        let pattern: Option<Vec<Tensor>> = self
            .triplets
            .iter()
            .map(|triplet| {
                tensors
                    .get(&format!("adalora.keep.{}", triplet.module))
                    .cloned()
            })
            .collect();
        self.pattern = pattern;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vars(modules: usize, r: usize) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for module in 0..modules {
            let var = |dims: &[usize], value: f64| {
                Var::from_tensor(
                    &(Tensor::ones(dims, DType::F32, &Device::Cpu).unwrap() * value).unwrap(),
                )
                .unwrap()
            };
            vars.push((format!("m{module}.lora_A.weight"), var(&[r, 3], 0.5)));
            vars.push((format!("m{module}.lora_B.weight"), var(&[4, r], 0.5)));
            vars.push((format!("m{module}.lora_E"), var(&[r, 1], 1.0)));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    fn schedule(total_steps: usize) -> AdaLoraSchedule {
        AdaLoraSchedule {
            settings: AdaLora {
                r: 12,
                target_r: 8,
                alpha: 16.0,
                dropout: 0.0,
                targets: vec!["query".to_owned()],
                tinit: 10,
                tfinal: 20,
                delta_t: 1,
                beta1: 0.85,
                beta2: 0.85,
                orth_reg: 0.5,
            },
            total_steps,
        }
    }

    /// The cubic schedule: the initial budget through `tinit`, never rising, the target from
    /// `T − tfinal` on (PEFT's `budget_schedule`, e.g. step 55 of 100: ⌊(36 − 24) · (1 −
    /// 45/70)³⌋ + 24 = ⌊0.54⌋ + 24 = 24, step 20: ⌊12 · (6/7)³⌋ + 24 = 31).
    #[test]
    fn the_budget_falls_cubically_from_r_to_target_r() {
        let allocator = RankAllocator::new(&vars(3, 12), schedule(100)).unwrap();
        assert_eq!(allocator.budget(0), (36, false));
        assert_eq!(allocator.budget(10), (36, false));
        assert_eq!(allocator.budget(20), (31, true));
        assert_eq!(allocator.budget(55), (24, true));
        assert_eq!(allocator.budget(80), (24, true));
        assert_eq!(allocator.budget(99), (24, true));
        let budgets: Vec<usize> = (0..100).map(|step| allocator.budget(step).0).collect();
        assert!(budgets.windows(2).all(|pair| pair[1] <= pair[0]));
    }

    /// Pruning keeps exactly the budget when scores differ, the highest-scoring entries first.
    #[test]
    fn pruning_keeps_the_budget_by_score() {
        let vars = vars(2, 4);
        let mut schedule = schedule(100);
        schedule.settings.r = 4;
        schedule.settings.target_r = 2;
        let mut allocator = RankAllocator::new(&vars, schedule).unwrap();
        // Gradients that make entry i of module m0 score ∝ (i + 1)², of m1 ∝ 9 (i + 1)²: the top
        // three are m1's entries 1 to 3 (scores 36, 81, 144; m0's best is 16).
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|(name, var)| {
                let dims = var.dims();
                let module = if name.starts_with("m1") { 3.0 } else { 1.0 };
                let rows: Vec<f32> = (0..dims.iter().product::<usize>())
                    .map(|index| {
                        let entry = if name.contains("lora_B") {
                            index % dims[1]
                        } else {
                            index / dims[1]
                        };
                        module * (entry + 1) as f32
                    })
                    .collect();
                Tensor::from_vec(rows, dims, &Device::Cpu).unwrap()
            })
            .collect();
        allocator.update_scores(&vars, &grads, 1.0).unwrap();
        allocator.mask_to_budget(&vars, 3).unwrap();
        let ranks = allocator.ranks(&vars).unwrap();
        assert_eq!(ranks, [("m0".to_owned(), 0), ("m1".to_owned(), 3)]);
        let e = vars[5]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(e, [0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn a_schedule_without_steps_to_prune_is_refused() {
        let error = RankAllocator::new(&vars(1, 12), schedule(30))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("`tinit` (10) and `tfinal` (20)"),
            "{error}"
        );
    }
}
