//! Total cost of an LLM project over a horizon, split into the five drivers: data collection and
//! preprocessing, compute (training), infrastructure and energy (serving), ongoing maintenance,
//! and specialized talent. One spec holds several scenarios side by side; each gets its total,
//! cost per request, energy and carbon, and the break-even request volume against the others.

use crate::catalog::Catalog;
use crate::hardware::Profiles;
use crate::request::{Billing, Reasoning, Tokens};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Training FLOPs of a dense transformer: 6 × parameters × training tokens (Kaplan et al. 2020).
pub fn training_flops(params: f64, tokens: f64) -> f64 {
    6.0 * params * tokens
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub horizon_years: f64,
    pub requests_per_year: f64,
    #[serde(rename = "scenario")]
    pub scenarios: Vec<ScenarioSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    pub name: String,
    #[serde(default)]
    pub data: Data,
    #[serde(default)]
    pub compute: Option<Compute>,
    #[serde(default)]
    pub serving: Serving,
    #[serde(default)]
    pub maintenance: Maintenance,
    #[serde(default)]
    pub talent: Vec<Role>,
}

/// Data collection and preprocessing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default)]
    pub examples: f64,
    #[serde(default)]
    pub usd_per_label: f64,
    #[serde(default)]
    pub cleaning_hours: f64,
    #[serde(default)]
    pub usd_per_hour: f64,
    #[serde(default)]
    pub storage_gb: f64,
    #[serde(default)]
    pub usd_per_gb_month: f64,
}

/// Training compute: FLOPs from 6·N·D, or GPU-hours given outright.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// A GPU machine profile (its $/hour, GPUs and peak FLOP/s).
    pub machine: String,
    #[serde(default)]
    pub params: Option<f64>,
    #[serde(default)]
    pub tokens: Option<f64>,
    /// Instead of params × tokens: machine-hours of the profile.
    #[serde(default)]
    pub machine_hours: Option<f64>,
    /// Fraction of peak FLOP/s achieved (model FLOPs utilisation), 0–1.
    #[serde(default = "default_mfu")]
    pub utilisation: f64,
}

fn default_mfu() -> f64 {
    0.4
}

/// Serving: a hosted API per request, and/or machines kept running.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    /// A catalog model billed per token.
    #[serde(default)]
    pub api_model: Option<String>,
    #[serde(default)]
    pub input_tokens: f64,
    #[serde(default)]
    pub output_tokens: f64,
    /// Share of input tokens read from the provider's prompt cache (0–1).
    #[serde(default)]
    pub cached_share: f64,
    /// Requests sent through the provider's batch API.
    #[serde(default)]
    pub batch: bool,
    /// Hidden reasoning tokens per request (billed by models that bill them).
    #[serde(default)]
    pub reasoning_tokens: f64,
    /// A machine profile kept running.
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub instances: f64,
    #[serde(default = "hours_per_year")]
    pub hours_per_year: f64,
}

fn hours_per_year() -> f64 {
    8760.0
}

/// Ongoing maintenance.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    #[serde(default)]
    pub retrains_per_year: f64,
    /// Each retraining costs this fraction of the initial compute.
    #[serde(default)]
    pub retrain_fraction: f64,
    #[serde(default)]
    pub monitoring_usd_per_year: f64,
}

/// A role on the team.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub role: String,
    pub salary_usd: f64,
    pub fte: f64,
}

/// The five drivers, in USD over the horizon.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Drivers {
    pub data: f64,
    pub compute: f64,
    pub infrastructure_energy: f64,
    pub maintenance: f64,
    pub talent: f64,
}

impl Drivers {
    pub fn total(&self) -> f64 {
        self.data + self.compute + self.infrastructure_energy + self.maintenance + self.talent
    }

    /// (label, value) pairs in a fixed order, for tables and charts.
    pub fn parts(&self) -> [(&'static str, f64); 5] {
        [
            ("data collection & preprocessing", self.data),
            ("compute", self.compute),
            ("infrastructure & energy", self.infrastructure_energy),
            ("ongoing maintenance", self.maintenance),
            ("specialized talent", self.talent),
        ]
    }
}

/// One scenario's result, with every intermediate value (for `--json` and `--explain`).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub drivers: Drivers,
    pub total_usd: f64,
    pub usd_per_request: f64,
    /// Cost that grows with requests (API calls), per request.
    pub variable_usd_per_request: f64,
    /// Cost that does not (everything else), over the horizon.
    pub fixed_usd: f64,
    pub training_flops: f64,
    pub training_machine_hours: f64,
    pub serving_kwh: f64,
    pub training_kwh: f64,
    pub kg_co2: f64,
    /// One line per figure: the formula with its inputs.
    pub explain: Vec<String>,
}

