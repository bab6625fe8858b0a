//! The checked-in JSON Schema matches `taper schema`, and covers every kind and stage key.

use taper::model::schema::{schema, schema_json};
use taper::model::{StageKind, STAGE_KEYS};

/// Fails when `schemas/pipeline.schema.json` is stale; regenerate it with
/// `cargo run -- schema > schemas/pipeline.schema.json`.
#[test]
fn checked_in_schema_is_up_to_date() {
    let checked_in = std::fs::read_to_string("schemas/pipeline.schema.json").expect("schema file");
    assert!(
        checked_in == schema_json(),
        "schemas/pipeline.schema.json is stale: run `cargo run -- schema > schemas/pipeline.schema.json`"
    );
}

/// Every stage kind has a definition, and every stage key the validator accepts is in one.
#[test]
fn schema_covers_every_kind_and_stage_key() {
    let schema = schema();
    for kind in StageKind::ALL {
        let definition = &schema["$defs"][kind.as_str()];
        assert_eq!(definition["properties"]["kind"]["const"], kind.as_str());
    }
    for key in STAGE_KEYS {
        let covered = StageKind::ALL
            .iter()
            .any(|kind| !schema["$defs"][kind.as_str()]["properties"][key].is_null());
        assert!(covered, "stage key `{key}` is missing from the schema");
    }
}
