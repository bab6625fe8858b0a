//! Reading a table and turning it into labelled examples.
//!
//! Contract: [`read_table`] keeps each row's line number in the file (the line where the record
//! starts, 1-based, counting the header), so every later error can name the file and the line.
//! [`to_examples`] applies, in order: row filters, cleaning of the text (trim, collapse
//! whitespace), dropping empty texts, dedupe on the cleaned text (first occurrence wins), and the
//! label map. [`CleanStats`] counts what each step removed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::sources::{open_decompressed, strip_compression};
use crate::data::DataError;
use crate::model::stages::{Clean, DataFormat, RowFilter};

/// A table read from one file: column names and string cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line in the file where the record starts (1-based).
    pub line: u64,
    pub cells: Vec<String>,
}

impl Table {
    /// The index of `column`, or an error naming the file and the columns it has.
    pub fn column(&self, column: &str) -> Result<usize, DataError> {
        self.columns
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: column.to_owned(),
                available: self
                    .columns
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The format of `path`, from `format` or the file name (`.csv`, `.tsv`, `.jsonl`, with an
/// optional `.bz2`/`.gz`).
pub fn detect_format(path: &Path, format: Option<DataFormat>) -> Result<DataFormat, DataError> {
    if let Some(format) = format {
        return Ok(format);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = strip_compression(&name);
    if name.ends_with(".csv") {
        Ok(DataFormat::Csv)
    } else if name.ends_with(".tsv") || name.ends_with(".tab") {
        Ok(DataFormat::Tsv)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Ok(DataFormat::Jsonl)
    } else {
        Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

pub fn read_table(path: &Path, format: Option<DataFormat>) -> Result<Table, DataError> {
    match detect_format(path, format)? {
        DataFormat::Csv => read_delimited(path, b','),
        DataFormat::Tsv => read_delimited(path, b'\t'),
        DataFormat::Jsonl => read_jsonl(path),
    }
}

fn read_delimited(path: &Path, delimiter: u8) -> Result<Table, DataError> {
    let reader = open_decompressed(path)?;
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(reader);
    let malformed = |error: csv::Error| match error.position() {
        Some(position) => DataError::BadRow {
            path: path.to_path_buf(),
            line: position.line(),
            message: csv_message(&error),
        },
        None => DataError::Malformed {
            path: path.to_path_buf(),
            message: csv_message(&error),
        },
    };
    let columns: Vec<String> = csv
        .headers()
        .map_err(malformed)?
        .iter()
        .map(|name| name.trim_start_matches('\u{feff}').to_owned())
        .collect();
    let mut rows = Vec::new();
    for record in csv.records() {
        let record = record.map_err(malformed)?;
        let line = record.position().map_or(0, csv::Position::line);
        rows.push(Row {
            line,
            cells: record.iter().map(str::to_owned).collect(),
        });
    }
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
    })
}

fn csv_message(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_owned(),
        _ => error.to_string(),
    }
}

fn read_jsonl(path: &Path) -> Result<Table, DataError> {
    let reader = std::io::BufReader::new(open_decompressed(path)?);
    let mut columns: Vec<String> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut objects = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line_number = number as u64 + 1;
        let line = line.map_err(|error| DataError::io(path, error))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::BadRow {
            path: path.to_path_buf(),
            line: line_number,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|error| bad(error.to_string()))?;
        let serde_json::Value::Object(object) = value else {
            return Err(bad("expected a JSON object".to_owned()));
        };
        for key in object.keys() {
            if !index.contains_key(key) {
                index.insert(key.clone(), columns.len());
                columns.push(key.clone());
            }
        }
        objects.push((line_number, object));
    }
    let rows = objects
        .into_iter()
        .map(|(line, object)| {
            let mut cells = vec![String::new(); columns.len()];
            for (key, value) in object {
                cells[index[&key]] = match value {
                    serde_json::Value::String(text) => text,
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
            }
            Row { line, cells }
        })
        .collect();
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
    })
}

/// One labelled text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// The label as written in the file.
    pub label: String,
    pub line: u64,
}

/// What each step of [`to_examples`] removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanStats {
    pub rows: usize,
    pub filtered: usize,
    pub empty: usize,
    pub duplicates: usize,
    pub kept: usize,
}

