//! Cluster mode: catching up with what a node missed while Redis was away.
//!
//! Deletions, renames and "messages wait" travel between nodes as signals over Redis; during an
//! outage they are lost, and a node kept serving from memory: a user deleted through another
//! node could still connect here, a renamed one kept its old nickname in presence, a message
//! stored for one of this node's users waited for the next join. So while the bus is down the
//! user directory asks the database on every connect (a deleted user is refused at once,
//! wherever the database says so), and when the bus comes back this node checks its own users
//! against the database — disconnecting the deleted, renaming the renamed (presence follows and
//! replicates), delivering what waits for them — and forgets what it remembered of the others.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use channels::{BusMessage, Hub, Presence};
use channels_redis::RedisBus;

use super::directory::UserDirectory;
use super::mailbox::Mailbox;
use super::{presence, sockets};
use crate::accounts::UserId;
use crate::storage::Store;

/// How often the link's state is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Users checked per query.
const BATCH: usize = 1000;

/// Watches the bus for as long as the hub lives.
pub fn spawn(
    hub: Hub,
    presence: Presence,
    bus: Arc<RedisBus>,
    directory: Arc<UserDirectory>,
    mailbox: Arc<Mailbox>,
    store: Arc<dyn Store>,
) {
    tokio::spawn(async move {
        // Until the first connection, nothing is shared: ask the database.
        let mut down = true;
        directory.set_bypass(true);
        let mut ticker = tokio::time::interval(WATCH_EVERY);
        loop {
            ticker.tick().await;
            let connected = bus.status().connected;
            if !connected && !down {
                tracing::warn!("cluster bus lost: connects ask the database until it is back");
                down = true;
                directory.set_bypass(true);
            } else if connected && down {
                match resync(&hub, &presence, &directory, &mailbox, store.as_ref()).await {
                    Ok(users) => {
                        tracing::info!(users, "cluster bus back: this node's users resynchronised");
                        down = false;
                        directory.set_bypass(false);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "resynchronising after the bus came back failed; retrying")
                    }
                }
            }
        }
    });
}

/// Checks this node's users against the database; returns how many were checked.
async fn resync(
    hub: &Hub,
    presence: &Presence,
    directory: &UserDirectory,
    mailbox: &Arc<Mailbox>,
    store: &dyn Store,
) -> Result<usize, crate::storage::StoreError> {
    let local: Vec<UserId> = hub.local_users().iter().filter_map(|u| u.parse().ok()).collect();
    for chunk in local.chunks(BATCH) {
        let found = store.existing(chunk).await?;
        let present: HashSet<UserId> = found.iter().map(|(id, _)| *id).collect();
        for id in chunk.iter().filter(|id| !present.contains(id)) {
            tracing::info!(user = %crate::telemetry::user_tag(&id.as_uuid()), "user deleted during the outage: disconnecting");
            directory.forget(*id);
            hub.deliver(BusMessage::Disconnect { socket_id: sockets::socket_id(*id) });
        }
        for (id, nickname) in found {
            if directory.nickname(id).as_ref() != Some(&nickname) {
                let patch = presence::nickname_patch(nickname.as_ref().map(|n| n.as_str()));
                presence.update_user(&id.to_string(), &patch);
            }
            directory.remember(id, nickname);
        }
    }
    let local_set: HashSet<UserId> = local.iter().copied().collect();
    directory.retain(|id| local_set.contains(id));
    mailbox.resync(hub).await?;
    Ok(local.len())
}
