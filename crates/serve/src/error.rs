//! Errors as OpenAI's API shapes them: an HTTP status and
//! `{"error": {"message", "type", "param", "code"}}`, so clients raise their usual exceptions.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client. `message` says what was wrong and how to fix it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is malformed or asks for something impossible.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// 404: no model of that name is served here; lists those that are.
    pub fn unknown_model(name: &str, known: &[String]) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!(
                "the model `{name}` does not exist here; models served: {} (GET /v1/models)",
                known.join(", ")
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 429: the model's queue is full; the client should retry later.
    pub fn busy(model: &str, queue: usize) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "model `{model}` has {queue} requests waiting, its queue's limit; retry after a moment"
            ),
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "missing or wrong API key: send the header `Authorization: Bearer KEY` with the key the server was started with (--api-key)".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 503: the models are still loading.
    pub fn loading() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the models are still loading; retry when GET /health answers 200".into(),
            param: None,
            code: Some("loading"),
        }
    }

    /// 504: the request took longer than the server's time limit.
    pub fn timeout(secs: f64) -> ApiError {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "server_error",
            message: format!(
                "the request took longer than the server's limit of {secs} s (--timeout)"
            ),
            param: None,
            code: Some("timeout"),
        }
    }

    /// 413: the body is larger than the server accepts.
    /// 408: the request body stalled past the server's limit.
    pub fn body_timeout() -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "invalid_request_error",
            message: format!(
                "the request body stalled: no bytes for {} s; send it whole",
                crate::BODY_STALL_TIMEOUT.as_secs()
            ),
            param: None,
            code: None,
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            message: format!(
                "the request body is larger than {limit} bytes, the server's limit (--max-body-bytes)"
            ),
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 502: the cascade's upstream failed.
    pub fn upstream(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            kind: "upstream_error",
            message: message.into(),
            param: None,
            code: Some("upstream_failed"),
        }
    }

    /// 500: something failed inside the server.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}
