//! Every code block of the README runs, as written, in the order a reader meets them: one
//! terminal session in a fresh directory where `cargo run --release -- ARGS` runs the
//! binary under test (a `cargo` on PATH that does only that, so nothing is rebuilt), the
//! `serve` block starts the server the later blocks talk to, shell blocks share their
//! exported variables, Python and Node blocks run with the official SDKs, TOML blocks are
//! served by a real server, and the banner and JSON examples are compared with the real
//! ones. A block that cannot run here says why in a comment just before it:
//! `<!-- run: skip (reason) -->`; nothing else is skipped.
//!
//! Directives (an HTML comment on the line before the fence): `<!-- run: server -->`,
//! `<!-- run: banner -->` (the output of that server), `<!-- run: skip (reason) -->`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    directive: Option<String>,
    text: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut previous: Option<&str> = None;
    while let Some((n, line)) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut text = String::new();
            for (_, l) in lines.by_ref() {
                if l == "```" {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            let directive = previous
                .and_then(|p| p.trim().strip_prefix("<!-- run:"))
                .and_then(|p| p.strip_suffix("-->"))
                .map(|d| d.trim().to_owned());
            out.push(Block {
                line: n + 1,
                lang: lang.trim().to_owned(),
                directive,
                text,
            });
            previous = None;
        } else if !line.trim().is_empty() {
            previous = Some(line);
        }
    }
    out
}

