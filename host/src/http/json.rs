//! Extractors that answer bad input in the API's error shape: `ValidJson<T>`,
//! a JSON body whose errors name the field by its path (`dates.birthday`)
//! and whose size limit answers 413; `ValidPath<T>`, path parameters whose
//! errors (percent-escapes that are not UTF-8) name the parameter.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
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
        // The root prints as "." too, as does a key named "."; only the
        // segments tell them apart.
        let at_root = e.path().iter().next().is_none();
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
        let field = match (at_root, missing) {
            (true, Some(name)) => name.to_string(),
            (false, Some(name)) => format!("{path}.{name}"),
            (true, None) => {
                return ApiError::BadRequest {
                    field: None,
                    message,
                };
            }
            (false, None) => path,
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

pub struct ValidPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ValidPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ValidPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                if e.status().is_server_error() {
                    return Err(ApiError::Internal(anyhow::anyhow!(e.body_text())));
                }
                let message = e.body_text();
                let message = message.strip_prefix("Invalid URL: ").unwrap_or(&message);
                Err(ApiError::BadRequest {
                    field,
                    message: message.to_string(),
                })
            }
            // Only a route that names no parameters: a bug here, not the client's.
            Err(e) => Err(ApiError::Internal(anyhow::anyhow!(e.body_text()))),
        }
    }
}
