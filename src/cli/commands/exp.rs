//! `taper exp show | diff | apply | remove`: the experiments `taper run` records in the store
//! (`cache::ExperimentRecord`).
//!
//! Rows: an experiment without a `matrix:` is one row, named by its id (`3f2a9c1b`); a sweep is
//! one row per variant (`3f2a9c1b.1`, `.2`, … in expansion order), holding the variant's
//! stages and the stages outside every sweep. Columns: `-S` overrides (`hparams.epochs`) and
//! swept values (`lr`) as params; every stage's metrics as `<stage>.<metric>`, a variant's
//! stages named as in the spec (`finetune`, not `finetune-lr1e-3-seed2`), so variants share
//! columns. Ids accept unique prefixes, as git's do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use crate::cache::locate::project_root_of;
use crate::cache::{
    ExperimentRecord, ExperimentStage, ExperimentVariant, ObjectStore, Store, EXPERIMENT_SCHEMA,
};
use crate::cli::args::{ExpArgs, ExpCommand, ExpFormat};
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::data::metrics::flatten;
use crate::exec::experiment::relative_to;
use crate::model::Override;
use crate::spec::{apply_edits, Edit};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExpError {
    #[error("no experiment `{id}`")]
    #[diagnostic(
        code(taper::exp::unknown),
        help("`taper exp show` lists the ids; every `taper run` records one")
    )]
    Unknown { id: String },
    #[error("`{id}` names more than one experiment row: {candidates}")]
    #[diagnostic(code(taper::exp::ambiguous), help("give more of the id"))]
    Ambiguous { id: String, candidates: String },
    #[error("no column `{column}` in `--{flag} {text}`")]
    #[diagnostic(code(taper::exp::unknown_column), help("columns: {columns}"))]
    UnknownColumn {
        flag: &'static str,
        text: String,
        column: String,
        columns: String,
    },
    #[error("`--filter {text}` is not `COLUMN OP VALUE`")]
    #[diagnostic(
        code(taper::exp::filter_syntax),
        help("OP is one of `>`, `>=`, `<`, `<=`, `=`, `!=`, e.g. `--filter 'test.accuracy>0.8'`")
    )]
    FilterSyntax { text: String },
    #[error("cannot read the pipeline file `{path}` of experiment `{id}`")]
    #[diagnostic(
        code(taper::exp::pipeline_missing),
        help("run `taper exp apply` inside the project the experiment ran in (its pipeline path is relative to the project root)")
    )]
    PipelineMissing {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "experiment `{id}` ran `{pipeline}` with no overrides or swept values: nothing to apply"
    )]
    #[diagnostic(
        code(taper::exp::nothing_to_apply),
        help("`taper exp show` lists each experiment's params")
    )]
    NothingToApply { id: String, pipeline: String },
    #[error("cannot apply experiment `{id}` to `{path}`")]
    #[diagnostic(code(taper::exp::apply))]
    Apply {
        id: String,
        path: String,
        #[source]
        #[diagnostic_source]
        source: crate::spec::EditError,
    },
    #[error("cannot write `{path}`")]
    #[diagnostic(code(taper::exp::write), help("check that the file is writable"))]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

