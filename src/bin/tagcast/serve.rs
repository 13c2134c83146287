//! `tagcast serve`: the signal handlers first, then the configuration, then
//! [`tagcast::server::prepare`] (bind, lock, open) and the banner.

use std::path::Path;
use std::process::ExitCode;

use tagcast::accounts::BOOTSTRAP_APP_ID;
use tagcast::config::{Config, StoreKind};
use tagcast::server::{self, AccountSource, Prepared, Shutdown};

use crate::ServeArgs;

pub async fn run(args: ServeArgs) -> Result<ExitCode, String> {
    // Before anything else (main caught the signals already; this hands them to the
    // runtime): from here on SIGTERM/SIGINT end the process cleanly.
    let mut shutdown = Shutdown::install()?;
    let config = load_config(args)?;
    // Held to the end of `run`: dropping it writes out the lines still queued.
    let _log = tagcast::logging::init(config.log_format);
    // Every client connection is a descriptor: take all the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let prepared = tokio::select! {
        biased;
        () = shutdown.requested() => {
            // Whatever start-up had opened is dropped unacknowledged: nothing to lose.
            tracing::info!("stopped during start-up");
            return Ok(ExitCode::SUCCESS);
        }
        prepared = server::prepare(&config) => prepared?,
    };
    print_banner(&config, &prepared);
    server::serve(prepared.listener, prepared.state, shutdown.requested()).await;
    tracing::info!("stopped; every acknowledged write is durable");
    Ok(ExitCode::SUCCESS)
}

fn load_config(args: ServeArgs) -> Result<Config, String> {
    let mut config = args.store.load()?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if let Some(v) = args.qps {
        config.limits.qps = v;
    }
    if let Some(v) = args.regions {
        config.regions = v;
    }
    if let Some(v) = args.redis_url {
        config.limits.redis_url = Some(v);
    }
    Ok(config)
}

fn print_banner(config: &Config, prepared: &Prepared) {
    let url = format!("http://{}", prepared.addr);
    println!("tagcast {} listening on {url}", env!("CARGO_PKG_VERSION"));
    match config.store.kind {
        StoreKind::Postgres => println!("  store: postgres (store.url)"),
        StoreKind::Embedded => println!(
            "  data directory: {} (embedded store)",
            config.data_dir.display()
        ),
    }
    if config.limits.redis_url.is_some() {
        println!("  rate limits: shared through Redis (limits.redis_url)");
    }
    match &prepared.source {
        AccountSource::Config => println!(
            "  accounts: {} from the configuration",
            prepared.accounts.len()
        ),
        AccountSource::Bootstrap { path, created } => {
            let key = &prepared.accounts[0].keys[0];
            if *created {
                println!(
                    "  first start: created a development account (no [[accounts]] configured)"
                );
            }
            println!("  AppId:      {BOOTSTRAP_APP_ID}");
            println!("  AccessKey:  {}", key.access_key);
            println!("  SecretKey:  in {} (mode 0600)", path.display());
            let exe = std::env::current_exe()
                .map_or_else(|_| "tagcast".into(), |p| p.display().to_string());
            // `call` finds the key in ./tagcast-data unless told where the data is.
            let data_dir = if config.data_dir == Config::default().data_dir {
                String::new()
            } else {
                format!(" --data-dir {}", shell_word(&config.data_dir))
            };
            println!(
                "  try:        {exe} call RegisterUsers --endpoint {url}{data_dir} --body '{{\"AppId\":{BOOTSTRAP_APP_ID},\"Users\":[{{\"UserId\":10001}}]}}'"
            );
            println!(
                "  (call reads the key from that file when none is given; run it from this directory)"
            );
        }
    }
}

/// A path as one shell word (quoted when it holds anything but the usual characters).
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
