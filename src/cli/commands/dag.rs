//! `taper dag FILE --format text|mermaid|dot`: the DAG on stdout.

use crate::cli::args::{DagArgs, DagFormatArg};
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::graph::{render, DagFormat, PipelineGraph};

pub fn run(args: &DagArgs, printer: &Printer) -> ExitStatus {
    let pipeline = match super::load_pipeline(&args.file, &args.overrides, None, false) {
        Ok(pipeline) => pipeline,
        Err(error) => return super::report_load_error(error, printer),
    };
    let graph = PipelineGraph::new(&pipeline);
    let format = match args.format {
        DagFormatArg::Text => DagFormat::Text,
        DagFormatArg::Mermaid => DagFormat::Mermaid,
        DagFormatArg::Dot => DagFormat::Dot,
    };
    printer.data(&render(&pipeline, &graph, format));
    ExitStatus::Success
}
