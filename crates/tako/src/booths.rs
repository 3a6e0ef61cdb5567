//! A CSV of booths, as organisers keep it (the columns of the 2025 client's stamp table plus
//! `mode`), read into checked stamp drafts. Every row is checked before anything is imported:
//! a file with one bad line imports nothing, and the error names the line.

use std::collections::HashMap;

use crate::rally::{StampDraft, StampFields, StampMode};

/// The largest CSV accepted (a convention has dozens of booths, not thousands).
pub const MAX_CSV_BYTES: usize = 4 * 1024 * 1024;
/// The most rows accepted.
pub const MAX_BOOTHS: usize = 2000;
/// Errors listed at most (the rest are counted).
const MAX_ERRORS_SHOWN: usize = 20;

const COLUMNS: [&str; 9] = [
    "name",
    "booth_id",
    "description",
    "external_url",
    "image_url",
    "nsfw",
    "visible",
    "is_visible",
    "mode",
];

/// One checked row.
#[derive(Clone, Debug, PartialEq)]
pub struct Booth {
    /// The line it starts on (1 = the header).
    pub line: u64,
    /// Set: the key an import matches existing stamps by (with the event).
    pub booth_id: String,
    pub fields: StampFields,
    pub mode: StampMode,
    /// The file's columns (`visible` for `is_visible`): an update changes only these, so a
    /// file without, say, `description` leaves descriptions as they are.
    pub columns: Vec<&'static str>,
}

/// Why a file was refused: every problem found, each with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvErrors(pub Vec<String>);

impl std::fmt::Display for CsvErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the CSV has {} problem(s); nothing was imported:", self.0.len())?;
        for error in self.0.iter().take(MAX_ERRORS_SHOWN) {
            writeln!(f, "  {error}")?;
        }
        if self.0.len() > MAX_ERRORS_SHOWN {
            writeln!(f, "  … and {} more", self.0.len() - MAX_ERRORS_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for CsvErrors {}

fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "y" => Some(true),
        "false" | "no" | "0" | "n" => Some(false),
        _ => None,
    }
}