pub fn run(args: &ExpArgs, printer: &Printer) -> ExitStatus {
    // `exp show PIPELINE` reads the store of the pipeline's project, as `run` wrote it.
    let pipeline_file = match &args.command {
        ExpCommand::Show { pipeline, .. } => pipeline.as_deref(),
        _ => None,
    };
    let store = match super::open_store(&args.store, pipeline_file, printer) {
        Ok(store) => store,
        Err(status) => return status,
    };
    let result = match &args.command {
        ExpCommand::Show {
            pipeline,
            sort,
            desc,
            filter,
            columns,
            only_changed,
            format,
            json,
            csv,
            md,
        } => {
            let format = match (json, csv, md) {
                (true, _, _) => ExpFormat::Json,
                (_, true, _) => ExpFormat::Csv,
                (_, _, true) => ExpFormat::Md,
                _ => *format,
            };
            let query = Query {
                pipeline: pipeline.as_deref(),
                sort: sort.as_deref(),
                desc: *desc,
                filters: filter,
                columns,
                only_changed: *only_changed,
            };
            show(&store, &query, format)
        }
        ExpCommand::Diff { a, b } => diff(&store, a, b),
        ExpCommand::Apply { id } => apply(&store, id).map(|line| {
            printer.status(&line);
            String::new()
        }),
        ExpCommand::Remove { ids } => remove(&store, ids).map(|line| {
            printer.status(&line);
            String::new()
        }),
    };
    super::finish(result, printer, |error| match error {
        ExpError::Cache(_) | ExpError::Write { .. } => ExitStatus::Error,
        _ => ExitStatus::Failure,
    })
}

/// One row of `exp show`: an experiment, or one variant of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub id: String,
    pub record: &'a ExperimentRecord,
    pub variant: Option<&'a ExperimentVariant>,
    pub params: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    /// By the name the spec gives them (a variant's label stripped), with their full name.
    pub stages: BTreeMap<String, (&'a str, &'a ExperimentStage)>,
}

/// The rows of one experiment.
pub fn rows_of(record: &ExperimentRecord) -> Vec<Row<'_>> {
    let overrides: BTreeMap<String, String> = record
        .overrides
        .iter()
        .filter_map(|text| text.parse::<Override>().ok())
        .map(|item| (item.path.join("."), item.value))
        .collect();
    if record.variants.is_empty() {
        let names: Vec<&str> = record.stages.keys().map(String::as_str).collect();
        return vec![row(record, &overrides, record.id.clone(), None, &names)];
    }
    let in_variants: BTreeSet<&str> = record
        .variants
        .iter()
        .flat_map(|variant| variant.stages.iter().map(String::as_str))
        .collect();
    let outside: Vec<&str> = record
        .stages
        .keys()
        .map(String::as_str)
        .filter(|name| !in_variants.contains(name))
        .collect();
    record
        .variants
        .iter()
        .enumerate()
        .map(|(index, variant)| {
            let mut names = outside.clone();
            names.extend(variant.stages.iter().map(String::as_str));
            row(
                record,
                &overrides,
                format!("{}.{}", record.id, index + 1),
                Some(variant),
                &names,
            )
        })
        .collect()
}

/// The row of `record` made of the stages `names` (of `variant`, when a sweep's).
fn row<'a>(
    record: &'a ExperimentRecord,
    overrides: &BTreeMap<String, String>,
    id: String,
    variant: Option<&'a ExperimentVariant>,
    names: &[&str],
) -> Row<'a> {
    let mut params = overrides.clone();
    let mut stages = BTreeMap::new();
    let mut metrics = BTreeMap::new();
    if let Some(variant) = variant {
        params.extend(variant.params.clone());
    }
    for name in names {
        let Some((full, stage)) = record.stages.get_key_value(*name) else {
            continue;
        };
        let base = variant
            .and_then(|variant| {
                full.strip_suffix(&variant.label)
                    .and_then(|rest| rest.strip_suffix('-'))
            })
            .unwrap_or(full);
        for (metric, value) in &stage.metrics {
            metrics.insert(format!("{base}.{metric}"), *value);
        }
        stages.insert(base.to_owned(), (full.as_str(), stage));
    }
    Row {
        id,
        record,
        variant,
        params,
        metrics,
        stages,
    }
}

/// What `exp show` was asked for.
pub struct Query<'a> {
    pub pipeline: Option<&'a Path>,
    pub sort: Option<&'a str>,
    pub desc: bool,
    pub filters: &'a [String],
    /// Only these param and metric columns: exact names, or prefixes ending in `.` or `*`
    /// (`test.`, `finetune*`); all when empty.
    pub columns: &'a [String],
    /// Only the param and metric columns whose values differ between the rows.
    pub only_changed: bool,
}

