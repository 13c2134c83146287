//! The packaging files and the operations guide: the systemd unit passes
//! `systemd-analyze verify`, and the files docs/operations.md shows are the files in the
//! repository, byte for byte, so the guide cannot drift from them.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = "packaging/tagcast.service";
/// Where the unit expects the binary; `verify` refuses an ExecStart that does not exist.
const INSTALLED_BINARY: &str = "/usr/local/bin/tagcast";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !crate::skip::require(
        analyze.exists(),
        "/usr/bin/systemd-analyze (Debian: systemd)",
    ) {
        return;
    }
    // The same unit with the binary this build made in place of the installed one.
    let unit = read(UNIT);
    assert!(
        unit.contains(&format!("ExecStart={INSTALLED_BINARY} serve ")),
        "{UNIT} no longer runs {INSTALLED_BINARY} serve"
    );
    let unit = unit.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_tagcast"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tagcast.service");
    std::fs::write(&path, unit).unwrap();

    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `verify` exits 0 on unknown keys and bad values, which it only reports; and it may
    // report on the host's own units, which are not ours to judge.
    let about_ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tagcast.service"))
        .collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{text}",
        out.status
    );
}

#[test]
fn files_shown_in_the_operations_guide_are_the_files_in_the_repository() {
    let shown = marked_blocks(&read("docs/operations.md"));
    for file in [UNIT, "Dockerfile"] {
        assert!(
            shown.iter().any(|(path, _)| path == file),
            "docs/operations.md no longer shows {file} under a <!-- file: {file} --> marker"
        );
    }
    for (path, block) in &shown {
        let file = read(path);
        let first_difference = block
            .lines()
            .zip(file.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(block.lines().count().min(file.lines().count()));
        assert!(
            *block == file,
            "docs/operations.md shows {path} differently from the file (from its line {}): \
             copy the file into the guide again",
            first_difference + 1
        );
    }
}

/// (path, text) of every fenced block whose opening fence follows a
/// `<!-- file: PATH -->` line.
fn marked_blocks(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .trim()
            .strip_prefix("<!-- file:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let path = path.trim().to_owned();
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "<!-- file: {path} --> must be followed by a fenced block, found {fence:?}"
        );
        let mut text = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == "```" {
                closed = true;
                break;
            }
            text.push_str(line);
            text.push('\n');
        }
        assert!(closed, "the block showing {path} is never closed");
        blocks.push((path, text));
    }
    blocks
}
