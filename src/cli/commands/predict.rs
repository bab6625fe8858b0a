//! `taper predict BUNDLE "text"... | --input FILE.jsonl`: offline scoring with a deploy bundle,
//! through the same [`Bundle`] calls as `taper serve` (length-sorted batches under a token
//! budget), one JSON line per input on stdout.

use std::path::{Path, PathBuf};

use crate::cli::args::PredictArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::ml::DeviceChoice;
use crate::stages::bundle::Bundle;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
enum InputError {
    #[error("cannot read `{path}`")]
    #[diagnostic(code(taper::predict::read), help("check the `--input` path"))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` line {line}: {message}")]
    #[diagnostic(
        code(taper::predict::input_line),
        help(
            "each line is a JSON string or an object with a `text` string: {{\"text\": \"...\"}}"
        )
    )]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The texts of a JSON-lines file; blank lines are skipped.
fn read_inputs(path: &Path) -> Result<Vec<String>, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut texts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| InputError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Object(mut fields) => match fields.remove("text") {
                Some(serde_json::Value::String(text)) => text,
                _ => return Err(error("no `text` string".to_owned())),
            },
            _ => return Err(error("neither a string nor an object".to_owned())),
        };
        texts.push(text);
    }
    Ok(texts)
}

pub fn run(args: &PredictArgs, printer: &Printer) -> ExitStatus {
    let texts = match &args.input {
        Some(path) => match read_inputs(path) {
            Ok(texts) => texts,
            Err(error) => {
                printer.diagnostic(error);
                return ExitStatus::Error;
            }
        },
        None => args.texts.clone(),
    };
    let bundle = match Bundle::open(&args.bundle, DeviceChoice::Auto, args.precision) {
        Ok(bundle) => bundle,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Error;
        }
    };
    let scored = bundle
        .encode(&texts, args.truncate)
        .and_then(|ids| bundle.logits(&ids, args.max_batch_tokens as usize));
    let logits = match scored {
        Ok(logits) => logits,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Failure;
        }
    };
    let mut out = String::new();
    for row in &logits {
        let predictions = bundle.predictions(row, args.raw_scores);
        out.push_str(&serde_json::to_string(&predictions).unwrap_or_default());
        out.push('\n');
    }
    printer.data(&out);
    ExitStatus::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_and_text_objects_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "\"a\"\n\n{\"text\": \"b\", \"id\": 3}\n").unwrap();
        assert_eq!(read_inputs(&path).unwrap(), ["a", "b"]);
        std::fs::write(&path, "\"a\"\n{\"id\": 3}\n").unwrap();
        let error = read_inputs(&path).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
    }
}
