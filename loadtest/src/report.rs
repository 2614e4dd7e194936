//! The report, as Markdown (docs/performance.md keeps the latest one).

use crate::baseline::Baseline;
use crate::pipeline::{Latency, Throughput};
use crate::Args;

pub struct Report {
    args: Args,
    pub baseline: Option<Baseline>,
    pub throughput: Option<Throughput>,
    pub latency: Option<Latency>,
    /// The rising-rate steps, the highest rate that held, and runs at shares of it.
    pub rising: Vec<Latency>,
    pub sustainable: Option<u64>,
    pub at_share: Vec<(u64, Latency)>,
}

impl Report {
    pub fn new(args: &Args) -> Report {
        Report {
            args: args.clone(),
            baseline: None,
            throughput: None,
            latency: None,
            rising: Vec::new(),
            sustainable: None,
            at_share: Vec::new(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        out.push_str(&format!("machine: {cores} cores, {cpu}\n"));
        out.push_str(&format!(
            "args: --events {} --latency-rate {} --latency-duration {:?} --partitions {} --keys {} --alert-every {}{}\n\n",
            self.args.events,
            self.args.latency_rate,
            self.args.latency_duration,
            self.args.partitions,
            self.args.keys,
            self.args.alert_every,
            if self.args.keyed { " --keyed" } else { "" },
        ));
        if self.args.detectors {
            out.push_str("(with --detectors)\n");
        }
        out.push_str("| run | events | seconds | events/s | vs raw hop |\n|---|---|---|---|---|\n");
        if let Some(b) = &self.baseline {
            out.push_str(&format!(
                "| raw JetStream hop ({} B, Nats-Msg-Id, AckAll) | {} | {:.2} | {:.0} | 1.00 |\n",
                b.size,
                b.messages,
                b.seconds,
                b.rate()
            ));
        }
        if let Some(t) = &self.throughput {
            let ratio = self
                .baseline
                .as_ref()
                .map_or("n/a".to_string(), |b| format!("{:.2}", t.rate() / b.rate()));
            out.push_str(&format!(
                "| pipeline validate{} → {}{}rules → alert ({} alerts) | {} | {:.2} | {:.0} | {ratio} |\n",
                if self.args.udf.is_some() { " (+ UDF derive route_id)" } else { "" },
                if self.args.keyed { "window (4 aggregates) → " } else { "" },
                if self.args.detectors { "score (3 detectors, 1 ONNX forest) → " } else { "" },
                t.alerts,
                t.events,
                t.seconds,
                t.rate()
            ));
        }
        if let Some(l) = &self.latency {
            let h = &l.histogram;
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            out.push_str(&format!(
                "\nlatency, publish → alert received, at {} events/s (achieved {:.0}/s), {} of {} alerts:\n\n",
                l.target_rate, l.achieved_rate, l.samples, l.expected_samples
            ));
            out.push_str("| p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|\n");
            out.push_str(&format!(
                "| {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            ));
        }
        if !self.rising.is_empty() {
            out.push_str(
                "\nrising rate (5 s steps; held = pace ≥ 97%, every alert, p99 ≤ 50 ms):\n\n",
            );
            out.push_str("| target/s | achieved/s | p50 | p99 | alerts | held |\n|---|---|---|---|---|---|\n");
            for r in &self.rising {
                out.push_str(&format!(
                    "| {} | {:.0} | {:.2} ms | {:.2} ms | {}/{} | {} |\n",
                    r.target_rate,
                    r.achieved_rate,
                    r.histogram.value_at_quantile(0.5) as f64 / 1000.0,
                    r.histogram.value_at_quantile(0.99) as f64 / 1000.0,
                    r.samples,
                    r.expected_samples,
                    if r.sustained() { "yes" } else { "no" }
                ));
            }
        }
        if let Some(max) = self.sustainable {
            let ratio = self.baseline.as_ref().map_or("n/a".to_string(), |b| {
                format!("{:.2}", max as f64 / b.rate())
            });
            out.push_str(&format!(
                "\nmax sustainable: {max} events/s ({ratio} of the raw hop)\n\n"
            ));
            out.push_str("| share | events/s | p50 | p99 | p99.9 | precision | recall | CPU anom+load | CPU nats-server | RSS anom+load | RSS nats-server |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
            for (pct, r) in &self.at_share {
                let h = &r.histogram;
                out.push_str(&format!(
                    "| {pct}% | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.3} | {:.3} | {:.2} cores | {:.2} cores | {:.0} MiB | {:.0} MiB |\n",
                    r.achieved_rate,
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                    h.value_at_quantile(0.999) as f64 / 1000.0,
                    r.precision(),
                    r.recall(),
                    r.cpu_self,
                    r.cpu_server,
                    r.rss_self_mib,
                    r.rss_server_mib
                ));
            }
        }
        out
    }
}
