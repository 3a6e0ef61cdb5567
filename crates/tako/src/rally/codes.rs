//! Stamp codes: what a QR code holds, how the server checks it, and what it stores.
//!
//! One server secret (the *rally secret*) keys everything, so the database alone hands out no
//! code:
//! - `printed`: 128 random bits (22 characters of base64url), shown once to the operator. The
//!   database keeps HMAC-SHA256(rally secret, code): a keyed hash, looked up by its value (a
//!   scan never compares secrets byte by byte, so there is no timing to measure). Without the
//!   secret a leaked table cannot even be used to test guesses offline.
//! - `screen`: each stamp has a random salt; its TOTP key is HMAC(rally secret, salt). The code
//!   for time step `T = unix_seconds / TAKO_CODE_STEP` is `<stamp>.<T>.<mac>` with `mac` the
//!   first 128 bits of HMAC(key, "<stamp>.<T>"), compared in constant time. Carrying `T` lets
//!   the server tell an old code (410) from a wrong one (404) with one HMAC, and the stamp id
//!   lets it find the key without trying every screen stamp.
//!
//! A keyed hash rather than encryption for printed codes: nothing ever needs the code back,
//! and a hash cannot be decrypted by whoever also steals the key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::stamp::{StampId, StampSecret};

type HmacSha256 = Hmac<Sha256>;

/// The longest text a scan may carry (a URL ending in the code).
pub const MAX_SCANNED_CHARS: usize = 2048;
/// The longest code (a screen code is 32 + 1 + up to 20 + 1 + 22 characters).
const MAX_CODE_CHARS: usize = 100;
/// The shortest accepted rally secret given by an operator.
pub const MIN_SECRET_CHARS: usize = 32;

/// The server's rally secret. Given by `TAKO_RALLY_SECRET`, or generated once and kept in the
/// database (see `RallyStore::rally_secret`), so every node and every restart share it.
#[derive(Clone)]
pub struct RallySecret(Vec<u8>);

impl std::fmt::Debug for RallySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RallySecret(…)")
    }
}

impl RallySecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> RallySecret {
        RallySecret(bytes.into())
    }

    /// 256 random bits, hex: what the database keeps when no secret is configured.
    pub fn generate_hex() -> String {
        hex(&random::<32>())
    }

    fn mac(&self, domain: &[u8], message: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(domain);
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// What the database keeps of a printed code.
    pub fn printed_hash(&self, code: &str) -> String {
        hex(&self.mac(b"tako-rally printed v1\0", code.as_bytes()))
    }

    /// A new printed code and what to store for it.
    pub fn new_printed(&self) -> (String, StampSecret) {
        let code = URL_SAFE_NO_PAD.encode(random::<16>());
        let code_hash = self.printed_hash(&code);
        (code, StampSecret::Printed { code_hash })
    }

    /// What the database keeps of a booth key (the secret in a screen booth's link).
    pub fn booth_key_hash(&self, key: &str) -> String {
        hex(&self.mac(b"tako-rally booth key v1\0", key.as_bytes()))
    }

    /// A new booth key (128 random bits, base64url) and what to store for it.
    pub fn new_booth_key(&self) -> (String, String) {
        let key = URL_SAFE_NO_PAD.encode(random::<16>());
        let hash = self.booth_key_hash(&key);
        (key, hash)
    }

    /// What to store for a new screen stamp.
    pub fn new_screen(&self) -> StampSecret {
        StampSecret::Screen { salt: hex(&random::<16>()) }
    }

    fn screen_mac(&self, salt: &str, stamp: StampId, step: u64) -> [u8; 16] {
        let key = self.mac(b"tako-rally screen v1\0", salt.as_bytes());
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(format!("{}.{step}", stamp.as_uuid().simple()).as_bytes());
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        full[..16].try_into().expect("16 of 32 bytes")
    }

    /// The code a screen stamp shows during `step`.
    pub fn screen_code(&self, salt: &str, stamp: StampId, step: u64) -> String {
        let mac = URL_SAFE_NO_PAD.encode(self.screen_mac(salt, stamp, step));
        format!("{}.{step}.{mac}", stamp.as_uuid().simple())
    }

    /// Whether `code` is what `stamp` showed during `code.step` (constant time in the MAC).
    pub fn screen_code_valid(&self, salt: &str, code: &ScreenCode) -> bool {
        let expected = self.screen_mac(salt, code.stamp, code.step);
        let Ok(given) = URL_SAFE_NO_PAD.decode(&code.mac) else { return false };
        given.len() == expected.len() && bool::from(given.ct_eq(&expected))
    }
}

/// The length of a booth key.
pub const BOOTH_KEY_CHARS: usize = 22;

/// Whether `key` could be a booth key (checked before any lookup).
pub fn booth_key_well_formed(key: &str) -> bool {
    key.len() == BOOTH_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A screen code taken apart (not yet checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScreenCode {
    pub stamp: StampId,
    pub step: u64,
    mac: String,
}

/// What a visitor's client sent, once read: a code of one kind or the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StampCode {
    Printed(String),
    Screen(ScreenCode),
}

impl StampCode {
    /// The code in what a QR code held: the bare code or a URL ending in it (`TAKO_SCAN_URL`).
    /// `None` when it cannot be any code (it is then simply unknown).
    pub fn read(scanned: &str) -> Option<StampCode> {
        let scanned = scanned.trim();
        if scanned.len() > MAX_SCANNED_CHARS {
            return None;
        }
        let code = scanned.rsplit('/').next().unwrap_or(scanned);
        let well_formed = !code.is_empty()
            && code.len() <= MAX_CODE_CHARS
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !well_formed {
            return None;
        }
        let mut parts = code.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(code), None, None, None) => Some(StampCode::Printed(code.to_owned())),
            (Some(stamp), Some(step), Some(mac), None) if stamp.len() == 32 => {
                Some(StampCode::Screen(ScreenCode {
                    stamp: stamp.parse().ok()?,
                    step: step.parse().ok()?,
                    mac: mac.to_owned(),
                }))
            }
            _ => None,
        }
    }
}

