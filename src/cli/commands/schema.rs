//! `taper schema`: the JSON Schema of pipeline files on stdout (checked in as
//! `schemas/pipeline.schema.json`; a test fails when the two differ).

use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::schema::schema_json;

pub fn run(printer: &Printer) -> ExitStatus {
    printer.data(&schema_json());
    ExitStatus::Success
}