/// Reads and checks a whole file. Columns `name` and `booth_id` are required, the others
/// optional; an unknown column is an error (a misspelt `visible` must not silently show a
/// hidden booth). Empty cells mean "not set" (booleans: their default).
pub fn read(bytes: &[u8]) -> Result<Vec<Booth>, CsvErrors> {
    if bytes.len() > MAX_CSV_BYTES {
        return Err(CsvErrors(vec![format!(
            "the file is {} bytes; at most {MAX_CSV_BYTES} are accepted",
            bytes.len()
        )]));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes);
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => return Err(CsvErrors(vec![format!("line 1: {error}")])),
    };
    let mut errors = Vec::new();
    let mut column = HashMap::new();
    for (index, header) in headers.iter().enumerate() {
        let header = header.trim();
        if !COLUMNS.contains(&header) {
            errors
                .push(format!("line 1: unknown column {header:?} (known: {})", COLUMNS.join(", ")));
        } else if column.insert(header.to_owned(), index).is_some() {
            errors.push(format!("line 1: column {header:?} appears twice"));
        }
    }
    for required in ["name", "booth_id"] {
        if !column.contains_key(required) {
            errors.push(format!("line 1: the column {required:?} is missing"));
        }
    }
    if column.contains_key("visible") && column.contains_key("is_visible") {
        errors.push("line 1: give `visible` or `is_visible`, not both".to_owned());
    }
    if !errors.is_empty() {
        return Err(CsvErrors(errors));
    }
    let columns: Vec<&'static str> = COLUMNS
        .iter()
        .filter(|c| column.contains_key(**c))
        .map(|c| if *c == "is_visible" { "visible" } else { *c })
        .collect();
    let mut booths = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = error.position().map(|p| p.line()).unwrap_or(0);
                errors.push(format!("line {line}: {error}"));
                // A broken quote or row length leaves the rest unreadable.
                break;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if booths.len() + errors.len() >= MAX_BOOTHS {
            errors.push(format!("line {line}: more than {MAX_BOOTHS} booths"));
            break;
        }
        let cell = |name: &str| -> Option<String> {
            let value = column.get(name).and_then(|&i| record.get(i))?.trim();
            (!value.is_empty()).then(|| value.to_owned())
        };
        let flag = |name: &str, errors: &mut Vec<String>| -> Option<bool> {
            let value = cell(name)?;
            let parsed = boolean(&value);
            if parsed.is_none() {
                errors.push(format!("line {line}: {name} {value:?} is not true or false"));
            }
            parsed
        };
        let nsfw = flag("nsfw", &mut errors);
        let visible = flag("visible", &mut errors).or_else(|| flag("is_visible", &mut errors));
        let Some(booth_id) = cell("booth_id") else {
            errors.push(format!("line {line}: booth_id is empty (it is the import's key)"));
            continue;
        };
        if let Some(first) = seen.insert(booth_id.clone(), line) {
            errors.push(format!("line {line}: booth_id {booth_id:?} already on line {first}"));
            continue;
        }
        let draft = StampDraft {
            name: cell("name").unwrap_or_default(),
            booth_id: Some(booth_id.clone()),
            description: cell("description"),
            image_url: cell("image_url"),
            external_url: cell("external_url"),
            nsfw,
            visible,
            mode: cell("mode"),
        };
        match draft.check() {
            Ok((fields, mode)) => {
                booths.push(Booth { line, booth_id, fields, mode, columns: columns.clone() })
            }
            Err(error) => {
                errors.push(format!("line {line}: {}: {}", error.attribute, error.detail))
            }
        }
    }
    if booths.is_empty() && errors.is_empty() {
        errors.push("the file has no booths (only a header, or nothing)".to_owned());
    }
    if errors.is_empty() {
        Ok(booths)
    } else {
        Err(CsvErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(csv: &str) -> Vec<String> {
        read(csv.as_bytes()).unwrap_err().0
    }

    #[test]
    fn reads_the_2025_columns() {
        let csv = "\u{feff}name,booth_id,description,external_url,image_url,nsfw,visible,mode\n\
                   Booth A,A1,\"Prints, stickers\",https://a.example,,no,yes,\n\
                   Booth B,B2,,,,1,0,screen\n";
        let booths = read(csv.as_bytes()).unwrap();
        assert_eq!(booths.len(), 2);
        assert_eq!(booths[0].line, 2);
        assert_eq!(booths[0].booth_id, "A1");
        assert_eq!(booths[0].fields.description.as_deref(), Some("Prints, stickers"));
        assert_eq!(booths[0].fields.external_url.as_deref(), Some("https://a.example"));
        assert!(booths[0].fields.visible && !booths[0].fields.nsfw);
        assert_eq!(booths[0].mode, StampMode::Printed);
        assert_eq!(booths[1].mode, StampMode::Screen);
        assert_eq!(booths[1].columns.len(), 8);
        let few = read(b"booth_id,name,is_visible\nA1,A,no\n").unwrap();
        assert_eq!(few[0].columns, ["name", "booth_id", "visible"]);
        assert!(!few[0].fields.visible);
        assert!(!booths[1].fields.visible && booths[1].fields.nsfw);
    }

    #[test]
    fn every_bad_line_is_named() {
        let found =
            errors("name,booth_id,nsfw,mode\nA,A1,maybe,\n,B2,,\nC,A1,,\nD,D4,,paper\nE,,,\n");
        assert_eq!(
            found,
            [
                "line 2: nsfw \"maybe\" is not true or false",
                "line 3: name: must be 1 to 200 characters",
                "line 4: booth_id \"A1\" already on line 2",
                "line 5: mode: must be `printed` or `screen`",
                "line 6: booth_id is empty (it is the import's key)",
            ],
        );
    }

    #[test]
    fn headers_and_shape_are_checked() {
        assert_eq!(errors("name,booth,visable\n"), [
            "line 1: unknown column \"booth\" (known: name, booth_id, description, external_url, image_url, nsfw, visible, is_visible, mode)",
            "line 1: unknown column \"visable\" (known: name, booth_id, description, external_url, image_url, nsfw, visible, is_visible, mode)",
            "line 1: the column \"booth_id\" is missing",
        ]);
        let short = errors("name,booth_id\nA,A1\nB\n");
        assert_eq!(short.len(), 1);
        assert!(short[0].starts_with("line 3: "), "{short:?}");
        assert_eq!(
            errors("name,booth_id\n"),
            ["the file has no booths (only a header, or nothing)"]
        );
        let js = errors("name,booth_id,image_url\nA,A1,javascript:alert(1)\n");
        assert_eq!(js, ["line 2: image_url: must be an http:// or https:// URL"]);
        assert!(errors(&"x".repeat(MAX_CSV_BYTES + 1))[0].contains("at most"));
    }
}
