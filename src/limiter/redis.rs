//! A limiter shared by every node: GCRA (the redis-cell algorithm) in one atomic Lua script
//! per decision, keyed by account and Action, on Redis's own clock so nodes' clocks do not
//! matter. When Redis cannot answer in time the configured policy decides, and the failure
//! is counted in `/metrics`. `rediss://` URLs use TLS (rustls, `limits.redis_ca_file`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Decision, RateLimiter};
use crate::accounts::{AccountId, Tenancy};
use crate::api::Action;
use crate::config::{Limits, OnLimiterError};
use crate::metrics::Metrics;

/// KEYS[1]: the key. ARGV[1]: emission interval T in µs (1 s / qps). ARGV[2]: burst.
/// Allows when the theoretical arrival time is at most (burst - 1) * T ahead of now;
/// returns {1, 0} or {0, µs until a retry can succeed}.
const GCRA: &str = r"
-- Redis before 5 replicates scripts verbatim and refuses writes after TIME unless asked.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - now - tolerance}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
";

pub struct RedisLimiter {
    conn: ConnectionManager,
    script: redis::Script,
    limits: Limits,
    /// Account names, for keys that stay stable across restarts and nodes.
    names: Vec<String>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl RedisLimiter {
    /// Connects lazily: a Redis that is down at start is handled like one that fails later.
    pub fn new(
        url: &str,
        limits: &Limits,
        tenancy: &Tenancy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        // rediss:// verifies Redis against the system's CA certificates, or against
        // limits.redis_ca_file; the client takes rustls's process default provider.
        crate::tls::provider();
        let client = match &limits.redis_ca_file {
            None => redis::Client::open(url),
            Some(path) => {
                let root_cert = Some(crate::tls::read_ca_file("limits.redis_ca_file", path)?);
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert,
                    },
                )
            }
        }
        .map_err(|e| format!("limits.redis_url: {e}"))?;
        let timeout = Duration::from_millis(limits.redis_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("limits.redis_url: {e}"))?;
        Ok(RedisLimiter {
            conn,
            script: redis::Script::new(GCRA),
            limits: limits.clone(),
            names: tenancy.account_names().map(str::to_owned).collect(),
            timeout,
            metrics,
        })
    }

    async fn decide(&self, account: AccountId, action: Action) -> Result<Decision, String> {
        let qps = u64::from(self.limits.qps_for(action));
        let key = format!(
            "{}:rl:{}:{}",
            self.limits.redis_key_prefix,
            self.names[account.0],
            action.name()
        );
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(key);
        invocation.arg(1_000_000 / qps.max(1)).arg(qps);
        let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err("redis did not answer in time".into()),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Ok(Ok((1, _))) => Ok(Decision::Allow),
            Ok(Ok((_, wait_us))) => Ok(Decision::Deny {
                retry_after: Duration::from_micros(wait_us.max(0) as u64),
            }),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, account: AccountId, action: Action) -> Decision {
        match self.decide(account, action).await {
            Ok(d) => d,
            Err(why) => {
                self.metrics.observe_limiter_error();
                tracing::warn!(error = %why, policy = ?self.limits.on_redis_error, "rate limiter unavailable");
                match self.limits.on_redis_error {
                    OnLimiterError::Allow => Decision::Allow,
                    OnLimiterError::Deny => Decision::Unavailable,
                }
            }
        }
    }
}