/// Break-even between two scenarios: above `requests_per_year`, `cheaper_above` costs less.
#[derive(Debug, Clone, Serialize)]
pub struct BreakEven {
    pub a: String,
    pub b: String,
    pub requests_per_year: Option<f64>,
    pub cheaper_above: Option<String>,
    pub note: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The spec as read: every input.
    pub inputs: Spec,
    /// Energy price, PUE and carbon intensity used, with their sources.
    pub energy: crate::hardware::Energy,
    pub name: String,
    pub horizon_years: f64,
    pub requests_per_year: f64,
    pub scenarios: Vec<ScenarioResult>,
    pub break_even: Vec<BreakEven>,
}

fn check(v: f64, what: &str) -> Result<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(Error::Invalid(format!(
            "{what} must be a number of 0 or more (got {v})"
        )))
    }
}

/// Parses a spec; TOML errors carry line and column, missing fields are named.
pub fn parse_spec(text: &str, file: &str) -> Result<Spec> {
    let spec: Spec = toml::from_str(text).map_err(|e| Error::Catalog {
        file: file.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    if spec.scenarios.is_empty() {
        return Err(Error::Catalog {
            file: file.to_string(),
            message: "no [[scenario]] given".into(),
        });
    }
    Ok(spec)
}

/// Computes every scenario and the break-even volumes between each pair.
/// The most scenarios one spec may hold (break-even pairs grow with the square).
pub const MAX_SCENARIOS: usize = 100;

pub fn evaluate(spec: &Spec, catalog: &Catalog, profiles: &Profiles) -> Result<Report> {
    let years = check(spec.horizon_years, "horizon_years")?;
    let rpy = check(spec.requests_per_year, "requests_per_year")?;
    if years == 0.0 {
        return Err(Error::Invalid("horizon_years must be more than 0".into()));
    }
    if spec.scenarios.len() > MAX_SCENARIOS {
        return Err(Error::Invalid(format!(
            "{} scenarios: at most {MAX_SCENARIOS} (the break-even table compares every pair); split the spec",
            spec.scenarios.len()
        )));
    }
    let e = &profiles.energy;
    let mut results = vec![];
    for s in &spec.scenarios {
        let at = |f: &str| format!("scenario '{}': {f}", s.name);
        let mut x = vec![];
        let mut d = Drivers::default();

        // Data.
        let dd = &s.data;
        let labels = check(dd.examples, &at("data.examples"))?
            * check(dd.usd_per_label, &at("data.usd_per_label"))?;
        let cleaning = check(dd.cleaning_hours, &at("data.cleaning_hours"))?
            * check(dd.usd_per_hour, &at("data.usd_per_hour"))?;
        let storage = check(dd.storage_gb, &at("data.storage_gb"))?
            * check(dd.usd_per_gb_month, &at("data.usd_per_gb_month"))?
            * 12.0
            * years;
        d.data = labels + cleaning + storage;
        x.push(format!(
            "data = {} examples × ${} + {} h × ${}/h + {} GB × ${}/GB-month × 12 × {years} y = ${:.2}",
            dd.examples, dd.usd_per_label, dd.cleaning_hours, dd.usd_per_hour, dd.storage_gb, dd.usd_per_gb_month, d.data
        ));

        // Compute.
        let (mut flops, mut machine_hours, mut training_kwh) = (0.0, 0.0, 0.0);
        if let Some(c) = &s.compute {
            let m = profiles
                .machine(&c.machine)
                .map_err(|err| Error::Invalid(format!("{}: {err}", at("compute.machine"))))?;
            let util = check(c.utilisation, &at("compute.utilisation"))?;
            machine_hours = match (c.params, c.tokens, c.machine_hours) {
                (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                    return Err(Error::Invalid(format!(
                        "{}: give params and tokens (FLOPs) or machine_hours (time), not both",
                        at("compute")
                    )))
                }
                (_, _, Some(h)) => check(h, &at("compute.machine_hours"))?,
                (Some(n), Some(t), None) => {
                    flops = training_flops(
                        check(n, &at("compute.params"))?,
                        check(t, &at("compute.tokens"))?,
                    );
                    let peak = m.gpu_peak_flops.ok_or_else(|| {
                        Error::Invalid(format!(
                            "{}: machine '{}' has no gpu_peak_flops",
                            at("compute"),
                            c.machine
                        ))
                    })? * m.gpus.max(1) as f64;
                    if !(util > 0.0 && util <= 1.0) {
                        return Err(Error::Invalid(format!(
                            "{} must be in (0, 1]",
                            at("compute.utilisation")
                        )));
                    }
                    let h = flops / (peak * util) / 3600.0;
                    x.push(format!(
                        "training FLOPs = 6 × {n:.3e} params × {t:.3e} tokens = {flops:.3e}; machine-hours = FLOPs / ({} GPU × {:.3e} FLOP/s × {util}) / 3600 = {h:.2}",
                        m.gpus.max(1),
                        m.gpu_peak_flops.unwrap_or(0.0)
                    ));
                    h
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{}: give params and tokens, or machine_hours",
                        at("compute")
                    )))
                }
            };
            d.compute = machine_hours * m.usd_per_hour;
            training_kwh = m.watts * machine_hours * e.pue / 1000.0;
            d.compute += training_kwh * e.usd_per_kwh;
            x.push(format!(
                "compute = {machine_hours:.2} h × ${}/h ({}) + {training_kwh:.1} kWh × ${}/kWh = ${:.2}",
                m.usd_per_hour, c.machine, e.usd_per_kwh, d.compute
            ));
        }

        // Serving: API per request, machines per hour, energy.
        let sv = &s.serving;
        let mut variable = 0.0;
        if let Some(model) = &sv.api_model {
            let price = catalog.get(model)?;
            let t = Tokens {
                input: check(sv.input_tokens, &at("serving.input_tokens"))? as usize,
                output: check(sv.output_tokens, &at("serving.output_tokens"))? as usize,
            };
            let billing = Billing {
                cached_share: check(sv.cached_share, &at("serving.cached_share"))?,
                batch: sv.batch,
                reasoning: match check(sv.reasoning_tokens, &at("serving.reasoning_tokens"))? {
                    r if r > 0.0 => Reasoning::Tokens(r as usize),
                    _ => Reasoning::None,
                },
            };
            billing
                .check()
                .map_err(|e| Error::Invalid(format!("{}: {e}", at("serving"))))?;
            let c = billing.cost(price, t).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: '{model}' is not billed per token; use serving.machine",
                    at("serving.api_model")
                ))
            })?;
            variable = c.usd;
            x.push(format!(
                "API per request: {} ({model}, {} of {})",
                c.explain(),
                price.source,
                price.as_of
            ));
        }
        let mut serving_kwh = 0.0;
        let mut machines = 0.0;
        if let Some(mname) = &sv.machine {
            let m = profiles
                .machine(mname)
                .map_err(|err| Error::Invalid(format!("{}: {err}", at("serving.machine"))))?;
            let hours = check(sv.instances, &at("serving.instances"))?
                * check(sv.hours_per_year, &at("serving.hours_per_year"))?
                * years;
            serving_kwh = m.watts * hours * e.pue / 1000.0;
            machines = hours * m.usd_per_hour + serving_kwh * e.usd_per_kwh;
            x.push(format!(
                "serving machines = {} × {} h/y × {years} y × ${}/h ({mname}) + {serving_kwh:.1} kWh × ${}/kWh = ${machines:.2}",
                sv.instances, sv.hours_per_year, m.usd_per_hour, e.usd_per_kwh
            ));
        }
        let requests = rpy * years;
        d.infrastructure_energy = machines + variable * requests;
        x.push(format!(
            "infrastructure & energy = ${machines:.2} + ${variable:.6}/request × {requests:.3e} requests = ${:.2}",
            d.infrastructure_energy
        ));

        // Maintenance: retraining and monitoring.
        let mt = &s.maintenance;
        let retrain = check(mt.retrains_per_year, &at("maintenance.retrains_per_year"))?
            * check(mt.retrain_fraction, &at("maintenance.retrain_fraction"))?
            * d.compute
            * years;
        d.maintenance = retrain
            + check(
                mt.monitoring_usd_per_year,
                &at("maintenance.monitoring_usd_per_year"),
            )? * years;
        x.push(format!(
            "maintenance = {} retrains/y × {} × compute ${:.2} × {years} y + ${}/y monitoring × {years} y = ${:.2}",
            mt.retrains_per_year, mt.retrain_fraction, d.compute, mt.monitoring_usd_per_year, d.maintenance
        ));

        // Talent.
        for r in &s.talent {
            let c = check(r.salary_usd, &at("talent.salary_usd"))?
                * check(r.fte, &at("talent.fte"))?
                * years;
            d.talent += c;
            x.push(format!(
                "talent: {} ${} × {} FTE × {years} y = ${c:.2}",
                r.role, r.salary_usd, r.fte
            ));
        }

        let total = d.total();
        let kg_co2 = (serving_kwh
            + training_kwh * (1.0 + mt.retrains_per_year * mt.retrain_fraction * years))
            * e.kg_co2_per_kwh;
        // Finite inputs can still overflow (horizon_years = 1e308): refuse, never print inf/NaN.
        let figures = d.parts().into_iter().chain([
            ("total", total),
            ("carbon", kg_co2),
            ("cost per request", variable),
            ("requests over the horizon", requests),
        ]);
        for (what, v) in figures {
            if !v.is_finite() {
                return Err(Error::Invalid(format!(
                    "scenario '{}': the {what} comes out as {v}: the inputs are too large to compute with (check horizon_years, requests_per_year and this scenario's numbers)",
                    s.name
                )));
            }
        }
        results.push(ScenarioResult {
            name: s.name.clone(),
            usd_per_request: if requests > 0.0 {
                total / requests
            } else {
                0.0
            },
            variable_usd_per_request: variable,
            fixed_usd: total - variable * requests,
            total_usd: total,
            drivers: d,
            training_flops: flops,
            training_machine_hours: machine_hours,
            serving_kwh,
            training_kwh,
            kg_co2,
            explain: x,
        });
    }
    let mut break_even = vec![];
    for i in 0..results.len() {
        for j in i + 1..results.len() {
            break_even.push(break_even_of(&results[i], &results[j], years));
        }
    }
    Ok(Report {
        inputs: spec.clone(),
        energy: e.clone(),
        name: spec.name.clone(),
        horizon_years: years,
        requests_per_year: rpy,
        scenarios: results,
        break_even,
    })
}

