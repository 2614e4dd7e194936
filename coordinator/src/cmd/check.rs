//! `anom check`: load definitions exactly as a worker would and report every problem.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline files or directories.
    #[arg(default_value = "pipelines")]
    paths: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut failed = false;
    for path in &args.paths {
        match super::load_pipelines(path, &super::pipelines_dir(path)) {
            Ok(pipelines) => {
                for p in pipelines {
                    println!(
                        "ok  {:<16} version {}  {} fields, {} rules, {} detectors, {} partitions",
                        p.name,
                        p.version,
                        p.schema.len(),
                        p.rules.len(),
                        p.detectors.len(),
                        p.partitions
                    );
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        anyhow::bail!("some pipeline definitions are invalid");
    }
    Ok(())
}
