//! Importing a CSV of booths into an event: the one code path behind the dashboard's upload and
//! `tako stamps import` (which sends its file to the server). The whole file and the event's
//! stamps are checked first, so a file with one bad line imports nothing; then the booths the
//! event knows (by booth id) are updated, in the file's columns only, and the others created.
//! A new printed stamp's code is returned once, here, for its QR files.

use std::collections::HashMap;

use crate::accounts::Timestamp;
use crate::booths::{self, Booth, CsvErrors};
use crate::rally::{
    EventId, Rally, RallyStore, Stamp, StampChanges, StampDraft, StampId, StampMode,
};
use crate::storage::StoreError;

/// One booth of the file, as imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedBooth {
    /// The file's line.
    pub line: u64,
    pub booth_id: String,
    pub name: String,
    pub stamp: StampId,
    pub mode: StampMode,
    /// Created by this import (else updated).
    pub created: bool,
    /// For a printed stamp this import created: what its QR code holds (shown only now).
    pub qr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub event_name: String,
    /// In the file's order.
    pub booths: Vec<ImportedBooth>,
}

impl Imported {
    pub fn created(&self) -> usize {
        self.booths.iter().filter(|b| b.created).count()
    }

    pub fn updated(&self) -> usize {
        self.booths.len() - self.created()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no such event")]
    NoEvent,
    /// The file, or its booths against the event's stamps: every problem with its line.
    /// Nothing was imported.
    #[error("{0}")]
    Invalid(CsvErrors),
    /// The database failed before anything was written.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
    /// The database failed part way: the booths before `line` were imported.
    #[error("line {line}: {source}")]
    Partial {
        line: u64,
        #[source]
        source: StoreError,
    },
}

/// What an update of a known booth changes: the file's columns, nothing else.
fn changes(booth: &Booth) -> StampChanges {
    let f = &booth.fields;
    let has = |column: &str| booth.columns.contains(&column);
    StampChanges {
        name: has("name").then(|| f.name.clone()),
        booth_id: None,
        description: has("description").then(|| f.description.clone()),
        image_url: has("image_url").then(|| f.image_url.clone()),
        external_url: has("external_url").then(|| f.external_url.clone()),
        nsfw: has("nsfw").then_some(f.nsfw),
        visible: has("visible").then_some(f.visible),
    }
}

/// Reads `csv` (at most `booths::MAX_CSV_BYTES`) and imports it into `event`.
pub async fn import<S: RallyStore + ?Sized>(
    store: &S,
    rally: &Rally,
    event: &EventId,
    csv: &[u8],
) -> Result<Imported, ImportError> {
    let Some(stored_event) = store.event(event).await? else {
        return Err(ImportError::NoEvent);
    };
    let booths = booths::read(csv).map_err(ImportError::Invalid)?;
    let mut known: HashMap<String, Stamp> = HashMap::new();
    for stamp in store.stamps(event, true).await? {
        if let Some(booth_id) = stamp.booth_id.clone() {
            known.insert(booth_id, stamp);
        }
    }
    let conflicts: Vec<String> = booths
        .iter()
        .filter_map(|b| {
            let stamp = known.get(&b.booth_id)?;
            (stamp.mode() != b.mode).then(|| {
                format!(
                    "line {}: booth {:?} is a {} stamp; a stamp's mode cannot change (delete it, \
                     or give the new one another booth_id)",
                    b.line,
                    b.booth_id,
                    stamp.mode().as_str()
                )
            })
        })
        .collect();
    if !conflicts.is_empty() {
        return Err(ImportError::Invalid(CsvErrors(conflicts)));
    }
    // Every update is checked before the first write (the rows were checked as drafts; an
    // update is checked again as a change of the stored stamp).
    let now = Timestamp::now();
    let mut plan = Vec::with_capacity(booths.len());
    let mut errors = Vec::new();
    for booth in &booths {
        match known.get(&booth.booth_id) {
            Some(stamp) => match stamp.apply(changes(booth), now) {
                Ok(updated) => plan.push((booth, Some(updated))),
                Err(e) => {
                    errors.push(format!("line {}: {}: {}", booth.line, e.attribute, e.detail))
                }
            },
            None => plan.push((booth, None)),
        }
    }
    if !errors.is_empty() {
        return Err(ImportError::Invalid(CsvErrors(errors)));
    }

    let mut imported = Vec::with_capacity(plan.len());
    for (index, (booth, update)) in plan.into_iter().enumerate() {
        // Created in the file's order (stamps are listed by creation time).
        let now = Timestamp::from_micros(now.as_micros() + index as i64);
        let at_line = |source| ImportError::Partial { line: booth.line, source };
        let imported_as = |stamp: &Stamp, created: bool, qr: Option<String>| ImportedBooth {
            line: booth.line,
            booth_id: booth.booth_id.clone(),
            name: stamp.name.clone(),
            stamp: stamp.id,
            mode: booth.mode,
            created,
            qr,
        };
        let entry = match update {
            Some(stamp) => {
                if !store.save_stamp(&stamp).await.map_err(at_line)? {
                    return Err(ImportError::NoEvent);
                }
                imported_as(&stamp, false, None)
            }
            None => {
                let f = booth.fields.clone();
                let draft = StampDraft {
                    name: f.name,
                    booth_id: f.booth_id,
                    description: f.description,
                    image_url: f.image_url,
                    external_url: f.external_url,
                    nsfw: Some(f.nsfw),
                    visible: Some(f.visible),
                    mode: Some(booth.mode.as_str().to_owned()),
                };
                let (stamp, code) = rally.new_stamp(event.clone(), draft, now).map_err(|e| {
                    ImportError::Invalid(CsvErrors(vec![format!(
                        "line {}: {}: {}",
                        booth.line, e.attribute, e.detail
                    )]))
                })?;
                if !store.create_stamp(&stamp).await.map_err(at_line)? {
                    return Err(ImportError::NoEvent);
                }
                imported_as(&stamp, true, code.as_deref().map(|c| rally.qr(c)))
            }
        };
        imported.push(entry);
    }
    Ok(Imported { event_name: stored_event.name, booths: imported })
}
