//! `anom pipeline …`: pipeline management through the coordinator's gRPC API.

use std::path::{Path, PathBuf};

use anom_proto::v1;
use anom_proto::v1::pipelines_client::PipelinesClient;
use anyhow::Context as _;
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "ANOM_COORDINATOR", default_value = super::DEFAULT_COORDINATOR)]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Store a definition (a file, or every *.yaml of a directory) as a new version and roll
    /// it out.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Why, shown in `history`.
        #[arg(short, long, default_value = "")]
        comment: String,
    },
    /// Check a definition against the coordinator without storing it.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Every pipeline, with its current version and state.
    List {
        /// Deleted pipelines too.
        #[arg(long)]
        all: bool,
    },
    /// Print a version's definition (default: the current one).
    Get {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Every version of a pipeline.
    History { name: String },
    /// What changed between two versions (default: the previous and the current one).
    Diff {
        name: String,
        from: Option<u32>,
        to: Option<u32>,
    },
    /// Stop a pipeline everywhere and hide it (history and streams are kept).
    Delete { name: String },
    /// Stop processing; events wait in the ingest stream.
    Pause { name: String },
    /// Start processing again, from where it paused.
    Resume { name: String },
}

async fn client(url: &str) -> anyhow::Result<PipelinesClient<Channel>> {
    Ok(PipelinesClient::new(anom::agent::channel(url)?))
}

fn fail(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn definition(file: &Path) -> anyhow::Result<v1::Definition> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(v1::Definition {
        source: Some(v1::definition::Source::Yaml(yaml)),
        source_name: file.display().to_string(),
    })
}

/// Applies a file or every definition of a directory; prints one line per pipeline.
pub async fn apply_path(url: &str, path: &Path, comment: &str) -> anyhow::Result<()> {
    let mut c = client(url).await?;
    for file in files(path)? {
        apply_file(&mut c, &file, comment).await?;
    }
    Ok(())
}

/// Applies one file and says what became of it.
async fn apply_file(
    c: &mut PipelinesClient<Channel>,
    file: &Path,
    comment: &str,
) -> anyhow::Result<()> {
    let r = c
        .apply(v1::ApplyRequest {
            definition: Some(definition(file)?),
            comment: comment.to_string(),
            author: std::env::var("USER").unwrap_or_default(),
        })
        .await
        .map_err(fail)?
        .into_inner();
    let v = r.version.unwrap_or_default();
    if r.changed {
        println!(
            "{}: version {} applied from {}",
            v.name,
            v.version,
            file.display()
        );
    } else {
        println!("{}: unchanged (version {})", v.name, v.version);
    }
    Ok(())
}

/// The comment on versions `anom up` applies from files.
pub const UP_COMMENT: &str = "applied by anom up";

/// What `anom up` does with the files at start: applies each, except over a current version
/// someone applied through the API (or `anom pipeline apply`) since — unless `reapply`. A
/// restart must not silently undo their work; it says what it kept and how to override.
pub async fn apply_files_keeping_newer(
    url: &str,
    path: &Path,
    reapply: bool,
) -> anyhow::Result<()> {
    let mut c = client(url).await?;
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let name = anom_pipeline::Pipeline::from_yaml(&text)
            .map(|p| p.name)
            .unwrap_or_default();
        let current = match c.history(v1::HistoryRequest { name: name.clone() }).await {
            Ok(h) => h.into_inner().versions.into_iter().last(),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(fail(s)),
        };
        if let Some(cur) = current.filter(|cur| !reapply && cur.comment != UP_COMMENT) {
            if cur.yaml != text {
                println!(
                    "{name}: keeping version {} (applied {} by {}{}); {} differs — `anom up --reapply-files` applies the files over it",
                    cur.version,
                    time(&cur.applied_at),
                    if cur.author.is_empty() { "?" } else { &cur.author },
                    if cur.comment.is_empty() {
                        String::new()
                    } else {
                        format!(": \"{}\"", cur.comment)
                    },
                    file.display()
                );
                continue;
            }
        }
        apply_file(&mut c, &file, UP_COMMENT).await?;
    }
    Ok(())
}

