//! An uploaded file, spooled to disk under the spool directory as Rocket's `TempFile` is, but written in
//! larger pieces: `TempFile` writes each 8 KiB of the body as its own blocking task (a 12 MP photo took some
//! 900 writes and twice as many thread wake-ups), this one in `SPOOL_WRITE`-sized writes.

use rocket::data::Limits;
use rocket::form::{self, DataField, FromFormField, ValueField};
use rocket::fs::FileName;
use tokio::io::AsyncWriteExt;

/// How much of the body is written to the spool file at once: few writes, and a buffer small enough that many
/// bodies arriving at once hold little memory (it is held, with the file's own copy of a write in flight, per
/// body being received).
const SPOOL_WRITE: usize = 256 << 10;

/// The file field of an upload form; the spool file is removed when this is dropped.
pub struct SpooledFile<'r> {
    path: tempfile::TempPath,
    len: u64,
    name: Option<&'r FileName>,
}

impl SpooledFile<'_> {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file name as the client sent it, for display only.
    pub fn raw_name(&self) -> Option<&FileName> {
        self.name
    }

    pub async fn open(&self) -> std::io::Result<tokio::fs::File> {
        tokio::fs::File::open(&self.path).await
    }
}

#[rocket::async_trait]
impl<'r> FromFormField<'r> for SpooledFile<'r> {
    /// A file must come as a part of a multipart form, not as a text value.
    fn from_value(_: ValueField<'r>) -> form::Result<'r, Self> {
        Err(form::Error::validation("the file must be sent as a part of a multipart/form-data body"))?
    }

    async fn from_data(field: DataField<'r, '_>) -> form::Result<'r, Self> {
        use tracing::Instrument;
        let span = tracing::info_span!("upload.receive", upload.bytes = tracing::field::Empty);
        async move {
            let limit = field.request.limits().get("file").unwrap_or(Limits::FILE);
            let dir = field.request.rocket().config().temp_dir.relative();
            let created = tokio::task::spawn_blocking(move || tempfile::NamedTempFile::new_in(dir)).await;
            let (file, path) = created.map_err(std::io::Error::other)??.into_parts();
            let mut file = tokio::fs::File::from_std(file);
            let mut writer = tokio::io::BufWriter::with_capacity(SPOOL_WRITE, &mut file);
            let written = field.data.open(limit).stream_to(&mut writer).await?;
            writer.flush().await?;
            tracing::Span::current().record("upload.bytes", written.written);
            if !written.complete {
                Err((None, Some(written.written)))?;
            }
            Ok::<_, form::Errors<'r>>(SpooledFile { path, len: written.written, name: field.file_name })
        }
        .instrument(span)
        .await
    }
}
