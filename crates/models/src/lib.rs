//! frugal's model runtime: pinned assets, BERT-family sentence encoders and GGUF chat models,
//! executed on the CPU with candle and our own quantised kernels.

pub mod assets;
pub mod chat;
pub mod encoder;
pub mod error;
pub mod lowp;
pub mod resolve;

pub use error::{Error, Result};
