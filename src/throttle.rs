//! Rate-limited log lines for conditions that repeat: a full disk fails every write and
//! every checkpoint, and one line per failure (every 100 ms, or every request) buries
//! everything else in the log. The first occurrence is logged at once; then at most one
//! line per period, carrying how many occurrences it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    held: u64,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            state: Mutex::new(State {
                last: None,
                held: 0,
            }),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many were held back
    /// since the last line; `None` to stay quiet.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().expect("throttle lock");
        let now = Instant::now();
        match s.last {
            Some(last) if now.duration_since(last) < self.every => {
                s.held += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.held))
            }
        }
    }

    /// The condition ended: `Some(occurrences held back)` if it had started, and the next
    /// occurrence is logged at once again.
    pub fn reset(&self) -> Option<u64> {
        let mut s = self.state.lock().expect("throttle lock");
        let was = s.last.take().map(|_| s.held);
        s.held = 0;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_passes_repeats_are_counted_and_reset_rearms() {
        let t = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        assert_eq!(t.reset(), Some(2));
        assert_eq!(t.reset(), None);
        assert_eq!(t.admit(), Some(0));
        let t = LogThrottle::new(Duration::ZERO);
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), Some(0));
    }
}
