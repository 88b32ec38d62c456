//! The JSON bodies the management API answers, and [`SortedJson`], which
//! writes them. Handlers return typed structs (each derives
//! `utoipa::ToSchema`, so [`crate::openapi`] describes exactly what they
//! serialize); this module only decides how they become bytes.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;

/// A JSON response whose object keys come out in sorted order, at every
/// depth. The API's bodies were built as `serde_json::Value`s, whose maps
/// sort their keys; typed bodies written through a `Value` keep that order,
/// so clients see the same bytes as before they were typed.
pub(crate) struct SortedJson<T>(pub T);

impl<T: Serialize> IntoResponse for SortedJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.0) {
            Ok(value) => Json(value).into_response(),
            Err(e) => {
                // Only a type with a non-string map key fails here: a bug.
                tracing::error!("serializing a response: {e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error: the server failed to write its answer, not your request",
                )
                .into_response()
            }
        }
    }
}
