//! `transfer_score(bytes, duration_ms)`: how slow a file transfer was, as a score in [0, 1]
//! for a custom detector: 0 for a fast transfer, towards 1 as throughput drops below about
//! 100 KB/s. Nonsense inputs (negative sizes) give a score outside [0, 1], which Anom
//! refuses: that event is dead-lettered. No duration gives no score (null).

use arroyo_udf_plugin::udf;

#[udf]
fn transfer_score(bytes: i64, duration_ms: i64) -> Option<f64> {
    if duration_ms <= 0 {
        return None;
    }
    // bytes per ms = KB per s.
    let throughput_kb_s = bytes as f64 / duration_ms as f64;
    Some(1.0 / (1.0 + throughput_kb_s / 100.0))
}
