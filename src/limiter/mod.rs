//! Rate limiting per account and per Action (GCRA). The gateway sees only the
//! [`RateLimiter`] trait, so a limiter shared by several nodes can replace the in-process
//! one without touching it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::accounts::AccountId;
use crate::api::Action;
use crate::config::Limits;

mod redis;
pub use self::redis::RedisLimiter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Rejected; the earliest moment a retry can succeed is `retry_after` from now.
    Deny {
        retry_after: Duration,
    },
    /// The limiter could not decide and is configured to refuse (503).
    Unavailable,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn check(&self, account: AccountId, action: Action) -> Decision;
}

/// One GCRA limiter per Action, keyed by account; burst equals the per-second limit.
pub struct LocalLimiter {
    per_action: HashMap<Action, DefaultKeyedRateLimiter<AccountId>>,
    clock: DefaultClock,
}

impl LocalLimiter {
    pub fn new(limits: &Limits) -> Self {
        let per_action = Action::ALL
            .iter()
            .map(|&a| {
                let qps = NonZeroU32::new(limits.qps_for(a)).expect("validated: qps >= 1");
                (a, DefaultKeyedRateLimiter::keyed(Quota::per_second(qps)))
            })
            .collect();
        LocalLimiter {
            per_action,
            clock: DefaultClock::default(),
        }
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn check(&self, account: AccountId, action: Action) -> Decision {
        match self.per_action[&action].check_key(&account) {
            Ok(()) => Decision::Allow,
            Err(not_until) => Decision::Deny {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }
}