/// The yearly request volume where two scenarios cost the same:
/// fixed_a + var_a·V·years = fixed_b + var_b·V·years.
fn break_even_of(a: &ScenarioResult, b: &ScenarioResult, years: f64) -> BreakEven {
    let dv = a.variable_usd_per_request - b.variable_usd_per_request;
    let df = b.fixed_usd - a.fixed_usd;
    let (v, cheaper, note) = if dv.abs() < 1e-15 {
        let cheaper = if a.fixed_usd <= b.fixed_usd {
            &a.name
        } else {
            &b.name
        };
        (
            None,
            None,
            format!("same cost per request: '{cheaper}' is cheaper at every volume"),
        )
    } else {
        let v = df / dv / years;
        if v <= 0.0 {
            let cheaper = if a.variable_usd_per_request < b.variable_usd_per_request {
                &a.name
            } else {
                &b.name
            };
            (
                None,
                None,
                format!("'{cheaper}' is cheaper at every volume"),
            )
        } else {
            let above = if a.variable_usd_per_request < b.variable_usd_per_request {
                &a.name
            } else {
                &b.name
            };
            (
                Some(v),
                Some(above.clone()),
                format!("above {v:.3e} requests a year, '{above}' costs less"),
            )
        }
    };
    BreakEven {
        a: a.name.clone(),
        b: b.name.clone(),
        requests_per_year: v,
        cheaper_above: cheaper,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt3_training_flops_match_the_published_figure() {
        // Brown et al. 2020 (GPT-3): 175B parameters, 300B tokens, ≈ 3.14e23 FLOPs.
        let f = training_flops(175e9, 300e9);
        assert!((f / 3.14e23 - 1.0).abs() < 0.01, "{f:e}");
    }

    fn spec() -> Spec {
        parse_spec(
            r#"
name = "t"
horizon_years = 2
requests_per_year = 1000000

[[scenario]]
name = "api"
serving = { api_model = "gpt-4", input_tokens = 1000, output_tokens = 500 }

[[scenario]]
name = "own"
data = { examples = 1000, usd_per_label = 0.5 }
compute = { machine = "aws-p4d-24xlarge", machine_hours = 10 }
serving = { machine = "aws-c7a-large", instances = 1, hours_per_year = 1000 }
maintenance = { retrains_per_year = 2, retrain_fraction = 0.5, monitoring_usd_per_year = 100 }
talent = [{ role = "ML engineer", salary_usd = 100000, fte = 0.1 }]
"#,
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn drivers_add_up_and_break_even_is_where_costs_meet() {
        let r = evaluate(&spec(), &Catalog::builtin(), &Profiles::builtin()).unwrap();
        let api = &r.scenarios[0];
        // $0.06 a request × 2M requests.
        assert!(
            (api.total_usd - 120_000.0).abs() < 1e-6,
            "{}",
            api.total_usd
        );
        let own = &r.scenarios[1];
        let p = Profiles::builtin();
        let (gpu, cpu, e) = (
            p.machine("aws-p4d-24xlarge").unwrap(),
            p.machine("aws-c7a-large").unwrap(),
            &p.energy,
        );
        let compute = 10.0 * gpu.usd_per_hour + gpu.watts * 10.0 * e.pue / 1000.0 * e.usd_per_kwh;
        assert!((own.drivers.compute - compute).abs() < 1e-9);
        assert!((own.drivers.data - 500.0).abs() < 1e-9);
        assert!((own.drivers.maintenance - (2.0 * 0.5 * compute * 2.0 + 200.0)).abs() < 1e-9);
        assert!((own.drivers.talent - 20_000.0).abs() < 1e-9);
        let serving =
            2000.0 * cpu.usd_per_hour + cpu.watts * 2000.0 * e.pue / 1000.0 * e.usd_per_kwh;
        assert!((own.drivers.infrastructure_energy - serving).abs() < 1e-9);
        assert!((own.total_usd - own.drivers.total()).abs() < 1e-9);
        let be = &r.break_even[0];
        let v = be.requests_per_year.unwrap();
        // At the break-even volume the two totals are equal.
        let api_at = api.variable_usd_per_request * v * 2.0;
        assert!((api_at - own.fixed_usd).abs() < 1e-6 * own.fixed_usd);
        assert_eq!(be.cheaper_above.as_deref(), Some("own"));
    }

    #[test]
    fn bad_specs_are_named() {
        let e = parse_spec("name = \"x\"\nhorizon_years = 1\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s.toml") && e.contains("requests_per_year"),
            "{e}"
        );
        let e = parse_spec("name = \"x\"\nhorizon_years = \"two\"\nrequests_per_year = 1\n[[scenario]]\nname = \"a\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let mut s = spec();
        s.scenarios[1].data.examples = -5.0;
        let e = evaluate(&s, &Catalog::builtin(), &Profiles::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'own'") && e.contains("data.examples"), "{e}");
        let mut s = spec();
        s.scenarios[1].compute.as_mut().unwrap().params = Some(1e9);
        let e = evaluate(&s, &Catalog::builtin(), &Profiles::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        let mut s = spec();
        s.scenarios[0].serving.api_model = Some("gpt-5o".into());
        assert!(evaluate(&s, &Catalog::builtin(), &Profiles::builtin())
            .unwrap_err()
            .to_string()
            .contains("gpt-5o"));
    }

    #[test]
    fn serving_bills_cached_batch_and_reasoning_tokens_like_cost() {
        let c = Catalog::builtin().with_price_map(crate::price_map::tests::fixture());
        let mut s = spec();
        let sv = &mut s.scenarios[0].serving;
        sv.api_model = Some("gpt-5".into());
        sv.cached_share = 0.5;
        sv.batch = true;
        sv.reasoning_tokens = 1000.0;
        let r = evaluate(&s, &c, &Profiles::builtin()).unwrap();
        // Batch: 500 × $0.625 + 500 cached × $0.125 (no batch cached price in the fixture) +
        // (500 out + 1000 reasoning) × $5, per 1M.
        let want = (500.0 * 0.625 + 500.0 * 0.125 + 1500.0 * 5.0) / 1e6;
        let got = r.scenarios[0].variable_usd_per_request;
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        assert!(r.scenarios[0]
            .explain
            .iter()
            .any(|l| l.contains("1000 reasoning")));
        let mut s = spec();
        s.scenarios[0].serving.cached_share = 1.5;
        let e = evaluate(&s, &c, &Profiles::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("serving") && e.contains("cached_share"), "{e}");
    }

    #[test]
    fn overflowing_inputs_and_too_many_scenarios_are_refused() {
        let mut s = spec();
        s.horizon_years = 1e308;
        let e = evaluate(&s, &Catalog::builtin(), &Profiles::builtin())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("too large") && e.contains("horizon_years"),
            "{e}"
        );
        let mut s = spec();
        s.scenarios[0].serving.input_tokens = 1e300;
        s.requests_per_year = 1e300;
        let e = evaluate(&s, &Catalog::builtin(), &Profiles::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'api'") && e.contains("inf"), "{e}");
        let mut s = spec();
        let one = s.scenarios[0].clone();
        s.scenarios = vec![one; MAX_SCENARIOS + 1];
        let e = evaluate(&s, &Catalog::builtin(), &Profiles::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 100"), "{e}");
    }
}
