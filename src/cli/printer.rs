//! The only place that writes to the terminal: data to stdout, status and diagnostics to
//! stderr, so `taper dag … > dag.dot` captures only the graph.

use std::io::Write;

use miette::Diagnostic;

pub struct Printer {
    /// False when `NO_COLOR` is set (any value), as https://no-color.org asks.
    pub color: bool,
}

impl Printer {
    pub fn from_env() -> Printer {
        Printer {
            color: std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty()),
        }
    }

    /// Program output (a DAG, a schema).
    pub fn data(&self, text: &str) {
        // A closed pipe (`taper schema | head`) is not an error worth reporting.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }

    /// A one-line status message.
    pub fn status(&self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// Renders a diagnostic through the miette hook installed by `cli::main`.
    pub fn diagnostic(&self, error: impl Diagnostic + Send + Sync + 'static) {
        let report = miette::Report::new(error);
        let _ = writeln!(std::io::stderr().lock(), "{report:?}");
    }
}
