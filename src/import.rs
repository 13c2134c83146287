//! `tagcast import`: users and tags from JSON Lines, one RegisterUsers-style user per line,
//! straight into the configured store, validated exactly as RegisterUsers validates.
//!
//! A reader thread reads and parses lines and hands chunks of users to the store, several
//! chunks in flight, so parsing, planning and committing overlap; each chunk is one write
//! request of many users (the embedded writer folds several into one commit), not twenty
//! users per signed HTTP request. Everything goes through the store's write path, so the
//! tag rules, ordinals and the audience index (on PostgreSQL, every node's, through the
//! change log) are exactly as if the users had been registered through the API.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::actions::Rules;
use crate::actions::register_users::parse_user;
use crate::store::{DEFAULT_INBOX, Origin, Outcome, Store, TagEntry, TagOp, UserRegistration};

/// What to do with a line that is not a valid user, or a user the store refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Report it (line number and why) and go on.
    Skip,
    /// Stop at it: what came before is imported, nothing after.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub app_id: u32,
    /// The inbox the users' tags go to.
    pub inbox: u32,
    pub on_error: OnError,
    /// The tag limits and unknown fields, as the API reads them.
    pub rules: Rules,
    /// Users per write request.
    pub chunk: usize,
    /// Write requests in flight at once.
    pub in_flight: usize,
    /// A longer line is refused (and never held whole).
    pub max_line_bytes: usize,
    /// What the change log records as this import's request (API.md §9): RequestId
    /// `import-<id>`, one id per run, and an empty AccessKey.
    pub origin: Origin,
}

/// Longest line unless `--max-line-bytes` says otherwise: a user with 100 tags of the
/// longest keys and values and a full profile is about 130 KiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

impl Options {
    pub fn new(app_id: u32, rules: Rules) -> Self {
        Options {
            app_id,
            inbox: DEFAULT_INBOX,
            on_error: OnError::Fail,
            rules,
            chunk: 1000,
            in_flight: 8,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            origin: Origin {
                request_id: format!("import-{}-{}", crate::model::now_ms(), std::process::id()),
                access_key: String::new(),
            },
        }
    }
}

/// Most refused lines kept (with their reason) for the summary; all are counted.
pub const KEEP_REFUSED: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Lines read (blank lines included).
    pub lines: u64,
    pub imported: u64,
    pub refused: u64,
    /// The first refused lines: (line number, why).
    pub first_refused: Vec<(u64, String)>,
    /// Set when the run stopped at a refused line (`OnError::Fail`) or a store failure.
    pub stopped: Option<String>,
    pub elapsed: Duration,
}

impl Summary {
    fn refuse(&mut self, line: u64, why: String) {
        self.refused += 1;
        if self.first_refused.len() < KEEP_REFUSED {
            self.first_refused.push((line, why));
        }
    }

