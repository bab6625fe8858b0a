//! `taper serve BUNDLE`: a deploy bundle behind HTTP, in HuggingFace text-embeddings-inference's
//! shapes, on axum/tokio.
//!
//! Routes: `POST /predict` (`{"inputs": "text" | ["text", ...], "raw_scores": false,
//! "truncate": false}` → `[{"label", "score"}]`, or one such list per input for a list),
//! `POST /explain` (`{"inputs": "text", "method": "integrated-gradients" | "gradient-times-input"
//! | "occlusion", "steps": 32, "baseline": "pad" | "mask" | "zero", "truncate": false}` → the
//! words with their scores, the prediction and its probability, the completeness gap), `GET
//! /health`, `GET /info`, `GET /metrics` (Prometheus, with drift figures: [`metrics`]), `GET
//! /openapi.json`.
//!
//! Contract: every failure is a [`ServeError`], whose status comes from one table
//! ([`ServeError::status`]) and whose body is TEI's `{"error", "error_type"}`. A request is
//! admitted only while fewer than `max_concurrent` are in flight (else 429), waits for a
//! batching round ([`batcher`]) at most `request_timeout` (else 504), and with an API key set
//! needs `Authorization: Bearer <key>` on every route but `/health` (else 401). An explanation
//! runs outside the batcher (it needs gradients of one text, not a batch's logits) on a blocking
//! thread that keeps its admission slot until it finishes, even past its timeout, so abandoned
//! explanations cannot pile up beyond `max_concurrent`. The bundle is
//! verified against its manifest before the server starts ([`Bundle::open`]); SIGTERM or
//! SIGINT stop accepting connections and let in-flight requests finish.

pub mod batcher;
pub mod error;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::data::metrics::argmax;
use crate::model::stages::{Explain, ExplainBaseline, ExplainMethod, DEFAULT_EXPLAIN_STEPS};
use crate::stages::bundle::Bundle;
use crate::stages::explain::Explainer;

pub use batcher::{BatchConfig, Batcher};
pub use error::ServeError;
pub use metrics::Metrics;

/// The server's limits (the CLI's flags and their environment variables).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub batch: BatchConfig,
    /// Requests admitted at once (queued or being scored); more get 429.
    pub max_concurrent: usize,
    /// Inputs in one request; more get 422.
    pub max_inputs: usize,
    /// Request body size; larger gets 413.
    pub max_body_bytes: usize,
    /// From admission to answer; longer gets 504.
    pub request_timeout: Duration,
    pub api_key: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            batch: BatchConfig {
                max_batch_tokens: 16_384,
                max_wait: Duration::ZERO,
            },
            max_concurrent: 512,
            max_inputs: 32,
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            api_key: None,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    bundle: Arc<Bundle>,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    admission: Arc<Semaphore>,
    config: ServeConfig,
}

impl AppState {
    /// Starts the batcher on the current tokio runtime.
    pub fn new(bundle: Bundle, config: ServeConfig) -> Arc<Self> {
        let bundle = Arc::new(bundle);
        let metrics = Arc::new(Metrics::new(
            bundle.labels(),
            bundle.manifest().label_shares.clone(),
        ));
        let batcher = Batcher::start(Arc::clone(&bundle), config.batch, Arc::clone(&metrics));
        Arc::new(Self {
            bundle,
            batcher,
            metrics,
            admission: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
        })
    }
}

/// The router, for [`serve`] and for tests (`tower::ServiceExt::oneshot`).
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/explain", post(explain))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Answers go out at once instead of waiting for the client's delayed ACK (Nagle's
    // algorithm; axum leaves it on). A socket that refuses the option still works.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {error}");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|error| ServeError::Start(error.to_string()))
}

/// Resolves on SIGTERM or SIGINT (what `kill`, container runtimes and Ctrl-C send).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, only Ctrl-C stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Binds `address` and serves the bundle until SIGTERM/SIGINT, on a runtime of its own;
/// `on_listening` is told the bound address (the CLI prints it: `--port 0` picks a free one).
pub fn run(
    bundle: Bundle,
    config: ServeConfig,
    address: &str,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| ServeError::Start(error.to_string()))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind {
                address: address.to_owned(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|error| ServeError::Start(error.to_string()))?;
        on_listening(bound);
        serve(AppState::new(bundle, config), listener, shutdown_signal()).await
    })
}