/// A time as `2026-11-21 10:00:00` (UTC), `-` when unset.
pub fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map_or_else(
            || "-".to_string(),
            |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = args.coordinator;
    match args.command {
        Command::Apply { file, comment } => apply_path(&url, &file, &comment).await?,
        Command::Validate { file } => {
            let mut c = client(&url).await?;
            let mut invalid = 0;
            for f in files(&file)? {
                let r = c
                    .validate(v1::ValidateRequest {
                        definition: Some(definition(&f)?),
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                match r.plan {
                    Some(p) if r.valid => println!(
                        "{}: ok — pipeline {}, key {}, {} partitions, {} rules, {} aggregates, {} units",
                        f.display(),
                        p.name,
                        p.key,
                        p.partitions,
                        p.rules.len(),
                        p.aggregates.len(),
                        p.units
                    ),
                    _ => {
                        invalid += 1;
                        for problem in r.problems {
                            eprintln!("{}", problem.text);
                        }
                    }
                }
            }
            if invalid > 0 {
                anyhow::bail!("{invalid} invalid definition(s)");
            }
        }
        Command::List { all } => {
            let r = client(&url)
                .await?
                .list(v1::ListPipelinesRequest {
                    include_deleted: all,
                })
                .await
                .map_err(fail)?
                .into_inner();
            println!(
                "{:<16} {:>7} {:>10} {:<8} {:<19}",
                "PIPELINE", "VERSION", "PARTITIONS", "STATE", "UPDATED"
            );
            for p in r.pipelines {
                let state = if p.deleted {
                    "deleted"
                } else if p.paused {
                    "paused"
                } else {
                    "running"
                };
                println!(
                    "{:<16} {:>7} {:>10} {:<8} {:<19}",
                    p.name,
                    p.current_version,
                    p.partitions,
                    state,
                    time(&p.updated_at)
                );
            }
        }
        Command::Get { name, version } => {
            let v = client(&url)
                .await?
                .get(v1::GetPipelineRequest { name, version })
                .await
                .map_err(fail)?
                .into_inner();
            print!("{}", v.yaml);
        }
        Command::History { name } => {
            let r = client(&url)
                .await?
                .history(v1::HistoryRequest { name })
                .await
                .map_err(fail)?
                .into_inner();
            println!(
                "{:>7} {:<19} {:<12} {:<16} COMMENT",
                "VERSION", "APPLIED", "AUTHOR", "DIGEST"
            );
            for v in r.versions {
                println!(
                    "{:>7} {:<19} {:<12} {:<16} {}",
                    v.version,
                    time(&v.applied_at),
                    v.author,
                    v.digest,
                    v.comment
                );
            }
        }
        Command::Diff { name, from, to } => {
            let mut c = client(&url).await?;
            let (from, to) = match (from, to) {
                (Some(f), Some(t)) => (f, t),
                (Some(f), None) => (f, 0),
                (None, _) => {
                    let h = c
                        .history(v1::HistoryRequest { name: name.clone() })
                        .await
                        .map_err(fail)?
                        .into_inner();
                    let n = h.versions.last().map_or(1, |v| v.version);
                    (n.saturating_sub(1).max(1), n)
                }
            };
            let d = c
                .diff(v1::DiffRequest {
                    name,
                    from_version: from,
                    to_version: to,
                })
                .await
                .map_err(fail)?
                .into_inner();
            for line in &d.summary {
                println!("# {line}");
            }
            print!("{}", d.unified);
        }
        Command::Delete { name } => state_change(&url, name, "deleted").await?,
        Command::Pause { name } => state_change(&url, name, "paused").await?,
        Command::Resume { name } => state_change(&url, name, "resumed").await?,
    }
    Ok(())
}

async fn state_change(url: &str, name: String, what: &str) -> anyhow::Result<()> {
    let mut c = client(url).await?;
    let req = v1::PipelineName { name };
    let status = match what {
        "deleted" => c.delete(req).await,
        "paused" => c.pause(req).await,
        _ => c.resume(req).await,
    }
    .map_err(fail)?
    .into_inner();
    println!("{}: {what}", status.name);
    Ok(())
}
