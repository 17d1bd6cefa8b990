//! AdamW with decoupled weight decay, fused into one pass per weight, whose state (moments and
//! step count) can be saved and restored so that an interrupted run resumes exactly. candle's
//! AdamW keeps its moments private and spends a dozen temporary tensors per weight per step.
//!
//! Like Hugging Face's trainer, biases and LayerNorm weights are not decayed.

use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;

/// The optimiser over named variables.
pub struct AdamW {
    names: Vec<String>,
    vars: Vec<Var>,
    decay: Vec<bool>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Steps taken (for bias correction).
    pub t: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Plain SGD instead (θ ← θ·(1 − lr·decay) − lr·g); the moments stay zero.
    pub sgd: bool,
}

/// Whether weight decay applies to a variable, by its name: not to biases and LayerNorm.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

impl AdamW {
    /// Moments start at zero; `weight_decay` applies to the variables `decays` accepts.
    pub fn new(vars: Vec<(String, Var)>, weight_decay: f64) -> AdamW {
        let (names, vars): (Vec<String>, Vec<Var>) = vars.into_iter().unzip();
        let decay = names.iter().map(|n| decays(n)).collect();
        let zeros = |v: &Var| vec![0f32; v.elem_count()];
        AdamW {
            m: vars.iter().map(zeros).collect(),
            v: vars.iter().map(zeros).collect(),
            names,
            vars,
            decay,
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            sgd: false,
        }
    }

    /// The variables, in the order `step` expects their gradients.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update with learning rate `lr`; each gradient (aligned with `vars`, `None` for a
    /// variable the loss did not reach) is multiplied by `scale` first (gradient clipping).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let c1 = 1.0 / (1.0 - self.beta1.powi(self.t as i32)) as f32;
        let c2 = 1.0 / (1.0 - self.beta2.powi(self.t as i32)) as f32;
        let (lr32, eps, scale) = (lr as f32, self.eps as f32, scale as f32);
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let var = &self.vars[i];
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut theta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let keep = if self.decay[i] {
                (1.0 - lr * self.weight_decay) as f32
            } else {
                1.0
            };
            if self.sgd {
                for (t, &gj) in theta.iter_mut().zip(&g) {
                    *t = *t * keep - lr32 * gj * scale;
                }
                var.set(&Tensor::from_vec(theta, var.shape(), &Device::Cpu)?)?;
                continue;
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..theta.len() {
                let gj = g[j] * scale;
                let mj = b1 * m[j] + (1.0 - b1) * gj;
                let vj = b2 * v[j] + (1.0 - b2) * gj * gj;
                m[j] = mj;
                v[j] = vj;
                theta[j] = theta[j] * keep - lr32 * (mj * c1) / ((vj * c2).sqrt() + eps);
            }
            var.set(&Tensor::from_vec(theta, var.shape(), &Device::Cpu)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for saving.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, name) in self.names.iter().enumerate() {
            let shape = self.vars[i].shape();
            out.insert(
                format!("m.{name}"),
                Tensor::from_slice(&self.m[i], shape, &Device::Cpu)?,
            );
            out.insert(
                format!("v.{name}"),
                Tensor::from_slice(&self.v[i], shape, &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores moments saved by `state` and the step count `t`; every variable must be there
    /// with its shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            for (kind, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}.{name}");
                let src = tensors.get(&key).ok_or_else(|| {
                    Error::Invalid(format!(
                        "the saved optimiser state has no '{key}': it is from another model"
                    ))
                })?;
                if src.shape() != self.vars[i].shape() {
                    return Err(Error::Invalid(format!(
                        "the saved optimiser state's '{key}' has shape {:?}, the model's {:?}",
                        src.dims(),
                        self.vars[i].dims()
                    )));
                }
                *dst = src.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::Optimizer;

    /// Same updates as candle's AdamW (which decays every variable) on a decayed weight.
    #[test]
    fn matches_candles_adamw() {
        let dev = Device::Cpu;
        let init = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev).unwrap();
        let a = Var::from_tensor(&init).unwrap();
        let b = Var::from_tensor(&init).unwrap();
        let mut ours = AdamW::new(vec![("w".into(), a.clone())], 0.1);
        let params = candle_nn::ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut theirs = candle_nn::AdamW::new(vec![b.clone()], params).unwrap();
        for k in 0..5 {
            let la = (a.as_tensor().sqr().unwrap() * (k as f64 + 1.0))
                .unwrap()
                .sum_all()
                .unwrap();
            let ga = la.backward().unwrap().get(a.as_tensor()).unwrap().clone();
            ours.step(&[Some(ga)], 0.01, 1.0).unwrap();
            let lb = (b.as_tensor().sqr().unwrap() * (k as f64 + 1.0))
                .unwrap()
                .sum_all()
                .unwrap();
            theirs.step(&lb.backward().unwrap()).unwrap();
        }
        let (x, y) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (x, y) in x.iter().zip(&y) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
        assert_ne!(x, init.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn state_round_trips_and_refuses_another_model() {
        let w = Var::ones((3, 2), DType::F32, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("layer.bias".into(), w.clone())], 0.5);
        let g = Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap();
        opt.step(&[Some(g)], 0.1, 1.0).unwrap();
        let state = opt.state().unwrap();
        let mut other = AdamW::new(vec![("layer.bias".into(), w.clone())], 0.5);
        other.load_state(&state, opt.t).unwrap();
        assert_eq!(other.m, opt.m);
        assert_eq!(other.v, opt.v);
        assert_eq!(other.t, 1);
        // A bias is not decayed: one step of Adam moves each weight by lr exactly.
        let after = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(after.iter().all(|x| (x - 0.9).abs() < 1e-5), "{after:?}");
        let u = Var::ones(4, DType::F32, &Device::Cpu).unwrap();
        let mut wrong = AdamW::new(vec![("layer.bias".into(), u)], 0.5);
        assert!(wrong.load_state(&state, 1).is_err());
        let mut missing = AdamW::new(vec![("other".into(), w)], 0.5);
        assert!(missing.load_state(&state, 1).is_err());
    }

    #[test]
    fn sgd_steps_against_the_gradient() {
        let w = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], 0.0);
        opt.sgd = true;
        let g = Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g)], 0.1, 2.0).unwrap();
        let v = w.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-6 && (v[1] + 1.8).abs() < 1e-6,
            "{v:?}"
        );
    }
}
