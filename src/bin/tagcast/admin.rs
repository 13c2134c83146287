//! The operator's commands: `check`, `backup`, `restore`, `keys new`, `ready`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tagcast::config::{Config, StoreKind};
use tagcast::store::check::Report;
use tagcast::store::embedded::lock::Holder;
use tagcast::store::embedded::{DB_FILE, DataDirLock, backup as copy};

use crate::StoreArgs;

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Check this SQLite file (a backup, say) instead of the configured store.
    #[arg(long, conflicts_with = "store_url")]
    file: Option<PathBuf>,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The file to write (a single SQLite file).
    #[arg(long)]
    to: PathBuf,
    /// Overwrite --to if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The backup to restore (written by `tagcast backup`).
    #[arg(long)]
    from: PathBuf,
    /// Replace an existing store (it is kept as tagcast.db.replaced-<time>).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a fresh access key and secret, as an [[accounts.keys]] entry to paste.
    New,
}

#[derive(Args)]
pub struct ReadyArgs {
    /// Where tagcast listens.
    #[arg(
        long,
        env = "TAGCAST_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// Keep asking, once every 100 ms, for up to this many seconds (a server that just
    /// started is not ready until its audience index is built).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    wait: f64,
}

/// Exit code of `check` when it found damage.
const EXIT_PROBLEMS: u8 = 1;

pub async fn check(args: CheckArgs) -> Result<ExitCode, String> {
    let config = args.store.load()?;
    // The configuration as `serve` would take it (secrets included): a check that passes
    // a file the server then refuses helps nobody.
    tagcast::server::check_config(&config).map_err(|e| format!("the configuration: {e}"))?;
    let report = match (&args.file, config.store.kind) {
        (Some(file), _) => {
            if !file.is_file() {
                return Err(format!("{} does not exist", file.display()));
            }
            println!("tagcast check: SQLite file {}", file.display());
            check_file(file.clone(), &config).await?
        }
        (None, StoreKind::Embedded) => {
            let db = config.data_dir.join(DB_FILE);
            let how = match DataDirLock::holder(&config.data_dir) {
                Holder::Free => "offline: no server holds the directory".to_owned(),
                Holder::Process(pid) => format!(
                    "online: served by pid {}; reading one consistent snapshot",
                    pid.map_or_else(|| "?".into(), |p| p.to_string())
                ),
            };
            println!("tagcast check: embedded store {} ({how})", db.display());
            check_file(db, &config).await?
        }
        (None, StoreKind::Postgres) => {
            println!("tagcast check: PostgreSQL store (store.url)");
            let url = config.store.url.as_deref().expect("validated");
            let ca_file = config.store.ca_file.as_deref();
            tagcast::store::postgres::check::check(url, ca_file, &config.tags).await?
        }
    };
    print!("{}", report.render());
    let (failures, warnings) = (report.failures(), report.warnings());
    println!("tagcast check: {failures} problem(s), {warnings} warning(s)");
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    })
}

async fn check_file(db: PathBuf, config: &Config) -> Result<Report, String> {
    let limits = config.tags.clone();
    tokio::task::spawn_blocking(move || tagcast::store::embedded::check::check_file(&db, &limits))
        .await
        .map_err(|e| format!("the check stopped: {e}"))?
}

fn embedded_only(config: &Config, what: &str) -> Result<(), String> {
    match config.store.kind {
        StoreKind::Embedded => Ok(()),
        StoreKind::Postgres => Err(format!(
            "{what} is for the embedded store; for PostgreSQL use pg_dump / pg_restore or \
             point-in-time recovery (docs/operations.md, Backups)"
        )),
    }
}

pub fn backup(args: BackupArgs) -> Result<ExitCode, String> {
    let config = args.store.load()?;
    embedded_only(&config, "tagcast backup")?;
    let done = copy::backup(&config.data_dir, &args.to, args.force)?;
    println!(
        "tagcast backup: {} users, schema version {}, {:.1} MiB written to {} in {:.2} s",
        done.users,
        done.schema_version,
        done.bytes as f64 / (1 << 20) as f64,
        done.path.display(),
        done.took.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn restore(args: RestoreArgs) -> Result<ExitCode, String> {
    let config = args.store.load()?;
    embedded_only(&config, "tagcast restore")?;
    let done = copy::restore(&args.from, &config.data_dir, args.force)?;
    if let Some(aside) = &done.replaced {
        println!(
            "tagcast restore: the store it replaced is kept as {}",
            aside.display()
        );
    }
    println!(
        "tagcast restore: {} users, schema version {}, restored to {} in {:.2} s; start the server",
        done.users,
        done.schema_version,
        done.path.display(),
        done.took.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn keys(command: KeysCommand) -> Result<ExitCode, String> {
    match command {
        KeysCommand::New => {
            let (access_key, secret_key) = tagcast::accounts::new_key_pair();
            println!("[[accounts.keys]]");
            println!("access_key = \"{access_key}\"");
            println!("secret_key = \"{secret_key}\"");
            eprintln!(
                "tagcast keys new: paste under your [[accounts]] entry, or keep the secret out of \
                 the file with secret_key_file = \"/path\" or secret_key_env = \"NAME\""
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ready(args: ReadyArgs) -> Result<ExitCode, String> {
    let endpoint = args.endpoint.trim_end_matches('/');
    let url = tagcast::call::endpoint_url(endpoint, "/readyz")?;
    let timeout = Duration::from_secs(5);
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .tls_backend_preconfigured(tagcast::tls::http_client_tls(endpoint))
        .build()
        .map_err(|e| e.to_string())?;
    if !(args.wait.is_finite() && args.wait >= 0.0) {
        return Err(format!(
            "--wait must be a number of seconds, got {}",
            args.wait
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(args.wait);
    loop {
        let why = match client.get(url.clone()).send().await {
            Ok(r) if r.status().is_success() => return Ok(ExitCode::SUCCESS),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                format!("HTTP {status}: {}", body.trim())
            }
            Err(e) => tagcast::call::unreachable(endpoint, timeout, &e).to_string(),
        };
        if std::time::Instant::now() >= deadline {
            eprintln!("tagcast ready: {url}: {why}");
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
