//! The `tagcast` command: `serve` runs the server, `call` sends one signed request, and
//! the operator's commands (`check`, `import`, `backup`, `restore`, `keys new`, `ready`) and `bench`.
#![forbid(unsafe_code)]

mod admin;
mod call;
mod events;
mod import;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tagcast::config::{Config, LogFormat, StoreKind};

// A server allocator: each request allocates and frees many small buffers on whichever
// worker runs it, where glibc's malloc spent a fifth of a read's CPU. jemalloc over
// mimalloc: less CPU per request here, and it returns what it freed, where mimalloc kept
// 35 MiB after a few refused 100 MiB bodies (docs/benchmarks.md, "Per-request cost").
// Its background threads (Cargo.toml) return freed pages while the server idles: without
// them, 1,500 slow bodies left 248 MiB held until the next burst of requests.
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tagcast",
    version,
    about = "Self-hostable Volcengine IM broadcast-user OpenAPI server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded store by default).
    Serve(ServeArgs),
    /// Send one signed API request and print the answer as JSON (exit codes: see --help).
    Call(call::CallArgs),
    /// Print an app's event log as JSON Lines (who changed what, in order); --follow
    /// keeps waiting for new events.
    Events(events::EventsArgs),
    /// Check the store: SQLite's integrity check (embedded) or the schema (PostgreSQL),
    /// then tagcast's own rules on every row. Safe while a server runs.
    Check(admin::CheckArgs),
    /// Load users and tags from JSON Lines straight into the store (exit codes: 0 all
    /// imported, 1 stopped at a bad line or a store failure, 3 lines skipped).
    Import(import::ImportArgs),
    /// Write a consistent copy of the embedded store while it serves.
    Backup(admin::BackupArgs),
    /// Put a backup in place as the embedded store (no server may run on the directory).
    Restore(admin::RestoreArgs),
    /// Access keys.
    Keys {
        #[command(subcommand)]
        command: admin::KeysCommand,
    },
    /// Exit 0 when the server at --endpoint is ready (GET /readyz), 1 otherwise; for
    /// container health checks.
    Ready(admin::ReadyArgs),
    /// Measure tagcast and its baselines on servers of its own (see docs/benchmarks.md).
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

#[cfg(feature = "bench")]
#[derive(Args)]
struct BenchArgs {
    /// A short run (under a minute) that checks the bench works; its figures are rough.
    #[arg(long)]
    quick: bool,
    /// Backends to measure, comma-separated [default: embedded,postgres].
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Option<Vec<tagcast::bench::BackendKind>>,
    /// Client connections [default: 64].
    #[arg(long)]
    connections: Option<usize>,
    /// Seconds per measured phase [default: 10; --quick: 1.5].
    #[arg(long)]
    duration: Option<f64>,
    /// Users (5 tags each) loaded for the scale figures [default: 1000000; --quick: 20000].
    #[arg(long)]
    scale_users: Option<u64>,
    /// Users of the audience phase's generated app (default 10 M; --quick 200 k; 0 skips
    /// the phase).
    #[arg(long)]
    audience_users: Option<u64>,
    /// Draw the latency-vs-throughput chart into this PNG file [default: no chart].
    #[arg(long)]
    chart: Option<PathBuf>,
}

/// Where the configuration comes from; shared by `serve` and the commands that open the
/// same store (`check`, `backup`, `restore`).
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// TOML configuration file.
    #[arg(long, env = "TAGCAST_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded store [default: ./tagcast-data].
    #[arg(long, env = "TAGCAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; sets store.kind = "postgres" (the environment keeps a password out of files).
    #[arg(long, env = "TAGCAST_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TAGCAST_LISTEN")]
    listen: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "TAGCAST_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Default requests per second per account and Action [default: 50].
    #[arg(long, env = "TAGCAST_QPS")]
    qps: Option<u32>,
    /// Accepted regions, comma-separated; the first is the default [default: cn-north-1,ap-southeast-1].
    #[arg(long, env = "TAGCAST_REGIONS", value_delimiter = ',')]
    regions: Option<Vec<String>>,
    /// Redis URL of the rate limiter shared by several nodes.
    #[arg(long, env = "TAGCAST_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
}

/// Exit code of a command that could not do its work (bad flags or configuration, a
/// file it cannot read); clap uses the same for usage errors.
const EXIT_LOCAL: u8 = 2;

fn main() -> ExitCode {
    // First, even before the arguments are parsed (building the parser is most of the
    // time a start takes): a SIGTERM while the server starts must stop it cleanly, not
    // kill it. Only for `serve`; the other commands keep Ctrl-C's default.
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve")
        && let Err(e) = tagcast::server::catch_signals_early()
    {
        eprintln!("tagcast: {e}");
        return ExitCode::from(EXIT_LOCAL);
    }
    // The process's one rustls crypto provider, before any client (webhooks, `tagcast
    // call`, PostgreSQL, Redis) is built: reqwest's and the Redis client's TLS take the
    // process default.
    tagcast::tls::provider();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Call(args) => runtime.block_on(call::run(args)),
        Command::Events(args) => runtime.block_on(events::run(args)),
        Command::Check(args) => runtime.block_on(admin::check(args)),
        Command::Import(args) => runtime.block_on(import::run(args)),
        Command::Backup(args) => admin::backup(args),
        Command::Restore(args) => admin::restore(args),
        Command::Keys { command } => admin::keys(command),
        Command::Ready(args) => runtime.block_on(admin::ready(args)),
        #[cfg(feature = "bench")]
        Command::Bench(args) => runtime.block_on(bench(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tagcast: {e}");
            ExitCode::from(EXIT_LOCAL)
        }
    }
}

impl StoreArgs {
    /// The file (or defaults), with the flags and `TAGCAST_*` variables applied.
    fn load(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.store_url {
            config.store.kind = StoreKind::Postgres;
            config.store.url = Some(v.clone());
        }
        Ok(config)
    }
}

#[cfg(feature = "bench")]
async fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    use tagcast::bench::Options;
    let mut options = if args.quick {
        Options::quick()
    } else {
        Options::full()
    };
    if let Some(v) = args.backends {
        options.backends = v;
    }
    if let Some(v) = args.connections {
        options.connections = v.max(1);
    }
    if let Some(v) = args.duration {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!(
                "--duration must be a positive number of seconds, got {v}"
            ));
        }
        options.duration = std::time::Duration::from_secs_f64(v);
    }
    if let Some(v) = args.scale_users {
        options.scale_users = v.max(1);
    }
    if let Some(v) = args.audience_users {
        options.audience_users = v;
    }
    options.chart = args.chart;
    // The client opens one descriptor per connection; the servers it starts raise theirs.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tagcast::bench::run(options).await?;
    Ok(ExitCode::SUCCESS)
}
