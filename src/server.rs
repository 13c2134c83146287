//! Start-up and the connection loop: resolve accounts, open the store, bind, serve HTTP/1.1
//! with header and body timeouts, and shut down gracefully (stop accepting, let in-flight
//! requests finish, make every acknowledged write durable).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::accounts::{self, Tenancy};
use crate::config::{AccountConfig, Config};
use crate::gateway::envelope::RequestIds;
use crate::gateway::{AppState, app};
use crate::limiter::{LocalLimiter, RateLimiter, RedisLimiter};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::postgres::{PostgresOptions, PostgresStore};

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

/// Validates the configuration, resolves the accounts (creating development credentials on
/// a first start without any), opens the store and binds the listener.
pub async fn prepare(config: &Config) -> Result<Prepared, String> {
    config.validate()?;
    let listen = config.listen_addr()?;
    let (accounts, source) = if config.accounts.is_empty() {
        if !listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {listen}: no [[accounts]] are configured, and the generated development \
                 credentials must not be reachable from other machines. Configure accounts in the config file \
                 (see README, Configuration) or listen on 127.0.0.1."
            ));
        }
        let b = accounts::load_or_create_bootstrap(&config.data_dir)?;
        (
            b.accounts,
            AccountSource::Bootstrap {
                path: b.path,
                created: b.created,
            },
        )
    } else {
        (config.accounts.clone(), AccountSource::Config)
    };

    let metrics = Arc::new(Metrics::new());
    let store = open_store(config, metrics.clone()).await?;
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

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("binding {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(AppState {
        store,
        tenancy,
        limiter,
        limits: config.limits.clone(),
        metrics,
        regions: config.regions.clone(),
        tags: config.tags.clone(),
        http: config.http.clone(),
        request_ids: RequestIds::default(),
    });
    Ok(Prepared {
        listener,
        addr,
        state,
        accounts,
        source,
    })
}

async fn open_store(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<dyn Store>, String> {
    if let ("postgres", Some(url)) = (config.store.kind.as_str(), &config.store.url) {
        let options = PostgresOptions {
            max_tags_per_user: config.tags.max_per_user,
            pool_size: config.store.pool_size,
            committers: config.store.committers,
            max_batch: config.store.max_batch,
            timeout: Duration::from_millis(config.store.timeout_ms),
            ca_file: config.store.ca_file.clone(),
        };
        return Ok(Arc::new(PostgresStore::open(url, options, metrics).await?));
    }
    let options = EmbeddedOptions {
        max_tags_per_user: config.tags.max_per_user,
        read_connections: config.store.read_connections,
        max_batch: config.store.max_batch,
        cache_mb: config.store.cache_mb,
    };
    let data_dir = config.data_dir.clone();
    let store =
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&data_dir, options, metrics))
            .await
            .map_err(|e| format!("opening the store: {e}"))??;
    Ok(Arc::new(store))
}

/// Serves until `shutdown` resolves, then stops accepting, waits up to the configured grace
/// for in-flight requests, and closes the store (everything acknowledged is durable).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let router = app(state.clone());
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.http.header_timeout());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
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
    state.store.close().await;
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
