//! The error type at the HTTP boundary: every error the proxy itself produces
//! maps to a status and the JSON body of README "Errors the proxy produces",
//! `{"error": "<code>", "detail": "<human text>"}`.

use http::StatusCode;
use serde_json::json;

use crate::http::body::{json_response, Body};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("upstream {upstream}: {detail}")]
    BadGateway { upstream: String, detail: String },
    #[error("upstream {upstream} did not answer within {timeout}")]
    GatewayTimeout { upstream: String, timeout: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::RequestTimeout(_) => "request_timeout",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::BadGateway { .. } => "bad_gateway",
            ProxyError::GatewayTimeout { .. } => "gateway_timeout",
            ProxyError::Unavailable(_) => "unavailable",
            ProxyError::Internal(_) => "internal",
        }
    }

    pub fn into_response(self) -> http::Response<Body> {
        let mut resp = json_response(
            self.status(),
            &json!({ "error": self.code(), "detail": self.to_string() }),
        );
        if let ProxyError::Unauthorized(_) = self {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
