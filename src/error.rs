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
    #[error("Resource temporarily unavailable (another owner holds a conflicting lock)")]
    WouldBlock,
    #[error("Resource deadlock avoided (the lock's holder waits for a lock this owner holds)")]
    Deadlock,
    #[error("Interrupted (the waiting process got a signal, or the mount is ending)")]
    Interrupted,
    #[error("No locks available (too many locks wait or are held)")]
    TooManyLocks,
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
    /// An error that crossed a socket: its meaning and its text.
    #[error("{1}")]
    Remote(Kind, String),
}

/// What an error means to a caller, the part of it that crosses a socket with
/// its text: a `NotFound` across the volume socket is still `NotFound`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
    NameTooLong,
    NoSpace,
    NoXattr,
    NotPermitted,
    TooBig,
    ReadOnly,
    WouldBlock,
    /// Anything else (metadata, shards, I/O): the text says what.
    Other,
    // New kinds go last: the variant's index is what crosses the wire.
    Deadlock,
    Interrupted,
    NoLocks,
    /// The home did not run a member's call: the member is past one of its
    /// bounds (calls a second, calls at once). Asking again later is safe.
    Busy,
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
    pub fn kind(&self) -> Kind {
        match self {
            Error::NotFound => Kind::NotFound,
            Error::Exists => Kind::Exists,
            Error::NotDir => Kind::NotDir,
            Error::IsDir => Kind::IsDir,
            Error::NotEmpty => Kind::NotEmpty,
            Error::Invalid(_) => Kind::Invalid,
            Error::NameTooLong => Kind::NameTooLong,
            Error::NoSpace => Kind::NoSpace,
            Error::NoXattr => Kind::NoXattr,
            Error::NotPermitted => Kind::NotPermitted,
            Error::TooBig => Kind::TooBig,
            Error::ReadOnly => Kind::ReadOnly,
            Error::WouldBlock => Kind::WouldBlock,
            Error::Deadlock => Kind::Deadlock,
            Error::Interrupted => Kind::Interrupted,
            Error::TooManyLocks => Kind::NoLocks,
            Error::Remote(k, _) => *k,
            _ => Kind::Other,
        }
    }

    /// The error a caller across a socket acts on: the variant itself where it
    /// has no payload, else the kind with the text.
    pub fn from_kind(kind: Kind, text: String) -> Error {
        match kind {
            Kind::NotFound => Error::NotFound,
            Kind::Exists => Error::Exists,
            Kind::NotDir => Error::NotDir,
            Kind::IsDir => Error::IsDir,
            Kind::NotEmpty => Error::NotEmpty,
            Kind::NameTooLong => Error::NameTooLong,
            Kind::NoSpace => Error::NoSpace,
            Kind::NoXattr => Error::NoXattr,
            Kind::TooBig => Error::TooBig,
            Kind::ReadOnly => Error::ReadOnly,
            Kind::WouldBlock => Error::WouldBlock,
            Kind::Deadlock => Error::Deadlock,
            Kind::Interrupted => Error::Interrupted,
            Kind::NoLocks => Error::TooManyLocks,
            // These keep their text: it says what was refused, or why.
            Kind::Invalid | Kind::NotPermitted | Kind::Other | Kind::Busy => {
                Error::Remote(kind, text)
            }
        }
    }

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
