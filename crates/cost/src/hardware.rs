//! Hardware and energy profiles: what an hour of a machine costs, what it draws, what a kWh
//! costs and emits — each with its source — plus this machine detected, and RAPL energy counters
//! where the OS exposes them.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const BUILTIN: &str = include_str!("../hardware.toml");

/// Electricity: price, data-centre overhead (PUE) and carbon intensity.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Energy {
    pub usd_per_kwh: f64,
    pub usd_per_kwh_source: String,
    pub pue: f64,
    pub pue_source: String,
    pub kg_co2_per_kwh: f64,
    pub kg_co2_source: String,
    pub as_of: String,
}

/// A machine one can rent (or owns), with its hourly price and power draw.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// `cpu` or `gpu`.
    pub kind: String,
    pub vcpus: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub gpu: Option<String>,
    /// Peak dense BF16 FLOP/s of one GPU (datasheet), for training-compute estimates.
    #[serde(default)]
    pub gpu_peak_flops: Option<f64>,
    pub usd_per_hour: f64,
    pub watts: f64,
    pub source: String,
    pub watts_source: String,
    pub as_of: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Local {
    like: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfiles {
    #[serde(default)]
    energy: Option<Energy>,
    #[serde(default)]
    local: Option<Local>,
    #[serde(default)]
    machines: BTreeMap<String, Machine>,
}

/// All profiles: built-in, then the user's files layered on top.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub energy: Energy,
    /// The cloud machine this one is priced like, per vCPU.
    pub local_like: String,
    pub machines: BTreeMap<String, Machine>,
}

impl Profiles {
    /// The profiles shipped with frugal.
    pub fn builtin() -> Profiles {
        let mut p = Profiles {
            energy: Energy {
                usd_per_kwh: 0.0,
                usd_per_kwh_source: String::new(),
                pue: 1.0,
                pue_source: String::new(),
                kg_co2_per_kwh: 0.0,
                kg_co2_source: String::new(),
                as_of: String::new(),
            },
            local_like: String::new(),
            machines: BTreeMap::new(),
        };
        p.merge(BUILTIN, "built-in hardware.toml")
            .expect("the built-in hardware profiles are valid");
        p
    }

