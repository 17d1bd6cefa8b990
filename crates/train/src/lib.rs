//! frugal's training side: labelled text data sets (`data`), the one training loop (`trainer`),
//! text classifiers trained by it in head (transfer) or full (fine-tuning) mode (`classifier`),
//! and their metrics (`metrics`).

pub mod battery;
pub mod classifier;
pub mod data;
pub mod distill;
pub mod fewshot;
pub mod labeller;
pub mod learner;
pub mod metrics;
pub mod optim;
pub mod sft;
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

/// Replaces the folder `dir` atomically: `fill` writes the new contents into a temporary
/// sibling folder, which is then renamed into place, so an interrupted write never leaves a
/// half-written `dir` nor loses the previous one.
pub(crate) fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |p: &Path, e: std::io::Error| Error::data(p, format!("cannot write: {e}"));
    if dir.exists() && !dir.is_dir() {
        return Err(Error::data(
            dir,
            "is an existing file, not a folder: it is left as it is; write the checkpoint to another path",
        ));
    }
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Result alias for the training side.
pub type Result<T, E = Error> = std::result::Result<T, E>;
