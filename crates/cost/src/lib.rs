//! frugal's cost engine: what language-model work costs, traceably. Pure arithmetic and data:
//! no ML dependencies (local models' token counts and speeds come from the caller).

pub mod catalog;
pub mod hardware;
pub mod price_map;
pub mod request;
pub mod tco;
pub mod text;
pub mod usage;
pub mod verdict;

pub use catalog::{Catalog, Kind, Layer, ModelPrice, TokenizerSpec};
pub use price_map::PriceMap;

/// Errors of the cost engine; each names the file, field or model and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model '{name}'{hint}; see the catalog with `frugal tokens --list`, or add it to a catalog file (--catalog FILE)")]
    UnknownModel { name: String, hint: String },
    #[error("{file}: {message}")]
    Catalog { file: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for the cost engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
