//! The prize draw: winners picked uniformly at random, with the operating system's
//! cryptographic RNG, among those who completed an event and were not drawn before. A draw is
//! recorded with its time and count, so it cannot be silently re-rolled: drawing again draws
//! other people, and every draw stays listed.

use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use uuid::Uuid;

use super::EventId;
use crate::accounts::{Timestamp, UserId};

/// The most winners one draw may ask for.
pub const MAX_WINNERS: u32 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Winner {
    pub user: UserId,
    /// The stored nickname, when the user has one (read back with the draw).
    pub nickname: Option<String>,
}

/// Someone who completed an event, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completer {
    pub user: UserId,
    pub nickname: Option<String>,
    pub completed_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draw {
    pub id: Uuid,
    pub event_id: EventId,
    pub drawn_at: Timestamp,
    /// How many winners were asked for (there may have been fewer candidates).
    pub requested: u32,
    pub winners: Vec<Winner>,
}

impl Draw {
    /// Picks up to `requested` of `candidates`, each subset equally likely.
    pub fn pick(event_id: EventId, candidates: &[UserId], requested: u32, now: Timestamp) -> Draw {
        let winners = candidates
            .choose_multiple(&mut OsRng, requested as usize)
            .map(|user| Winner { user: *user, nickname: None })
            .collect();
        Draw { id: Uuid::new_v4(), event_id, drawn_at: now, requested, winners }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_distinct_candidates_only() {
        let candidates: Vec<UserId> = (0..20).map(|_| UserId::from(Uuid::new_v4())).collect();
        let event = EventId::parse("ev").unwrap();
        let draw = Draw::pick(event.clone(), &candidates, 5, Timestamp::now());
        assert_eq!(draw.winners.len(), 5);
        let mut users: Vec<_> = draw.winners.iter().map(|w| w.user).collect();
        assert!(users.iter().all(|u| candidates.contains(u)));
        users.sort();
        users.dedup();
        assert_eq!(users.len(), 5);
        let all = Draw::pick(event, &candidates[..3], 5, Timestamp::now());
        assert_eq!((all.winners.len(), all.requested), (3, 5));
    }

    #[test]
    fn every_candidate_can_win() {
        let candidates: Vec<UserId> = (0..4).map(|_| UserId::from(Uuid::new_v4())).collect();
        let event = EventId::parse("ev").unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(
                Draw::pick(event.clone(), &candidates, 1, Timestamp::now()).winners[0].user,
            );
        }
        assert_eq!(seen.len(), 4);
    }
}