/// The reader's terminal: a directory, the variables exported so far, the server.
struct Session {
    dir: tempfile::TempDir,
    env: PathBuf,
    server: Option<Child>,
    banner: Vec<String>,
    ran: Vec<String>,
    skipped: Vec<String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // A failed block must not leave the session's server running.
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Session {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join(".shim");
        std::fs::create_dir(&shim).unwrap();
        let cargo = shim.join("cargo");
        std::fs::write(
            &cargo,
            format!(
                "#!/bin/sh\n# The README's `cargo run --release -- ARGS`, without a rebuild.\n\
                 [ \"$1\" = run ] && [ \"$2\" = --release ] || {{ echo \"readme: only cargo run --release is run, not: cargo $*\" >&2; exit 2; }}\n\
                 shift 2\n[ \"$1\" = --locked ] && shift\n[ \"$1\" = -- ] && shift\nexec {} \"$@\"\n",
                env!("CARGO_BIN_EXE_tagcast")
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = dir.path().join(".env");
        let node_modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/node/node_modules");
        // Free ports instead of 8080, the SDKs' interpreter and modules; nothing else.
        std::fs::write(
            &env,
            format!(
                "export PATH='{}':\"$PATH\"\nexport TAGCAST_LISTEN=127.0.0.1:0\n\
                 export NODE_PATH='{node_modules}'\nexport TAGCAST_PYTHON='{}'\n\
                 unset TAGCAST_ACCESS_KEY TAGCAST_SECRET_KEY TAGCAST_DATA_DIR TAGCAST_CONFIG TAGCAST_ENDPOINT\n",
                shim.display(),
                python().display()
            ),
        )
        .unwrap();
        Session {
            dir,
            env,
            server: None,
            banner: Vec::new(),
            ran: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `bash -c script` in the session directory with the session's variables.
    fn bash(&self, script: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(format!(". '{}'\n{script}", self.env.display()))
            .current_dir(self.path());
        c
    }

    fn export(&self, name: &str, value: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.env)
            .unwrap();
        writeln!(f, "export {name}='{value}'").unwrap();
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run_to_end(&self, what: &str, mut cmd: Command) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what}: still running after 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a server from `cmd` and reads its banner; returns (child, banner).
    fn start_server(&self, what: &str, mut cmd: Command) -> (Child, Vec<String>) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = read_banner(&mut lines);
        if !banner.first().is_some_and(|l| l.contains("listening on")) {
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not start: {banner:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::spawn(move || for _ in lines {});
        (child, banner)
    }

    fn endpoint(&self) -> String {
        let first = self.banner.first().expect("the server block ran");
        first.rsplit(' ').next().unwrap().to_owned()
    }
}

fn python() -> PathBuf {
    match std::env::var_os("TAGCAST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")),
    }
}

fn terminate(mut child: Child, what: &str) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{what} exited {status} on SIGTERM");
}

/// The same shape: every line's label (what comes before the first ':' or the value).
fn assert_banner_matches(documented: &str, real: &[String]) {
    let label = |l: &str| -> String {
        let l = l.trim_end();
        match l.find(": ") {
            Some(i) => l[..i].to_owned(),
            None => l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    };
    let doc: Vec<String> = documented.lines().map(label).collect();
    let got: Vec<String> = real.iter().map(|l| label(l)).collect();
    assert_eq!(
        doc, got,
        "the README's banner differs from the real one:\n{real:#?}"
    );
}

/// A server on the TOML of a block, with what it cannot have here (addresses of other
/// machines, secrets named by environment variables) supplied from outside the file.
fn serve_toml(s: &Session, block: &Block, n: usize) {
    // (The server is killed if a check below fails; terminated cleanly otherwise.)
    let path = s.write(&format!("block-{n}.toml"), &block.text);
    let data = s.path().join(format!("block-{n}-data"));
    let mut script = format!("export TAGCAST_DATA_DIR='{}'\n", data.display());
    for line in block.text.lines() {
        // Accounts' secret_key_env and webhooks' secret_env: a fresh secret each.
        if let Some(var) = ["secret_key_env", "secret_env"]
            .iter()
            .find_map(|name| line.trim_start().strip_prefix(name))
            .and_then(|rest| rest.split('"').nth(1))
        {
            script.push_str(&format!(
                "export {var}='{}'\n",
                tagcast::accounts::new_key_pair().1
            ));
        }
    }
    if block.text.contains("postgres://") {
        let url = crate::infra::fresh_database(crate::infra::shared_postgres());
        script.push_str(&format!("export TAGCAST_STORE_URL='{url}'\n"));
    }
    if block.text.contains("redis_url") {
        let url = crate::infra::shared_redis().url();
        script.push_str(&format!("export TAGCAST_REDIS_URL='{url}'\n"));
    }
    script.push_str(&format!(
        "exec cargo run --release -- serve --config '{}'",
        path.display()
    ));
    let what = format!("README line {}: the TOML block served", block.line);
    let (child, banner) = s.start_server(&what, s.bash(&script));
    let endpoint = banner[0].rsplit(' ').next().unwrap().to_owned();
    s.run_to_end(
        &format!("{what}: tagcast ready"),
        s.bash(&format!(
            "cargo run --release -- ready --wait 30 --endpoint {endpoint}"
        )),
    );
    terminate(child, &what);
}

/// The documented envelope has the keys a real answer has.
fn assert_envelope_matches(documented: &str, s: &Session) {
    let doc: serde_json::Value = serde_json::from_str(documented).expect("the JSON block parses");
    let file = s.path().join("tagcast-data").join("credentials.toml");
    let key = tagcast::accounts::read_credentials_file(&file).unwrap()[0].keys[0].clone();
    let client = tagcast::call::Client::new(
        &s.endpoint(),
        creds(&key.access_key, key.secret_key.as_deref().unwrap()),
    );
    let body =
        serde_json::json!({"AppId": 666675, "UserTags": [{"UserId": 10001, "Tags": {"k": "v"}}]});
    let real = tagcast::devservers::block_on(async move {
        client
            .call("BatchUpdateUserTags", body.to_string().as_bytes())
            .await
            .unwrap()
            .json()
    });
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&doc), keys(&real), "{real}");
    assert_eq!(
        keys(&doc["ResponseMetadata"]),
        keys(&real["ResponseMetadata"]),
        "{real}"
    );
    assert_eq!(doc["Result"], real["Result"], "{real}");
}

