//! The `tagcast` command: `serve` runs the server, `call` sends one signed request.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tagcast::accounts::BOOTSTRAP_APP_ID;
use tagcast::config::{Config, LogFormat};
use tagcast::server::{self, AccountSource};

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
    /// Send one signed API request and print the answer as JSON.
    Call(CallArgs),
    /// Measure tagcast and its baselines on servers of its own (see docs/benchmarks.md).
    Bench(BenchArgs),
}

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
    /// Where to draw the latency-vs-throughput chart [default: bench-latency.png; --quick: none].
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "TAGCAST_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TAGCAST_LISTEN")]
    listen: Option<String>,
    /// Data directory of the embedded store [default: ./tagcast-data].
    #[arg(long, env = "TAGCAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "TAGCAST_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Default requests per second per account and Action [default: 50].
    #[arg(long, env = "TAGCAST_QPS")]
    qps: Option<u32>,
    /// Accepted regions, comma-separated; the first is the default [default: cn-north-1,ap-southeast-1].
    #[arg(long, env = "TAGCAST_REGIONS", value_delimiter = ',')]
    regions: Option<Vec<String>>,
    /// PostgreSQL URL; sets store.kind = "postgres" (the environment keeps a password out of files).
    #[arg(long, env = "TAGCAST_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
    /// Redis URL of the rate limiter shared by several nodes.
    #[arg(long, env = "TAGCAST_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
}

#[derive(Args)]
struct CallArgs {
    /// The Action, e.g. BatchUpdateUserTags.
    action: String,
    /// JSON body, or @file to read it from a file [default: {}].
    #[arg(long)]
    body: Option<String>,
    #[arg(
        long,
        env = "TAGCAST_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    #[arg(long, env = "TAGCAST_ACCESS_KEY")]
    access_key: Option<String>,
    #[arg(long, env = "TAGCAST_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    #[arg(long, env = "TAGCAST_REGION", default_value = "cn-north-1")]
    region: String,
    /// Where to find the development credentials when no key is given.
    #[arg(long, env = "TAGCAST_DATA_DIR", default_value = "./tagcast-data")]
    data_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Call(args) => runtime.block_on(call(args)),
        Command::Bench(args) => runtime.block_on(bench(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tagcast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: ServeArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
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
    if let Some(v) = args.store_url {
        config.store.kind = "postgres".into();
        config.store.url = Some(v);
    }
    if let Some(v) = args.redis_url {
        config.limits.redis_url = Some(v);
    }
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    let config = load_config(args)?;
    init_logging(config.log_format);
    // Every client connection is a descriptor: take all the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let prepared = server::prepare(&config).await?;
    let url = format!("http://{}", prepared.addr);
    println!("tagcast {} listening on {url}", env!("CARGO_PKG_VERSION"));
    match config.store.kind.as_str() {
        "postgres" => println!("  store: postgres (store.url)"),
        _ => println!(
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
            println!(
                "  try:        {exe} call RegisterUsers --endpoint {url} --body '{{\"AppId\":{BOOTSTRAP_APP_ID},\"Users\":[{{\"UserId\":10001}}]}}'"
            );
            println!(
                "  (call reads the key from that file when none is given; run it from this directory)"
            );
        }
    }
    server::serve(prepared.listener, prepared.state, server::shutdown_signal()).await;
    tracing::info!("stopped; every acknowledged write is durable");
    Ok(ExitCode::SUCCESS)
}

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
    if args.chart.is_some() {
        options.chart = args.chart;
    }
    // The client opens one descriptor per connection; the servers it starts raise theirs.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tagcast::bench::run(options).await?;
    Ok(ExitCode::SUCCESS)
}

async fn call(args: CallArgs) -> Result<ExitCode, String> {
    let body = tagcast::call::read_body_arg(args.body.as_deref())?;
    let creds = tagcast::call::resolve_credentials(
        args.access_key,
        args.secret_key,
        args.region,
        &args.data_dir,
    )?;
    let client = tagcast::call::Client::new(&args.endpoint, creds);
    let answer = client.call(&args.action, &body).await?;
    match serde_json::from_slice::<serde_json::Value>(&answer.body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("a Value serializes")
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(&answer.body)),
    }
    match answer.error() {
        None if answer.status == 200 => Ok(ExitCode::SUCCESS),
        None => {
            eprintln!("tagcast: HTTP {} without an error envelope", answer.status);
            Ok(ExitCode::FAILURE)
        }
        Some((code, message)) => {
            eprintln!("{code} (HTTP {}): {message}", answer.status);
            Ok(ExitCode::FAILURE)
        }
    }
}