    pub fn users_per_s(&self) -> f64 {
        self.imported as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A chunk of valid users and their line numbers.
struct Chunk {
    users: Vec<UserRegistration>,
    lines: Vec<u64>,
}

/// A chunk's line numbers and what the store said of each user.
type Written = (Vec<u64>, Result<Vec<Outcome>, String>);

enum Read {
    Chunk(Chunk),
    Refused(u64, String),
    Failed(String),
}

/// Imports every line of `input`. `progress(lines read, users imported)` is called after
/// each chunk is committed.
pub async fn run(
    store: Arc<dyn Store>,
    input: Box<dyn BufRead + Send>,
    options: Options,
    mut progress: impl FnMut(u64, u64),
) -> Summary {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Read>(options.in_flight.max(1) * 2);
    let rules = options.rules.clone();
    let chunk_size = options.chunk.max(1);
    let max_line = options.max_line_bytes.max(1);
    let reader =
        tokio::task::spawn_blocking(move || read_lines(input, &rules, chunk_size, max_line, &tx));
    let mut summary = Summary::default();
    let mut writes: JoinSet<Written> = JoinSet::new();
    let mut done_reading = false;
    while !(done_reading && writes.is_empty()) && summary.stopped.is_none() {
        let room = writes.len() < options.in_flight.max(1);
        tokio::select! {
            msg = rx.recv(), if room && !done_reading => match msg {
                None => done_reading = true,
                Some(Read::Chunk(c)) => {
                    let store = store.clone();
                    let o = options.clone();
                    writes.spawn(async move { (c.lines, write(&*store, &o, c.users).await) });
                }
                Some(Read::Refused(line, why)) => {
                    if options.on_error == OnError::Fail {
                        summary.stopped = Some(format!("line {line}: {why}"));
                    }
                    summary.refuse(line, why);
                }
                Some(Read::Failed(why)) => summary.stopped = Some(why),
            },
            Some(joined) = writes.join_next(), if !writes.is_empty() => {
                let (lines, result) = joined.unwrap_or_else(|e| (vec![], Err(format!("a write task failed: {e}"))));
                match result {
                    Err(why) => summary.stopped = Some(format!("the store refused a write: {why}")),
                    Ok(outcomes) => {
                        for (line, outcome) in lines.into_iter().zip(outcomes) {
                            match outcome {
                                Outcome::Applied => summary.imported += 1,
                                Outcome::TagLimitExceeded { would_have, limit } => {
                                    let why = format!("the user would have {would_have} tag keys; the limit is {limit}");
                                    if options.on_error == OnError::Fail {
                                        summary.stopped.get_or_insert_with(|| format!("line {line}: {why}"));
                                    }
                                    summary.refuse(line, why);
                                }
                                Outcome::UserNotFound => summary.refuse(line, "the user was unregistered meanwhile".into()),
                            }
                        }
                        progress(summary.lines_hint(), summary.imported);
                    }
                }
            }
        }
    }
    // Stop reading (the reader ends when its channel closes); finish what is in flight:
    // every write that was sent is committed or failed, never left unknown.
    drop(rx);
    while let Some(joined) = writes.join_next().await {
        if let Ok((lines, Ok(outcomes))) = joined {
            summary.imported += outcomes.iter().filter(|o| **o == Outcome::Applied).count() as u64;
            let _ = lines;
        }
    }
    summary.lines = reader.await.unwrap_or(0);
    summary.elapsed = started.elapsed();
    summary
}

impl Summary {
    /// Lines accounted for so far (imported or refused), for progress.
    fn lines_hint(&self) -> u64 {
        self.imported + self.refused
    }
}

/// One chunk through the store: registered with their tags (inbox 0), or registered and
/// then tagged in `options.inbox`.
async fn write(
    store: &dyn Store,
    options: &Options,
    mut users: Vec<UserRegistration>,
) -> Result<Vec<Outcome>, String> {
    if options.inbox == DEFAULT_INBOX {
        return store
            .register_users(options.app_id, users, options.origin.clone())
            .await
            .map_err(|e| e.to_string());
    }
    let entries: Vec<TagEntry> = users
        .iter_mut()
        .map(|u| TagEntry {
            user_id: u.user_id,
            tags: std::mem::take(&mut u.tags),
        })
        .collect();
    let registered = store
        .register_users(options.app_id, users, options.origin.clone())
        .await
        .map_err(|e| e.to_string())?;
    let tagged = store
        .update_tags(
            options.app_id,
            options.inbox,
            TagOp::Upsert,
            entries,
            options.origin.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(registered
        .into_iter()
        .zip(tagged)
        .map(|(r, t)| if r == Outcome::Applied { t } else { r })
        .collect())
}

/// What [`read_line`] found.
enum Line {
    /// The line is in the buffer.
    Read,
    /// Longer than the limit: skipped to its end, never held whole; its length so far.
    TooLong(usize),
}

/// Reads one line (up to and without regard to its `\n`) into `buf`, at most `max`
/// bytes of it; `None` at the end of the input.
fn read_line(
    input: &mut Box<dyn BufRead + Send>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<Line>> {
    use std::io::Read as _;
    let got = input.by_ref().take(max as u64 + 1).read_until(b'\n', buf)?;
    if got == 0 {
        return Ok(None);
    }
    if buf.len() <= max || buf.last() == Some(&b'\n') && buf.len() == max + 1 {
        return Ok(Some(Line::Read));
    }
    // Skip the rest of the line without keeping it.
    let mut len = buf.len();
    buf.clear();
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                len += i + 1;
                input.consume(i + 1);
                break;
            }
            None => {
                let k = chunk.len();
                len += k;
                input.consume(k);
            }
        }
    }
    Ok(Some(Line::TooLong(len)))
}

/// The reader thread: parses lines into chunks; returns the number of lines read.
fn read_lines(
    mut input: Box<dyn BufRead + Send>,
    rules: &Rules,
    chunk_size: usize,
    max_line: usize,
    tx: &mpsc::Sender<Read>,
) -> u64 {
    let mut chunk = Chunk {
        users: Vec::with_capacity(chunk_size),
        lines: Vec::with_capacity(chunk_size),
    };
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let line = match read_line(&mut input, &mut buf, max_line) {
            Ok(None) => break,
            Ok(Some(line)) => line,
            Err(e) => {
                let _ = tx.blocking_send(Read::Failed(format!("reading line {}: {e}", n + 1)));
                return n;
            }
        };
        n += 1;
        let parsed = match line {
            Line::TooLong(len) => Err(format!(
                "the line is {len} bytes or more; lines are at most {max_line} bytes (--max-line-bytes)"
            )),
            Line::Read if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Read => parse_user(&buf, rules),
        };
        match parsed {
            Ok(u) => {
                chunk.users.push(u);
                chunk.lines.push(n);
            }
            Err(why) => {
                // What came before the bad line goes first: with `OnError::Fail` it is
                // imported and nothing after it is.
                if !chunk.users.is_empty() {
                    let before = std::mem::replace(
                        &mut chunk,
                        Chunk {
                            users: Vec::with_capacity(chunk_size),
                            lines: Vec::with_capacity(chunk_size),
                        },
                    );
                    if tx.blocking_send(Read::Chunk(before)).is_err() {
                        return n;
                    }
                }
                if tx.blocking_send(Read::Refused(n, why)).is_err() {
                    return n;
                }
            }
        }
        if chunk.users.len() >= chunk_size {
            let full = std::mem::replace(
                &mut chunk,
                Chunk {
                    users: Vec::with_capacity(chunk_size),
                    lines: Vec::with_capacity(chunk_size),
                },
            );
            if tx.blocking_send(Read::Chunk(full)).is_err() {
                return n;
            }
        }
    }
    if !chunk.users.is_empty() {
        let _ = tx.blocking_send(Read::Chunk(chunk));
    }
    n
}
