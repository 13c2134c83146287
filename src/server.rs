//! Start-up and the connection loop. Start-up runs in the order that keeps every failure
//! harmless: the signal handlers first (the CLI calls [`catch_signals_early`] before it
//! even parses its arguments, so SIGTERM during start-up exits cleanly), then the configuration and
//! the secrets, then the listening socket (a port in use fails before anything is
//! created), then the data directory's lock, and only then the data itself. Serving is
//! HTTP/1.1 with header and body timeouts; shutdown stops accepting, lets in-flight
//! requests finish and makes every acknowledged write durable.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::accounts::{self, Tenancy};
use crate::config::{AccountConfig, Config, resolve_accounts};
use crate::gateway::bare::Enveloped;
use crate::gateway::envelope::RequestIds;
use crate::gateway::{AppState, app};
use crate::limiter::{LocalLimiter, RateLimiter, RedisLimiter};
use crate::metrics::Metrics;

/// Connections over `http.max_connections` being answered 503 at once; past this many,
/// one is closed without an answer (a flood must not grow a queue of its own).
const REFUSALS_AT_ONCE: usize = 64;

/// Where the accounts in force came from.
pub enum AccountSource {
    Config,
    /// Generated development credentials; `created` on this start.
    Bootstrap {
        path: PathBuf,
        created: bool,
    },
}

/// A server that is bound and ready, not yet serving.
pub struct Prepared {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub accounts: Vec<AccountConfig>,
    pub source: AccountSource,
}

/// A configuration as `serve` accepts it: its address, and the accounts and webhooks
/// with their secrets read.
pub struct Checked {
    pub listen: SocketAddr,
    pub accounts: Vec<AccountConfig>,
    pub webhooks: Vec<crate::config::Webhook>,
}

/// Everything `serve` checks before it binds: the configuration, every secret (read and
/// judged: short and placeholder ones are refused), the webhooks, and that generated
/// development credentials are never exposed. `tagcast check` runs the same checks.
pub fn check_config(config: &Config) -> Result<Checked, String> {
    config.validate()?;
    let listen = config.listen_addr()?;
    let accounts = resolve_accounts(&config.accounts)?;
    let webhooks = crate::config::resolve_webhooks(&config.webhooks)?;
    if accounts.is_empty() && !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {listen}: no [[accounts]] are configured, and the generated development \
             credentials must not be reachable from other machines. Configure accounts in the config file \
             (see README, Configuration) or listen on 127.0.0.1."
        ));
    }
    Ok(Checked {
        listen,
        accounts,
        webhooks,
    })
}

