//! Sample data for the example pipelines, with labelled anomalies injected at known places.
//! `anom-loadtest generate payments --events 400 > pipelines/samples/payments.jsonl`

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One card payment.
struct Payment {
    card: String,
    amount: f64,
    merchant: &'static str,
    country: &'static str,
    at_ms: i64,
    /// Which anomaly this event was made to show (printed to stderr, not in the event).
    label: Option<&'static str>,
}

const MERCHANTS: [&str; 6] = [
    "Cafe Luna",
    "TrainCo",
    "BookNook",
    "GroceryOne",
    "FuelStop",
    "PharmaPlus",
];
const START_MS: i64 = 1_795_132_800_000; // 2026-11-20T00:00:00Z

/// Normal traffic for `cards` cards over one day, plus one of each anomaly the payments
/// pipeline looks for. Sorted by time.
pub fn payments(events: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let cards: Vec<String> = (0..20).map(|i| format!("card-{i:03}")).collect();
    let mut out: Vec<Payment> = Vec::with_capacity(events + 32);
    for _ in 0..events {
        let card = cards[rng.random_range(1..cards.len())].clone();
        out.push(Payment {
            card,
            amount: (rng.random_range(5.0..80.0f64) * 100.0).round() / 100.0,
            merchant: MERCHANTS[rng.random_range(0..MERCHANTS.len())],
            country: "DE",
            at_ms: START_MS + 6 * 3_600_000 + rng.random_range(0..14 * 3_600_000),
            label: None,
        });
    }
    // card-000 is the anomalous one: a baseline of small payments first.
    let base = START_MS + 7 * 3_600_000;
    for i in 0..12 {
        out.push(Payment {
            card: "card-000".into(),
            amount: 20.0,
            merchant: "Cafe Luna",
            country: "DE",
            at_ms: base + i * 600_000,
            label: None,
        });
    }
    // Spike: 10× its average.
    out.push(Payment {
        card: "card-000".into(),
        amount: 400.0,
        merchant: "LaptopWorld",
        country: "DE",
        at_ms: base + 3 * 3_600_000,
        label: Some("spike"),
    });
    // Velocity: 7 payments within 3 minutes.
    for i in 0..7 {
        out.push(Payment {
            card: "card-000".into(),
            amount: 9.5,
            merchant: "FuelStop",
            country: "DE",
            at_ms: base + 4 * 3_600_000 + i * 25_000,
            label: Some("velocity"),
        });
    }
    // Daily limit: large payments later the same day.
    for i in 0..3 {
        out.push(Payment {
            card: "card-000".into(),
            amount: 750.0,
            merchant: "JewelCo",
            country: "DE",
            at_ms: base + 6 * 3_600_000 + i * 1_800_000,
            label: Some("daily_limit"),
        });
    }
    // Impossible travel: Germany, then the United States 20 minutes later.
    out.push(Payment {
        card: "card-000".into(),
        amount: 30.0,
        merchant: "DinerNYC",
        country: "US",
        at_ms: base + 7 * 3_600_000 + 1_200_000,
        label: Some("impossible_travel"),
    });
    out.sort_by_key(|p| p.at_ms);
    out.iter()
        .map(|p| {
            if let Some(label) = p.label {
                eprintln!("anomaly {label}: {} at {}", p.card, p.at_ms);
            }
            serde_json::json!({
                "card": p.card,
                "amount": p.amount,
                "currency": "EUR",
                "merchant": p.merchant,
                "country": p.country,
                "at": jiff::Timestamp::from_millisecond(p.at_ms).map(|t| t.to_string()).unwrap_or_default(),
            })
            .to_string()
        })
        .collect()
}
