//! `anom detectors eval`: the built-in detectors' precision, recall and F1 on a labelled,
//! generated test set (spikes, level shifts, drifts, seasonal breaks), or, with `--labelled
//! DIR`, their window scores on a corpus of real labelled series.

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Score every built-in detector on generated labelled series (or, with --labelled, on
    /// real ones) and print the table.
    Eval {
        /// Seed of the generator: the same seed gives the same series and figures.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Points per series.
        #[arg(long, default_value_t = 5000)]
        points: usize,
        /// A directory of labelled series (`windows.json` and `series/<category>/<name>.csv`,
        /// as operators/ml/data/labelled-series): every univariate kind at its defaults, each
        /// series one key, judged by the NAB window score.
        #[arg(long)]
        labelled: Option<std::path::PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Eval {
            labelled: Some(dir),
            ..
        } => {
            use anom_ml::detector::{episode, labelled, Detector, Kind};
            let corpus = labelled::load(&dir)?;
            let events: usize = corpus.iter().map(|s| s.times.len()).sum();
            println!(
                "{} series, {} events, {} labelled windows; every kind at its defaults (threshold {}, cool-down {} h)\n",
                corpus.len(),
                events,
                corpus.iter().map(|s| s.windows.len()).sum::<usize>(),
                anom_ml::detector::DEFAULT_THRESHOLD,
                episode::DEFAULT_COOLDOWN_MS / 3_600_000
            );
            let rows: Vec<labelled::Row> = Kind::ALL
                .into_iter()
                .filter(|k| !k.multivariate())
                .map(|kind| {
                    let d = Detector::new(kind, &serde_json::Value::Null, None, 1)
                        .expect("every kind's defaults are valid");
                    labelled::evaluate(
                        kind.name(),
                        &d,
                        &corpus,
                        d.default_threshold(),
                        episode::DEFAULT_COOLDOWN_MS,
                    )
                })
                .collect();
            print!("{}", labelled::Table(&rows));
        }
        Command::Eval { seed, points, .. } => {
            let report = anom_ml::detector::eval::evaluate(seed, points);
            print!("{report}");
        }
    }
    Ok(())
}