/// Validates the configuration and the secrets, binds the listener, takes the data
/// directory's lock (embedded store), resolves the accounts (creating development
/// credentials on a first start without any) and opens the store, in that order.
pub async fn prepare(config: &Config) -> Result<Prepared, String> {
    let Checked {
        listen,
        accounts: configured,
        webhooks,
    } = check_config(config)?;
    let bootstrap = configured.is_empty();
    // Bind before touching the data directory: a port in use must leave nothing behind.
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another tagcast, or another program, listens there; choose another with --listen)"
        } else {
            ""
        };
        format!("cannot listen on {listen}: {e}{hint}")
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let lock = crate::store::lock_data_dir(config, "serve")?;
    let (accounts, source) = if bootstrap {
        let b = accounts::load_or_create_bootstrap(&config.data_dir)?;
        (
            resolve_accounts(&b.accounts)?,
            AccountSource::Bootstrap {
                path: b.path,
                created: b.created,
            },
        )
    } else {
        (configured, AccountSource::Config)
    };

    let metrics = Arc::new(Metrics::new());
    let store = crate::store::open(config, lock, metrics.clone()).await?;
    let tenancy = Tenancy::new(&accounts);
    let limiter: Arc<dyn RateLimiter> = match &config.limits.redis_url {
        None => Arc::new(LocalLimiter::new(&config.limits)),
        Some(url) => Arc::new(RedisLimiter::new(
            url,
            &config.limits,
            &tenancy,
            metrics.clone(),
        )?),
    };
    let state = Arc::new(AppState {
        store,
        tenancy,
        limiter,
        limits: config.limits.clone(),
        metrics,
        regions: config.regions.clone(),
        rules: crate::actions::Rules {
            tags: config.tags.clone(),
            unknown_fields: config.api.unknown_fields,
        },
        http: config.http.clone(),
        request_ids: RequestIds::default(),
        events: config.events.clone(),
        draining: tokio::sync::watch::Sender::new(false),
        console: config
            .console
            .enabled
            .then(|| Arc::new(crate::console::Console::new(config.console.dir.clone()))),
        body_memory: Arc::new(tokio::sync::Semaphore::new(
            config
                .http
                .max_body_memory_mb
                .saturating_mul(1 << 20)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        broadcasts: Arc::new(crate::broadcast::Service::new(
            config.limits.broadcasts_per_day,
            webhooks,
            config.delivery.clone(),
        )),
    });
    Ok(Prepared {
        listener,
        addr,
        state,
        accounts,
        source,
    })
}

/// Serves until `shutdown` resolves, then stops accepting, waits up to the configured grace
/// for in-flight requests, and closes the store (everything acknowledged is durable).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let router = app(state.clone());
    // Webhook delivery and the expiry sweeper, until the requests have drained.
    let (stop_delivery, stopped) = tokio::sync::watch::channel(false);
    let delivery = tokio::spawn(crate::broadcast::delivery::run(
        state.store.clone(),
        state.broadcasts.clone(),
        state.metrics.clone(),
        stopped,
    ));
    // The event log's retention and the event webhooks, likewise.
    let retention = tokio::spawn(crate::events::retention(
        state.store.clone(),
        state.events.clone(),
        state.metrics.clone(),
    ));
    let event_hooks = tokio::spawn(crate::events::hooks::run(
        state.store.clone(),
        state.broadcasts.webhooks.clone(),
        state.tenancy.apps(),
        state.broadcasts.delivery.clone(),
        state.metrics.clone(),
        stop_delivery.subscribe(),
    ));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.http.header_timeout())
        // hyper reads into a buffer of up to this much per connection (its default is
        // 400 KiB: 600 slow clients held 240 MiB of it).
        .max_buf_size(state.http.max_header_bytes);
    // One permit per connection (`http.max_connections`); refusals have a small budget
    // of their own, past which a connection is closed at once.
    let connections = Arc::new(tokio::sync::Semaphore::new(state.http.max_connections));
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(open) = connections.clone().try_acquire_owned() else {
                        state.metrics.http.connections_refused.inc();
                        if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                            let state = state.clone();
                            tokio::spawn(async move {
                                crate::gateway::bare::refuse(stream, &state).await;
                                drop(refusing);
                            });
                        }
                        continue;
                    };
                    let service = TowerToHyperService::new(router.clone());
                    let io = TokioIo::new(Enveloped::new(stream, state.clone()));
                    let conn = graceful.watch(builder.serve_connection(io, service));
                    let metrics = state.metrics.clone();
                    metrics.http.connections_open.inc();
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        metrics.http.connections_open.dec();
                        drop(open);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Long polls (ListEvents WaitMs) answer now rather than hold the stop.
    state.draining.send_replace(true);
    tracing::info!("stopped accepting; finishing in-flight requests");
    let grace = Duration::from_secs(state.http.shutdown_grace_secs);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests did not finish in time; closing them"
        );
    }
    // Attempts in flight end within the webhook timeout; their outcomes are recorded.
    let _ = stop_delivery.send(true);
    let limit = state.broadcasts.delivery.timeout() + Duration::from_secs(5);
    if tokio::time::timeout(limit, delivery).await.is_err() {
        tracing::warn!(
            "webhook delivery did not stop in time; unrecorded pages are sent again after their lease"
        );
    }
    if tokio::time::timeout(limit, event_hooks).await.is_err() {
        tracing::warn!(
            "event webhooks did not stop in time; a batch not recorded as acknowledged is sent again"
        );
    }
    retention.abort();
    state.store.close().await;
}

/// Set by the handlers [`catch_signals_early`] installs; read by [`Shutdown`].
static EARLY_SIGNAL: AtomicBool = AtomicBool::new(false);

/// Catches SIGTERM, SIGINT and SIGHUP from the first instructions of `tagcast serve` on,
/// before the async runtime (which [`Shutdown`] needs) exists: a signal that arrives while
/// the runtime starts is remembered, not fatal. Only the server installs it: other
/// commands keep the default action, so Ctrl-C stops them. SIGHUP (a closed terminal, or
/// an operator expecting a reload, which tagcast does not do) stops the server the same
/// graceful way rather than killing it mid-request.
pub fn catch_signals_early() -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for (signal, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT"), (SIGHUP, "SIGHUP")] {
        signal_hook::flag::register(signal, &EARLY_SIGNAL)
            .map_err(|e| format!("installing the {name} handler: {e}"))?;
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP as a future. With [`catch_signals_early`] before it, a
/// signal at any moment of start-up or serving ends the process cleanly (exit 0) instead
/// of killing it.
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the runtime's handlers now (not when first awaited).
    pub fn install() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let installed =
            |kind, name| signal(kind).map_err(|e| format!("installing the {name} handler: {e}"));
        Ok(Shutdown {
            term: installed(SignalKind::terminate(), "SIGTERM")?,
            int: installed(SignalKind::interrupt(), "SIGINT")?,
            hup: installed(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Resolves when a signal arrives, or arrived since [`catch_signals_early`].
    pub async fn requested(&mut self) {
        // After `install`, a new signal reaches the streams; one before it, only the flag.
        if !EARLY_SIGNAL.load(Ordering::SeqCst) {
            tokio::select! {
                _ = self.term.recv() => {},
                _ = self.int.recv() => {},
                _ = self.hup.recv() => {},
            }
        }
        tracing::info!("shutdown requested");
    }
}