/// Counts every response by route and status and times it (outermost, so 401s and 404s count).
async fn observe(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.record_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// With an API key, every route but `/health` (probes carry no secrets) needs it.
async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ServeError> {
    if let Some(key) = &state.config.api_key {
        let sent = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compared as digests: blake3's equality is constant-time, so the response time
        // does not tell how many leading characters were right.
        if request.uri().path() != "/health"
            && blake3::hash(sent.as_bytes()) != blake3::hash(key.as_bytes())
        {
            return Err(ServeError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// The body of `POST /predict`. `inputs` is checked by hand, so that a wrong type gets a
/// message about `inputs` rather than serde's "did not match any variant".
#[derive(Debug, Deserialize)]
struct PredictRequest {
    inputs: serde_json::Value,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    truncate: bool,
}

fn texts_of(inputs: serde_json::Value) -> Result<(Vec<String>, bool), ServeError> {
    let wrong = || ServeError::BadRequest {
        reason: "`inputs` must be a string or a list of strings".to_owned(),
    };
    match inputs {
        serde_json::Value::String(text) => Ok((vec![text], true)),
        serde_json::Value::Array(items) => {
            let texts = items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::String(text) => Ok(text),
                    _ => Err(wrong()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((texts, false))
        }
        _ => Err(wrong()),
    }
}

/// A JSON request body: 413 over the body limit, 422 when it does not parse as `T`.
fn parse_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ServeError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::BodyTooLarge {
                limit: state.config.max_body_bytes,
            }
        } else {
            ServeError::BadRequest {
                reason: rejection.body_text(),
            }
        }
    })?;
    serde_json::from_slice(&body).map_err(|error| ServeError::BadRequest {
        reason: error.to_string(),
    })
}

/// A slot among the `max_concurrent` requests, or 429.
fn admit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ServeError> {
    Arc::clone(&state.admission)
        .try_acquire_owned()
        .map_err(|_| ServeError::Overloaded {
            max: state.config.max_concurrent,
        })
}

async fn predict(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServeError> {
    let request: PredictRequest = parse_body(&state, body)?;
    let (texts, single) = texts_of(request.inputs)?;
    if texts.is_empty() {
        return Err(ServeError::BadRequest {
            reason: "`inputs` is an empty list".to_owned(),
        });
    }
    if texts.len() > state.config.max_inputs {
        return Err(ServeError::TooManyInputs {
            count: texts.len(),
            max: state.config.max_inputs,
        });
    }
    let _permit = admit(&state)?;
    let predictions = answer(&state, &texts, request.truncate, request.raw_scores).await?;
    Ok(if single {
        Json(predictions.into_iter().next().unwrap_or_default()).into_response()
    } else {
        Json(predictions).into_response()
    })
}

/// Tokenizes, waits for a batching round within the request timeout, and ranks the classes.
async fn answer(
    state: &AppState,
    texts: &[String],
    truncate: bool,
    raw_scores: bool,
) -> Result<Vec<Vec<crate::stages::bundle::Prediction>>, ServeError> {
    // Tokenized here rather than in the batcher: a round is sized by tokens, and a text that
    // is empty or too long must be refused (422) before it queues. It takes microseconds per
    // sentence, so the async worker thread is not held up.
    let sequences = state
        .bundle
        .encode(texts, truncate)
        .map_err(ServeError::Input)?;
    let timeout = state.config.request_timeout;
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let logits = tokio::time::timeout(timeout, state.batcher.submit(sequences))
        .await
        .map_err(|_| ServeError::Timeout {
            seconds: timeout.as_secs_f64(),
        })??;
    for (tokens, row) in lengths.into_iter().zip(&logits) {
        state.metrics.record_prediction(tokens, argmax(row));
    }
    Ok(logits
        .iter()
        .map(|row| state.bundle.predictions(row, raw_scores))
        .collect())
}

/// Integrated-gradients steps one request may ask for: each step is a forward and a backward
/// pass, so this bounds one request's work (1,024 steps of a base-size model on a long text
/// take seconds, not minutes).
pub const MAX_EXPLAIN_STEPS: usize = 1024;

/// The body of `POST /explain`: one text (a list is refused: explanations are not batched).
#[derive(Debug, Deserialize)]
struct ExplainRequest {
    inputs: serde_json::Value,
    #[serde(default)]
    method: ExplainMethod,
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    baseline: ExplainBaseline,
    #[serde(default)]
    truncate: bool,
}

async fn explain(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServeError> {
    let request: ExplainRequest = parse_body(&state, body)?;
    let serde_json::Value::String(text) = request.inputs else {
        return Err(ServeError::BadRequest {
            reason: "`inputs` must be one string for /explain".to_owned(),
        });
    };
    let steps = request.steps.unwrap_or(DEFAULT_EXPLAIN_STEPS);
    if !(1..=MAX_EXPLAIN_STEPS).contains(&steps) {
        return Err(ServeError::BadRequest {
            reason: format!("`steps` must be between 1 and {MAX_EXPLAIN_STEPS}"),
        });
    }
    // The same refusals as /predict (empty, or too long without `truncate`); the explainer's
    // tokenizer would silently truncate.
    let texts = [text];
    state
        .bundle
        .encode(&texts, request.truncate)
        .map_err(ServeError::Input)?;
    let [text] = texts;
    let settings = Explain::one_text(request.method, steps, request.baseline);
    let explainer =
        Explainer::from_bundle(&state.bundle, &settings).map_err(ServeError::Explain)?;
    let permit = admit(&state)?;
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        explainer.explain(&text)
    });
    let timeout = state.config.request_timeout;
    let explanation = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ServeError::Timeout {
            seconds: timeout.as_secs_f64(),
        })?
        .map_err(|error| ServeError::Inference {
            message: error.to_string(),
        })?
        .map_err(ServeError::Explain)?;
    let mut body = serde_json::to_value(&explanation).map_err(|error| ServeError::Inference {
        message: error.to_string(),
    })?;
    body["method"] = serde_json::to_value(request.method).unwrap_or_default();
    Ok(Json(body).into_response())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let manifest = state.bundle.manifest();
    Json(serde_json::json!({
        "architecture": manifest.architecture,
        "labels": manifest.labels,
        "max_input_length": state.bundle.max_length(),
        "bundle_digest": state.bundle.digest().to_hex(),
        "stage_key": manifest.stage_key,
        "metrics": manifest.metrics,
        "version": env!("CARGO_PKG_VERSION"),
        "device": state.bundle.device_name(),
        "precision": state.bundle.precision().as_str(),
        "max_batch_tokens": state.config.batch.max_batch_tokens,
        "max_concurrent_requests": state.config.max_concurrent,
        "max_client_batch_size": state.config.max_inputs,
        "drift": state.metrics.drift(),
    }))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        // Held admission permits are the requests in flight; counted here rather than
        // incremented and decremented, which a client hanging up mid-request would unbalance.
        state
            .metrics
            .render(state.config.max_concurrent - state.admission.available_permits()),
    )
}

