//! The errors of `taper serve` and the one table that maps each to an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::stages::bundle::BundleError;
use crate::stages::explain::ExplainError;

/// Why a request failed (or, for [`ServeError::Start`] and [`ServeError::Bind`], why the
/// server did not start).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ServeError {
    #[error("the request body is over {limit} bytes")]
    #[diagnostic(
        code(taper::serve::body_too_large),
        help("send fewer or shorter inputs per request")
    )]
    BodyTooLarge { limit: usize },

    #[error("invalid request: {reason}")]
    #[diagnostic(
        code(taper::serve::bad_request),
        help("send JSON `{{\"inputs\": \"text\"}}` or `{{\"inputs\": [\"text\", ...]}}`, optionally with `raw_scores` and `truncate` (booleans)")
    )]
    BadRequest { reason: String },

    #[error("{count} inputs in one request; at most {max}")]
    #[diagnostic(
        code(taper::serve::too_many_inputs),
        help("split the inputs over several requests")
    )]
    TooManyInputs { count: usize, max: usize },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Input(BundleError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Explain(ExplainError),

    #[error("the server is at its limit of {max} concurrent requests")]
    #[diagnostic(
        code(taper::serve::overloaded),
        help("retry later, or start the server with a larger `--max-concurrent`")
    )]
    Overloaded { max: usize },

    #[error("the request did not finish within {seconds} s")]
    #[diagnostic(
        code(taper::serve::timeout),
        help("send fewer inputs per request, or raise `--request-timeout`")
    )]
    Timeout { seconds: f64 },

    #[error("missing or wrong API key")]
    #[diagnostic(
        code(taper::serve::unauthorized),
        help("send `Authorization: Bearer <key>`")
    )]
    Unauthorized,

    #[error("no route for {method} {path}")]
    #[diagnostic(
        code(taper::serve::not_found),
        help("see GET /openapi.json for the routes")
    )]
    NotFound { method: String, path: String },

    #[error("inference failed: {message}")]
    #[diagnostic(
        code(taper::serve::inference),
        help("this is a bug or an out-of-memory condition; see the server log")
    )]
    Inference { message: String },

    #[error("the server is shutting down")]
    #[diagnostic(
        code(taper::serve::shutting_down),
        help("retry against another replica")
    )]
    ShuttingDown,

    #[error("cannot start the server: {0}")]
    #[diagnostic(code(taper::serve::start))]
    Start(String),

    #[error("cannot listen on {address}")]
    #[diagnostic(
        code(taper::serve::bind),
        help("pick another `--port`/`--host`, or stop what uses it")
    )]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// The one error → status table, and the TEI `error_type` of each.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ServeError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "Validation"),
            ServeError::BadRequest { .. }
            | ServeError::TooManyInputs { .. }
            | ServeError::Input(_)
            | ServeError::Explain(
                ExplainError::NoWords { .. } | ExplainError::NoMaskToken { .. },
            ) => (StatusCode::UNPROCESSABLE_ENTITY, "Validation"),
            ServeError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "Overloaded"),
            ServeError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ServeError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ServeError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            ServeError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "Unhealthy"),
            ServeError::Inference { .. }
            | ServeError::Explain(_)
            | ServeError::Start(_)
            | ServeError::Bind { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "Backend"),
        }
    }
}

/// TEI's error body: `{"error": "...", "error_type": "Validation"}`.
impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.status();
        let body = serde_json::json!({"error": self.to_string(), "error_type": error_type});
        (status, Json(body)).into_response()
    }
}
