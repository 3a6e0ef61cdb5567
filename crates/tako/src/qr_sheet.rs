//! The printable QR sheet of an event: one SVG and one PNG per printed stamp, and an
//! `index.html` with one card per booth (name, booth id, QR code, what to do).

use std::path::{Path, PathBuf};

use anyhow::Context;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// The side of a PNG in pixels, at least (about 5 cm at 250 dpi).
const PNG_PIXELS: u32 = 512;

/// A stamp's file name without extension: its booth id kept to safe characters, and the start
/// of the stamp's id so two booth ids that read alike never share a file.
pub fn file_stem(booth_id: &str, stamp_id: &str) -> String {
    let booth: String = booth_id
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let id: String = stamp_id.chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect();
    format!("{booth}-{id}")
}

fn qr(content: &str) -> anyhow::Result<QrCode> {
    // Level M: readable with a smudge or a sticker corner over it, still small for a URL.
    QrCode::with_error_correction_level(content.as_bytes(), EcLevel::M)
        .with_context(|| format!("{} characters do not fit a QR code", content.len()))
}

/// A QR code holding `content`, as an SVG document and a PNG file.
pub fn images(content: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let code = qr(content)?;
    let svg = code.render::<svg::Color>().min_dimensions(256, 256).build();
    let mut png = Vec::new();
    code.render::<image::Luma<u8>>()
        .min_dimensions(PNG_PIXELS, PNG_PIXELS)
        .build()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding a PNG")?;
    Ok((svg, png))
}

/// Writes `<stem>.svg` and `<stem>.png` holding `content` into `dir`.
pub fn write_qr(dir: &Path, stem: &str, content: &str) -> anyhow::Result<()> {
    let (svg, png) = images(content)?;
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let png_path = dir.join(format!("{stem}.png"));
    std::fs::write(&png_path, png).with_context(|| format!("writing {}", png_path.display()))?;
    Ok(())
}

/// What a card shows besides the booth's name and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardCode {
    /// A printed stamp whose QR files are in the folder.
    Printed { stem: String },
    /// A printed stamp whose code was issued by an earlier import into another folder.
    Elsewhere,
    /// A screen booth: its code is shown by its booth link.
    Screen,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    pub name: String,
    pub booth_id: String,
    pub code: CardCode,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes `index.html` (see `index_html`) into `dir`.
pub fn write_index(dir: &Path, event_name: &str, cards: &[Card]) -> anyhow::Result<PathBuf> {
    let path = dir.join("index.html");
    std::fs::write(&path, index_html(event_name, cards))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The printable sheet: one card per booth, two columns on A4, no card split across pages.
pub fn index_html(event_name: &str, cards: &[Card]) -> String {
    let mut body = String::new();
    for card in cards {
        let (picture, instruction) = match &card.code {
            CardCode::Printed { stem } => (
                format!(r#"<img src="{}.svg" alt="QR code">"#, escape(stem)),
                "Scan this code in the HoloQuest app to collect this booth's stamp.",
            ),
            CardCode::Elsewhere => (
                r#"<div class="missing">QR code issued by an earlier import</div>"#.to_owned(),
                "This booth's code is on the QR sheet of the import that created it \
                 (codes are shown only once).",
            ),
            CardCode::Screen => (
                r#"<div class="missing">Screen booth</div>"#.to_owned(),
                "This booth shows a changing code on a screen: open its booth link (from the \
                 dashboard, or tako stamps booth-link) on a phone or tablet.",
            ),
        };
        body.push_str(&format!(
            "<section class=\"card\"><h2>{}</h2><p class=\"booth\">Booth {}</p>{picture}\
             <p class=\"how\">{instruction}</p></section>\n",
            escape(&card.name),
            escape(&card.booth_id),
        ));
    }
    let title = escape(event_name);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}: booth QR codes</title><style>\
         body{{font-family:sans-serif;margin:1cm}}\
         .cards{{display:grid;grid-template-columns:1fr 1fr;gap:1cm}}\
         .card{{border:1px dashed #888;padding:.6cm;text-align:center;break-inside:avoid}}\
         .card h2{{margin:0 0 .2cm;font-size:1.3em}}.booth{{margin:0 0 .3cm;color:#444}}\
         .card img{{width:6cm;height:6cm}}.how{{font-size:.9em}}\
         .missing{{height:6cm;display:flex;align-items:center;justify-content:center;\
         border:1px solid #ccc;color:#666}}\
         @media print{{h1{{display:none}}body{{margin:0}}}}\
         </style></head><body><h1>{title}</h1><div class=\"cards\">\n{body}</div></body></html>\n"
    )
}

/// A new printed stamp's QR code for the sheet: its file name stem and what it holds.
pub struct NewCode {
    pub stem: String,
    pub content: String,
}

/// The QR sheet as a zip archive (deflate): `index.html`, and `<stem>.svg` and `<stem>.png`
/// for each of `codes` (the cards of those stamps should be `CardCode::Printed`).
pub fn zip(event_name: &str, cards: &[Card], codes: &[NewCode]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    archive.start_file("index.html", options)?;
    archive.write_all(index_html(event_name, cards).as_bytes())?;
    for code in codes {
        let (svg, png) = images(&code.content)?;
        archive.start_file(format!("{}.svg", code.stem), options)?;
        archive.write_all(svg.as_bytes())?;
        // A PNG is compressed already.
        archive.start_file(
            format!("{}.png", code.stem),
            options.compression_method(zip::CompressionMethod::Stored),
        )?;
        archive.write_all(&png)?;
    }
    Ok(archive.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe_and_distinct() {
        let id = "6f1c2a9e-0000-4000-8000-000000000000";
        assert_eq!(file_stem("4C/16 <x>", id), "4C_16__x_-6f1c2a9e");
        assert_ne!(file_stem("A/1", id), file_stem("A_1", "11111111-0000"));
        assert!(!file_stem("../../etc", id).contains('/'));
    }

    #[test]
    fn the_index_escapes_what_organisers_typed() {
        let dir = tempfile::tempdir().unwrap();
        let cards = [Card {
            name: "<script>alert(1)</script>".into(),
            booth_id: "A&B".into(),
            code: CardCode::Printed { stem: "a\"b".into() },
        }];
        let path = write_index(dir.path(), "Ev <1>", &cards).unwrap();
        let html = std::fs::read_to_string(path).unwrap();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;") && html.contains("A&amp;B"));
        assert!(html.contains("src=\"a&quot;b.svg\"") && html.contains("Ev &lt;1&gt;"));
    }
}
