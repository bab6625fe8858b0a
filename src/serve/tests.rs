//! The router through `tower::ServiceExt::oneshot`: every route and every error status.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::ml::DeviceChoice;
use crate::stages::fixtures::write_tiny_bundle;

struct Fixture {
    _dir: tempfile::TempDir,
    bundle_dir: std::path::PathBuf,
    state: Arc<AppState>,
}

fn fixture(config: ServeConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    write_tiny_bundle(dir.path(), &bundle_dir, "key").unwrap();
    let bundle = Bundle::open(&bundle_dir, DeviceChoice::Cpu, None).unwrap();
    Fixture {
        _dir: dir,
        bundle_dir,
        state: AppState::new(bundle, config),
    }
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = app(Arc::clone(state))
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn predict(state: &Arc<AppState>, body: &str) -> (StatusCode, serde_json::Value) {
    let (status, text) = call(state, "POST", "/predict", body, None).await;
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn predict_answers_in_tei_shapes() {
    let fixture = fixture(ServeConfig::default());
    let state = &fixture.state;
    let (status, one) = predict(state, r#"{"inputs": "the film was good"}"#).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let classes = one.as_array().unwrap();
    assert_eq!(classes.len(), 2);
    let scores: Vec<f64> = classes
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    assert!(scores[0] >= scores[1], "best first");
    let mut labels: Vec<&str> = classes
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, ["LABEL_0", "LABEL_1"]);

    let (status, many) = predict(
        state,
        r#"{"inputs": ["the film was good", "dull", "a boring plot and a weak movie"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let many = many.as_array().unwrap();
    assert_eq!(many.len(), 3);
    // Batched with others, an input scores as it does alone.
    assert_eq!(many[0], one);

    let (status, raw) = predict(
        state,
        r#"{"inputs": "the film was good", "raw_scores": true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let bundle = Bundle::open(&fixture.bundle_dir, DeviceChoice::Cpu, None).unwrap();
    let ids = bundle
        .encode(&["the film was good".to_owned()], false)
        .unwrap();
    let logits = bundle.logits(&ids, 100).unwrap();
    let best = logits[0].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!((raw[0]["score"].as_f64().unwrap() - f64::from(best)).abs() < 1e-5);
}

#[tokio::test]
async fn concurrent_requests_share_batching_rounds() {
    let fixture = fixture(ServeConfig {
        batch: BatchConfig {
            max_batch_tokens: 10_000,
            max_wait: Duration::from_millis(50),
        },
        ..ServeConfig::default()
    });
    let requests = (0..8).map(|i| {
        let state = Arc::clone(&fixture.state);
        async move { predict(&state, &format!(r#"{{"inputs": "the film was good {i}"}}"#)).await }
    });
    for (status, _) in futures_join_all(requests).await {
        assert_eq!(status, StatusCode::OK);
    }
    let (_, metrics) = call(&fixture.state, "GET", "/metrics", "", None).await;
    let count_line = metrics
        .lines()
        .find(|line| line.starts_with("taper_batch_size_count"))
        .unwrap();
    let rounds: u64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rounds < 8, "8 concurrent requests took {rounds} rounds");
}

/// `join_all` without the futures crate: spawn each and await them in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn bad_inputs_get_422_with_tei_error_bodies() {
    let fixture = fixture(ServeConfig {
        max_inputs: 2,
        ..ServeConfig::default()
    });
    let state = &fixture.state;
    let long = vec!["film"; 200].join(" ");
    for body in [
        r#"{"inputs": []}"#.to_owned(),
        r#"{"inputs": ""}"#.to_owned(),
        r#"{"inputs": 3}"#.to_owned(),
        r#"{"inputs": ["a", 3]}"#.to_owned(),
        r#"{"text": "no inputs field"}"#.to_owned(),
        r#"{"inputs": "good", "truncate": "yes"}"#.to_owned(),
        "not json".to_owned(),
        r#"{"inputs": ["a", "b", "c"]}"#.to_owned(),
        format!(r#"{{"inputs": "{long}"}}"#),
    ] {
        let (status, error) = predict(state, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error_type"], "Validation", "{body}");
        assert!(!error["error"].as_str().unwrap().is_empty());
    }
    let (status, _) = predict(
        state,
        &format!(r#"{{"inputs": "{long}", "truncate": true}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "truncation makes a long input fit");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let fixture = fixture(ServeConfig {
        max_body_bytes: 64,
        ..ServeConfig::default()
    });
    let body = format!(r#"{{"inputs": "{}"}}"#, "good ".repeat(40));
    let (status, error) = predict(&fixture.state, &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
}

#[tokio::test]
async fn a_full_server_answers_429() {
    let fixture = fixture(ServeConfig {
        max_concurrent: 1,
        ..ServeConfig::default()
    });
    let held = Arc::clone(&fixture.state.admission)
        .try_acquire_owned()
        .unwrap();
    let (status, error) = predict(&fixture.state, r#"{"inputs": "good"}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    let (_, metrics) = call(&fixture.state, "GET", "/metrics", "", None).await;
    assert!(metrics.contains("taper_requests_in_flight 1"), "{metrics}");
    drop(held);
    let (status, _) = predict(&fixture.state, r#"{"inputs": "good"}"#).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_request_times_out_with_504() {
    let fixture = fixture(ServeConfig {
        request_timeout: Duration::ZERO,
        ..ServeConfig::default()
    });
    let (status, error) = predict(&fixture.state, r#"{"inputs": "good"}"#).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert_eq!(error["error_type"], "Timeout");
}

#[tokio::test]
async fn an_api_key_guards_every_route_but_health() {
    let fixture = fixture(ServeConfig {
        api_key: Some("s3cret".to_owned()),
        ..ServeConfig::default()
    });
    let state = &fixture.state;
    let body = r#"{"inputs": "good"}"#;
    assert_eq!(
        call(state, "POST", "/predict", body, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(state, "POST", "/predict", body, Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(state, "GET", "/info", "", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(state, "POST", "/predict", body, Some("s3cret"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(state, "GET", "/health", "", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn info_health_metrics_openapi_and_404() {
    let fixture = fixture(ServeConfig::default());
    let state = &fixture.state;
    let (status, health) = call(state, "GET", "/health", "", None).await;
    assert_eq!(
        (status, health.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );

    let (status, info) = call(state, "GET", "/info", "", None).await;
    assert_eq!(status, StatusCode::OK);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["labels"], serde_json::json!(["LABEL_0", "LABEL_1"]));
    assert_eq!(info["max_input_length"], 64);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let manifest = std::fs::read(fixture.bundle_dir.join("manifest.json")).unwrap();
    assert_eq!(
        info["bundle_digest"],
        blake3::hash(&manifest).to_hex().as_str()
    );

    let (status, openapi) = call(state, "GET", "/openapi.json", "", None).await;
    assert_eq!(status, StatusCode::OK);
    let openapi: serde_json::Value = serde_json::from_str(&openapi).unwrap();
    for path in [
        "/predict",
        "/explain",
        "/health",
        "/info",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path}");
    }

    let (status, error) = call(state, "GET", "/nope", "", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    predict(state, r#"{"inputs": "good"}"#).await;
    predict(state, r#"{"inputs": []}"#).await;

    let (status, metrics) = call(state, "GET", "/metrics", "", None).await;
    assert_eq!(status, StatusCode::OK);
    for needle in [
        r#"taper_requests_total{route="/predict",status="200"} 1"#,
        r#"taper_requests_total{route="/predict",status="422"} 1"#,
        r#"taper_requests_total{route="unmatched",status="404"} 1"#,
        r#"taper_requests_total{route="/info",status="200"} 1"#,
        "taper_request_duration_seconds_bucket",
        "taper_batch_size_count 1",
        "taper_requests_in_flight 0",
        "taper_input_tokens_count 1",
        r#"taper_predictions_total{label="LABEL_0"}"#,
    ] {
        assert!(
            metrics.contains(needle),
            "`{needle}` missing from\n{metrics}"
        );
    }
}

async fn explain(state: &Arc<AppState>, body: &str) -> (StatusCode, serde_json::Value) {
    let (status, text) = call(state, "POST", "/explain", body, None).await;
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn explain_answers_words_scores_and_the_prediction() {
    let fixture = fixture(ServeConfig::default());
    let state = &fixture.state;
    let (status, answer) = explain(state, r#"{"inputs": "the film was good", "steps": 64}"#).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["words"],
        serde_json::json!(["the", "film", "was", "good"])
    );
    assert_eq!(answer["scores"].as_array().unwrap().len(), 4);
    assert_eq!(answer["method"], "integrated-gradients");
    // Integrated gradients at 64 steps on the tiny model: completeness within 5%.
    let gap = answer["completeness_gap"].as_f64().unwrap();
    assert!(gap < 0.05, "completeness gap {gap}");
    // The explained class is the one /predict ranks first, with the same probability.
    let (_, predicted) = predict(state, r#"{"inputs": "the film was good"}"#).await;
    assert_eq!(answer["prediction"], predicted[0]["label"]);
    let difference =
        answer["probability"].as_f64().unwrap() - predicted[0]["score"].as_f64().unwrap();
    assert!(difference.abs() < 1e-4, "{answer} vs {predicted}");

    let (status, occlusion) = explain(
        state,
        r#"{"inputs": "the film was good", "method": "occlusion"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{occlusion}");
    assert_eq!(occlusion["method"], "occlusion");
    assert!(occlusion["completeness_gap"].is_null(), "{occlusion}");
    assert_eq!(occlusion["prediction"], answer["prediction"]);
}

#[tokio::test]
async fn explain_refuses_bad_requests_through_the_same_table() {
    let fixture = fixture(ServeConfig {
        max_body_bytes: 2048,
        ..ServeConfig::default()
    });
    let state = &fixture.state;
    let long = vec!["film"; 200].join(" ");
    for body in [
        r#"{"inputs": ["good", "bad"]}"#.to_owned(),
        r#"{"inputs": ""}"#.to_owned(),
        r#"{"inputs": 3}"#.to_owned(),
        r#"{"inputs": "good", "steps": 0}"#.to_owned(),
        format!(
            r#"{{"inputs": "good", "steps": {}}}"#,
            MAX_EXPLAIN_STEPS + 1
        ),
        r#"{"inputs": "good", "method": "shap"}"#.to_owned(),
        r#"{"inputs": "good", "baseline": "noise"}"#.to_owned(),
        format!(r#"{{"inputs": "{long}"}}"#),
        "not json".to_owned(),
    ] {
        let (status, error) = explain(state, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error_type"], "Validation", "{body}");
    }
    let (status, answer) = explain(
        state,
        &format!(r#"{{"inputs": "{long}", "truncate": true, "method": "gradient-times-input"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _) = explain(
        state,
        &format!(r#"{{"inputs": "{}"}}"#, "good ".repeat(500)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn explain_answers_429_504_and_401() {
    let full = fixture(ServeConfig {
        max_concurrent: 1,
        ..ServeConfig::default()
    });
    let held = Arc::clone(&full.state.admission)
        .try_acquire_owned()
        .unwrap();
    let (status, error) = explain(&full.state, r#"{"inputs": "good"}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    drop(held);

    let slow = fixture(ServeConfig {
        request_timeout: Duration::ZERO,
        ..ServeConfig::default()
    });
    let (status, error) = explain(&slow.state, r#"{"inputs": "good", "steps": 512}"#).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert_eq!(error["error_type"], "Timeout");

    let guarded = fixture(ServeConfig {
        api_key: Some("s3cret".to_owned()),
        ..ServeConfig::default()
    });
    let body = r#"{"inputs": "good"}"#;
    assert_eq!(
        call(&guarded.state, "POST", "/explain", body, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&guarded.state, "POST", "/explain", body, Some("s3cret"))
            .await
            .0,
        StatusCode::OK
    );
}

/// The one error → status table, spelled out.
#[test]
fn every_error_has_its_status() {
    let cases = [
        (ServeError::BodyTooLarge { limit: 1 }, 413),
        (
            ServeError::BadRequest {
                reason: String::new(),
            },
            422,
        ),
        (ServeError::TooManyInputs { count: 2, max: 1 }, 422),
        (
            ServeError::Input(crate::stages::bundle::BundleError::EmptyInput { index: 0 }),
            422,
        ),
        (
            ServeError::Explain(crate::stages::explain::ExplainError::NoWords {
                text: String::new(),
            }),
            422,
        ),
        (
            ServeError::Explain(crate::stages::explain::ExplainError::NotAModel {
                path: std::path::PathBuf::new(),
            }),
            500,
        ),
        (ServeError::Overloaded { max: 1 }, 429),
        (ServeError::Timeout { seconds: 1.0 }, 504),
        (ServeError::Unauthorized, 401),
        (
            ServeError::NotFound {
                method: "GET".to_owned(),
                path: "/".to_owned(),
            },
            404,
        ),
        (ServeError::ShuttingDown, 503),
        (
            ServeError::Inference {
                message: String::new(),
            },
            500,
        ),
    ];
    for (error, status) in cases {
        assert_eq!(error.status().0.as_u16(), status, "{error}");
    }
}
