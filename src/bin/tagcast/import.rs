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
    /// JSON Lines, one RegisterUsers user per line ({"UserId":1,"Tags":["k:v"],...}); `-`
    /// for standard input.
    file: PathBuf,
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
    if !config.accounts.is_empty()
        && !config
            .accounts
            .iter()
            .any(|a| a.apps.contains(&i64::from(app_id)))
    {
        eprintln!(
            "tagcast import: warning: no account in the configuration owns AppId {app_id}; no key can read what is imported until one does"
        );
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
    let mut options = Options::new(app_id, config.tags.clone());
    options.inbox = inbox;
    options.on_error = args.on_error;
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
        "tagcast import: {} users imported into AppId {app_id} (InboxType {inbox}) from {source}, {} lines refused, {} lines read, in {:.1} s ({:.0} users/s)",
        summary.imported,
        summary.refused,
        summary.lines,
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
