//! `taper spec show FILE [--md]` and `taper spec new [FILE]`.

use std::io::Write;

use crate::cli::args::{SpecArgs, SpecCommand};
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::load_spec_file;
use crate::spec::{document, STARTER_SPEC};

pub fn run(args: &SpecArgs, printer: &Printer) -> ExitStatus {
    match &args.command {
        SpecCommand::Show { file, md } => match load_spec_file(file) {
            Ok(spec) => {
                printer.data(&document(&spec, *md));
                ExitStatus::Success
            }
            Err(error) => super::report_load_error(error, printer),
        },
        SpecCommand::New { file } => {
            if let Some(parent) = file
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                if let Err(error) = std::fs::create_dir_all(parent) {
                    printer.status(&format!(
                        "error: cannot create {}: {error}",
                        parent.display()
                    ));
                    return ExitStatus::Error;
                }
            }
            // `create_new`: a starter never replaces a spec someone wrote.
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(file)
                .and_then(|mut out| out.write_all(STARTER_SPEC.as_bytes()));
            match written {
                Ok(()) => {
                    printer.status(&format!(
                        "wrote {}; document it with `taper spec show {} --md`",
                        file.display(),
                        file.display()
                    ));
                    ExitStatus::Success
                }
                Err(error) => {
                    printer.status(&format!("error: cannot write {}: {error}", file.display()));
                    ExitStatus::Error
                }
            }
        }
    }
}