/// Filters and cleans the rows of `table` into examples with string labels.
pub fn to_examples(
    table: &Table,
    text_column: &str,
    label_column: &str,
    filters: &[RowFilter],
    clean: &Clean,
) -> Result<(Vec<Example>, CleanStats), DataError> {
    let text_index = table.column(text_column)?;
    let label_index = table.column(label_column)?;
    let filters: Vec<(usize, &RowFilter)> = filters
        .iter()
        .map(|filter| Ok((table.column(&filter.column)?, filter)))
        .collect::<Result<_, DataError>>()?;
    let mut stats = CleanStats {
        rows: table.rows.len(),
        ..CleanStats::default()
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut examples = Vec::new();
    for row in &table.rows {
        let keep = filters.iter().all(|(index, filter)| {
            let value = row.cells[*index].trim();
            filter
                .is_in
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|a| a == value))
                && filter
                    .not_in
                    .as_ref()
                    .is_none_or(|denied| !denied.iter().any(|d| d == value))
        });
        if !keep {
            stats.filtered += 1;
            continue;
        }
        let text = clean_text(&row.cells[text_index], clean);
        if clean.drop_empty && text.trim().is_empty() {
            stats.empty += 1;
            continue;
        }
        if clean.dedupe && !seen.insert(text.clone()) {
            stats.duplicates += 1;
            continue;
        }
        examples.push(Example {
            text,
            label: row.cells[label_index].trim().to_owned(),
            line: row.line,
        });
    }
    stats.kept = examples.len();
    Ok((examples, stats))
}

pub fn clean_text(text: &str, clean: &Clean) -> String {
    let text = if clean.trim { text.trim() } else { text };
    if clean.collapse_whitespace {
        let mut out = String::with_capacity(text.len());
        let mut in_space = false;
        for c in text.chars() {
            if c.is_whitespace() {
                in_space = true;
            } else {
                if in_space && !out.is_empty() {
                    out.push(' ');
                }
                in_space = false;
                out.push(c);
            }
        }
        // Without trimming, keep one leading/trailing space where there was whitespace.
        if !clean.trim {
            if text.starts_with(char::is_whitespace) {
                out.insert(0, ' ');
            }
            if in_space {
                out.push(' ');
            }
        }
        out
    } else {
        text.to_owned()
    }
}

