//! Objects as files under one directory. Writes go to a temporary file in the same file system, are synced,
//! then renamed into place, so a crash never leaves a half-written object under its key.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{validate_key, Listed, ObjectBody, ObjectStore, PresignedPut, StoreError};

pub struct LocalStore {
    root: PathBuf,
}

fn backend(context: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{context} {}: {error}", path.display()))
}

impl LocalStore {
    pub async fn open(root: PathBuf) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(root.join(".tmp")).await.map_err(|e| backend("cannot create", &root, e))?;
        Ok(LocalStore { root })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

#[rocket::async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        let length = body.len() as u64;
        self.put_reader(key, Box::pin(std::io::Cursor::new(body)), length, content_type).await
    }

    async fn put_reader<'a>(
        &self,
        key: &str,
        body: Pin<Box<dyn AsyncRead + Send + 'a>>,
        length: u64,
        _content_type: &str,
    ) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let parent = path.parent().expect("a validated key has a parent under the root");
        tokio::fs::create_dir_all(parent).await.map_err(|e| backend("cannot create", parent, e))?;
        let temp = self.root.join(".tmp").join(crate::domain::random_token(12));
        let write = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let written = tokio::io::copy(&mut body.take(length + 1), &mut file).await?;
            if written != length {
                return Ok(Some(written));
            }
            file.sync_all().await?;
            tokio::fs::rename(&temp, &path).await.map(|()| None)
        };
        match write.await {
            Ok(None) => Ok(()),
            Ok(Some(actual)) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(StoreError::LengthMismatch { expected: length, actual })
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(backend("cannot write", &path, e))
            }
        }
    }

    async fn presign_put(
        &self,
        _key: &str,
        _length: u64,
        _content_type: &str,
        _expires_in: std::time::Duration,
    ) -> Result<Option<PresignedPut>, StoreError> {
        Ok(None)
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StoreError> {
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::NotFound(key.to_owned()),
            _ => backend("cannot open", &path, e),
        })?;
        let len = file.metadata().await.map_err(|e| backend("cannot stat", &path, e))?.len();
        Ok(ObjectBody { len, reader: Box::pin(file) })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend("cannot stat", &path, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                // Tidy the per-image directory once it is empty; failing that is harmless.
                if let Some(parent) = path.parent() {
                    let _ = tokio::fs::remove_dir(parent).await;
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend("cannot delete", &path, e)),
        }
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Listed>, StoreError> {
        let (root, prefix, after) = (self.root.clone(), prefix.to_owned(), after.map(str::to_owned));
        tokio::task::spawn_blocking(move || smallest_keys(&root, &prefix, after.as_deref(), limit))
            .await
            .map_err(|e| StoreError::Backend(format!("listing task failed: {e}")))?
    }

    async fn health(&self) -> Result<(), StoreError> {
        match tokio::fs::metadata(self.root.join(".tmp")).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::Backend(format!("{} is not a directory", self.root.display()))),
            Err(e) => Err(backend("cannot reach", &self.root, e)),
        }
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}

/// The `limit` smallest keys under `root` that start with `prefix` and sort after `after`. A directory has no
/// order of its own, so each page walks the tree and keeps only the smallest keys it has seen: memory is one
/// page, time is the tree once per page.
fn smallest_keys(root: &Path, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Listed>, StoreError> {
    let mut kept: std::collections::BTreeMap<String, std::time::SystemTime> = Default::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(backend("cannot list", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| backend("cannot list", &dir, e))?;
            let path = entry.path();
            let Some(key) = path.strip_prefix(root).ok().and_then(|k| k.to_str()).map(str::to_owned) else { continue };
            let file_type = entry.file_type().map_err(|e| backend("cannot stat", &path, e))?;
            if file_type.is_dir() {
                // Only directories that can hold matching keys: the temp directory and others are skipped.
                let dir_prefix = format!("{key}/");
                if prefix.starts_with(&dir_prefix) || dir_prefix.starts_with(prefix) {
                    pending.push(path);
                }
                continue;
            }
            let wanted = key.starts_with(prefix) && after.is_none_or(|after| key.as_str() > after);
            let room = kept.len() < limit || kept.last_key_value().is_some_and(|(largest, _)| key < *largest);
            if wanted && room {
                let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                kept.insert(key, modified);
                if kept.len() > limit {
                    kept.pop_last();
                }
            }
        }
    }
    Ok(kept.into_iter().map(|(key, modified)| Listed { key, modified }).collect())
}
