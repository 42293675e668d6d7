//! Where image bytes live: a small trait with a local-directory implementation (the embedded default) and
//! an S3 one. Keys are made by Upshot (`images/<id>/original.<ext>`), never from user input.

mod local;
mod s3;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncRead;

pub use local::LocalStore;
pub use s3::{S3Config, S3Store};

use crate::config::{StoreKind, StoreSettings};
use crate::error::{AppError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("object store failed: {0}")]
    Backend(String),
    #[error("the body is {actual} bytes, not the {expected} announced")]
    LengthMismatch { expected: u64, actual: u64 },
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(_) => AppError::not_found().with_detail(error),
            _ => AppError::new(ErrorCode::StoreUnavailable, "The image store is unavailable; try again shortly.")
                .with_detail(error)
                .retry_after(5),
        }
    }
}

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub modified: std::time::SystemTime,
}

/// A URL a client may `PUT` one object to, with the headers it must send as signed.
#[derive(Debug, Clone)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// An object's bytes as a stream, with its length.
pub struct ObjectBody {
    pub len: u64,
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

#[rocket::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes the whole object, or nothing: a reader never sees a partial object.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError>;
    /// Writes an object of exactly `length` bytes from `body`, or nothing: a shorter or longer body fails.
    /// By default the body is gathered in memory first; a store that can stream overrides it.
    async fn put_reader<'a>(
        &self,
        key: &str,
        body: Pin<Box<dyn AsyncRead + Send + 'a>>,
        length: u64,
        content_type: &str,
    ) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::with_capacity(length as usize);
        body.take(length + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StoreError::Backend(format!("reading the body of {key}: {e}")))?;
        if bytes.len() as u64 != length {
            return Err(StoreError::LengthMismatch { expected: length, actual: bytes.len() as u64 });
        }
        self.put(key, bytes.into(), content_type).await
    }
    /// A URL that lets a client `PUT` the object at `key` itself, `length` bytes of `content_type`, until
    /// `expires_in` has passed; `None` when the store cannot sign one (the local directory: Upshot then
    /// receives the bytes itself).
    async fn presign_put(
        &self,
        key: &str,
        length: u64,
        content_type: &str,
        expires_in: std::time::Duration,
    ) -> Result<Option<PresignedPut>, StoreError>;
    async fn get(&self, key: &str) -> Result<ObjectBody, StoreError>;
    /// The object's length, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Removes the object; removing a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Up to `limit` objects whose keys start with `prefix` and sort after `after`, in key (byte) order: one
    /// page of a listing that holds only a page in memory.
    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Listed>, StoreError>;
    /// Cheap reachability check for `/readyz`.
    async fn health(&self) -> Result<(), StoreError>;
    /// For logs: where the objects go, without credentials.
    fn describe(&self) -> String;
}

/// The store the settings name; `local_dir` is the local store's directory.
pub async fn from_settings(
    settings: &StoreSettings,
    local_dir: PathBuf,
    aws: &crate::aws::SharedConfig,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let store: Arc<dyn ObjectStore> = match settings.kind {
        StoreKind::Local => Arc::new(LocalStore::open(local_dir).await?),
        StoreKind::S3 => Arc::new(S3Store::connect(&s3_config(settings)?, aws.get().await).await?),
    };
    Ok(store)
}

fn s3_config(settings: &StoreSettings) -> Result<S3Config, StoreError> {
    let bucket = settings.s3_bucket.clone().ok_or_else(|| StoreError::Backend("no bucket configured".into()))?;
    let prefix = match settings.s3_prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    };
    Ok(S3Config {
        bucket,
        prefix,
        region: settings.s3_region.clone(),
        endpoint_url: settings.s3_endpoint_url.clone(),
        force_path_style: settings.s3_force_path_style,
        timeout: std::time::Duration::from_secs(settings.s3_timeout_secs),
    })
}

/// Keys are `/`-separated segments of `[A-Za-z0-9._-]`, none of them `.` or `..`.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn keys_cannot_escape() {
        assert!(validate_key("images/abc/original.jpg").is_ok());
        for bad in ["", "../x", "images/../x", "/abs", "a//b", "a/./b", "a b", "a\\b"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
