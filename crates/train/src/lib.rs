//! frugal's training side: labelled text data sets (`data`), the one training loop (`trainer`),
//! text classifiers trained by it in head (transfer) or full (fine-tuning) mode (`classifier`),
//! and their metrics (`metrics`).

pub mod classifier;
pub mod data;
pub mod distill;
pub mod metrics;
pub mod optim;
pub mod trainer;

use std::path::{Path, PathBuf};

/// Errors of the training side; each names the file or value and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    /// The run was stopped (Ctrl-C); the state to resume from is in the folder, if any.
    #[error("{}", interrupted(.0))]
    Interrupted(Option<PathBuf>),
    #[error("{0}")]
    Model(#[from] frugal_models::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Error {
        Error::Model(frugal_models::Error::from(e))
    }
}

impl Error {
    pub(crate) fn data(path: &Path, message: impl Into<String>) -> Error {
        Error::Data {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

fn interrupted(dir: &Option<PathBuf>) -> String {
    match dir {
        Some(d) => format!(
            "interrupted; the training state is saved in {}: run the same command with --resume to continue",
            d.display()
        ),
        None => "interrupted".into(),
    }
}

/// Result alias for the training side.
pub type Result<T, E = Error> = std::result::Result<T, E>;
