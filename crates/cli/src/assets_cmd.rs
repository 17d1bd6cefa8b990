//! `frugal assets list|fetch`.

use crate::Ctx;
use anyhow::Result;
use clap::Subcommand;
use frugal_models::assets::{Status, Store};

#[derive(Subcommand)]
pub enum AssetsCmd {
    /// Show every pinned asset: status, path, size.
    List {
        /// One JSON object per asset.
        #[arg(long)]
        json: bool,
    },
    /// Download, verify and extract assets (all when none are named). Idempotent.
    Fetch {
        /// Asset names (see `frugal assets list`).
        names: Vec<String>,
        /// Fetch again even when a verified copy exists.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: AssetsCmd, ctx: &Ctx) -> Result<()> {
    let store = Store::from_env();
    match cmd {
        AssetsCmd::List { json } => {
            let mut table = crate::io::table(["name", "kind", "package", "status", "size", "path"]);
            for spec in store.manifest().iter() {
                let status = store.status(spec);
                let size = match status {
                    Status::Ready { size } => size,
                    _ => 0,
                };
                let path = store.path(spec);
                if json {
                    let mut v = serde_json::json!({
                        "name": spec.name, "kind": spec.kind, "registry": spec.registry,
                        "package": spec.package, "version": spec.version,
                        "status": status.word(), "path": path, "size_bytes": size,
                    });
                    if let Status::Corrupt(why) = &status {
                        v["problem"] = why.clone().into();
                    }
                    println!("{v}");
                } else {
                    table.add_row([
                        spec.name.clone(),
                        spec.kind.clone(),
                        spec.requirement(),
                        status.word().to_string(),
                        if size > 0 {
                            format!("{:.1} MB", size as f64 / 1e6)
                        } else {
                            "-".into()
                        },
                        path.display().to_string(),
                    ]);
                }
            }
            if !json {
                println!("{table}");
            }
            Ok(())
        }
        AssetsCmd::Fetch { names, force } => {
            let names = if names.is_empty() {
                store.manifest().names()
            } else {
                names
            };
            // Check every name before fetching anything.
            let specs = names
                .iter()
                .map(|n| store.manifest().get(n))
                .collect::<Result<Vec<_>, _>>()?;
            for spec in specs {
                let was = store.status(spec);
                if !force && matches!(was, Status::Ready { .. }) {
                    if !ctx.quiet {
                        eprintln!("{}: already fetched and verified", spec.name);
                    }
                } else {
                    if !ctx.quiet {
                        eprintln!("{}: fetching {} …", spec.name, spec.requirement());
                    }
                    store.fetch(spec, force)?;
                }
                println!("{}\t{}", spec.name, store.path(spec).display());
            }
            Ok(())
        }
    }
}
