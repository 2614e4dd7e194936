//! `anom workers` and `anom assignments`: the cluster as the coordinator sees it.

use anom_proto::v1;
use anom_proto::v1::cluster_client::ClusterClient;

#[derive(clap::Args)]
pub struct WorkersArgs {
    #[arg(long, env = "ANOM_COORDINATOR", default_value = super::DEFAULT_COORDINATOR)]
    coordinator: String,
}

#[derive(clap::Args)]
pub struct AssignmentsArgs {
    #[arg(long, env = "ANOM_COORDINATOR", default_value = super::DEFAULT_COORDINATOR)]
    coordinator: String,
    /// Only this pipeline's units.
    #[arg(long, default_value = "")]
    pipeline: String,
}

pub async fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    let mut c = ClusterClient::new(anom::agent::channel(&args.coordinator)?);
    let r = c
        .list_workers(v1::ListWorkersRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!(
        "{:<20} {:<6} {:>8} {:>8} {:>8} {:<24} ROLES",
        "WORKER", "LEASE", "CAPACITY", "ASSIGNED", "RUNNING", "METRICS"
    );
    for w in r.workers {
        println!(
            "{:<20} {:<6} {:>8} {:>8} {:>8} {:<24} {}",
            w.worker_id,
            if w.alive { "live" } else { "lost" },
            w.capacity,
            w.assigned_units,
            w.running_units,
            w.metrics_addr,
            if w.roles.is_empty() {
                "all".to_string()
            } else {
                w.roles.join(",")
            }
        );
    }
    Ok(())
}

pub async fn assignments(args: AssignmentsArgs) -> anyhow::Result<()> {
    let mut c = ClusterClient::new(anom::agent::channel(&args.coordinator)?);
    let r = c
        .list_assignments(v1::ListAssignmentsRequest {
            pipeline: args.pipeline,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("generation {}", r.generation);
    println!("{:<32} {:>7} {:>7} WORKER", "UNIT", "VERSION", "EPOCH");
    let name = |u: &v1::Unit| {
        if u.stage == "sink" {
            format!("{}/sink/{}", u.pipeline, u.sink)
        } else {
            format!("{}/{}/{}", u.pipeline, u.stage, u.partition)
        }
    };
    for u in &r.units {
        println!(
            "{:<32} {:>7} {:>7} {}",
            name(u),
            u.version,
            u.epoch,
            u.worker_id
        );
    }
    for u in &r.unassigned {
        println!(
            "{:<32} {:>7} {:>7} (no worker can run it)",
            name(u),
            u.version,
            "-"
        );
    }
    Ok(())
}
