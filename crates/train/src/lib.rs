//! frugal's training side. So far: labelled text data sets (the SpamAssassin importer,
//! deterministic splits, statistics) and classification metrics; the trainer is still to come.

pub mod data;
pub mod metrics;

use std::path::{Path, PathBuf};

/// Errors of the training side; each names the file or value and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn data(path: &Path, message: impl Into<String>) -> Error {
        Error::Data {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Result alias for the training side.
pub type Result<T, E = Error> = std::result::Result<T, E>;