/// A cell, for sorting and filtering: numbers compare as numbers.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Number(f64),
    Text(String),
}

impl Cell {
    fn of(text: &str) -> Cell {
        text.trim()
            .parse::<f64>()
            .map_or_else(|_| Cell::Text(text.to_owned()), Cell::Number)
    }

    fn cmp(&self, other: &Cell) -> std::cmp::Ordering {
        match (self, other) {
            (Cell::Number(left), Cell::Number(right)) => left.total_cmp(right),
            (Cell::Number(_), Cell::Text(_)) => std::cmp::Ordering::Less,
            (Cell::Text(_), Cell::Number(_)) => std::cmp::Ordering::Greater,
            (Cell::Text(left), Cell::Text(right)) => left.cmp(right),
        }
    }
}

/// The fixed columns before params and metrics.
const FIXED: [&str; 4] = ["id", "pipeline", "started", "commit"];

/// The columns of `rows`: fixed, then params, then metrics (each sorted).
pub struct Columns {
    pub params: Vec<String>,
    pub metrics: Vec<String>,
}

impl Columns {
    fn of(rows: &[Row<'_>]) -> Columns {
        let params: BTreeSet<&String> = rows.iter().flat_map(|row| row.params.keys()).collect();
        let metrics: BTreeSet<&String> = rows.iter().flat_map(|row| row.metrics.keys()).collect();
        Columns {
            params: params.into_iter().cloned().collect(),
            metrics: metrics.into_iter().cloned().collect(),
        }
    }

    fn all(&self) -> Vec<&str> {
        FIXED
            .iter()
            .copied()
            .chain(self.params.iter().map(String::as_str))
            .chain(self.metrics.iter().map(String::as_str))
            .collect()
    }
}

impl Row<'_> {
    /// The cell of `column` as text (`None` when the row has no such value).
    fn text(&self, column: &str) -> Option<String> {
        match column {
            "id" => Some(self.id.clone()),
            "pipeline" => Some(self.record.pipeline.clone()),
            "started" => Some(utc(self.record.started_at_ms)),
            "commit" => self
                .record
                .commit
                .as_ref()
                .map(|commit| commit.chars().take(7).collect()),
            _ => self
                .params
                .get(column)
                .cloned()
                .or_else(|| self.metrics.get(column).map(|value| number(*value))),
        }
    }

    fn cell(&self, column: &str) -> Option<Cell> {
        if column == "started" {
            #[allow(clippy::cast_precision_loss)]
            return Some(Cell::Number(self.record.started_at_ms as f64));
        }
        if let Some(value) = self.metrics.get(column) {
            return Some(Cell::Number(*value));
        }
        self.text(column).map(|text| Cell::of(&text))
    }
}

/// A `--filter`: column, operator, value.
struct Filter {
    column: String,
    op: &'static str,
    value: Cell,
}

impl Filter {
    fn parse(text: &str) -> Result<Filter, ExpError> {
        let at = text
            .find(['<', '>', '=', '!'])
            .ok_or_else(|| ExpError::FilterSyntax {
                text: text.to_owned(),
            })?;
        let rest = &text[at..];
        let op = ["<=", ">=", "!=", "<", ">", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| ExpError::FilterSyntax {
                text: text.to_owned(),
            })?;
        let column = text[..at].trim();
        let value = rest[op.len()..].trim();
        if column.is_empty() || value.is_empty() {
            return Err(ExpError::FilterSyntax {
                text: text.to_owned(),
            });
        }
        Ok(Filter {
            column: column.to_owned(),
            op,
            value: Cell::of(value),
        })
    }

    fn keeps(&self, row: &Row<'_>) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let Some(cell) = row.cell(&self.column) else {
            return false;
        };
        let order = cell.cmp(&self.value);
        match self.op {
            "<" => order == Less,
            "<=" => order != Greater,
            ">" => order == Greater,
            ">=" => order != Less,
            "=" => order == Equal,
            _ => order != Equal,
        }
    }
}

