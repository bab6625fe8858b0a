//! Outputs: one producer per path, and none over a path taper writes itself.
//!
//! Contract: two outs overlap when one contains the other (`model/paths.rs`); the first in
//! file order owns the path and each later one is an error. Outs inside the pipeline
//! directory may not overlap the store, the pipeline or lock file, or `out/<file stem>/`
//! paths of stages (outs outside the directory are reported where they are normalized).

use std::path::Path;

use super::Checked;
use crate::model::error::ModelError;
use crate::model::paths::{is_strictly_inside, PathIndex};
use crate::model::{StageId, StageKind};
use crate::spec::Span;

/// Outputs: one producer per path. Returns, per stage, the outs it owns (those that clash
/// with no earlier out), which are what the edges are built from: a clashing out is reported
/// once, as a clash, not again as the cycles it would close.
pub(super) fn check_output_clashes<'a>(
    checked: &'a [Checked<'_>],
    errors: &mut Vec<ModelError>,
) -> Vec<Vec<&'a Path>> {
    // Indexed by path, so each out is compared with the few outs on its own path instead of
    // with all of them (O(n²) made validation half of a 1,000-stage `plan`). Values: (position
    // in file order, owning stage, span); the position keeps the first clash reported, as a
    // scan of all outs would.
    let mut out_owner: PathIndex<(usize, usize, Span)> = PathIndex::new();
    let mut out_count = 0;
    let mut owned_outs: Vec<Vec<&Path>> = vec![Vec::new(); checked.len()];
    for (index, stage) in checked.iter().enumerate() {
        for (out, span) in &stage.outs {
            if let Some((_, first, first_span)) = out_owner
                .overlapping(out)
                .min_by_key(|(position, _, _)| *position)
            {
                errors.push(ModelError::DuplicateOutput {
                    path: out.display().to_string(),
                    first: checked[*first].id.value.to_string(),
                    second: stage.id.value.to_string(),
                    first_span: Some((*first_span).into()),
                    note: String::new(),
                    second_span: (*span).into(),
                });
                continue;
            }
            out_owner.insert(out, (out_count, index, *span));
            owned_outs[index].push(out);
            out_count += 1;
        }
    }
    owned_outs
}

/// Outs are deleted before their stage runs and replaced from the store, so an out over a path
/// taper itself owns destroys it: `outs: [cache]` wiped the whole default store on the first
/// run, and an out over the pipeline file, its lock file, or an ML stage's
/// `out/<file stem>/<stage>/` or a stage log lost them. (Outs outside the pipeline directory are reported where they are
/// normalized.) The store is checked at its default place, `cache` beside the pipeline; one
/// moved with `--store` is not known here, and the engine refuses it at run time.
pub(super) fn check_outs(
    checked: &[Checked<'_>],
    pipeline_file: &Path,
    errors: &mut Vec<ModelError>,
) {
    /// What a reserved path is; described only when an out hits it (a description string per
    /// stage was a third of the memory this check took on a 50,000-stage file).
    #[derive(Clone, Copy)]
    enum Reserved {
        Store,
        PipelineFile,
        LockFile,
        Log(usize),
        Artifacts(usize),
    }
    // The index holds a path per stage: built only when there is an out to look up in it.
    if checked.iter().all(|stage| stage.outs.is_empty()) {
        return;
    }
    let mut reserved: PathIndex<Reserved> = PathIndex::new();
    reserved.insert(Path::new(crate::model::DEFAULT_STORE_DIR), Reserved::Store);
    let file = pipeline_file.file_name().map(Path::new);
    let lock = file.map(crate::model::lock_path_for);
    if let (Some(file), Some(lock)) = (file, &lock) {
        reserved.insert(file, Reserved::PipelineFile);
        reserved.insert(lock, Reserved::LockFile);
    }
    let ids: Vec<StageId> = checked
        .iter()
        .map(|stage| StageId(stage.id.value.to_string()))
        .collect();
    for (index, (stage, id)) in checked.iter().zip(&ids).enumerate() {
        reserved.insert(
            &crate::model::stage_log_path(pipeline_file, id),
            Reserved::Log(index),
        );
        if stage.kind.is_some_and(|kind| kind != StageKind::Command) {
            reserved.insert(
                &crate::model::stage_output_dir(pipeline_file, id),
                Reserved::Artifacts(index),
            );
        }
    }
    let describe = |what: Reserved| match what {
        Reserved::Store => format!("the default store `{}`", crate::model::DEFAULT_STORE_DIR),
        Reserved::PipelineFile => format!(
            "the pipeline file `{}`",
            file.unwrap_or(pipeline_file).display()
        ),
        Reserved::LockFile => format!(
            "the lock file `{}`",
            lock.as_deref().unwrap_or(pipeline_file).display()
        ),
        Reserved::Log(index) => format!(
            "the log of stage `{}` (`{}`)",
            ids[index],
            crate::model::stage_log_path(pipeline_file, &ids[index]).display()
        ),
        Reserved::Artifacts(index) => format!(
            "the artifacts of stage `{}` (`{}`)",
            ids[index],
            crate::model::stage_output_dir(pipeline_file, &ids[index]).display()
        ),
    };
    for stage in checked {
        for (out, span) in stage.outs.iter().filter(|(out, _)| is_strictly_inside(out)) {
            let Some(&what) = reserved.overlapping(out).next() else {
                continue;
            };
            errors.push(ModelError::InvalidValue {
                message: format!(
                    "output `{}` of stage `{}` overlaps {}",
                    out.display(),
                    stage.id.value,
                    describe(what)
                ),
                span: (*span).into(),
                label: "a path taper writes itself".to_owned(),
                param: None,
                help: "outs are deleted before their stage runs and restored from the store; write the output under a path of your own, e.g. `build/`".to_owned(),
            });
        }
    }
}
