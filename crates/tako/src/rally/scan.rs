//! A scan, checked: which stamp a code belongs to, whether it still counts, and the progress
//! it makes.

use uuid::Uuid;

use super::codes::{qr_content, CodeStep, Freshness, RallySecret, StampCode};
use super::{Event, EventId, RallyError, RallyStore, Scan, Stamp, StampDraft, StampSecret};
use crate::accounts::{Timestamp, UserId};
use crate::storage::StoreError;

/// A user's progress in an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub collected: u64,
    pub required: u32,
    pub completed: bool,
}

impl Progress {
    pub fn new(collected: u64, required: u32) -> Progress {
        Progress { collected, required, completed: collected >= u64::from(required) }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScanOutcome {
    pub scan: Scan,
    pub stamp: Stamp,
    pub event: Event,
    pub progress: Progress,
    /// First time this user scanned this stamp.
    pub new: bool,
    /// This scan completed the event for the user, for the first time ever.
    pub completed_now: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("no stamp has this code")]
    UnknownCode,
    #[error("this code is no longer shown")]
    CodeExpired,
    #[error("the event is not open")]
    EventClosed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The screen code a booth shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentCode {
    pub code: String,
    /// What the QR code holds (`TAKO_SCAN_URL` with the code, or the code).
    pub qr: String,
    /// Accepted until then (the end of the next step: the previous step's code still counts).
    pub valid_until: Timestamp,
    /// When the booth should show the next one.
    pub next_at: Timestamp,
}

/// The rally's rules with its settings: the secret, the screen step and the scan URL.
#[derive(Clone, Debug)]
pub struct Rally {
    secret: RallySecret,
    step: CodeStep,
    scan_url: Option<String>,
}

impl Rally {
    pub fn new(secret: RallySecret, step: CodeStep, scan_url: Option<String>) -> Rally {
        Rally { secret, step, scan_url }
    }

    /// With the configured secret, or the one the database keeps (made on first use).
    pub async fn open<S: RallyStore + ?Sized>(
        store: &S,
        configured: Option<&str>,
        step: CodeStep,
        scan_url: Option<String>,
    ) -> Result<Rally, StoreError> {
        let secret = match configured {
            Some(secret) => secret.as_bytes().to_vec(),
            None => store.rally_secret(&RallySecret::generate_hex()).await?.into_bytes(),
        };
        Ok(Rally::new(RallySecret::new(secret), step, scan_url))
    }

    pub fn step(&self) -> CodeStep {
        self.step
    }

    /// A new booth key for a screen stamp's page, and what to store for it.
    pub fn new_booth_key(&self) -> (String, String) {
        self.secret.new_booth_key()
    }

    /// What the database keeps of `key`.
    pub fn booth_key_hash(&self, key: &str) -> String {
        self.secret.booth_key_hash(key)
    }

    /// What a QR code shows for `code`.
    pub fn qr(&self, code: &str) -> String {
        qr_content(self.scan_url.as_deref(), code)
    }

    /// A checked new stamp of `event`, and its printed code (to show the operator once).
    pub fn new_stamp(
        &self,
        event: EventId,
        draft: StampDraft,
        now: Timestamp,
    ) -> Result<(Stamp, Option<String>), RallyError> {
        let (fields, mode) = draft.check()?;
        let (secret, code) = match mode {
            super::StampMode::Printed => {
                let (code, secret) = self.secret.new_printed();
                (secret, Some(code))
            }
            super::StampMode::Screen => (self.secret.new_screen(), None),
        };
        Ok((Stamp::new(event, fields, secret, now), code))
    }

    /// The code a screen stamp shows at `now`; `None` for a printed stamp.
    pub fn screen_code(&self, stamp: &Stamp, now: Timestamp) -> Option<CurrentCode> {
        let StampSecret::Screen { salt } = &stamp.secret else { return None };
        let step = self.step.at(now.as_micros());
        let code = self.secret.screen_code(salt, stamp.id, step);
        let seconds = self.step.seconds();
        let at = |s: u64| Timestamp::from_micros((s.saturating_mul(seconds) * 1_000_000) as i64);
        Some(CurrentCode {
            qr: self.qr(&code),
            code,
            valid_until: at(step + 2),
            next_at: at(step + 1),
        })
    }

    /// The stamp `scanned` names, if any and if its code still counts.
    async fn stamp_for<S: RallyStore + ?Sized>(
        &self,
        store: &S,
        scanned: &str,
        now: Timestamp,
    ) -> Result<Stamp, ScanError> {
        match StampCode::read(scanned).ok_or(ScanError::UnknownCode)? {
            StampCode::Printed(code) => store
                .stamp_by_code_hash(&self.secret.printed_hash(&code))
                .await?
                .ok_or(ScanError::UnknownCode),
            StampCode::Screen(code) => {
                let stamp = store.stamp(code.stamp).await?.ok_or(ScanError::UnknownCode)?;
                let StampSecret::Screen { salt } = &stamp.secret else {
                    return Err(ScanError::UnknownCode);
                };
                if !self.secret.screen_code_valid(salt, &code) {
                    return Err(ScanError::UnknownCode);
                }
                match code.freshness(self.step.at(now.as_micros())) {
                    Freshness::Current => Ok(stamp),
                    Freshness::Expired => Err(ScanError::CodeExpired),
                    Freshness::Unknown => Err(ScanError::UnknownCode),
                }
            }
        }
    }

    /// Verifies what `user` scanned and records it once. The caller has checked that the user
    /// exists.
    pub async fn scan<S: RallyStore + ?Sized>(
        &self,
        store: &S,
        user: UserId,
        scanned: &str,
        now: Timestamp,
    ) -> Result<ScanOutcome, ScanError> {
        let stamp = self.stamp_for(store, scanned, now).await?;
        // Cascades keep a stamp from outliving its event; a concurrent delete is "unknown".
        let event = store.event(&stamp.event_id).await?.ok_or(ScanError::UnknownCode)?;
        if !event.is_open_at(now) {
            return Err(ScanError::EventClosed);
        }
        let scan = Scan {
            id: Uuid::new_v4(),
            user_id: user,
            stamp_id: stamp.id,
            event_id: event.id.clone(),
            scanned_at: now,
        };
        let recorded = store.record_scan(&scan).await?;
        let progress = Progress::new(recorded.collected, event.stamps_required);
        let completed_now = recorded.new
            && progress.completed
            && store.complete(user, &event.id, recorded.scan.scanned_at).await?;
        Ok(ScanOutcome {
            scan: recorded.scan,
            stamp,
            event,
            progress,
            new: recorded.new,
            completed_now,
        })
    }
}
