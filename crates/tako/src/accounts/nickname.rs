//! A nickname that has been trimmed, measured and checked for profanity.
//!
//! Parsing happens once, at the edge; everything past it holds a `Nickname` that cannot be
//! invalid, so handlers and stores never validate again.

use std::fmt;

use rustrict::{Censor, Type};

pub const MIN_CHARS: usize = 3;
pub const MAX_CHARS: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nickname(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicknameError {
    #[error("Nickname must be between {MIN_CHARS} and {MAX_CHARS} characters long")]
    Length,
    #[error("Nickname must not contain control characters")]
    ControlCharacter,
    #[error("Nickname contains profanity")]
    Profanity,
}

impl Nickname {
    /// Trims `input`; a blank nickname is no nickname (`Ok(None)`), as in the original.
    pub fn parse(input: &str) -> Result<Option<Nickname>, NicknameError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NicknameError::ControlCharacter);
        }
        let chars = trimmed.chars().count();
        if !(MIN_CHARS..=MAX_CHARS).contains(&chars) {
            return Err(NicknameError::Length);
        }
        if is_profane(trimmed) {
            return Err(NicknameError::Profanity);
        }
        Ok(Some(Nickname(trimmed.to_owned())))
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

/// Profane, offensive or sexual at moderate severity or worse; rustrict also undoes the usual
/// evasions (leetspeak, separators, repeated letters, confusable Unicode).
fn is_profane(text: &str) -> bool {
    let analysis = Censor::from_str(text).analyze();
    analysis.is((Type::PROFANE | Type::OFFENSIVE | Type::SEXUAL) & Type::MODERATE_OR_HIGHER)
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
        assert_eq!(Nickname::parse(&"q".repeat(21)), Err(NicknameError::Length));
        assert!(Nickname::parse(&"q".repeat(20)).unwrap().is_some());
        // 20 multi-byte characters are still 20 characters.
        assert!(Nickname::parse(&"ぺ".repeat(20)).unwrap().is_some());
        assert_eq!(Nickname::parse(&"ぺ".repeat(21)), Err(NicknameError::Length));
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
