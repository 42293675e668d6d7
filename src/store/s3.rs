//! Objects in an S3 bucket (or an S3-compatible endpoint). Credentials and region come from the SDK's
//! default chain: the instance role in production, `AWS_*` variables elsewhere.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{validate_key, Listed, ObjectBody, ObjectStore, PresignedPut, StoreError};

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

fn backend<E: std::error::Error>(action: &str, key: &str, error: E) -> StoreError {
    StoreError::Backend(format!("S3 {action} {key}: {}", DisplayErrorContext(error)))
}

/// Where S3 is and how long a call may take; `store::from_settings` builds it from the settings.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key; empty, or ending in `/`.
    pub prefix: String,
    /// Overrides the SDK's region chain.
    pub region: Option<String>,
    /// A non-AWS endpoint (MinIO, a local test endpoint).
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Connect, attempt and operation timeout.
    pub timeout: std::time::Duration,
}

impl S3Store {
    pub async fn connect(settings: &S3Config, shared: &aws_config::SdkConfig) -> Result<Self, StoreError> {
        let bucket = settings.bucket.clone();
        // An S3 that hangs (a brownout, a black-holed route) must cost a request a bounded wait, then a 503,
        // not hold it and its buffered body until the client gives up.
        let limit = settings.timeout;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3).min(limit))
            .operation_attempt_timeout(limit)
            .operation_timeout(limit)
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(shared)
            .region(crate::aws::region_or_shared(settings.region.as_deref(), shared))
            .force_path_style(settings.force_path_style)
            .timeout_config(timeouts);
        if let Some(endpoint) = &settings.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        Ok(S3Store { client: Client::from_conf(config.build()), bucket, prefix: settings.prefix.clone() })
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }
}

#[rocket::async_trait]
impl ObjectStore for S3Store {
    async fn presign_put(
        &self,
        key: &str,
        length: u64,
        content_type: &str,
        expires_in: std::time::Duration,
    ) -> Result<Option<PresignedPut>, StoreError> {
        let full = self.full_key(key)?;
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| backend("presign", &full, e))?;
        // The length and type are signed: S3 refuses a PUT of any other size.
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_length(length as i64)
            .content_type(content_type)
            .presigned(config)
            .await
            .map_err(|e| backend("presign", &full, e))?;
        let headers = request.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
        Ok(Some(PresignedPut { url: request.uri().to_owned(), headers }))
    }

    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type(content_type)
            .body(ByteStream::from(body))
            // The SDK's CRC32 of the body (its default checksum, which S3 verifies) guards the bytes; signing
            // them as well would hash every byte again with SHA-256. The request itself stays signed.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| backend("put", &full, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StoreError> {
        let full = self.full_key(key)?;
        let output = self.client.get_object().bucket(&self.bucket).key(&full).send().await.map_err(|e| {
            match e.as_service_error() {
                Some(service) if service.is_no_such_key() => StoreError::NotFound(key.to_owned()),
                _ => backend("get", &full, e),
            }
        })?;
        let len = output.content_length().unwrap_or_default().max(0) as u64;
        Ok(ObjectBody { len, reader: Box::pin(output.body.into_async_read()) })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let full = self.full_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(&full).send().await {
            Ok(output) => Ok(Some(output.content_length().unwrap_or_default().max(0) as u64)),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(backend("head", &full, e)),
        }
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Listed>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .max_keys(i32::try_from(limit).unwrap_or(1000));
        if let Some(after) = after {
            request = request.start_after(format!("{}{after}", self.prefix));
        }
        let output = request.send().await.map_err(|e| backend("list", &full_prefix, e))?;
        Ok(output
            .contents()
            .iter()
            .filter_map(|object| {
                let key = object.key()?.strip_prefix(&self.prefix)?.to_owned();
                let modified = object
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                    .unwrap_or(std::time::UNIX_EPOCH);
                Some(Listed { key, modified })
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| backend("delete", &full, e))?;
        Ok(())
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| backend("head bucket", &self.bucket, e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}
