//! Writes every CRD as `<plural>.cilium.io.yaml` into a directory (the Helm
//! chart's `crds/` by default). Output is deterministic; a golden test in
//! `crds/tests/` fails when the files are stale.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Write the cilium.io CRD manifests generated from the Rust types.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory to write `<plural>.cilium.io.yaml` files into.
    #[arg(default_value = "helm/axoneme/crds")]
    out_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    for crd in axoneme_crds::crds() {
        let path = args.out_dir.join(axoneme_crds::file_name(&crd));
        std::fs::write(&path, axoneme_crds::to_yaml(&crd))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
