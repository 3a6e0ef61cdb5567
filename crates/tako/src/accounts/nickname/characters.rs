//! Which characters a nickname may hold, and whether it shows anything at all.
//!
//! A nickname is shown to everyone, so nothing in it may be invisible, change the direction of
//! the text around it (`\u{202e}kcuf` renders as profanity), break the line, or stack marks
//! over its neighbours. Emoji keep what they need: a presentation selector after an emoji, a
//! zero-width joiner between two, tag characters after a flag.
//!
//! Categories come from `unicode-properties` (General_Category, emoji data); the
//! Default_Ignorable_Code_Point test from `unicode-security` (UTS #39's identifier types).

use unicode_properties::emoji::UnicodeEmoji;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_security::general_security_profile::IdentifierType;
use unicode_security::GeneralSecurityProfile;

use super::NicknameError;

/// Combining marks allowed in a row on one base character (Thai and Devanagari need two or
/// three; "Zalgo" text uses dozens).
pub const MAX_MARKS_PER_BASE: usize = 3;

/// Characters that are assigned, not ignorable, yet draw nothing (Braille blank, Hangul
/// fillers): a name made of them looks empty.
const BLANK_LOOKING: &[char] = &['\u{2800}', '\u{3164}', '\u{115f}', '\u{1160}', '\u{ffa0}'];

/// Explicit embeddings, overrides and isolates, and the implicit marks (UAX #9).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn is_mark(c: char) -> bool {
    matches!(c.general_category(), GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark)
}

fn is_default_ignorable(c: char) -> bool {
    c.identifier_type() == Some(IdentifierType::Default_Ignorable)
}

/// Part of an emoji sequence: allowed only where such a sequence uses it.
fn emoji_glue_allowed(c: char, previous: Option<char>, next: Option<char>) -> bool {
    let emoji = |c: Option<char>| c.is_some_and(|c| c.is_emoji_char() && !c.is_ascii());
    match c {
        // VS15/VS16 pick the text or emoji look of the emoji before them.
        '\u{fe0e}' | '\u{fe0f}' => emoji(previous),
        // A joiner glues two emoji into one picture (👩‍💻); elsewhere it hides.
        '\u{200d}' => emoji(previous) && (emoji(next) || next == Some('\u{fe0f}')),
        // Subdivision flags: 🏴 then tag letters, ended by a cancel tag.
        '\u{e0020}'..='\u{e007f}' => {
            previous.is_some_and(|p| p == '\u{1f3f4}' || ('\u{e0020}'..='\u{e007f}').contains(&p))
        }
        _ => false,
    }
}

/// Refuses what must never appear in a nickname (`text` is NFKC-normalised and trimmed).
pub fn check(text: &str) -> Result<(), NicknameError> {
    let chars: Vec<char> = text.chars().collect();
    let mut marks_in_a_row = 0;
    let mut visible = false;
    for (i, &c) in chars.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        let category = c.general_category();
        if is_bidi_control(c) {
            return Err(NicknameError::BidiControl);
        }
        match category {
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                return Err(NicknameError::LineBreak)
            }
            GeneralCategory::Control => return Err(NicknameError::ControlCharacter),
            GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
            | GeneralCategory::Surrogate => return Err(NicknameError::Unassigned),
            _ => {}
        }
        if (category == GeneralCategory::Format || is_default_ignorable(c))
            && !emoji_glue_allowed(c, previous, next)
        {
            return Err(NicknameError::Invisible);
        }
        if is_mark(c) && !emoji_glue_allowed(c, previous, next) {
            marks_in_a_row += 1;
            if marks_in_a_row > MAX_MARKS_PER_BASE {
                return Err(NicknameError::CombiningMarks);
            }
        } else {
            marks_in_a_row = 0;
        }
        if !c.is_whitespace()
            && !is_mark(c)
            && category != GeneralCategory::Format
            && !is_default_ignorable(c)
            && !BLANK_LOOKING.contains(&c)
        {
            visible = true;
        }
    }
    if !visible {
        return Err(NicknameError::Blank);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_and_emoji_pass() {
        for ok in [
            "Cruel_KFP",
            "宝鐘マリン",
            "नमस्ते",
            "กิ่ง",
            "Kiara🔥",
            "❤\u{fe0f}Love",
            "👩\u{200d}💻 dev",
            "🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f} Scot",
            "Café",
            "e\u{301}\u{302}\u{303}",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn hidden_and_direction_changing_characters_are_refused() {
        let cases = [
            ("\u{202e}kcuf", NicknameError::BidiControl),
            ("ab\u{2066}c\u{2069}", NicknameError::BidiControl),
            ("\u{200f}admin", NicknameError::BidiControl),
            ("ab\u{2028}cd", NicknameError::LineBreak),
            ("ab\u{2029}cd", NicknameError::LineBreak),
            ("ab\ncd", NicknameError::ControlCharacter),
            ("zero\u{200b}width", NicknameError::Invisible),
            ("a\u{200d}b", NicknameError::Invisible),
            ("soft\u{ad}hyphen", NicknameError::Invisible),
            ("bom\u{feff}x", NicknameError::Invisible),
            ("abc\u{fe0f}", NicknameError::Invisible),
            ("x\u{e0041}y", NicknameError::Invisible),
            ("pua\u{e000}", NicknameError::Unassigned),
            ("\u{2800}\u{2800}\u{2800}", NicknameError::Blank),
            ("\u{301}\u{301}\u{301}", NicknameError::Blank),
            ("a\u{301}\u{301}\u{301}\u{301}", NicknameError::CombiningMarks),
            ("\u{3164}\u{3164}\u{3164}", NicknameError::Invisible),
        ];
        for (text, error) in cases {
            assert_eq!(check(text), Err(error), "{text:?}");
        }
    }
}
