//! PostgreSQL databases created by the original Tako keep working, with nothing lost.

use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{fresh_postgres_database, postgres_admin_url, update_body, Backend, TestApp};

/// The original's schema: Ash's users table and Ecto's schema_migrations.
const ORIGINAL_SCHEMA: &str = r#"
CREATE TABLE schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0) without time zone);
INSERT INTO schema_migrations VALUES (20230611133937, now()), (20230617120000, now());
CREATE TABLE users (
    id uuid PRIMARY KEY,
    nickname text,
    stamps_collected bigint DEFAULT 0,
    inserted_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at) VALUES
  ('681adb8b-be3d-4fca-8858-2827609d9b22', 'Cruel_KFP', 7, '2023-06-12 10:00:00.123456', '2023-06-12 11:00:00.654321'),
  ('11111111-2222-4333-8444-555555555555', NULL, 0, '2023-06-12 10:05:00', '2023-06-12 10:05:00'),
  ('22222222-3333-4444-8555-666666666666', 'Nullstamps', NULL, '2023-06-12 10:06:00', '2023-06-12 10:06:00');
"#;

#[tokio::test]
async fn an_original_tako_database_keeps_working() {
    let Some(admin) = postgres_admin_url() else {
        eprintln!(
            "note: TAKO_TEST_DATABASE_URL is not set; the original-schema test needs PostgreSQL"
        );
        return;
    };
    let database = fresh_postgres_database(&admin).await;
    let url = database.url.clone();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(ORIGINAL_SCHEMA).execute(&mut conn).await.unwrap();

    // `tako migrate` on it, twice (idempotent), then the server.
    for _ in 0..2 {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_tako"))
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let app = TestApp::spawn_with(Backend::Postgres(admin.clone()), |c| {
        c.database_url = Some(url.clone())
    })
    .await;

    let kfp: Value = app
        .get("/api/json/accounts/users/681adb8b-be3d-4fca-8858-2827609d9b22")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kfp["data"]["attributes"]["nickname"], "Cruel_KFP");
    assert_eq!(kfp["data"]["attributes"]["stamps_collected"], 7);
    assert_eq!(kfp["data"]["attributes"]["inserted_at"], "2023-06-12T10:00:00.123456Z");
    assert_eq!(kfp["data"]["attributes"]["updated_at"], "2023-06-12T11:00:00.654321Z");
    let null_stamps: Value = app
        .get("/api/json/accounts/users/22222222-3333-4444-8555-666666666666")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(null_stamps["data"]["attributes"]["stamps_collected"], 0);

    let updated = app.set_stamps("681adb8b-be3d-4fca-8858-2827609d9b22", 8).await;
    assert_eq!(updated["data"]["attributes"]["nickname"], "Cruel_KFP");
    let response = app
        .patch_json(
            "/api/json/accounts/users/11111111-2222-4333-8444-555555555555",
            &update_body(json!({"nickname": "Newcomer"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let new_id = app.register_id(Some("FreshUser")).await;

    let board: Value = app.get("/api/json/leaderboard").await.json().await.unwrap();
    let names: Vec<&str> =
        board["data"].as_array().unwrap().iter().map(|e| e["nickname"].as_str().unwrap()).collect();
    assert_eq!(names[0], "Cruel_KFP");
    assert!(
        names.contains(&"Newcomer")
            && names.contains(&"FreshUser")
            && names.contains(&"Nullstamps")
    );

    // Nothing dropped: Ecto's bookkeeping and every row are still there, and the rows the
    // original's code would write (no new columns named) still insert.
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, 2);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut conn).await.unwrap();
    assert_eq!(rows, 4);
    sqlx::query("INSERT INTO users (id, nickname) VALUES ('33333333-4444-4555-8666-777777777777', 'ViaOriginal')")
        .execute(&mut conn)
        .await
        .unwrap();
    let via_original: Value = app
        .get("/api/json/accounts/users/33333333-4444-4555-8666-777777777777")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(via_original["data"]["attributes"]["nickname"], "ViaOriginal");
    let _ = new_id;
}

#[tokio::test]
async fn the_leaderboard_is_served_by_an_index() {
    let Some(admin) = postgres_admin_url() else {
        eprintln!("note: TAKO_TEST_DATABASE_URL is not set; the index test needs PostgreSQL");
        return;
    };
    let app = TestApp::spawn(Backend::Postgres(admin)).await;
    let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
    sqlx::query(
        "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at)
         SELECT gen_random_uuid(), CASE WHEN g % 10 = 0 THEN NULL ELSE 'player' || g END, g % 97, now(), now(), now()
         FROM generate_series(1, 50000) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE users").execute(&mut conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT nickname, stamps_collected FROM users WHERE nickname IS NOT NULL
         ORDER BY stamps_collected DESC NULLS LAST, stamps_changed_at ASC NULLS LAST, id LIMIT 100",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("users_leaderboard_idx") && !plan.contains("Sort"), "{plan}");
    let body: Value = app.get("/api/json/leaderboard").await.json().await.unwrap();
    assert_eq!(body["data"][0]["stamps_collected"], 96);
}

#[tokio::test]
async fn data_survives_a_restart() {
    for backend in crate::helpers::backends() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _database) = match &backend {
            Backend::Sqlite => (format!("sqlite://{}", dir.path().join("kept.db").display()), None),
            Backend::Postgres(admin) => {
                let database = fresh_postgres_database(admin).await;
                (database.url.clone(), Some(database))
            }
        };
        let app =
            TestApp::spawn_with(backend.clone(), |c| c.database_url = Some(url.clone())).await;
        let id = app.register_id(Some("Persistent")).await;
        app.set_stamps(&id, 4).await;
        app.stop().await;

        let again = TestApp::spawn_with(backend, |c| c.database_url = Some(url)).await;
        let user: Value =
            again.get(&format!("/api/json/accounts/users/{id}")).await.json().await.unwrap();
        assert_eq!(user["data"]["attributes"]["nickname"], "Persistent");
        assert_eq!(user["data"]["attributes"]["stamps_collected"], 4);
    }
}

#[tokio::test]
async fn waiting_messages_are_found_by_an_index_however_many_are_stored() {
    let Some(admin) = postgres_admin_url() else {
        eprintln!("note: TAKO_TEST_DATABASE_URL is not set; the index test needs PostgreSQL");
        return;
    };
    let app = TestApp::spawn(Backend::Postgres(admin)).await;
    let id = app.register_id(Some("Inbox")).await;
    let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
    // 200k delivered messages for 2,000 users, and a few waiting for ours.
    sqlx::query(
        "INSERT INTO users (id, nickname, inserted_at, updated_at, stamps_changed_at)
         SELECT gen_random_uuid(), 'u' || g, now(), now(), now() FROM generate_series(1, 2000) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO messages (id, user_id, body, inserted_at, expires_at, delivered_at)
         SELECT gen_random_uuid(), u.id, '{\"message\":\"old\"}', now(), now() + interval '1 day', now()
         FROM users u CROSS JOIN generate_series(1, 100)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE messages").execute(&mut conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM messages WHERE user_id = $1 AND delivered_at IS NULL AND expires_at > now() ORDER BY seq LIMIT 100",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("messages_pending_idx"), "{plan}");
}

/// The README's PostgreSQL backup: `pg_dump` of a live database, `pg_restore` into an empty
/// one, and Tako serves every row from it.
#[tokio::test]
async fn a_pg_dump_restores_every_row() {
    let Some(admin) = postgres_admin_url() else {
        eprintln!("note: TAKO_TEST_DATABASE_URL is not set; pg_dump test not run");
        return;
    };
    let app = TestApp::spawn(Backend::Postgres(admin.clone())).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = app.register_id(Some(&format!("Dumped_{i}"))).await;
        app.set_stamps(&id, i).await;
        ids.push(id);
    }
    let status = app
        .request(reqwest::Method::POST, "/api/messages")
        .json(&json!({"user_id": ids[0], "message": "kept in the dump"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);

    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("tako.dump");
    // While it serves: pg_dump reads one consistent snapshot.
    let output = tokio::process::Command::new("pg_dump")
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&dump)
        .arg(&app.database_url)
        .output()
        .await
        .expect("pg_dump (postgresql-client) is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    app.stop().await;

    let target = fresh_postgres_database(&admin).await;
    let output = tokio::process::Command::new("pg_restore")
        .args(["--no-owner", "--exit-on-error", "--dbname", &target.url])
        .arg(&dump)
        .output()
        .await
        .expect("pg_restore (postgresql-client) is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let url = target.url.clone();
    let restored =
        TestApp::spawn_with(Backend::Postgres(admin), |c| c.database_url = Some(url)).await;
    for (i, id) in ids.iter().enumerate() {
        let user: Value =
            restored.get(&format!("/api/json/accounts/users/{id}")).await.json().await.unwrap();
        assert_eq!(user["data"]["attributes"]["nickname"], format!("Dumped_{i}"));
        assert_eq!(user["data"]["attributes"]["stamps_collected"], i);
    }
    let mut conn = sqlx::PgConnection::connect(&target.url).await.unwrap();
    let messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&mut conn).await.unwrap();
    assert_eq!(messages, 1);
}
