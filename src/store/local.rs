//! Objects as files under one directory. Writes go to a temporary file in the same file system, are synced,
//! then renamed into place, so a crash never leaves a half-written object under its key.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{validate_key, ObjectBody, ObjectStore, StoreError};

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
    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let parent = path.parent().expect("a validated key has a parent under the root");
        tokio::fs::create_dir_all(parent).await.map_err(|e| backend("cannot create", parent, e))?;
        let temp = self.root.join(".tmp").join(crate::domain::random_token(12));
        let write = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(&body).await?;
            file.sync_all().await?;
            tokio::fs::rename(&temp, &path).await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(backend("cannot write", &path, e));
        }
        Ok(())
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
