//! A nickname that has been normalised, measured and moderated.
//!
//! Parsing happens once, at the edge; everything past it holds a `Nickname` that cannot be
//! invalid, so handlers and stores never validate again. The policy, in order:
//!
//! 1. NFKC (`unicode-normalization`): fullwidth `Ａｄｍｉｎ` is `Admin`, ligatures and
//!    compatibility forms become the letters they show; then surrounding whitespace is trimmed
//!    and a blank nickname is no nickname.
//! 2. Characters ([`characters`]): no control, bidi, line-breaking, invisible, private-use or
//!    unassigned characters, at most a few combining marks per letter, something visible.
//! 3. Length: 3 to 24 characters (the original allowed 20, but its own client generates
//!    `Confident_Mion_Family`, 21).
//! 4. Impersonation ([`reserved`]): not a confusable of a reserved name (TR39 skeletons).
//! 5. Profanity ([`profanity`]): rustrict with a multilingual word list, whole words.

mod characters;
mod profanity;
mod reserved;

use std::fmt;

use unicode_normalization::UnicodeNormalization;

pub use characters::MAX_MARKS_PER_BASE;

pub const MIN_CHARS: usize = 3;
pub const MAX_CHARS: usize = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nickname(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicknameError {
    #[error("Nickname must be between {MIN_CHARS} and {MAX_CHARS} characters long")]
    Length,
    #[error("Nickname must not contain control characters")]
    ControlCharacter,
    #[error("Nickname must not contain characters that change the direction of text")]
    BidiControl,
    #[error("Nickname must not contain line or paragraph separators")]
    LineBreak,
    #[error("Nickname must not contain invisible characters (zero-width spaces or joiners, soft hyphens, fillers)")]
    Invisible,
    #[error("Nickname must not contain private-use or unassigned characters")]
    Unassigned,
    #[error("Nickname must show at least one visible character")]
    Blank,
    #[error(
        "Nickname must not stack more than {MAX_MARKS_PER_BASE} combining marks on a character"
    )]
    CombiningMarks,
    #[error("Nickname looks like a name reserved for the organisers (admin, moderator, staff, …)")]
    Reserved,
    #[error("Nickname contains profanity")]
    Profanity,
}

/// The rules a nickname must pass; what varies between servers is which names are reserved.
#[derive(Debug, Clone, Default)]
pub struct NicknamePolicy {
    reserved: reserved::Reserved,
}

impl NicknamePolicy {
    /// The built-in reserved names (admin, moderator, staff, …) plus `extra` (the event's name, …).
    pub fn new<'a>(extra_reserved: impl IntoIterator<Item = &'a str>) -> NicknamePolicy {
        NicknamePolicy { reserved: reserved::Reserved::new(extra_reserved) }
    }

    /// Normalises and checks `input`; a blank nickname is no nickname (`Ok(None)`), as in the
    /// original.
    pub fn parse(&self, input: &str) -> Result<Option<Nickname>, NicknameError> {
        let normalised: String = input.nfkc().collect();
        let trimmed = normalised.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        characters::check(trimmed)?;
        let chars = trimmed.chars().count();
        if !(MIN_CHARS..=MAX_CHARS).contains(&chars) {
            return Err(NicknameError::Length);
        }
        if self.reserved.impersonated_by(trimmed) {
            return Err(NicknameError::Reserved);
        }
        if profanity::is_profane(trimmed) {
            return Err(NicknameError::Profanity);
        }
        Ok(Some(Nickname(trimmed.to_owned())))
    }
}

impl Nickname {
    /// [`NicknamePolicy::parse`] with the built-in reserved names only.
    pub fn parse(input: &str) -> Result<Option<Nickname>, NicknameError> {
        static DEFAULT: std::sync::LazyLock<NicknamePolicy> =
            std::sync::LazyLock::new(NicknamePolicy::default);
        DEFAULT.parse(input)
    }

    /// A nickname read back from storage is trusted as it is: it was valid when written, and
    /// rows written by the original server must stay readable even if our rules are stricter.
    pub fn from_stored(value: String) -> Nickname {
        Nickname(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nickname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_keeps_ordinary_names() {
        let nick = Nickname::parse("  Cruel_KFP ").unwrap().unwrap();
        assert_eq!(nick.as_str(), "Cruel_KFP");
        for ok in ["Ame", "Gura the shark", "ぺこら", "Kiara🔥🔥", "a_b_c_d_e_f_g_h_i_j_"] {
            assert!(Nickname::parse(ok).unwrap().is_some(), "{ok} should be accepted");
        }
    }

    #[test]
    fn blank_is_none() {
        assert_eq!(Nickname::parse(""), Ok(None));
        assert_eq!(Nickname::parse("   \t "), Ok(None));
    }

    #[test]
    fn length_is_counted_in_characters() {
        assert_eq!(Nickname::parse("ab"), Err(NicknameError::Length));
        assert_eq!(Nickname::parse(&"q".repeat(25)), Err(NicknameError::Length));
        assert!(Nickname::parse(&"q".repeat(24)).unwrap().is_some());
        // 20 multi-byte characters are still 20 characters.
        assert!(Nickname::parse(&"ぺ".repeat(24)).unwrap().is_some());
        assert_eq!(Nickname::parse(&"ぺ".repeat(25)), Err(NicknameError::Length));
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(Nickname::parse("abc\u{0}def"), Err(NicknameError::ControlCharacter));
        assert_eq!(Nickname::parse("abc\ndef"), Err(NicknameError::ControlCharacter));
        assert_eq!(Nickname::parse("abc\u{7f}d"), Err(NicknameError::ControlCharacter));
    }

    #[test]
    fn profanity_and_its_evasions_are_refused() {
        for bad in ["fuck", "shithead", "f u c k", "fuuuuck", "sh1t", "FUCK you", "a$$hole"] {
            assert_eq!(Nickname::parse(bad), Err(NicknameError::Profanity), "{bad}");
        }
    }
}
