//! "Did you mean": the known name closest to a misspelt one (an Action for `tagcast call`,
//! a body field for the unknown-field error).

/// The name of `known` that `name` most likely meant: the same letters in another case,
/// else the one fewest edits away (case aside) when that is at most `max_edits`.
pub fn closest<'a>(
    name: &str,
    known: impl IntoIterator<Item = &'a str>,
    max_edits: usize,
) -> Option<&'a str> {
    // Names of our own are short; a long input is nobody's typo (and costly to compare).
    if name.len() > 256 {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        if k.eq_ignore_ascii_case(name) {
            return Some(k);
        }
        let d = strsim::levenshtein(&lower, &k.to_ascii_lowercase());
        if d <= max_edits && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_first_then_the_fewest_edits_within_the_limit() {
        let known = ["Tags", "TagOp", "Filter", "NickName"];
        assert_eq!(closest("tags", known, 2), Some("Tags"));
        assert_eq!(closest("Tag", known, 2), Some("Tags"));
        assert_eq!(closest("Nickname", known, 2), Some("NickName"));
        assert_eq!(closest("filtre", known, 2), Some("Filter"));
        assert_eq!(closest("Everything", known, 2), None);
    }
}