fn known_column(
    columns: &Columns,
    flag: &'static str,
    text: &str,
    column: &str,
) -> Result<(), ExpError> {
    let all = columns.all();
    if all.contains(&column) {
        return Ok(());
    }
    Err(ExpError::UnknownColumn {
        flag,
        text: text.to_owned(),
        column: column.to_owned(),
        columns: all
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The rows `query` selects, in its order, with their columns.
pub fn select<'a>(
    records: &'a [ExperimentRecord],
    query: &Query<'_>,
) -> Result<(Vec<Row<'a>>, Columns), ExpError> {
    let pipeline = query
        .pipeline
        .map(|path| relative_to(path, &project_root_of(Some(path))));
    let mut rows: Vec<Row<'a>> = records
        .iter()
        .filter(|record| {
            pipeline
                .as_ref()
                .is_none_or(|name| &record.pipeline == name)
        })
        .flat_map(rows_of)
        .collect();
    let columns = Columns::of(&rows);
    for text in query.filters {
        let filter = Filter::parse(text)?;
        known_column(&columns, "filter", text, &filter.column)?;
        rows.retain(|row| filter.keeps(row));
    }
    if let Some(sort) = query.sort {
        known_column(&columns, "sort", sort, sort)?;
        // Rows without the value go last either way.
        rows.sort_by(|left, right| match (left.cell(sort), right.cell(sort)) {
            (Some(a), Some(b)) if query.desc => b.cmp(&a),
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    // Only the columns the remaining rows fill, and those asked for.
    let mut columns = Columns::of(&rows);
    let wanted = |column: &String| {
        query.columns.is_empty()
            || query.columns.iter().any(|pattern| {
                let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
                column == pattern
                    || ((prefix.ends_with('.') || pattern.ends_with('*'))
                        && column.starts_with(prefix))
            })
    };
    let varies = |column: &String| {
        let mut values = rows.iter().map(|row| row.text(column));
        let first = values.next().flatten();
        !query.only_changed || values.any(|value| value != first)
    };
    columns
        .params
        .retain(|column| wanted(column) && varies(column));
    columns
        .metrics
        .retain(|column| wanted(column) && varies(column));
    Ok((rows, columns))
}

fn show(store: &Store, query: &Query<'_>, format: ExpFormat) -> Result<String, ExpError> {
    let records = store.experiments();
    let (rows, columns) = select(&records, query)?;
    Ok(render(&rows, &columns, format))
}

/// `rows` in `format`.
pub fn render(rows: &[Row<'_>], columns: &Columns, format: ExpFormat) -> String {
    if format == ExpFormat::Json {
        return render_json(rows, columns);
    }
    let header = columns.all();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            header
                .iter()
                .map(|column| row.text(column).unwrap_or_else(|| "-".to_owned()))
                .collect()
        })
        .collect();
    let mut out = String::new();
    match format {
        ExpFormat::Csv => {
            let line = |cells: &[&str]| {
                cells
                    .iter()
                    .map(|cell| csv_field(cell))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(out, "{}", line(&header));
            for row in &cells {
                let row: Vec<&str> = row
                    .iter()
                    .map(|cell| if cell == "-" { "" } else { cell.as_str() })
                    .collect();
                let _ = writeln!(out, "{}", line(&row));
            }
        }
        ExpFormat::Md => {
            let _ = writeln!(out, "| {} |", header.join(" | "));
            let rule: Vec<&str> = header
                .iter()
                .map(|column| {
                    if FIXED.contains(column) {
                        "---"
                    } else {
                        "---:"
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
            for row in &cells {
                let escaped: Vec<String> =
                    row.iter().map(|cell| cell.replace('|', "\\|")).collect();
                let _ = writeln!(out, "| {} |", escaped.join(" | "));
            }
        }
        ExpFormat::Table | ExpFormat::Json => {
            let widths: Vec<usize> = header
                .iter()
                .enumerate()
                .map(|(index, column)| {
                    cells
                        .iter()
                        .map(|row| row[index].chars().count())
                        .chain([column.chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: &[&str]| {
                let mut text = String::new();
                for (index, cell) in cells.iter().enumerate() {
                    let width = widths[index];
                    // Text columns align left, numbers right.
                    if index < FIXED.len() {
                        let _ = write!(text, "{cell:<width$}  ");
                    } else {
                        let _ = write!(text, "{cell:>width$}  ");
                    }
                }
                text.trim_end().to_owned()
            };
            let _ = writeln!(out, "{}", line(&header));
            for row in &cells {
                let row: Vec<&str> = row.iter().map(String::as_str).collect();
                let _ = writeln!(out, "{}", line(&row));
            }
            if rows.is_empty() {
                out = "no experiments recorded yet: every `taper run` records one\n".to_owned();
            }
        }
    }
    out
}

fn csv_field(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

fn render_json(rows: &[Row<'_>], columns: &Columns) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let stages: BTreeMap<&String, serde_json::Value> = row
                .stages
                .iter()
                .map(|(base, (name, stage))| {
                    (
                        base,
                        serde_json::json!({
                            "name": name,
                            "kind": stage.kind,
                            "status": stage.status,
                            "key": stage.key,
                            "duration_ms": stage.duration_ms,
                        }),
                    )
                })
                .collect();
            serde_json::json!({
                "id": row.id,
                "experiment": row.record.id,
                "pipeline": row.record.pipeline,
                "name": row.record.name,
                "started_at": utc(row.record.started_at_ms),
                "wall_ms": row.record.wall_ms,
                "commit": row.record.commit,
                "overrides": row.record.overrides,
                "variant": row.variant.map(|variant| &variant.label),
                "params": row.params,
                "metrics": row.metrics,
                "stages": stages,
            })
        })
        .collect();
    let document = serde_json::json!({
        "schema": EXPERIMENT_SCHEMA,
        "params": columns.params,
        "metrics": columns.metrics,
        "rows": rows,
    });
    let mut text = serde_json::to_string_pretty(&document).expect("JSON values serialize");
    text.push('\n');
    text
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC; civil-from-days, H. Hinnant's
/// algorithm, valid for every date a run can have).
pub fn utc(millis: u64) -> String {
    let seconds = millis / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let time = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

fn number(value: f64) -> String {
    super::metrics::number(value)
}

/// The one row `id` names (exactly, or as a unique prefix).
fn find<'a>(records: &'a [ExperimentRecord], id: &str) -> Result<Row<'a>, ExpError> {
    let rows: Vec<Row<'a>> = records.iter().flat_map(rows_of).collect();
    if let Some(row) = rows.iter().find(|row| row.id == id) {
        return Ok(row.clone());
    }
    let mut matching: Vec<Row<'a>> = rows
        .into_iter()
        .filter(|row| !id.is_empty() && row.id.starts_with(id))
        .collect();
    match matching.len() {
        0 => Err(ExpError::Unknown { id: id.to_owned() }),
        1 => Ok(matching.remove(0)),
        _ => Err(ExpError::Ambiguous {
            id: id.to_owned(),
            candidates: matching
                .iter()
                .map(|row| format!("`{}`", row.id))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn diff(store: &Store, a: &str, b: &str) -> Result<String, ExpError> {
    let records = store.experiments();
    let left = find(&records, a)?;
    let right = find(&records, b)?;
    Ok(render_diff(store, &left, &right))
}

/// Lines `name  old → new` for every key whose value differs.
fn changed<V: PartialEq>(
    left: &BTreeMap<String, V>,
    right: &BTreeMap<String, V>,
    show: impl Fn(&V) -> String,
    out: &mut Vec<(String, String, String)>,
) {
    let keys: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for key in keys {
        let (old, new) = (left.get(key), right.get(key));
        if old != new {
            let text = |value: Option<&V>| value.map_or_else(|| "-".to_owned(), &show);
            out.push((key.clone(), text(old), text(new)));
        }
    }
}

fn section(out: &mut String, title: &str, lines: &[(String, String, String)]) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}");
    let width = lines.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
    for (name, old, new) in lines {
        let _ = writeln!(out, "  {name:<width$}  {old} → {new}");
    }
}

/// Params, then per stage its key, settings and inputs, then metrics: only what differs.
fn render_diff(store: &Store, left: &Row<'_>, right: &Row<'_>) -> String {
    let mut out = format!("{} → {}\n", left.id, right.id);
    let mut lines = Vec::new();
    changed(&left.params, &right.params, Clone::clone, &mut lines);
    section(&mut out, "params", &lines);

    let mut lines = Vec::new();
    let names: BTreeSet<&String> = left.stages.keys().chain(right.stages.keys()).collect();
    for name in names {
        let (old, new) = (left.stages.get(name), right.stages.get(name));
        let key = |stage: Option<&(&str, &ExperimentStage)>| {
            stage
                .and_then(|(_, stage)| stage.key)
                .map_or_else(|| "-".to_owned(), |key| key.short())
        };
        if key(old) == key(new) {
            continue;
        }
        lines.push((format!("{name} (key)"), key(old), key(new)));
        let fingerprint = |stage: Option<&(&str, &ExperimentStage)>| {
            stage
                .and_then(|(_, stage)| stage.key)
                .and_then(|key| store.get_action(&key))
                .map(|record| record.fingerprint)
        };
        let (Some(old), Some(new)) = (fingerprint(old), fingerprint(new)) else {
            continue;
        };
        let old_settings = flatten(&old.settings);
        let new_settings = flatten(&new.settings);
        let mut details = Vec::new();
        changed(&old_settings, &new_settings, scalar_text, &mut details);
        let short = |digest: &String| digest.chars().take(16).collect::<String>();
        let mut inputs = Vec::new();
        changed(&old.external, &new.external, short, &mut inputs);
        changed(&old.upstream, &new.upstream, short, &mut inputs);
        changed(
            &old.environment,
            &new.environment,
            Clone::clone,
            &mut inputs,
        );
        for (setting, before, after) in details {
            lines.push((format!("{name}.{setting}"), before, after));
        }
        for (input, before, after) in inputs {
            lines.push((format!("{name} input `{input}`"), before, after));
        }
    }
    section(&mut out, "stages", &lines);

    let mut lines = Vec::new();
    changed(
        &left.metrics,
        &right.metrics,
        |value| number(*value),
        &mut lines,
    );
    for line in &mut lines {
        if let (Ok(old), Ok(new)) = (line.1.parse::<f64>(), line.2.parse::<f64>()) {
            line.2 = format!("{}  ({:+.4})", line.2, new - old);
        }
    }
    section(&mut out, "metrics", &lines);
    if out.lines().count() == 1 {
        out.push_str("no differences\n");
    }
    out
}

/// A setting on one line: a multi-line `run:` shows its line breaks as `\n`.
fn scalar_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.trim_end().replace('\n', "\\n"),
        other => other.to_string(),
    }
}

fn apply(store: &Store, id: &str) -> Result<String, ExpError> {
    let records = store.experiments();
    let row = find(&records, id)?;
    let mut edits: Vec<Edit> = row
        .record
        .overrides
        .iter()
        .filter_map(|text| text.parse::<Override>().ok())
        .map(Edit::Override)
        .collect();
    if let Some(variant) = row.variant {
        edits.extend(
            variant
                .params
                .iter()
                .map(|(param, value)| Edit::MatrixValue {
                    entry: variant.entry.clone(),
                    param: param.clone(),
                    value: value.clone(),
                }),
        );
    }
    if edits.is_empty() {
        return Err(ExpError::NothingToApply {
            id: row.id,
            pipeline: row.record.pipeline.clone(),
        });
    }
    let path = project_root_of(None).join(&row.record.pipeline);
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ExpError::PipelineMissing {
        id: row.id.clone(),
        path: shown.clone(),
        source,
    })?;
    let edited = apply_edits(&text, &edits).map_err(|source| ExpError::Apply {
        id: row.id.clone(),
        path: shown.clone(),
        source,
    })?;
    std::fs::write(&path, edited).map_err(|source| ExpError::Write {
        path: shown.clone(),
        source,
    })?;
    Ok(format!(
        "applied experiment `{}` to `{}` ({} value{})",
        row.id,
        row.record.pipeline,
        edits.len(),
        if edits.len() == 1 { "" } else { "s" }
    ))
}

fn remove(store: &Store, ids: &[String]) -> Result<String, ExpError> {
    let records = store.experiments();
    let mut removed = BTreeSet::new();
    for id in ids {
        let row = find(&records, id)?;
        removed.insert(row.record.id.clone());
    }
    for id in &removed {
        store.remove_experiment(id)?;
    }
    Ok(format!(
        "removed {} experiment{}",
        removed.len(),
        if removed.len() == 1 { "" } else { "s" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Digest;
    use crate::model::StageKind;

    fn stage(kind: StageKind, seed: u8, metrics: &[(&str, f64)]) -> ExperimentStage {
        ExperimentStage {
            kind,
            status: "ran".to_owned(),
            key: Some(Digest::of_bytes(&[seed])),
            duration_ms: 100,
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    /// A 2 × 1 sweep beside a plain run with an override.
    fn records() -> Vec<ExperimentRecord> {
        let sweep = ExperimentRecord {
            schema: EXPERIMENT_SCHEMA,
            id: "aaaa1111".to_owned(),
            pipeline: "sweep.yaml".to_owned(),
            name: "sweep".to_owned(),
            started_at_ms: 1_764_662_400_000,
            wall_ms: 5000,
            commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
            overrides: Vec::new(),
            stages: BTreeMap::from([
                ("data".to_owned(), stage(StageKind::PrepareData, 1, &[])),
                (
                    "test-lr1e-3".to_owned(),
                    stage(StageKind::Evaluate, 2, &[("accuracy", 0.8)]),
                ),
                (
                    "test-lr2e-3".to_owned(),
                    stage(StageKind::Evaluate, 3, &[("accuracy", 0.85)]),
                ),
            ]),
            variants: ["1e-3", "2e-3"]
                .iter()
                .map(|lr| ExperimentVariant {
                    entry: "tc".to_owned(),
                    label: format!("lr{lr}"),
                    params: BTreeMap::from([("lr".to_owned(), (*lr).to_owned())]),
                    stages: vec!["data".to_owned(), format!("test-lr{lr}")],
                })
                .collect(),
        };
        let plain = ExperimentRecord {
            id: "bbbb2222".to_owned(),
            pipeline: "p.yaml".to_owned(),
            name: "p".to_owned(),
            started_at_ms: 1_764_666_000_000,
            commit: None,
            overrides: vec!["hparams.epochs=3".to_owned()],
            stages: BTreeMap::from([(
                "test".to_owned(),
                stage(
                    StageKind::Evaluate,
                    4,
                    &[("accuracy", 0.75), ("macro_f1", 0.7)],
                ),
            )]),
            variants: Vec::new(),
            ..sweep.clone()
        };
        vec![sweep, plain]
    }

    fn query<'a>(sort: Option<&'a str>, desc: bool, filters: &'a [String]) -> Query<'a> {
        Query {
            pipeline: None,
            sort,
            desc,
            filters,
            columns: &[],
            only_changed: false,
        }
    }

    #[test]
    fn columns_can_be_chosen_or_limited_to_those_that_vary() {
        let records = records();
        let columns = vec!["lr".to_owned(), "test.*".to_owned()];
        let (_, chosen) = select(
            &records,
            &Query {
                columns: &columns,
                ..query(None, false, &[])
            },
        )
        .expect("select");
        assert_eq!(chosen.params, ["lr"]);
        assert_eq!(chosen.metrics, ["test.accuracy", "test.macro_f1"]);
        let filters = vec!["pipeline=p.yaml".to_owned()];
        let (_, varying) = select(
            &records,
            &Query {
                only_changed: true,
                ..query(None, false, &filters)
            },
        )
        .expect("select");
        assert!(varying.params.is_empty() && varying.metrics.is_empty());
    }

    fn shown(format: ExpFormat, query: &Query<'_>) -> String {
        let records = records();
        let (rows, columns) = select(&records, query).expect("select");
        render(&rows, &columns, format)
    }

    #[test]
    fn a_sweep_is_a_row_per_variant_with_spec_stage_names() {
        let records = records();
        let rows = rows_of(&records[0]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].id, "aaaa1111.2");
        assert_eq!(rows[1].params["lr"], "2e-3");
        assert_eq!(rows[1].metrics["test.accuracy"], 0.85);
        assert_eq!(rows[1].stages["test"].0, "test-lr2e-3");
        assert!(rows[1].stages.contains_key("data"));
    }

    #[test]
    fn the_table_has_params_and_metrics_as_columns() {
        insta::assert_snapshot!(shown(ExpFormat::Table, &query(None, false, &[])), @r"
        id          pipeline    started               commit   hparams.epochs    lr  test.accuracy  test.macro_f1
        aaaa1111.1  sweep.yaml  2025-12-02T08:00:00Z  0123456               -  1e-3         0.8000              -
        aaaa1111.2  sweep.yaml  2025-12-02T08:00:00Z  0123456               -  2e-3         0.8500              -
        bbbb2222    p.yaml      2025-12-02T09:00:00Z  -                     3     -         0.7500         0.7000
        ");
    }

    #[test]
    fn rows_sort_and_filter_by_any_column() {
        let filters = vec!["test.accuracy>=0.8".to_owned()];
        insta::assert_snapshot!(shown(ExpFormat::Csv, &query(Some("test.accuracy"), true, &filters)), @r"
        id,pipeline,started,commit,lr,test.accuracy
        aaaa1111.2,sweep.yaml,2025-12-02T08:00:00Z,0123456,2e-3,0.8500
        aaaa1111.1,sweep.yaml,2025-12-02T08:00:00Z,0123456,1e-3,0.8000
        ");
        let filters = vec!["lr = 1e-3".to_owned()];
        insta::assert_snapshot!(shown(ExpFormat::Md, &query(None, false, &filters)), @r"
        | id | pipeline | started | commit | lr | test.accuracy |
        | --- | --- | --- | --- | ---: | ---: |
        | aaaa1111.1 | sweep.yaml | 2025-12-02T08:00:00Z | 0123456 | 1e-3 | 0.8000 |
        ");
    }

    #[test]
    fn unknown_columns_and_bad_filters_are_errors() {
        let records = records();
        let filters = vec!["accuracy>0.8".to_owned()];
        assert!(matches!(
            select(&records, &query(None, false, &filters)),
            Err(ExpError::UnknownColumn { .. })
        ));
        let filters = vec!["test.accuracy 0.8".to_owned()];
        assert!(matches!(
            select(&records, &query(None, false, &filters)),
            Err(ExpError::FilterSyntax { .. })
        ));
        assert!(matches!(
            select(&records, &query(Some("nope"), false, &[])),
            Err(ExpError::UnknownColumn { .. })
        ));
    }

    #[test]
    fn ids_resolve_exactly_or_by_unique_prefix() {
        let records = records();
        assert_eq!(find(&records, "bbbb").expect("unique").id, "bbbb2222");
        assert_eq!(
            find(&records, "aaaa1111.2").expect("exact").id,
            "aaaa1111.2"
        );
        assert!(matches!(
            find(&records, "aaaa"),
            Err(ExpError::Ambiguous { .. })
        ));
        assert!(matches!(
            find(&records, "cc"),
            Err(ExpError::Unknown { .. })
        ));
    }

    #[test]
    fn utc_formats_the_epoch_and_leap_days() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_764_662_400_000 + 3_723_000), "2025-12-02T09:02:03Z");
    }
}