async fn not_found(method: Method, uri: Uri) -> ServeError {
    ServeError::NotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// A hand-written OpenAPI 3.0 description of the routes (six routes do not need a derive
/// crate).
async fn openapi() -> Json<serde_json::Value> {
    let error = serde_json::json!({
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    Json(serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "taper serve", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/predict": {"post": {
                "summary": "Classify one text or a list of texts",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["inputs"],
                    "properties": {
                        "inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                        "raw_scores": {"type": "boolean", "default": false},
                        "truncate": {"type": "boolean", "default": false}
                    }}}}},
                "responses": {
                    "200": {"description": "every class with its score, best first (a list of such lists for a list of inputs)",
                            "content": {"application/json": {"schema": {"oneOf": [
                                {"$ref": "#/components/schemas/Predictions"},
                                {"type": "array", "items": {"$ref": "#/components/schemas/Predictions"}}]}}}},
                    "401": error, "413": error, "422": error, "429": error, "504": error
                }}},
            "/explain": {"post": {
                "summary": "Word attributions for one text",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "string"},
                        "method": {"type": "string", "enum": ["integrated-gradients", "gradient-times-input", "occlusion"], "default": "integrated-gradients"},
                        "steps": {"type": "integer", "minimum": 1, "maximum": MAX_EXPLAIN_STEPS, "default": DEFAULT_EXPLAIN_STEPS},
                        "baseline": {"type": "string", "enum": ["pad", "mask", "zero"], "default": "pad"},
                        "truncate": {"type": "boolean", "default": false}
                    }}}}},
                "responses": {
                    "200": {"description": "the words with their scores (in the predicted class's probability), the prediction and its probability, the completeness gap (integrated gradients)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Explanation"}}}},
                    "401": error, "413": error, "422": error, "429": error, "504": error
                }}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/info": {"get": {"summary": "Labels, limits, bundle digest, version", "responses": {"200": {"description": "ok"}, "401": error}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain; version=0.0.4"}, "401": error}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "ok"}, "401": error}}}
        },
        "components": {"schemas": {
            "Predictions": {"type": "array", "items": {"type": "object", "required": ["label", "score"],
                "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}},
            "Explanation": {"type": "object", "required": ["text", "words", "scores", "prediction", "probability", "method"],
                "properties": {"text": {"type": "string"}, "words": {"type": "array", "items": {"type": "string"}},
                    "scores": {"type": "array", "items": {"type": "number"}}, "prediction": {"type": "string"},
                    "probability": {"type": "number"}, "completeness_gap": {"type": "number", "nullable": true},
                    "method": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error", "error_type"],
                "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}}
        }}
    }))
}

#[cfg(test)]
mod tests;
