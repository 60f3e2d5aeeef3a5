//! Running SQL on the destination and retrying it: one place for how pgshift
//! executes a statement with context and how long it waits between attempts.

use std::time::Duration;

/// Jittered exponential backoff for retry `attempt` (1-based): ~100 ms, 200 ms,
/// 400 ms ... capped at 5 s, each ±50%.
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(6))
        .min(5000);
    let jitter = rand::random::<f64>() + 0.5;
    Duration::from_millis((base as f64 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 1..20 {
            let d = super::backoff(a).as_millis();
            assert!((50..=7500).contains(&d), "{a}: {d}");
        }
        assert!(super::backoff(1).as_millis() <= 150);
    }
}
