//! The one error type the engine returns. POSIX-like variants carry the meaning a
//! caller acts on; the FUSE adapter maps them to errno values (and is the only place
//! that does), the CLI prints their text.

use crate::chunk::ChunkError;
use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("No such file or directory")]
    NotFound,
    #[error("File exists")]
    Exists,
    #[error("Not a directory")]
    NotDir,
    #[error("Is a directory")]
    IsDir,
    #[error("Directory not empty")]
    NotEmpty,
    #[error("Invalid argument: {0}")]
    Invalid(&'static str),
    #[error("File name too long")]
    NameTooLong,
    #[error("No space left on device")]
    NoSpace,
    #[error("No such attribute")]
    NoXattr,
    #[error("Operation not permitted")]
    NotPermitted,
    #[error("File too large")]
    TooBig,
    #[error("Read-only file system")]
    ReadOnly,
    #[error("volume metadata: {0}")]
    Db(String),
    #[error("volume metadata is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full(_) => Error::NoSpace,
            other => Error::Store(other),
        }
    }
}

impl Error {
    /// The same failure again, for reporting one error to several callers: variants
    /// without a payload are themselves, the rest keep their text.
    pub fn repeat(&self) -> Error {
        match self {
            Error::NotFound => Error::NotFound,
            Error::NoSpace => Error::NoSpace,
            Error::ReadOnly => Error::ReadOnly,
            Error::TooBig => Error::TooBig,
            other => Error::Io(std::io::Error::other(other.to_string())),
        }
    }
}
