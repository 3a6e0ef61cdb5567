//! Names only the staff may wear, and the look-alikes of them.
//!
//! Two strings that look alike have the same confusable skeleton (Unicode TR39, from
//! `unicode-security`): `аdmin` with a Cyrillic а, `Αdmin` with a Greek Alpha and `admin` all
//! map to one. NFKC, applied before, already folded fullwidth `Ａｄｍｉｎ`. On top of the
//! skeleton this folds case and the digits people type for letters (`adm1n`, `H0loQuest`).
//! A nickname is refused when a run of its words, joined, is a reserved name: `Admin`,
//! `Tako Staff`, `a d m i n`, `TakoStaff`; `Badminton` is not.

use unicode_security::skeleton;

/// Reserved whatever the configuration says.
pub const BUILT_IN: &[&str] = &[
    "admin",
    "administrator",
    "moderator",
    "mod",
    "staff",
    "operator",
    "official",
    "support",
    "system",
    "root",
    "holoquest",
];

/// What a name looks like, once case, confusables and leetspeak are set aside.
fn fold(text: &str) -> String {
    let lower = text.to_lowercase();
    skeleton(&lower)
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '1' | 'l' | '|' | '!' => 'i',
            '0' => 'o',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            other => other,
        })
        .collect()
}

/// The words of `text`: split at anything that is not a letter, a digit or a leetspeak
/// stand-in, and where a lower-case letter meets an upper-case one (`TakoStaff`).
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in text.chars() {
        let part_of_word = c.is_alphanumeric() || matches!(c, '|' | '!' | '@' | '$');
        let boundary = !part_of_word || (previous_lower && c.is_uppercase());
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if part_of_word {
            current.push(c);
        }
        previous_lower = c.is_lowercase();
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Reserved names in folded form.
#[derive(Debug, Clone)]
pub struct Reserved {
    folded: Vec<String>,
}

impl Reserved {
    /// The built-in names plus `extra` (the event's name, the team's, …).
    pub fn new<'a>(extra: impl IntoIterator<Item = &'a str>) -> Reserved {
        let mut folded: Vec<String> = BUILT_IN
            .iter()
            .copied()
            .chain(extra)
            .map(|name| words(name).iter().map(|w| fold(w)).collect::<String>())
            .filter(|f| !f.is_empty())
            .collect();
        folded.sort();
        folded.dedup();
        Reserved { folded }
    }

    /// Whether `text` (NFKC-normalised) impersonates a reserved name.
    pub fn impersonated_by(&self, text: &str) -> bool {
        let words: Vec<String> = words(text).iter().map(|w| fold(w)).collect();
        for start in 0..words.len() {
            let mut joined = String::new();
            for word in &words[start..] {
                joined.push_str(word);
                if self.folded.binary_search(&joined).is_ok() {
                    return true;
                }
                if joined.len() > self.longest() {
                    break;
                }
            }
        }
        false
    }

    fn longest(&self) -> usize {
        self.folded.iter().map(String::len).max().unwrap_or(0)
    }
}

impl Default for Reserved {
    fn default() -> Self {
        Reserved::new([])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impersonations_are_caught() {
        let reserved = Reserved::new(["Dokomi 2025"]);
        for bad in [
            "admin",
            "ADMIN",
            "\u{430}dmin",
            "\u{391}dmin",
            "adm1n",
            "a d m i n",
            "Admin_Team",
            "The Admin",
            "HoloQuestStaff",
            "Holo Staff",
            "m0derator",
            "H0loQuest",
            "Holo Quest",
            "dokomi2025",
            "DOKOMI 2025",
        ] {
            assert!(reserved.impersonated_by(bad), "{bad:?}");
        }
    }

    #[test]
    fn ordinary_names_are_not_impersonations() {
        let reserved = Reserved::default();
        for ok in
            ["Badminton", "Takodachi", "Systematic", "Modest Mouse", "Staffordshire", "Rooted"]
        {
            assert!(!reserved.impersonated_by(ok), "{ok:?}");
        }
    }
}
