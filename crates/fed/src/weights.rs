//! Model weights as one flat vector with a layout (names and shapes): what travels between the
//! server and the nodes, and what updates, masks and noise are added to.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use frugal_train::learner::Named;
use std::path::Path;

/// Named tensors flattened into one vector, in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub data: Vec<f32>,
}

impl Weights {
    /// Flattens named tensors.
    pub fn from_named(named: &Named) -> Result<Weights> {
        let mut w = Weights {
            names: vec![],
            shapes: vec![],
            data: vec![],
        };
        for (n, t) in named {
            w.names.push(n.clone());
            w.shapes.push(t.dims().to_vec());
            w.data.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(w)
    }

    /// Back to named tensors.
    pub fn to_named(&self) -> Result<Named> {
        let mut out = vec![];
        let mut at = 0;
        for (n, s) in self.names.iter().zip(&self.shapes) {
            let len: usize = s.iter().product();
            let t = Tensor::from_slice(&self.data[at..at + len], s.as_slice(), &Device::Cpu)?;
            out.push((n.clone(), t));
            at += len;
        }
        Ok(out)
    }

    /// The same layout with other values.
    pub fn with_data(&self, data: Vec<f32>) -> Weights {
        Weights {
            names: self.names.clone(),
            shapes: self.shapes.clone(),
            data,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes on the wire as 32-bit floats.
    pub fn bytes(&self) -> u64 {
        4 * self.data.len() as u64
    }

    /// Saves as safetensors (atomically: temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let named = self.to_named()?;
        let map: std::collections::HashMap<String, Tensor> = named.into_iter().collect();
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp).map_err(|e| Error::file(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
    }

    /// Loads weights saved by `save`, in the layout of `like`.
    pub fn load(path: &Path, like: &Weights) -> Result<Weights> {
        let map =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::file(path, e))?;
        let mut data = Vec::with_capacity(like.len());
        for (n, s) in like.names.iter().zip(&like.shapes) {
            let t = map.get(n).ok_or_else(|| {
                Error::file(
                    path,
                    format!("has no tensor '{n}'; it is not this model's checkpoint"),
                )
            })?;
            if t.dims() != s.as_slice() {
                return Err(Error::file(
                    path,
                    format!("'{n}' has shape {:?}, expected {s:?}", t.dims()),
                ));
            }
            data.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(like.with_data(data))
    }
}

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}