/// `TAKO_CODE_STEP`: how long a screen code shows, in seconds (≥ 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeStep(u64);

impl CodeStep {
    pub fn new(seconds: u64) -> Option<CodeStep> {
        (seconds >= 1).then_some(CodeStep(seconds))
    }

    pub fn seconds(&self) -> u64 {
        self.0
    }

    /// The step `unix_micros` falls in (0 before the epoch).
    pub fn at(&self, unix_micros: i64) -> u64 {
        (unix_micros.max(0) as u64) / 1_000_000 / self.0
    }
}

/// How a screen code stands at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// This step's or the previous one's.
    Current,
    /// Older: a photo of the screen.
    Expired,
    /// From the future: never shown.
    Unknown,
}

impl ScreenCode {
    pub fn freshness(&self, now_step: u64) -> Freshness {
        if self.step > now_step {
            Freshness::Unknown
        } else if now_step - self.step <= 1 {
            Freshness::Current
        } else {
            Freshness::Expired
        }
    }
}

/// What the QR code shows: `TAKO_SCAN_URL` with `{code}` replaced, or the bare code.
pub fn qr_content(scan_url: Option<&str>, code: &str) -> String {
    match scan_url {
        Some(template) => template.replace("{code}", code),
        None => code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> RallySecret {
        RallySecret::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn printed_codes_are_128_bits_and_stored_keyed() {
        let (code, stored) = secret().new_printed();
        assert_eq!(code.len(), 22);
        assert_eq!(URL_SAFE_NO_PAD.decode(&code).unwrap().len(), 16);
        let StampSecret::Printed { code_hash } = stored else { panic!("printed") };
        assert_eq!(code_hash, secret().printed_hash(&code));
        assert!(!code_hash.contains(&code));
        // Another secret, another hash: the table alone tests no guess.
        assert_ne!(code_hash, RallySecret::new(b"another".to_vec()).printed_hash(&code));
        assert_ne!(secret().new_printed().0, code);
    }

    #[test]
    fn booth_keys_are_random_and_stored_keyed() {
        let (key, hash) = secret().new_booth_key();
        assert_eq!(key.len(), BOOTH_KEY_CHARS);
        assert_eq!(hash, secret().booth_key_hash(&key));
        assert_ne!(hash, secret().printed_hash(&key), "another domain than printed codes");
        assert_ne!(secret().new_booth_key().0, key);
        assert!(booth_key_well_formed(&key));
        assert!(
            !booth_key_well_formed("short") && !booth_key_well_formed(&format!("{}/", &key[1..]))
        );
    }

    #[test]
    fn screen_codes_change_per_step_and_verify() {
        let s = secret();
        let StampSecret::Screen { salt } = s.new_screen() else { panic!("screen") };
        let stamp = StampId::generate();
        let code = s.screen_code(&salt, stamp, 100);
        assert_ne!(code, s.screen_code(&salt, stamp, 101));
        let Some(StampCode::Screen(read)) = StampCode::read(&code) else { panic!("{code}") };
        assert_eq!((read.stamp, read.step), (stamp, 100));
        assert!(s.screen_code_valid(&salt, &read));
        assert!(!RallySecret::new(b"other".to_vec()).screen_code_valid(&salt, &read));
        // Another step with this step's MAC is refused.
        let mut forged = read.clone();
        forged.step = 101;
        assert!(!s.screen_code_valid(&salt, &forged));
        assert_eq!(read.freshness(100), Freshness::Current);
        assert_eq!(read.freshness(101), Freshness::Current);
        assert_eq!(read.freshness(102), Freshness::Expired);
        assert_eq!(read.freshness(99), Freshness::Unknown);
    }

    #[test]
    fn reading_what_a_qr_code_held() {
        let printed = StampCode::read("https://app.holoquest.app/sc/AbC-_x").unwrap();
        assert_eq!(printed, StampCode::Printed("AbC-_x".into()));
        assert_eq!(StampCode::read("  AbC  "), Some(StampCode::Printed("AbC".into())));
        for bad in ["", "https://x/", "a b", "a%20b", "a.b", "a.b.c.d", &"x".repeat(101)] {
            assert_eq!(StampCode::read(bad), None, "{bad}");
        }
        assert_eq!(StampCode::read(&format!("{}.1.x", "z".repeat(32))), None);
        assert_eq!(StampCode::read(&"a".repeat(MAX_SCANNED_CHARS + 1)), None);
    }

    #[test]
    fn steps_and_qr_content() {
        let step = CodeStep::new(30).unwrap();
        assert_eq!(step.at(59_999_999), 1);
        assert_eq!(step.at(60_000_000), 2);
        assert_eq!(step.at(-5), 0);
        assert!(CodeStep::new(0).is_none());
        assert_eq!(
            qr_content(Some("https://a.example/sc/{code}"), "xyz"),
            "https://a.example/sc/xyz"
        );
        assert_eq!(qr_content(None, "xyz"), "xyz");
    }
}
