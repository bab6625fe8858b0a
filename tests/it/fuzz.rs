//! Property tests: no input makes loading panic or overflow the stack. A failure here means a
//! crash on some user file; the shrunk input belongs in `tests/fixtures/errors/`.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use taper::model::load_str;

fn load(text: &str) {
    let _ = load_str(Path::new("fuzz.yaml"), text, PathBuf::from("."), &[]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn yaml_like_noise_never_panics(text in "[a-z0-9:{}\\[\\],\\-\"' \n\t&*!#|>$.~é]{0,300}") {
        load(&text);
    }

    #[test]
    fn mutated_examples_never_panic(position in 0usize..2000, insert in "[:{}\\[\\]\"'&*!|>\n $]{1,4}") {
        let text = std::fs::read_to_string("pipelines/quickstart.yaml").expect("example exists");
        let mut position = position.min(text.len());
        while !text.is_char_boundary(position) {
            position -= 1;
        }
        let mutated = format!("{}{}{}", &text[..position], insert, &text[position..]);
        load(&mutated);
    }
}
