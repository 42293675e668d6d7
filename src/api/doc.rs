//! What the handlers' `utoipa::path` attributes share: error responses in the Error schema, and the stored
//! files' binary answers.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};

/// Error responses of an operation, each in the Error schema: `(status, the codes it carries)`.
pub fn error_responses(codes: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    codes.iter().map(|(status, description)| (status.to_string(), error_response(description).into())).collect()
}

fn error_response(description: &str) -> Response {
    let error = Content::new(Some(Ref::from_schema_name("Error")));
    ResponseBuilder::new().description(description).content("application/json", error).build()
}

/// Declares a type whose responses are the listed errors, for a path's `responses(..)`.
macro_rules! errors {
    ($(#[$doc:meta])* $name:ident { $($status:literal => $meaning:expr),+ $(,)? }) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
                $crate::api::doc::error_responses(&[$(($status, $meaning)),+])
            }
        }
    };
}
pub(crate) use errors;

errors!(
    /// What an upload may be refused with (the form, the API, classify, the selfie route).
    UploadErrors {
        "400" => "MISSING_FILE, BAD_REQUEST or INVALID_IDEMPOTENCY_KEY",
        "409" => "IDEMPOTENCY_CONFLICT: the key was used with other bytes",
        "413" => "PAYLOAD_TOO_LARGE: over max_upload_bytes",
        "415" => "UNSUPPORTED_MEDIA_TYPE: not an accepted format (JPEG, PNG, WebP, GIF, HEIC, AVIF) by content",
        "422" => "IMAGE_TOO_LARGE (a dimension or pixel limit), CORRUPT_IMAGE or INVALID_REQUEST",
        "429" => TOO_MANY_REQUESTS,
        "500" => "INTERNAL or INFERENCE_FAILED",
        "503" => "BUSY, INFERENCE_BUSY, DATABASE_UNAVAILABLE or STORE_UNAVAILABLE; see Retry-After",
        "default" => "Any other error, same shape",
    }
);

pub const TOO_MANY_REQUESTS: &str = "TOO_MANY_REQUESTS: over the client's allowance; see Retry-After";

/// A stored file's answers: its bytes, 304 for a matching `If-None-Match`, or why there are none.
pub fn stored_file(description: &str) -> BTreeMap<String, RefOr<Response>> {
    let nosniff = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["nosniff"]));
    let string = ObjectBuilder::new().schema_type(Type::String);
    let bytes = ResponseBuilder::new()
        .description(description)
        .header("ETag", HeaderBuilder::new().schema(string).build())
        .header("X-Content-Type-Options", HeaderBuilder::new().schema(nosniff).build())
        .content("image/*", Content::new(Some(binary())))
        .build();
    let mut responses =
        error_responses(&[("404", "NOT_FOUND"), ("410", "IMAGE_MISSING: the image's file was lost from the store")]);
    responses.insert("200".to_owned(), bytes.into());
    responses
        .insert("304".to_owned(), ResponseBuilder::new().description("Not modified (If-None-Match)").build().into());
    responses
}

/// Declares a type whose responses are a stored file's, for a path's `responses(..)`.
macro_rules! stored_file_responses {
    ($name:ident, $description:literal) => {
        pub(crate) struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                stored_file($description)
            }
        }
    };
}

stored_file_responses!(StoredImage, "The image bytes");
stored_file_responses!(StoredThumbnail, "The thumbnail bytes");
stored_file_responses!(StoredDisplay, "The display rendition's bytes, or the original's");

fn binary() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
}

/// A file's bytes as a body.
pub(crate) struct FileBytes;

impl utoipa::PartialSchema for FileBytes {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        binary().into()
    }
}

impl utoipa::ToSchema for FileBytes {}

/// An image's or an upload session's id in the path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // described, never built: the handlers take the id as text and parse it
pub(crate) struct IdParam {
    #[param(pattern = "^[0-9a-f]{32}$")]
    id: String,
}

/// `{"status": "ok"}`: the process is up.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Status)]
pub(crate) struct Up {
    pub status: &'static str,
}

impl Up {
    pub fn answer() -> rocket::serde::json::Json<Up> {
        rocket::serde::json::Json(Up { status: "ok" })
    }
}
