//! The nickname policy measured on the committed corpora: names a moderator would accept
//! (`corpus/nicknames-accepted.txt`) and names they would refuse (`corpus/nicknames-refused.txt`).
//! Prints both error rates (`cargo test -p tako --test nickname_policy -- --nocapture`) and fails
//! above the thresholds below.

use tako::accounts::NicknamePolicy;

/// Accepted names refused, at most (a fair name refused is a visitor who must pick another).
const MAX_FALSE_POSITIVE_RATE: f64 = 0.02;
/// Refused names accepted, at most.
const MAX_FALSE_NEGATIVE_RATE: f64 = 0.05;

/// The names of a corpus file: one per line, `#` comments and blank lines skipped, `\u{…}`
/// escapes decoded.
fn corpus(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(unescape).collect()
}

fn unescape(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("\\u{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let end = after.find('}').expect("an escape ends with }");
        let code = u32::from_str_radix(&after[..end], 16).expect("a hex code point");
        out.push(char::from_u32(code).expect("a valid code point"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn false_positive_and_false_negative_rates_stay_under_their_thresholds() {
    let policy = NicknamePolicy::new(["Dokomi 2025"]);
    let accepted = corpus(include_str!("corpus/nicknames-accepted.txt"));
    let refused = corpus(include_str!("corpus/nicknames-refused.txt"));
    assert!(accepted.len() >= 200 && refused.len() >= 140, "the corpora went missing");

    let false_positives: Vec<(&String, String)> = accepted
        .iter()
        .filter_map(|name| match policy.parse(name) {
            Ok(Some(_)) => None,
            Ok(None) => Some((name, "blank".to_owned())),
            Err(e) => Some((name, e.to_string())),
        })
        .collect();
    let false_negatives: Vec<&String> =
        refused.iter().filter(|name| policy.parse(name).is_ok()).collect();

    let fp_rate = false_positives.len() as f64 / accepted.len() as f64;
    let fn_rate = false_negatives.len() as f64 / refused.len() as f64;
    println!(
        "nickname policy: false positives {}/{} = {:.1}%, false negatives {}/{} = {:.1}%",
        false_positives.len(),
        accepted.len(),
        fp_rate * 100.0,
        false_negatives.len(),
        refused.len(),
        fn_rate * 100.0
    );
    for (name, why) in &false_positives {
        println!("  refused but fair: {name:?} ({why})");
    }
    for name in &false_negatives {
        println!("  accepted but should not be: {name:?}");
    }
    assert!(fp_rate <= MAX_FALSE_POSITIVE_RATE, "false positive rate {fp_rate:.3}");
    assert!(fn_rate <= MAX_FALSE_NEGATIVE_RATE, "false negative rate {fn_rate:.3}");
}
