//! `tako backup FILE` while the server takes writes: the copy is consistent, restores, and holds
//! every row written before the backup began.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{tako, Server};
use serde_json::{json, Value};

const WRITERS: usize = 4;

#[test]
fn an_online_backup_under_write_load_restores_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let live = format!("sqlite://{}", dir.path().join("live.db").display());
    let server = Server::start(&[("DATABASE_URL", live.as_str())]);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Writers: each registers users, gives them stamps and stores a message for them (they are
    // offline), as fast as the server answers. Every acknowledged user is recorded.
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (base, acknowledged, stop) = (server.url(), acknowledged.clone(), stop.clone());
            runtime.spawn(async move {
                let client = reqwest::Client::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let nickname = format!("Backup_{w}_{i}");
                    i += 1;
                    let body =
                        json!({"data": {"type": "user", "attributes": {"nickname": nickname}}});
                    let created: Value = client
                        .post(format!("{base}/api/json/accounts/users"))
                        .header("content-type", "application/vnd.api+json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let id = created["data"]["id"].as_str().expect("a created user").to_owned();
                    let update = json!({"data": {"type": "user", "id": id,
                        "attributes": {"stamps_collected": 3}}});
                    let status = client
                        .patch(format!("{base}/api/json/accounts/users/{id}"))
                        .header("content-type", "application/vnd.api+json")
                        .body(update.to_string())
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert_eq!(status, 200);
                    let status = client
                        .post(format!("{base}/api/messages"))
                        .json(&json!({"user_id": id, "message": format!("prize for {nickname}")}))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert!(status.is_success(), "{status}");
                    acknowledged.lock().unwrap().push((id, nickname));
                }
            })
        })
        .collect();
    wait_for(|| acknowledged.lock().unwrap().len() >= 200);

    // Everything acknowledged before the backup starts must be in it.
    let before: Vec<(String, String)> = acknowledged.lock().unwrap().clone();
    let copy = dir.path().join("copy.db");
    let output =
        tako().arg("backup").arg(&copy).env("DATABASE_URL", &live).output().expect("tako backup");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(report.starts_with("backed up "), "{report}");
    // The writers went on during the backup.
    let during = acknowledged.lock().unwrap().len();
    wait_for(|| acknowledged.lock().unwrap().len() >= during + 50);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        runtime.block_on(writer).expect("a writer failed");
    }
    let total = acknowledged.lock().unwrap().len();
    server.stop();

    // A second backup to the same name is refused: nothing is overwritten.
    let again = tako().arg("backup").arg(&copy).env("DATABASE_URL", &live).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Restore: the copy is a database the server starts on as it is.
    let restored = format!("sqlite://{}", copy.display());
    let server = Server::start(&[("DATABASE_URL", restored.as_str())]);
    let (users, messages) = runtime.block_on(async {
        let client = reqwest::Client::new();
        for (id, nickname) in &before {
            let user: Value = client
                .get(format!("{}/api/json/accounts/users/{id}", server.url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(user["data"]["attributes"]["nickname"], nickname.as_str(), "{user}");
            assert_eq!(user["data"]["attributes"]["stamps_collected"], 3, "{user}");
        }
        let pool = sqlx::SqlitePool::connect(&restored).await.unwrap();
        let check: String =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
        assert_eq!(check, "ok");
        let counts: (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM messages)")
                .fetch_one(&pool)
                .await
                .unwrap();
        // Every message of a user in the copy is in the copy too (one moment, not a mix).
        let orphans: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users u WHERE u.stamps_collected = 3 AND NOT EXISTS \
             (SELECT 1 FROM messages m WHERE m.user_id = u.id)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(orphans <= WRITERS as i64, "{orphans} users without their message");
        pool.close().await;
        counts
    });
    eprintln!(
        "{} users acknowledged before the backup, {users} in it, {total} in all",
        before.len()
    );
    assert!(users as usize >= before.len() && users as usize <= total, "{users} users");
    assert!(messages as usize >= before.len(), "{messages} messages");
    assert!(report.contains(&format!("{users} users, {messages} messages")), "{report}");
    server.stop();
}

fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..1200 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out");
}
