//! Pacing messages at a site's rate.

use std::time::Duration;

/// A token bucket pacing messages at a [`crate::site::Site`]'s rate: at most one second's worth
/// (at least one message) saved up.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    tokens: f64,
    at_ms: u64,
}

impl Pace {
    /// A bucket with nothing saved up at `now_ms`: after a rate change, the new rate
    /// starts from zero instead of a burst earned at the old one.
    pub fn empty(now_ms: u64) -> Pace {
        Pace {
            tokens: 0.0,
            at_ms: now_ms,
        }
    }

    /// Takes one message's token at `rate` (`None`: no limit): `Ok`, or how long to
    /// wait before asking again.
    pub fn take(&mut self, now_ms: u64, rate: Option<f64>) -> Result<(), Duration> {
        let Some(rate) = rate else {
            return Ok(());
        };
        if rate <= 0.0 {
            return Err(Duration::from_secs(1));
        }
        let burst = rate.max(1.0);
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate;
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }

    /// Gives back a token taken for a message that was then not sent.
    pub fn give_back(&mut self) {
        self.tokens += 1.0;
    }
}
