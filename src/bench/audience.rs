//! The audience phase: a generated app (seeded, so every run has the same data) loaded
//! with `tagcast import`, then CountAudience through HTTP for five queries, the same counts
//! in the engine alone (an index built in the bench process from the same data), the
//! same counts in PostgreSQL with its best index, ListAudience paging, the index's memory
//! and its build time at start.
//!
//! The data: every user has `country` (50 values), `city` (2,000), `level` (5), `lang` (20)
//! and `cohort` (100), each value Zipf-distributed (s = 1, the first value the most
//! common), and 1 % also have the key-only `vip` (value "").

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use super::Signer;
use super::load::{self, Expect, Pace};
use crate::actions::filter::{Filter, FilterFields};
use crate::audience::AudienceIndex;
use crate::audience::index::Builder;
use crate::config::TagLimits;

/// (key, number of values, value prefix).
const KEYS: [(&str, usize, &str); 5] = [
    ("country", 50, "c"),
    ("city", 2000, "x"),
    ("level", 5, "l"),
    ("lang", 20, "g"),
    ("cohort", 100, "h"),
];
const VIP_SHARE: f64 = 0.01;
const SEED: u64 = 20261126;

/// A Zipf(s = 1) sampler over `n` ranks: the cumulative weights, searched.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|r| {
                acc += 1.0 / r as f64;
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

/// The generated data: written as JSON Lines for `tagcast import`, counted per tag, and
/// held as an index for the engine-alone figures.
pub struct DataSet {
    pub users: u64,
    pub file: std::path::PathBuf,
    /// Users per "key:value".
    pub counts: HashMap<String, u64>,
    pub index: AudienceIndex,
    pub app_id: u32,
}

