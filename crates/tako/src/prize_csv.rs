//! The prize desk's CSV files: who completed an event, and the draws' winners. Nicknames and
//! times; a user's id (their login secret) only when the operator asks for it. Served by the
//! admin routes the dashboard downloads and `tako events completers` prints.

use crate::rally::{Completer, Draw};

/// `nickname,completed_at[,user_id]`, one row per completer, in the order given.
pub fn completers(completers: &[Completer], user_ids: bool) -> Result<Vec<u8>, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["nickname", "completed_at"];
    if user_ids {
        header.push("user_id");
    }
    out.write_record(&header)?;
    for c in completers {
        let mut row = vec![c.nickname.clone().unwrap_or_default(), c.completed_at.to_iso8601()];
        if user_ids {
            row.push(c.user.to_string());
        }
        out.write_record(&row)?;
    }
    out.into_inner().map_err(|e| e.into_error().into())
}

/// `draw_id,drawn_at,requested,nickname[,user_id]`, one row per winner, draws in the order
/// given.
pub fn draws(draws: &[Draw], user_ids: bool) -> Result<Vec<u8>, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["draw_id", "drawn_at", "requested", "nickname"];
    if user_ids {
        header.push("user_id");
    }
    out.write_record(&header)?;
    for draw in draws {
        for w in &draw.winners {
            let mut row = vec![
                draw.id.to_string(),
                draw.drawn_at.to_iso8601(),
                draw.requested.to_string(),
                w.nickname.clone().unwrap_or_default(),
            ];
            if user_ids {
                row.push(w.user.to_string());
            }
            out.write_record(&row)?;
        }
    }
    out.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{Timestamp, UserId};
    use crate::rally::{EventId, Winner};

    #[test]
    fn user_ids_only_when_asked() {
        let user = UserId::from(uuid::Uuid::new_v4());
        let at = Timestamp::from_micros(1_750_000_000_000_000);
        let done = [Completer { user, nickname: Some("Kiara, \"KFP\"".into()), completed_at: at }];
        let plain = String::from_utf8(completers(&done, false).unwrap()).unwrap();
        assert_eq!(
            plain,
            format!("nickname,completed_at\n\"Kiara, \"\"KFP\"\"\",{}\n", at.to_iso8601())
        );
        let with = String::from_utf8(completers(&done, true).unwrap()).unwrap();
        assert!(
            with.starts_with("nickname,completed_at,user_id\n") && with.contains(&user.to_string())
        );

        let draw = Draw {
            id: uuid::Uuid::new_v4(),
            event_id: EventId::parse("ev").unwrap(),
            drawn_at: at,
            requested: 3,
            winners: vec![Winner { user, nickname: None }],
        };
        let plain = String::from_utf8(draws(std::slice::from_ref(&draw), false).unwrap()).unwrap();
        assert_eq!(
            plain,
            format!("draw_id,drawn_at,requested,nickname\n{},{},3,\n", draw.id, at.to_iso8601())
        );
        assert!(!plain.contains(&user.to_string()));
        let with = String::from_utf8(draws(&[draw], true).unwrap()).unwrap();
        assert!(with.contains(&user.to_string()));
    }
}
