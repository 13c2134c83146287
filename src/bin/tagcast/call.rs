//! `tagcast call`: one signed request, the answer as pretty JSON on stdout, and an exit
//! code a script can branch on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tagcast::call::{self as client, CallError, Client, CredentialSource};

/// The answer was an error envelope (its Code and Message are on stderr).
const EXIT_API_ERROR: u8 = 1;
/// HTTP 200, but `Result.FailedInfos` lists users that were not applied.
const EXIT_PARTIAL: u8 = 3;
/// Nothing answered: connection refused, timeout, not an HTTP server.
const EXIT_UNREACHABLE: u8 = 4;

#[derive(Args)]
#[command(after_help = "Exit codes:
  0  success (HTTP 200; FailedInfos empty or absent)
  1  the server answered with an error (Code and Message on stderr)
  2  the request was not sent: bad flags, unreadable --body file, no credentials
  3  HTTP 200, but FailedInfos is not empty (each failed user on stderr)
  4  no answer: connection refused, timeout, or not an HTTP server")]
pub struct CallArgs {
    /// The Action, e.g. BatchUpdateUserTags.
    action: String,
    /// JSON body, or @FILE to read it from a file [default: {}].
    #[arg(long)]
    body: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// Where the server is and the key to sign with (`tagcast call`, `tagcast events`).
#[derive(Args)]
pub struct Conn {
    /// Where tagcast listens.
    #[arg(
        long,
        env = "TAGCAST_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// Access key to sign with (with --secret-key); without both, the development key
    /// that `tagcast serve` created in --data-dir is used.
    #[arg(long, env = "TAGCAST_ACCESS_KEY")]
    access_key: Option<String>,
    /// Secret of --access-key (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "TAGCAST_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Region in the signature's credential scope.
    #[arg(long, env = "TAGCAST_REGION", default_value = "cn-north-1")]
    region: String,
    /// Data directory whose credentials.toml holds the development key (used when no
    /// key is given).
    #[arg(long, env = "TAGCAST_DATA_DIR", default_value = "./tagcast-data")]
    data_dir: PathBuf,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

impl Conn {
    /// The signing client; says on stderr which key file it signs with (`who`: the
    /// command).
    pub fn client(self, who: &str) -> Result<Client, String> {
        let (creds, source) = client::resolve_credentials(
            self.access_key,
            self.secret_key,
            self.region,
            &self.data_dir,
        )?;
        if let CredentialSource::File(path) = &source {
            eprintln!(
                "tagcast {who}: signing with {} from {}",
                creds.access_key,
                path.display()
            );
        }
        Ok(Client::with_timeout(
            &self.endpoint,
            creds,
            Duration::from_secs(self.timeout.max(1)),
        ))
    }
}

pub async fn run(args: CallArgs) -> Result<ExitCode, String> {
    let body = client::read_body_arg(args.body.as_deref())?;
    let client = args.conn.client("call")?;
    let answer = match client.call(&args.action, &body).await {
        Ok(answer) => answer,
        Err(CallError::Unreachable(why)) => {
            eprintln!("tagcast call: {why}");
            return Ok(ExitCode::from(EXIT_UNREACHABLE));
        }
        Err(CallError::Invalid(why)) => return Err(why),
    };
    match serde_json::from_slice::<serde_json::Value>(&answer.body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("a Value serializes")
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(&answer.body)),
    }
    if let Some((code, message)) = answer.error() {
        eprintln!("{code} (HTTP {}): {message}", answer.status);
        if code == "InvalidActionOrVersion"
            && let Some(name) = client::closest_action(&args.action)
        {
            eprintln!("tagcast call: did you mean {name}?");
        }
        return Ok(ExitCode::from(EXIT_API_ERROR));
    }
    if answer.status != 200 {
        eprintln!(
            "tagcast call: HTTP {} without an error envelope",
            answer.status
        );
        return Ok(ExitCode::from(EXIT_API_ERROR));
    }
    let failed = answer.failed_infos();
    if !failed.is_empty() {
        for f in &failed {
            eprintln!(
                "user {}: {}: {}",
                f["UserId"],
                f["Code"].as_str().unwrap_or("?"),
                f["Message"].as_str().unwrap_or("")
            );
        }
        eprintln!(
            "tagcast call: {} user(s) not applied (Result.FailedInfos)",
            failed.len()
        );
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}
