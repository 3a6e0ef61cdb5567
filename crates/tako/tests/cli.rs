//! The `tako` binary itself: migrate, refusing unsafe production settings.

use std::process::Command;

fn tako() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tako"));
    for var in [
        "HOLOQUEST_API_TOKEN",
        "TAKO_ADMIN_TOKEN",
        "DATABASE_URL",
        "TAKO_ENV",
        "PORT",
        "TAKO_PUBSUB_URL",
        "TAKO_ALLOWED_ORIGINS",
    ] {
        command.env_remove(var);
    }
    command
}

#[test]
fn migrate_creates_the_sqlite_file_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let output = tako()
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(db.exists());
    assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
}

#[test]
fn migrate_defaults_to_tako_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = tako().arg("migrate").current_dir(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("tako.db").exists());
}

#[test]
fn prod_refuses_to_start_without_tokens_and_database() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("TAKO_ADMIN_TOKEN", "a"),
                ("DATABASE_URL", "sqlite://x.db"),
                ("TAKO_ALLOWED_ORIGINS", "*"),
            ],
            "HOLOQUEST_API_TOKEN",
        ),
        (
            &[
                ("HOLOQUEST_API_TOKEN", "c"),
                ("DATABASE_URL", "sqlite://x.db"),
                ("TAKO_ALLOWED_ORIGINS", "*"),
            ],
            "TAKO_ADMIN_TOKEN",
        ),
        (
            &[
                ("HOLOQUEST_API_TOKEN", "c"),
                ("TAKO_ADMIN_TOKEN", "a"),
                ("TAKO_ALLOWED_ORIGINS", "*"),
            ],
            "DATABASE_URL",
        ),
        (
            &[
                ("HOLOQUEST_API_TOKEN", "c"),
                ("TAKO_ADMIN_TOKEN", "a"),
                ("DATABASE_URL", "sqlite://x.db"),
            ],
            "TAKO_ALLOWED_ORIGINS",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (env, missing) in cases {
        let output = tako()
            .env("TAKO_ENV", "prod")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(missing), "{stderr}");
    }
    assert!(!dir.path().join("x.db").exists(), "nothing was created");
}

#[test]
fn an_unknown_database_scheme_is_a_clear_error() {
    let output = tako().arg("migrate").env("DATABASE_URL", "mysql://localhost/x").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("sqlite:// or postgres://"));
}