/// Label names in id order: `given` when set, else the sorted set of labels in `examples`.
pub fn label_names(given: Option<&[String]>, examples: &[&[Example]]) -> Vec<String> {
    match given {
        Some(names) => names.to_vec(),
        None => examples
            .iter()
            .flat_map(|part| part.iter().map(|e| e.label.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

/// The label id of each example; an unknown label is an error naming the file and line.
pub fn map_labels(
    path: &Path,
    examples: &[Example],
    names: &[String],
) -> Result<Vec<u32>, DataError> {
    let ids: BTreeMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(id, name)| (name.as_str(), id as u32))
        .collect();
    examples
        .iter()
        .map(|example| {
            ids.get(example.label.as_str())
                .copied()
                .ok_or_else(|| DataError::UnknownLabel {
                    path: path.to_path_buf(),
                    line: example.line,
                    value: example.label.clone(),
                    known: names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_with_quoted_newlines_keeps_record_start_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "r.csv",
            "category,text\nfresh,\"good\nfilm\"\nrotten,\"say \"\"meh\"\"\"\n",
        );
        let table = read_table(&path, None).unwrap();
        assert_eq!(table.columns, ["category", "text"]);
        assert_eq!(table.rows.len(), 2);
        assert_eq!(table.rows[0].cells[1], "good\nfilm");
        assert_eq!(table.rows[0].line, 2);
        assert_eq!(table.rows[1].cells[1], "say \"meh\"");
        assert_eq!(table.rows[1].line, 4);
    }

    #[test]
    fn tsv_and_jsonl_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = write(dir.path(), "r.tsv", "text\tlabel\na b\tpos\n");
        let table = read_table(&tsv, None).unwrap();
        assert_eq!(table.rows[0].cells, ["a b", "pos"]);
        let jsonl = write(
            dir.path(),
            "r.jsonl",
            "{\"text\": \"x\", \"label\": 1}\n\n{\"label\": 0, \"text\": \"y\", \"extra\": null}\n",
        );
        let table = read_table(&jsonl, None).unwrap();
        // Keys in sorted order (serde_json's map), then new keys as they appear.
        assert_eq!(table.columns, ["label", "text", "extra"]);
        assert_eq!(table.rows[1].cells, ["0", "y", ""]);
        assert_eq!(table.rows[1].line, 3);
        let bad = write(dir.path(), "b.jsonl", "{\"text\": 1}\n[1]\n");
        let error = read_table(&bad, None).unwrap_err();
        assert!(
            matches!(error, DataError::BadRow { line: 2, .. }),
            "{error:?}"
        );
        assert!(matches!(
            read_table(&dir.path().join("x.parquet"), None),
            Err(DataError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn ragged_csv_row_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "r.csv", "a,b\n1,2\n3\n");
        let error = read_table(&path, None).unwrap_err();
        let DataError::BadRow { line, message, .. } = error else {
            panic!("{error:?}")
        };
        assert_eq!(line, 3);
        assert_eq!(message, "expected 2 fields, found 1");
    }

    #[test]
    fn filter_clean_dedupe_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "r.csv",
            "category,text\nfresh,  Great   film \nplot,A plot\nrotten,\"   \"\nfresh,Great film\nrotten,Dull\n",
        );
        let table = read_table(&path, None).unwrap();
        let filters = [RowFilter {
            column: "category".into(),
            is_in: None,
            not_in: Some(vec!["plot".into()]),
        }];
        let (examples, stats) =
            to_examples(&table, "text", "category", &filters, &Clean::default()).unwrap();
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["Great film", "Dull"]);
        assert_eq!(examples[1].line, 6);
        assert_eq!(
            stats,
            CleanStats {
                rows: 5,
                filtered: 1,
                empty: 1,
                duplicates: 1,
                kept: 2
            }
        );
        let error = to_examples(&table, "review", "category", &[], &Clean::default()).unwrap_err();
        let DataError::MissingColumn {
            column, available, ..
        } = error
        else {
            panic!("{error:?}")
        };
        assert_eq!(column, "review");
        assert_eq!(available, "`category`, `text`");
    }

    #[test]
    fn in_filter_keeps_only_listed_values() {
        let table = Table {
            path: "t.csv".into(),
            columns: vec!["text".into(), "label".into()],
            rows: vec![
                Row {
                    line: 2,
                    cells: vec!["a".into(), "x".into()],
                },
                Row {
                    line: 3,
                    cells: vec!["b".into(), "y".into()],
                },
            ],
        };
        let filters = [RowFilter {
            column: "label".into(),
            is_in: Some(vec!["y".into()]),
            not_in: None,
        }];
        let (examples, _) =
            to_examples(&table, "text", "label", &filters, &Clean::default()).unwrap();
        assert_eq!(examples.len(), 1);
        assert_eq!(examples[0].text, "b");
    }

    #[test]
    fn label_map_is_sorted_or_given_and_unknown_labels_name_the_line() {
        let examples = vec![
            Example {
                text: "a".into(),
                label: "rotten".into(),
                line: 2,
            },
            Example {
                text: "b".into(),
                label: "fresh".into(),
                line: 3,
            },
            Example {
                text: "c".into(),
                label: "meh".into(),
                line: 7,
            },
        ];
        let names = label_names(None, &[&examples]);
        assert_eq!(names, ["fresh", "meh", "rotten"]);
        assert_eq!(
            map_labels(Path::new("t.csv"), &examples, &names).unwrap(),
            [2, 0, 1]
        );
        let given = vec!["rotten".to_owned(), "fresh".to_owned()];
        let error = map_labels(Path::new("t.csv"), &examples, &given).unwrap_err();
        let DataError::UnknownLabel {
            line, value, known, ..
        } = error
        else {
            panic!("{error:?}")
        };
        assert_eq!(
            (line, value.as_str(), known.as_str()),
            (7, "meh", "`rotten`, `fresh`")
        );
    }

    #[test]
    fn collapse_without_trim_keeps_single_edge_spaces() {
        let clean = Clean {
            trim: false,
            collapse_whitespace: true,
            drop_empty: true,
            dedupe: true,
        };
        assert_eq!(clean_text("  a \n b  ", &clean), " a b ");
        assert_eq!(clean_text("  a \n b  ", &Clean::default()), "a b");
    }
}
