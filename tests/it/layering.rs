//! The dependency direction of `src/lib.rs` as a test (after buck2's `BANNED_DEP_PATHS`):
//! spec → model → graph → fingerprint/cache → exec → stages → serve → cli, with `ml` a library beside
//! `graph` that knows only the model, and `data` one beside `fingerprint` that knows the model
//! and hashes sources with fingerprint's content digests (one scheme for pins and keys); stages
//! call them, they call nothing above. A module may use only modules on its level or before it, and only `ml` may use
//! candle.

use std::path::Path;

const LEVELS: &[(&str, u8)] = &[
    ("spec", 0),
    ("model", 1),
    ("graph", 2),
    ("ml", 2),
    ("fingerprint", 3),
    ("data", 3),
    ("cache", 3),
    ("exec", 4),
    ("stages", 5),
    ("serve", 6),
    ("cli", 7),
];

fn rust_files(directory: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// No module imports a module listed after it, and candle stays inside `src/ml/`.
#[test]
fn modules_import_only_earlier_modules() {
    let mut violations = Vec::new();
    for (module, level) in LEVELS {
        let mut files = Vec::new();
        rust_files(&Path::new("src").join(module), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (other, other_level) in LEVELS {
                if other_level > level && text.contains(&format!("crate::{other}::")) {
                    violations.push(format!("{} uses crate::{other}", file.display()));
                }
            }
            if *module != "ml" && text.contains("candle_") {
                violations.push(format!("{} uses candle outside src/ml", file.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency direction violated:\n{}",
        violations.join("\n")
    );
}
