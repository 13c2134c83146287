//! `tagcast events`: an app's event log as JSON Lines, one event per line, oldest first,
//! signed like `tagcast call` (API.md §9). With `--follow` it long-polls for new events
//! until interrupted: an audit trail to grep, or a feed to pipe into another program.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};
use tagcast::call::CallError;

use crate::call::Conn;

#[derive(Args)]
#[command(after_help = "Examples:
  tagcast events --app 666675                       # the whole retained log
  tagcast events --app 666675 --user-id 10001 --types user.tags_changed
  tagcast events --app 666675 --after 420000003 --follow

Exit codes: 0 done; 1 the server answered with an error (410 EventCursorExpired: --after is
older than retention keeps); 2 bad flags or no credentials; 4 no answer.")]
pub struct EventsArgs {
    /// The AppId whose events to print.
    #[arg(long)]
    app: i64,
    /// Only events after this Seq (an event's Seq, or a NextAfter); default: the oldest
    /// retained.
    #[arg(long)]
    after: Option<String>,
    /// Only these types, comma-separated (e.g. user.tags_changed,user.updated).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Only the events of this user.
    #[arg(long)]
    user_id: Option<i64>,
    /// Keep waiting for new events (long polling) instead of stopping at the newest.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    conn: Conn,
}

pub async fn run(args: EventsArgs) -> Result<ExitCode, String> {
    let client = args.conn.client("events")?;
    let mut after = args.after;
    let mut out = std::io::stdout().lock();
    loop {
        let mut body = json!({"AppId": args.app, "Limit": 1000});
        if let Some(a) = &after {
            body["After"] = json!(a);
        }
        if !args.types.is_empty() {
            body["Types"] = json!(args.types);
        }
        if let Some(u) = args.user_id {
            body["UserId"] = json!(u);
        }
        if args.follow {
            body["WaitMs"] = json!(20_000);
        }
        let answer = match client.call("ListEvents", body.to_string().as_bytes()).await {
            Ok(a) => a,
            Err(CallError::Unreachable(why)) => {
                eprintln!("tagcast events: {why}");
                return Ok(ExitCode::from(4));
            }
            Err(CallError::Invalid(why)) => return Err(why),
        };
        if let Some((code, message)) = answer.error() {
            eprintln!("{code} (HTTP {}): {message}", answer.status);
            return Ok(ExitCode::from(1));
        }
        let v: Value = answer.json();
        let result = &v["Result"];
        let events = result["Events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            writeln!(out, "{e}").map_err(|e| format!("writing to stdout: {e}"))?;
        }
        out.flush().map_err(|e| format!("writing to stdout: {e}"))?;
        let before = after.clone();
        if let Some(next) = result["NextAfter"].as_str()
            && next != "0"
        {
            after = Some(next.to_owned());
        }
        // Done at the newest event: nothing more, not even events the filters skipped.
        if events.is_empty() && after == before && !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
