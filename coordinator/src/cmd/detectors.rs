//! `anom detectors eval`: the built-in detectors' precision, recall and F1 on a labelled,
//! generated test set (spikes, level shifts, drifts, seasonal breaks).

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Score every built-in detector on generated labelled series and print the table.
    Eval {
        /// Seed of the generator: the same seed gives the same series and figures.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Points per series.
        #[arg(long, default_value_t = 5000)]
        points: usize,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Eval { seed, points } => {
            let report = anom_ml::detector::eval::evaluate(seed, points);
            print!("{report}");
        }
    }
    Ok(())
}
