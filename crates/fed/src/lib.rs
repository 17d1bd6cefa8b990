//! Federated learning: one model trained across data silos without moving their data.
//!
//! The node logic (`node`: receive the global weights, train locally with the shared trainer,
//! return an update) knows nothing of transport; the simulator (`sim`) runs the nodes in one
//! process with real training, and a network transport can carry the same messages. The server
//! side screens updates (`aggregate`), averages them (FedAvg, FedAvgM; FedProx's term is local),
//! optionally under differential privacy (`privacy`) and secure aggregation (`secagg`).

pub mod aggregate;
pub mod flower;
pub mod node;
pub mod partition;
pub mod privacy;
pub mod secagg;
pub mod sim;
pub mod weights;

/// Errors of the federated side; each names the value at fault and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{0}")]
    Train(#[from] frugal_train::Error),
    #[error("{0}")]
    Model(#[from] frugal_models::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Error {
        Error::Model(frugal_models::Error::from(e))
    }
}

impl Error {
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Error {
        Error::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
