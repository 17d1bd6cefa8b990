//! Turning what a user typed after `--model` into a path: an asset name, a Hugging Face model
//! folder, or a `.gguf` file.

use crate::assets::Store;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// What kind of model a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    /// A folder with config.json, *.safetensors and tokenizer.json.
    HfDir(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

impl ModelPath {
    /// The path itself.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ModelPath::HfDir(p) | ModelPath::Gguf(p) => p,
        }
    }
}

/// Resolves `spec`: an existing path wins; otherwise a known asset name, fetched on first use.
pub fn resolve_model(spec: &str, store: &Store) -> Result<ModelPath> {
    let path = PathBuf::from(spec);
    if path.is_dir() {
        return Ok(ModelPath::HfDir(path));
    }
    if path.is_file() {
        if is_gguf(&path) {
            return Ok(ModelPath::Gguf(path));
        }
        return Err(Error::file(
            &path,
            "is not a GGUF file (no GGUF magic); pass a .gguf file, a Hugging Face model folder, or an asset name",
        ));
    }
    if store.manifest().get(spec).is_ok() {
        let p = store.ensure(spec)?;
        return Ok(if p.is_dir() {
            ModelPath::HfDir(p)
        } else {
            ModelPath::Gguf(p)
        });
    }
    if spec.contains('/') || spec.ends_with(".gguf") {
        return Err(Error::file(&path, "no such file or folder"));
    }
    Err(Error::UnknownModel {
        spec: spec.to_string(),
        known: store.manifest().names().join(", "),
    })
}

fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
}
