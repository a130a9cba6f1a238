//! `ValidJson<T>`: a JSON body extractor whose errors name the field by its
//! path (`dates.birthday`), and whose size limit answers 413 in our shape.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit: MAX_BODY }
                } else {
                    ApiError::BadRequest {
                        field: None,
                        message: e.body_text(),
                    }
                }
            })?;
        parse(&bytes).map(ValidJson)
    }
}

/// Deserialises `bytes`, turning serde's error into a field path and message.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest {
                field: None,
                message: format!("malformed JSON: {message}"),
            };
        }
        // A missing field is reported at its parent's path, named only in the message.
        let missing = message
            .starts_with("missing field")
            .then(|| backticked(&message))
            .flatten();
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_string(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            (".", None) => {
                return ApiError::BadRequest {
                    field: None,
                    message,
                };
            }
            (path, None) => path.to_string(),
        };
        ApiError::bad_request(field, message)
    })?;
    deserializer.end().map_err(|e| ApiError::BadRequest {
        field: None,
        message: format!("malformed JSON: {e}"),
    })?;
    Ok(value)
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}