    /// Built-in profiles, then `home_file` if it exists, then `extra`.
    pub fn load(home_file: Option<&Path>, extra: Option<&Path>) -> Result<Profiles> {
        let mut p = Profiles::builtin();
        for path in [home_file.filter(|h| h.is_file()), extra]
            .into_iter()
            .flatten()
        {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Catalog {
                file: path.display().to_string(),
                message: format!("cannot read: {e}"),
            })?;
            p.merge(&text, &path.display().to_string())?;
        }
        Ok(p)
    }

    /// Adds or replaces profiles from one file; errors name the file, line, entry and field.
    pub fn merge(&mut self, text: &str, file: &str) -> Result<()> {
        let bad = |message: String| Error::Catalog {
            file: file.to_string(),
            message,
        };
        let raw: RawProfiles =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
        if let Some(e) = raw.energy {
            for (f, v) in [
                ("usd_per_kwh", e.usd_per_kwh),
                ("kg_co2_per_kwh", e.kg_co2_per_kwh),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(bad(format!("energy.{f} must be 0 or more")));
                }
            }
            if !(e.pue.is_finite() && e.pue >= 1.0) {
                return Err(bad(
                    "energy.pue must be 1.0 or more (total facility power / IT power)".into(),
                ));
            }
            self.energy = e;
        }
        if let Some(l) = raw.local {
            self.local_like = l.like;
        }
        for (name, m) in raw.machines {
            if !(m.usd_per_hour.is_finite() && m.usd_per_hour >= 0.0) {
                return Err(bad(format!(
                    "machine '{name}', field 'usd_per_hour' must be 0 or more"
                )));
            }
            if !(m.watts.is_finite() && m.watts >= 0.0) {
                return Err(bad(format!(
                    "machine '{name}', field 'watts' must be 0 or more"
                )));
            }
            if m.vcpus == 0 {
                return Err(bad(format!(
                    "machine '{name}', field 'vcpus' must be at least 1"
                )));
            }
            self.machines.insert(name, m);
        }
        if !self.machines.contains_key(&self.local_like) {
            return Err(bad(format!(
                "local.like names '{}', which is not a machine profile",
                self.local_like
            )));
        }
        Ok(())
    }

    /// A machine profile by name; unknown names list the known ones.
    pub fn machine(&self, name: &str) -> Result<&Machine> {
        self.machines.get(name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            hint: format!(
                " (known machine profiles: {})",
                self.machines.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// This machine: detected cores and CPU model, priced and powered per vCPU like `local.like`
    /// (or at `usd_per_hour` when given).
    pub fn this_machine(&self, usd_per_hour: Option<f64>) -> ThisMachine {
        let like = &self.machines[&self.local_like];
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let per_vcpu = like.usd_per_hour / like.vcpus as f64;
        ThisMachine {
            cpu_model: cpu_model().unwrap_or_else(|| "unknown CPU".into()),
            cores,
            usd_per_hour: usd_per_hour.unwrap_or(per_vcpu * cores as f64),
            price_basis: match usd_per_hour {
                Some(_) => "given with --usd-per-hour".into(),
                None => format!(
                    "{cores} vCPU at the per-vCPU price of {} ({})",
                    self.local_like, like.source
                ),
            },
            watts: like.watts / like.vcpus as f64 * cores as f64,
            watts_basis: format!(
                "{cores} vCPU at the per-vCPU draw of {} ({})",
                self.local_like, like.watts_source
            ),
        }
    }
}

/// The machine frugal runs on, as priced for self-hosted cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ThisMachine {
    pub cpu_model: String,
    pub cores: u32,
    pub usd_per_hour: f64,
    pub price_basis: String,
    pub watts: f64,
    pub watts_basis: String,
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Energy counters of the CPU package (Linux powercap/RAPL), when the OS exposes them.
pub struct Rapl {
    files: Vec<std::path::PathBuf>,
    start: Vec<u64>,
}

impl Rapl {
    /// Starts a measurement, or `None` where no readable counter exists (VMs, AMD without
    /// powercap, no permission): callers then estimate from power draw × time, and say so.
    pub fn start() -> Option<Rapl> {
        let files: Vec<_> = std::fs::read_dir("/sys/class/powercap")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                // Package domains only (intel-rapl:0, intel-rapl:1), not their sub-zones.
                n.starts_with("intel-rapl:") && n.matches(':').count() == 1
            })
            .map(|p| p.join("energy_uj"))
            .collect();
        let start = files
            .iter()
            .map(|f| read_u64(f))
            .collect::<Option<Vec<_>>>()?;
        (!files.is_empty()).then_some(Rapl { files, start })
    }

    /// Joules used since `start` (wrap-around ignored: measurements are short).
    pub fn joules(&self) -> Option<f64> {
        let mut uj = 0u64;
        for (f, s) in self.files.iter().zip(&self.start) {
            uj += read_u64(f)?.saturating_sub(*s);
        }
        Some(uj as f64 / 1e6)
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_have_sources_and_this_machine_is_priced_per_vcpu() {
        let p = Profiles::builtin();
        assert!(
            p.energy.usd_per_kwh > 0.0 && p.energy.pue >= 1.0 && !p.energy.kg_co2_source.is_empty()
        );
        for (name, m) in &p.machines {
            assert!(!m.source.is_empty() && !m.watts_source.is_empty(), "{name}");
        }
        let me = p.this_machine(None);
        let like = p.machine("aws-c7a-large").unwrap();
        let want = like.usd_per_hour / 2.0 * me.cores as f64;
        assert!((me.usd_per_hour - want).abs() < 1e-12);
        assert_eq!(p.this_machine(Some(0.5)).usd_per_hour, 0.5);
    }

    #[test]
    fn bad_profiles_are_named() {
        let mut p = Profiles::builtin();
        let e = p.merge("[machines.x]\nkind = \"cpu\"\nvcpus = 0\nusd_per_hour = 1.0\nwatts = 1.0\nsource = \"s\"\nwatts_source = \"w\"\nas_of = \"2024-01-01\"\n", "h.toml").unwrap_err().to_string();
        assert!(
            e.contains("h.toml") && e.contains("'x'") && e.contains("vcpus"),
            "{e}"
        );
        let e = p
            .merge("[energy]\nusd_per_kwh = -1\n", "h.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("h.toml"), "{e}");
        let e = p
            .merge("[local]\nlike = \"nope\"\n", "h.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
