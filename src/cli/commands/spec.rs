//! `taper spec show FILE [--md]` and `taper spec new [FILE]`.

use std::io::Write;
use std::path::Path;

use crate::cache::locate::default_store_dir;
use crate::cli::args::{SpecArgs, SpecCommand};
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::data::sources::SourceResolver;
use crate::model::{load_spec_file, Source};
use crate::spec::{document, STARTER_SPEC};

pub fn run(args: &SpecArgs, printer: &Printer) -> ExitStatus {
    match &args.command {
        SpecCommand::Show {
            file,
            url,
            pip,
            member,
            blake3,
            store,
            md,
        } => {
            let published = match (url, pip, member) {
                (Some(url), _, _) => Some(Source::Url {
                    url: url.clone(),
                    blake3: blake3.clone().unwrap_or_default(),
                }),
                (None, Some(pip), Some(member)) => Some(Source::Pip {
                    pip: pip.clone(),
                    member: member.clone(),
                    blake3: blake3.clone(),
                }),
                _ => None,
            };
            let file = match (published, file) {
                // Fetched and checked against the pin as a `use:` of it would be, into the
                // same store, so showing a spec also caches it for the pipelines that use it.
                (Some(source), _) => {
                    let store_root = store.clone().unwrap_or_else(|| default_store_dir(None));
                    match SourceResolver::new(Path::new("."), &store_root).resolve(&source) {
                        Ok(resolved) => resolved.path,
                        Err(error) => {
                            printer.diagnostic(error);
                            return ExitStatus::Failure;
                        }
                    }
                }
                (None, Some(file)) => file.clone(),
                // clap requires FILE unless `--url` or `--pip` (with `--member`) is given.
                (None, None) => return ExitStatus::Error,
            };
            match load_spec_file(&file) {
                Ok(spec) => {
                    printer.data(&document(&spec, *md));
                    ExitStatus::Success
                }
                Err(error) => super::report_load_error(error, printer),
            }
        }
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
