//! `tagcast import`: JSON Lines of users into the configured store.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tagcast::import::{self, OnError, Options};
use tagcast::metrics::Metrics;

use crate::StoreArgs;

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The AppId the users belong to.
    #[arg(long = "app", value_name = "APPID")]
    app_id: i64,
    /// The inbox (InboxType) their tags go to.
    #[arg(long, default_value_t = 0)]
    inbox: i64,
    /// A line that is not a valid user, or a user the store refuses: skip it (and report
    /// it) or stop there.
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    on_error: OnError,
    /// Import into an AppId that no configured account owns (no key could read it until
    /// one does).
    #[arg(long)]
    allow_unowned_app: bool,
    /// A longer line is a bad line (refused without being read into memory whole).
    #[arg(long, value_name = "BYTES", default_value_t = import::DEFAULT_MAX_LINE_BYTES)]
    max_line_bytes: usize,
    /// JSON Lines, one RegisterUsers user per line ({"UserId":1,"Tags":["k:v"],...}); `-`
    /// for standard input.
    file: PathBuf,
}

/// `n` and the noun for it.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The AppIds a server on this configuration serves: its accounts', or (none configured)
/// the development account's in the data directory, which a first start creates with
/// the seed's AppId.
fn owned_apps(config: &tagcast::config::Config) -> Result<Vec<i64>, String> {
    if !config.accounts.is_empty() {
        return Ok(config
            .accounts
            .iter()
            .flat_map(|a| a.apps.clone())
            .collect());
    }
    let path = config.data_dir.join(tagcast::accounts::BOOTSTRAP_FILE);
    if path.exists() {
        let accounts = tagcast::accounts::read_credentials_file(&path)?;
        return Ok(accounts.into_iter().flat_map(|a| a.apps).collect());
    }
    Ok(vec![tagcast::accounts::BOOTSTRAP_APP_ID])
}

/// Exit code when lines were skipped (`--on-error skip`).
const EXIT_SKIPPED: u8 = 3;

pub async fn run(args: ImportArgs) -> Result<ExitCode, String> {
    let config = args.store.load()?;
    config.validate()?;
    let app_id = tagcast::actions::decode::app_id(args.app_id)
        .map_err(|e| format!("--app: {}", e.message))?;
    let inbox = tagcast::actions::decode::inbox_type(Some(args.inbox))
        .map_err(|e| format!("--inbox: {}", e.message))?;
    let owned = owned_apps(&config)?;
    if !owned.contains(&i64::from(app_id)) && !args.allow_unowned_app {
        let list: Vec<String> = owned.iter().map(i64::to_string).collect();
        return Err(format!(
            "--app {app_id}: no account owns that AppId, so no key could read what is imported \
             (the configured apps: {}); check --app, or pass --allow-unowned-app",
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        ));
    }
    let input: Box<dyn BufRead + Send> = if args.file.as_os_str() == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let f = std::fs::File::open(&args.file)
            .map_err(|e| format!("opening {}: {e}", args.file.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, f))
    };
    // The embedded store's directory lock: a running server (or another import) holds it,
    // and the import refuses naming its PID.
    let lock = tagcast::store::lock_data_dir(&config, "import")?;
    let store = tagcast::store::open(&config, lock, Arc::new(Metrics::new())).await?;
    let rules = tagcast::actions::Rules {
        tags: config.tags.clone(),
        unknown_fields: config.api.unknown_fields,
    };
    let mut options = Options::new(app_id, rules);
    options.inbox = inbox;
    options.on_error = args.on_error;
    options.max_line_bytes = args.max_line_bytes.max(1);
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut shown = Instant::now();
    let summary = import::run(store.clone(), input, options, |lines, imported| {
        if terminal && shown.elapsed() >= Duration::from_millis(200) {
            shown = Instant::now();
            let rate = imported as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprint!("\r{lines} lines, {imported} users imported ({rate:.0} users/s)   ");
            let _ = std::io::stderr().flush();
        }
    })
    .await;
    store.close().await;
    if terminal {
        eprintln!();
    }
    for (line, why) in &summary.first_refused {
        eprintln!("line {line}: {why}");
    }
    if summary.refused as usize > summary.first_refused.len() {
        eprintln!(
            "... and {} more",
            summary.refused as usize - summary.first_refused.len()
        );
    }
    let source = if args.file.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        args.file.display().to_string()
    };
    println!(
        "tagcast import: {} into AppId {app_id} (InboxType {inbox}) from {source}: {} read, {} refused, in {:.1} s ({:.0} users/s)",
        plural(summary.imported, "user imported", "users imported"),
        plural(summary.lines, "line", "lines"),
        summary.refused,
        summary.elapsed.as_secs_f64(),
        summary.users_per_s()
    );
    if let Some(why) = summary.stopped {
        eprintln!("tagcast import: stopped at {why}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if summary.refused > 0 {
        ExitCode::from(EXIT_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}