fn run_block(s: &mut Session, block: &Block, n: usize) {
    let what = format!("README line {} ({})", block.line, block.lang);
    match (block.lang.as_str(), block.directive.as_deref()) {
        (_, Some(d)) if d.starts_with("skip") => {
            assert!(
                d.len() > "skip ()".len(),
                "{what}: a skipped block must say why"
            );
            s.skipped.push(format!("line {}: {d}", block.line));
            return;
        }
        ("sh", Some("server")) => {
            // One command, run in place of the shell, so the server is the process that
            // gets SIGTERM at the end.
            let command = block.text.trim();
            assert!(
                !command.contains('\n'),
                "{what}: a server block is one command"
            );
            let (child, banner) = s.start_server(&what, s.bash(&format!("exec {command}")));
            s.server = Some(child);
            s.banner = banner;
            s.export("TAGCAST_ENDPOINT", &s.endpoint());
        }
        ("text", Some("banner")) => assert_banner_matches(&block.text, &s.banner),
        ("sh", None) => {
            let path = s.write(&format!("block-{n}.sh"), &block.text);
            let env = s.env.display().to_string();
            // Sourced with -e, so a failing command fails the block; exports carry on.
            let script = format!(
                "set -e -o pipefail\n. '{}'\nexport -p > '{env}'",
                path.display()
            );
            s.run_to_end(&what, s.bash(&script));
        }
        ("python", None) => {
            let path = s.write(&format!("block-{n}.py"), &block.text);
            s.run_to_end(
                &what,
                s.bash(&format!("exec \"$TAGCAST_PYTHON\" '{}'", path.display())),
            );
        }
        ("js", None) => {
            let path = s.write(&format!("block-{n}.cjs"), &block.text);
            s.run_to_end(&what, s.bash(&format!("exec node '{}'", path.display())));
        }
        ("toml", None) => serve_toml(s, block, n),
        ("json", None) => assert_envelope_matches(&block.text, s),
        (lang, directive) => panic!(
            "{what}: no way to run a {lang:?} block with directive {directive:?}; \
             add <!-- run: skip (reason) --> if it cannot run"
        ),
    }
    s.ran.push(format!("line {} {}", block.line, block.lang));
}

#[test]
fn every_readme_code_block_runs_as_written() {
    if crate::skip::on_postgres("the README's session runs the embedded store") {
        return;
    }
    let text = std::fs::read_to_string(README).unwrap();
    let blocks = blocks(&text);
    assert!(blocks.len() > 10, "parsed only {} blocks", blocks.len());
    let mut s = Session::new();
    for (n, block) in blocks.iter().enumerate() {
        run_block(&mut s, block, n);
    }
    if let Some(server) = s.server.take() {
        terminate(server, "the README's server");
    }
    println!(
        "readme: {} blocks ran ({}); {} not run: {}",
        s.ran.len(),
        s.ran.join(", "),
        s.skipped.len(),
        s.skipped.join("; ")
    );
    assert!(
        s.skipped.len() <= 4,
        "too much of the README is not run: {:?}",
        s.skipped
    );
}

#[test]
fn the_configuration_block_shows_every_key_with_its_default() {
    let readme = std::fs::read_to_string(README).unwrap();
    let at = readme
        .find("Every key, with its default")
        .expect("the README's Configuration shows every key");
    let start = at + readme[at..].find("```toml\n").unwrap() + "```toml\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let shown: tagcast::config::Config =
        toml::from_str(block).unwrap_or_else(|e| panic!("the README's configuration block: {e}"));
    let as_value = |c: &tagcast::config::Config| {
        let mut v = serde_json::to_value(c).unwrap();
        // Examples, not defaults: an account and a per-Action override.
        v.as_object_mut().unwrap().remove("accounts");
        v["limits"].as_object_mut().unwrap().remove("actions");
        v
    };
    assert_eq!(
        as_value(&shown),
        as_value(&tagcast::config::Config::default()),
        "the README's configuration block differs from the defaults"
    );
}
