use super::*;

fn parse_ok(text: &str) -> Node {
    let (root, errors) = parse_yaml(text);
    assert!(errors.is_empty(), "{errors:?}");
    root.expect("a document")
}

#[test]
fn scalar_spans_are_byte_ranges_with_non_ascii_text() {
    let text = "name: \"héllo\"\nstages: { a: ünïcode }\n";
    let root = parse_ok(text);
    let name = root.get("name").expect("name");
    assert_eq!(&text[name.span.start()..name.span.end()], "\"héllo\"");
    let stage = root
        .get("stages")
        .and_then(|stages| stages.get("a"))
        .expect("a");
    assert_eq!(&text[stage.span.start()..stage.span.end()], "ünïcode");
}

#[test]
fn plain_scalars_resolve_like_yaml_1_2() {
    assert_eq!(resolve_plain("2e-5"), resolve_plain("0.00002"));
    assert_eq!(resolve_plain("5e-5"), ScalarValue::Float(5e-5));
    assert_eq!(resolve_plain("42"), ScalarValue::Int(42));
    assert_eq!(resolve_plain("~"), ScalarValue::Null);
    assert_eq!(resolve_plain("yes"), ScalarValue::Str("yes"));
    assert_eq!(resolve_plain("e5"), ScalarValue::Str("e5"));
    assert_eq!(resolve_plain("1.2.3"), ScalarValue::Str("1.2.3"));
}

#[test]
fn every_duplicate_key_is_reported_and_the_first_value_kept() {
    let (root, errors) = parse_yaml("a: 1\nb: 2\na: 3\nb: 4\n");
    assert_eq!(errors.len(), 2);
    let root = root.expect("tree survives duplicates");
    assert_eq!(
        root.get("a")
            .and_then(Node::as_scalar)
            .map(|s| s.text.as_str()),
        Some("1")
    );
}

#[test]
fn duplicates_are_found_among_many_keys_and_point_at_the_first() {
    let mut text: String = (0..1000)
        .map(|index| format!("k{index}: {index}\n"))
        .collect();
    text.push_str("k500: again\n");
    let (root, errors) = parse_yaml(&text);
    let [SpecError::DuplicateKey { key, first, .. }] = &errors[..] else {
        panic!("{errors:?}");
    };
    assert_eq!(key, "k500");
    let first = first.expect("the first definition is labelled");
    assert_eq!(&text[first.offset()..first.offset() + first.len()], "k500");
    assert_eq!(root.expect("a tree").as_map().map(<[_]>::len), Some(1000));
}

#[test]
fn a_list_may_hold_the_limit_of_entries_and_not_one_more() {
    let list = |entries: usize| format!("deps: [{}]\n", vec!["a"; entries].join(","));
    let root = parse_ok(&list(MAX_LIST_ENTRIES));
    let deps = root.get("deps").expect("deps");
    assert!(matches!(&deps.value, Value::Seq(items) if items.len() == MAX_LIST_ENTRIES));

    // Reported once, at the list's opening bracket, however far past the limit it goes.
    let (root, errors) = parse_yaml(&list(MAX_LIST_ENTRIES + 5));
    let [SpecError::TooManyEntries { limit, span }] = &errors[..] else {
        panic!("{errors:?}");
    };
    assert_eq!(
        (*limit, span.offset(), span.len()),
        (MAX_LIST_ENTRIES, 6, 1)
    );
    let deps = root.expect("the tree is kept").get("deps").cloned();
    assert!(
        matches!(deps.map(|deps| deps.value), Some(Value::Seq(items)) if items.len() == MAX_LIST_ENTRIES)
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let text = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (root, errors) = parse_yaml(&text);
    assert!(root.is_none());
    assert!(
        matches!(errors[..], [SpecError::TooDeep { .. }]),
        "{errors:?}"
    );
    let block: String = (0..5000)
        .map(|depth| format!("{}k:\n", " ".repeat(depth)))
        .collect();
    let (_, errors) = parse_yaml(&block);
    assert!(
        matches!(errors[..], [SpecError::TooDeep { .. }]),
        "{errors:?}"
    );
}

#[test]
fn anchors_and_aliases_are_refused() {
    let (_, errors) = parse_yaml("a: &x 1\nb: *x\n");
    assert!(
        matches!(errors[..], [SpecError::Unsupported { .. }]),
        "{errors:?}"
    );
}

#[test]
fn overrides_parse_paths_and_values() {
    let parsed: Override = "train.method.name=lora".parse().expect("valid");
    assert_eq!(parsed.path, ["train", "method", "name"]);
    assert_eq!(parsed.value, "lora");
    assert!("train=3".parse::<Override>().is_err());
    assert!("train.epochs".parse::<Override>().is_err());
    assert!("train..x=1".parse::<Override>().is_err());
}

#[test]
fn did_you_mean_finds_close_names_only() {
    assert_eq!(did_you_mean("stags", TOP_LEVEL_KEYS), Some("stages"));
    assert_eq!(did_you_mean("zzz", TOP_LEVEL_KEYS), None);
}

#[test]
fn a_megabyte_key_is_abbreviated_in_messages() {
    let key = "k".repeat(1_000_000);
    // In block style YAML limits keys to 1,024 characters; flow style has no limit.
    let (_, errors) = parse_yaml(&format!("{{ {key}: 1, {key}: 2 }}\n"));
    let [SpecError::DuplicateKey { key: shown, .. }] = &errors[..] else {
        panic!("{} errors", errors.len())
    };
    assert_eq!(shown.chars().count(), 41, "40 characters and `…`");
    let source = SourceText::new("p.yaml", format!("{{ {key}: 1, version: 1 }}\n"), &[]);
    let (_, errors) = parse(&source);
    assert!(
        matches!(&errors[..], [SpecError::UnknownKey { key, .. }] if key.len() < 50),
        "{errors:?}"
    );
}

/// A flow collection's span covers its closing bracket (it ended before it).
#[test]
fn flow_collections_end_at_their_closing_bracket() {
    let text = "a: { b: 1, c: [x, y] }\nf: 2\n";
    let root = parse_ok(text);
    let span_of = |path: &[&str]| {
        let path: Vec<String> = path.iter().map(|step| (*step).to_owned()).collect();
        let node = root.lookup(&path).expect("present");
        &text[node.span.start()..node.span.end()]
    };
    assert_eq!(span_of(&["a"]), "{ b: 1, c: [x, y] }");
    assert_eq!(span_of(&["a", "c"]), "[x, y]");
}