/// Generates `users` users of `app_id` into `dir/audience.jsonl`.
pub fn generate(dir: &Path, users: u64, app_id: u32) -> Result<DataSet, String> {
    let file = dir.join("audience.jsonl");
    let out =
        std::fs::File::create(&file).map_err(|e| format!("creating {}: {e}", file.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut rng = StdRng::seed_from_u64(SEED);
    let zipfs: Vec<Zipf> = KEYS.iter().map(|(_, n, _)| Zipf::new(*n)).collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut builder = Builder::default();
    let mut line = String::with_capacity(160);
    let mut tags: Vec<String> = Vec::with_capacity(6);
    for i in 0..users {
        let user = i as i64 + 1;
        let ordinal = i as u32;
        builder.user(app_id, user, ordinal, (0, 0), None);
        tags.clear();
        for ((key, _, prefix), z) in KEYS.iter().zip(&zipfs) {
            let value = format!("{prefix}{}", z.sample(&mut rng));
            builder.tag(app_id, 0, key, &value, ordinal);
            tags.push(format!("{key}:{value}"));
        }
        if rng.random_bool(VIP_SHARE) {
            builder.tag(app_id, 0, "vip", "", ordinal);
            tags.push("vip".into());
        }
        for t in &tags {
            *counts.entry(t.clone()).or_default() += 1;
        }
        line.clear();
        line.push_str(&json!({"UserId": user, "Tags": tags}).to_string());
        line.push('\n');
        out.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    let index = AudienceIndex::new();
    index.replace(builder.finish());
    Ok(DataSet {
        users,
        file,
        counts,
        index,
        app_id,
    })
}

/// One of the five measured queries: its name, the request's filter fields, and the
/// parsed filter (for the engine alone).
pub struct Query {
    pub name: &'static str,
    pub what: String,
    pub body: Value,
    pub filter: Filter,
}

impl DataSet {
    /// The value of `key` whose share of users is closest to `share`.
    fn tag_near(&self, key: &str, share: f64) -> (String, f64) {
        let prefix = format!("{key}:");
        self.counts
            .iter()
            .filter(|(t, _)| t.starts_with(&prefix))
            .map(|(t, n)| (t.clone(), *n as f64 / self.users as f64))
            .min_by(|a, b| (a.1 - share).abs().total_cmp(&(b.1 - share).abs()))
            .unwrap_or((format!("{key}:none"), 0.0))
    }

    /// A tag held by about half the users (the most common level), and its share.
    pub fn queries_half(&self) -> (String, f64) {
        self.tag_near("level", 0.5)
    }

    /// q1..q5 as the issue defines them, on this data.
    pub fn queries(&self) -> Result<Vec<Query>, String> {
        let (q1, s1) = self.tag_near("city", 0.01);
        let (q2a, s2a) = self.tag_near("level", 0.10);
        let (q2b, s2b) = self.tag_near("country", 0.05);
        let q3: Vec<String> = (5..10).map(|i| format!("lang:g{i}")).collect();
        let q4: Vec<String> = [
            "country:c0",
            "city:x0",
            "level:l0",
            "lang:g0",
            "cohort:h0",
            "vip",
            "country:c0",
            "level:l0",
            "lang:g0",
            "cohort:h0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let q5 = json!({"And": [
            {"Key": "vip"},
            {"Not": {"Tag": "country:c0"}},
            {"Or": [{"Tag": "level:l0"}, {"Tag": "level:l1"}, {"Key": "nothing"}]}
        ]});
        let specs = [
            (
                "q1",
                format!("{q1} ({:.1} %)", s1 * 100.0),
                json!({"Filter": {"Tag": q1}}),
            ),
            (
                "q2",
                format!(
                    "{q2a} ({:.1} %) AND {q2b} ({:.1} %)",
                    s2a * 100.0,
                    s2b * 100.0
                ),
                json!({"Tags": [q2a, q2b], "TagOp": 1}),
            ),
            (
                "q3",
                format!("OR of {}", q3.join(", ")),
                json!({"Tags": q3, "TagOp": 0}),
            ),
            (
                "q4",
                "AND of 10 vendor-form tags".to_owned(),
                json!({"Tags": q4, "TagOp": 1}),
            ),
            (
                "q5",
                "vip AND NOT country:c0 AND (level:l0 OR level:l1 OR has nothing)".to_owned(),
                json!({"Filter": q5}),
            ),
        ];
        let limits = TagLimits::default();
        specs
            .into_iter()
            .map(|(name, what, body)| {
                let fields: FilterFields =
                    serde_json::from_value(body.clone()).map_err(|e| e.to_string())?;
                let filter = fields
                    .parse(&limits, limits.max_filter_tags)
                    .map_err(|e| format!("{name}: {}", e.message))?;
                Ok(Query {
                    name,
                    what,
                    body,
                    filter,
                })
            })
            .collect()
    }
}

/// p50 and p99 of `samples` (ms).
pub fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// The engine alone: `count` on the bench's own index, `runs` times.
pub fn engine_count(data: &DataSet, q: &Query, runs: usize) -> (u64, f64, f64) {
    let mut samples = Vec::with_capacity(runs);
    let mut n = 0;
    for _ in 0..runs {
        let t = Instant::now();
        n = data.index.count(data.app_id, 0, &q.filter);
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = percentiles(samples);
    (n, p50, p99)
}

/// CountAudience through HTTP, one request at a time, `runs` times; the count answered.
pub(super) async fn http_count(
    addr: std::net::SocketAddr,
    signer: &Signer,
    app_id: u32,
    q: &Query,
    runs: u64,
) -> Result<(u64, f64, f64), String> {
    let mut body = q.body.clone();
    body["AppId"] = json!(app_id);
    let request = signer.request("CountAudience", body.to_string().into_bytes());
    let first = load::fetch(addr, request.clone()).await?;
    let count = serde_json::from_slice::<Value>(&first)
        .ok()
        .and_then(|v| v["Result"]["Count"].as_u64())
        .ok_or_else(|| {
            format!(
                "{}: unexpected answer {}",
                q.name,
                String::from_utf8_lossy(&first)
            )
        })?;
    let r = load::run(
        addr,
        1,
        Pace::Count { count: runs },
        std::sync::Arc::new(move |_| request.clone()),
        Expect {
            status: 200,
            body_contains: Some(b"\"Count\""),
        },
    )
    .await?;
    if let Some(f) = r.first_failure {
        return Err(format!("CountAudience {}: {f}", q.name));
    }
    Ok((count, r.percentile_ms(0.5), r.percentile_ms(0.99)))
}

/// ListAudience through HTTP: every page of `filter` with Limit 1000; (ids, elapsed).
pub(super) async fn http_list_all(
    addr: std::net::SocketAddr,
    signer: &Signer,
    app_id: u32,
    filter: Value,
) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    let mut cursor = String::new();
    let mut ids = 0u64;
    loop {
        let body = json!({"AppId": app_id, "Filter": filter, "Limit": 1000, "Cursor": cursor});
        let answer = load::fetch(
            addr,
            signer.request("ListAudience", body.to_string().into_bytes()),
        )
        .await?;
        let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        let page = v["Result"]["UserIds"]
            .as_array()
            .ok_or_else(|| format!("ListAudience: unexpected answer {v}"))?;
        ids += page.len() as u64;
        cursor = v["Result"]["NextCursor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if cursor.is_empty() {
            return Ok((ids, started.elapsed()));
        }
    }
}

/// PostgreSQL counting q2 on the same data (the rows the import wrote), each the way a
/// team without tagcast would: the p99 (ms) of (a B-tree join over one row per tag, copied
/// from the users' rows into `bench_tags`; a GIN `@>` over the users' own `tags` jsonb).
pub async fn postgres_q2(
    url: &str,
    app_id: u32,
    a: (&str, &str),
    b: (&str, &str),
    expected: u64,
    runs: usize,
) -> Result<(f64, f64), String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
    tokio::spawn(conn);
    let e = |e: tokio_postgres::Error| crate::store::postgres::connect::chain(&e);
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS bench_q2_tags AS
                 SELECT u.user_id, i.key::int AS inbox_type, t.key, t.value
                 FROM users u, jsonb_each(u.tags) i, jsonb_each_text(i.value) t
                 WHERE u.app_id = {app_id};
             CREATE INDEX IF NOT EXISTS bench_q2_tags_kv ON bench_q2_tags (inbox_type, key, value, user_id);
             CREATE INDEX IF NOT EXISTS bench_users_tags_gin ON users USING gin (tags jsonb_path_ops);"
        ))
        .await
        .map_err(e)?;
    // Each on its own: VACUUM cannot run inside the implicit transaction of a batch.
    for table in ["bench_q2_tags", "users"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .map_err(e)?;
    }
    let app = app_id as i32;
    let join = client
        .prepare(
            "SELECT COUNT(*) FROM bench_q2_tags x JOIN bench_q2_tags y
               ON y.user_id = x.user_id AND y.inbox_type = x.inbox_type
             WHERE x.inbox_type = 0 AND x.key = $1 AND x.value = $2
               AND y.key = $3 AND y.value = $4",
        )
        .await
        .map_err(e)?;
    let gin = client
        .prepare("SELECT COUNT(*) FROM users WHERE app_id = $1 AND tags @> $2::text::jsonb")
        .await
        .map_err(e)?;
    let both = serde_json::json!({"0": {a.0: a.1, b.0: b.1}}).to_string();
    let mut best = Vec::new();
    for which in 0..2 {
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs + 3 {
            let t = Instant::now();
            let n: i64 = if which == 0 {
                client
                    .query_one(&join, &[&a.0, &a.1, &b.0, &b.1])
                    .await
                    .map_err(e)?
                    .get(0)
            } else {
                client
                    .query_one(&gin, &[&app, &both])
                    .await
                    .map_err(e)?
                    .get(0)
            };
            if n as u64 != expected {
                return Err(format!("PostgreSQL counted {n} for q2, tagcast {expected}"));
            }
            // The first runs warm the cache.
            if i >= 3 {
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        best.push(percentiles(samples).1);
    }
    Ok((best[0], best[1]))
}
