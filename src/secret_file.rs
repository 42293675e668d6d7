//! The server's secret key (it signs delete tokens and admin sessions) when none is configured: a file in the
//! data directory, created with random bytes and owner-only permissions on first start.

use std::path::Path;

/// Reads the key from `path`, creating it (mode 0600) on first start.
pub fn load_or_create(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(existing) if existing.trim().len() >= 32 => return Ok(existing.trim().to_owned()),
        Ok(_) => {
            return Err(std::io::Error::other(format!("{} is shorter than 32 characters", path.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let secret = crate::domain::random_token(32);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            Ok(secret)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(std::fs::read_to_string(path)?.trim().to_owned()),
        Err(e) => Err(e),
    }
}
