//! Preparing an event with the `tako` binary as an organiser would: create the event, import a
//! CSV of booths, print the QR codes; the decoded codes are accepted by the scan route.

mod common;

use std::path::Path;

use common::{tako, Server};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";
const CLIENT: &str = "client-secret";
const SCAN_URL: &str = "https://app.example/sc/{code}";

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn run(server: &Server, args: &[&str], dir: &Path) -> std::process::Output {
    tako()
        .args(args)
        .env("TAKO_URL", server.url())
        .env("TAKO_ADMIN_TOKEN", ADMIN)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn decode_png(path: &Path) -> String {
    let image = image::open(path).unwrap().to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "{}", path.display());
    grids[0].decode().unwrap().1
}

fn files(dir: &Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    found.sort();
    found
}

struct Api {
    url: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.runtime.block_on(async {
            let mut request = self
                .client
                .request(method, format!("{}{path}", self.url))
                .bearer_auth(token)
                .header("accept", "application/vnd.api+json");
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/vnd.api+json")
                    .body(body.to_string());
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    fn stamps(&self, event: &str) -> Vec<Value> {
        let (status, body) = self.call(
            reqwest::Method::GET,
            &format!("/api/json/events/{event}?include=stamps"),
            ADMIN,
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["included"].as_array().unwrap().clone()
    }
}

#[test]
fn an_organiser_prepares_an_event_from_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let server = Server::start(&[
        ("DATABASE_URL", db.as_str()),
        ("TAKO_ADMIN_TOKEN", ADMIN),
        ("HOLOQUEST_API_TOKEN", CLIENT),
        ("TAKO_SCAN_URL", SCAN_URL),
    ]);
    let api = Api {
        url: server.url(),
        client: reqwest::Client::new(),
        runtime: tokio::runtime::Runtime::new().unwrap(),
    };

    let output = run(
        &server,
        &["events", "create", "fest-2026", "--name", "Fest 2026", "--required", "2"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("created event fest-2026"));

    let csv = dir.path().join("booths.csv");
    std::fs::write(
        &csv,
        "name,booth_id,description,external_url,image_url,nsfw,visible,mode\n\
         Kitsune Prints,4C16,\"Prints, stickers\",https://kitsune.example,,false,true,printed\n\
         Hidden Cafe,5A01,,,,,false,\n\
         Live Stage,STAGE,,,,,,screen\n",
    )
    .unwrap();
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "fest-2026", "--out", "qr"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("3 stamp(s) created, 0 updated"));

    let qr = dir.path().join("qr");
    let pngs = files(&qr, "png");
    assert_eq!(pngs.len(), 2, "one PNG per printed stamp: {pngs:?}");
    assert_eq!(files(&qr, "svg").len(), 2);
    let index = std::fs::read_to_string(qr.join("index.html")).unwrap();
    for text in ["Kitsune Prints", "4C16", "Hidden Cafe", "Live Stage", "Screen booth"] {
        assert!(index.contains(text), "{text} in {index}");
    }
    for png in &pngs {
        let svg = png.with_extension("svg");
        let name = svg.file_name().unwrap().to_str().unwrap();
        assert!(index.contains(&format!("src=\"{name}\"")), "{name} in the index");
    }

    // Each decoded PNG is a URL the scan route accepts, once.
    let (status, user) = api.call(
        reqwest::Method::POST,
        "/api/json/accounts/users",
        CLIENT,
        Some(json!({"data": {"type": "user", "attributes": {"nickname": "Scanner"}}})),
    );
    assert_eq!(status, 201, "{user}");
    let user = user["data"]["id"].as_str().unwrap().to_owned();
    let scans = format!("/api/json/accounts/users/{user}/scans");
    let mut decoded = Vec::new();
    for png in &pngs {
        let url = decode_png(png);
        assert!(url.starts_with("https://app.example/sc/"), "{url}");
        let body = json!({"data": {"type": "scan", "attributes": {"code": url}}});
        let (status, answer) = api.call(reqwest::Method::POST, &scans, CLIENT, Some(body.clone()));
        assert_eq!(status, 201, "{answer}");
        let (status, _) = api.call(reqwest::Method::POST, &scans, CLIENT, Some(body));
        assert_eq!(status, 200, "the same code again counts nothing");
        decoded.push(url);
    }
    assert_ne!(decoded[0], decoded[1]);

    // Two stamps of two: the scanner completed the rally, and is the one winner to draw.
    let output = run(&server, &["events", "draw", "fest-2026", "--winners", "3"], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let drawn = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        drawn.contains("1 of 3 asked") && drawn.contains(&format!("{user}\tScanner")),
        "{drawn}"
    );
    let output = run(&server, &["events", "draw", "fest-2026"], dir.path());
    assert_eq!(output.status.code(), Some(1), "nobody is left to draw");
    let output = run(&server, &["events", "completers", "fest-2026"], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(listed.starts_with("nickname,completed_at\nScanner,20"), "{listed}");
    assert!(!listed.contains(&user), "user ids only when asked: {listed}");
    let output = run(&server, &["events", "completers", "fest-2026", "--user-ids"], dir.path());
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(listed.starts_with("nickname,completed_at,user_id\n") && listed.contains(&user));
    let output = run(&server, &["events", "draws", "fest-2026"], dir.path());
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("{user}\tScanner")));

    let stamps = api.stamps("fest-2026");
    assert_eq!(stamps.len(), 3);
    let hidden = stamps.iter().find(|s| s["attributes"]["booth_id"] == "5A01").unwrap();
    assert_eq!(hidden["attributes"]["visible"], false);

    // Importing again updates (by booth id), keeps the codes and the QR files.
    let before: Vec<Vec<u8>> = pngs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    std::fs::write(
        &csv,
        "name,booth_id,visible,mode\n\
         Kitsune Prints & Co,4C16,true,\n\
         Hidden Cafe,5A01,true,printed\n\
         Live Stage,STAGE,,screen\n\
         New Booth,7B02,,\n",
    )
    .unwrap();
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "fest-2026", "--out", "qr"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 stamp(s) created, 3 updated"));
    let stamps = api.stamps("fest-2026");
    assert_eq!(stamps.len(), 4, "no duplicates");
    let renamed = stamps.iter().find(|s| s["attributes"]["booth_id"] == "4C16").unwrap();
    assert_eq!(renamed["attributes"]["name"], "Kitsune Prints & Co");
    assert_eq!(
        renamed["attributes"]["description"], "Prints, stickers",
        "a column the file lacks is left as it was"
    );
    let after = files(&qr, "png");
    assert_eq!(after.len(), 3);
    for (png, bytes) in pngs.iter().zip(&before) {
        assert_eq!(&std::fs::read(png).unwrap(), bytes, "earlier QR files are kept");
    }
    let index = std::fs::read_to_string(qr.join("index.html")).unwrap();
    assert_eq!(index.matches("<img src=").count(), 3, "{index}");
    assert!(index.contains("Kitsune Prints &amp; Co"));
    // The old codes still scan (for another visitor).
    let (status, other) = api.call(
        reqwest::Method::POST,
        "/api/json/accounts/users",
        CLIENT,
        Some(json!({"data": {"type": "user", "attributes": {"nickname": "Second"}}})),
    );
    assert_eq!(status, 201);
    let other = other["data"]["id"].as_str().unwrap();
    let body = json!({"data": {"type": "scan", "attributes": {"code": decoded[0]}}});
    let (status, answer) = api.call(
        reqwest::Method::POST,
        &format!("/api/json/accounts/users/{other}/scans"),
        CLIENT,
        Some(body),
    );
    assert_eq!(status, 201, "{answer}");

    // Into another folder: the earlier booths' codes are not there, and the index says so.
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "fest-2026", "--out", "reprint"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("3 printed booth(s) got their code from an earlier import"),
        "{stdout}"
    );
    let index = std::fs::read_to_string(dir.path().join("reprint/index.html")).unwrap();
    assert_eq!(index.matches("issued by an earlier import").count(), 3);

    // A malformed file imports nothing, and names its lines.
    std::fs::write(&csv, "name,booth_id,nsfw\nFine Booth,9Z99,false\n,8Y88,\nBad,7X77,perhaps\n")
        .unwrap();
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "fest-2026", "--out", "qr"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("line 3: name") && err.contains("line 4: nsfw"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert_eq!(api.stamps("fest-2026").len(), 4, "the good line was not imported either");

    // A stamp's mode cannot change: refused before anything is written.
    std::fs::write(&csv, "name,booth_id,mode\nRenamed,9Q01,\nLive Stage,STAGE,printed\n").unwrap();
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "fest-2026", "--out", "qr"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("line 3: booth \"STAGE\" is a screen stamp"),
        "{}",
        stderr(&output)
    );
    assert_eq!(api.stamps("fest-2026").len(), 4);

    // A folder that cannot be written to: refused before any stamp (and code) is made.
    std::fs::write(&csv, "name,booth_id\nBrand New,NEW1\n").unwrap();
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "fest-2026", "--out", "booths.csv"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot create the folder"), "{}", stderr(&output));
    assert_eq!(api.stamps("fest-2026").len(), 4);

    // An unknown event is named.
    let output = run(
        &server,
        &["stamps", "import", "booths.csv", "--event", "nope", "--out", "qr"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("tako events create"), "{}", stderr(&output));
    server.stop();
}

#[test]
fn a_screen_booth_shows_its_code_through_its_booth_link_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let server = Server::start(&[
        ("DATABASE_URL", db.as_str()),
        ("TAKO_ADMIN_TOKEN", ADMIN),
        ("HOLOQUEST_API_TOKEN", CLIENT),
        ("TAKO_SCAN_URL", SCAN_URL),
        ("TAKO_CODE_STEP", "1"),
    ]);
    let api = Api {
        url: server.url(),
        client: reqwest::Client::new(),
        runtime: tokio::runtime::Runtime::new().unwrap(),
    };
    let get = |path: &str| -> (u16, String, String) {
        api.runtime.block_on(async {
            let response = api.client.get(format!("{}{path}", api.url)).send().await.unwrap();
            let status = response.status().as_u16();
            let policy = response
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, policy, response.text().await.unwrap())
        })
    };
    let output = run(
        &server,
        &["events", "create", "stage", "--name", "Stage", "--required", "1"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::write(
        dir.path().join("booths.csv"),
        "name,booth_id,mode\nLive Stage,STAGE,screen\nOther Screen,OTHER,screen\nPaper,P1,printed\n",
    )
    .unwrap();
    let output = run(&server, &["stamps", "import", "booths.csv", "--event", "stage"], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));

    let link = |booth: &str| -> String {
        let output = run(&server, &["stamps", "booth-link", booth, "--event", "stage"], dir.path());
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let url = link("STAGE");
    let prefix = format!("{}/booth/", server.url());
    assert!(url.starts_with(&prefix), "{url}");
    let path = url.strip_prefix(&server.url()).unwrap().to_owned();
    let key = path.strip_prefix("/booth/").unwrap().to_owned();

    let (status, cache, page) = get(&path);
    assert_eq!(status, 200);
    assert_eq!(cache, "no-store");
    assert!(page.contains("<img id=\"qr\""), "{page}");

    // The key reads its own stamp's current code, which the scan route accepts.
    let (status, _, code) = get(&format!("{path}/code"));
    assert_eq!(status, 200, "{code}");
    let code: Value = serde_json::from_str(&code).unwrap();
    assert_eq!(code["name"], "Live Stage");
    assert_eq!(code["booth_id"], "STAGE");
    assert!(code["svg"].as_str().unwrap().starts_with("<?xml"), "{code}");
    let qr = code["qr"].as_str().unwrap().to_owned();
    assert!(qr.starts_with("https://app.example/sc/"));
    let (status, user) = api.call(
        reqwest::Method::POST,
        "/api/json/accounts/users",
        CLIENT,
        Some(json!({"data": {"type": "user", "attributes": {"nickname": "Screen_Fan"}}})),
    );
    assert_eq!(status, 201);
    let user = user["data"]["id"].as_str().unwrap().to_owned();
    let body = json!({"data": {"type": "scan", "attributes": {"code": qr}}});
    let (status, answer) = api.call(
        reqwest::Method::POST,
        &format!("/api/json/accounts/users/{user}/scans"),
        CLIENT,
        Some(body),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["included"][0]["attributes"]["booth_id"], "STAGE", "{answer}");

    // The code changes after a step.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, _, later) = get(&format!("{path}/code"));
    let later: Value = serde_json::from_str(&later).unwrap();
    assert_ne!(later["qr"], code["qr"]);

    // The key is no token: the API refuses it.
    let (status, _) = api.call(reqwest::Method::GET, "/api/json/events/stage", &key, None);
    assert_eq!(status, 401);
    // Another booth's link is another key; a made-up or malformed key opens nothing.
    let other = link("OTHER");
    assert_ne!(other, url);
    for bad in ["/booth/AAAAAAAAAAAAAAAAAAAAAA", "/booth/x", "/booth/AAAAAAAAAAAAAAAAAAAAAA/code"] {
        assert_eq!(get(bad).0, 404, "{bad}");
    }
    // A printed booth has no link.
    let output = run(&server, &["stamps", "booth-link", "P1", "--event", "stage"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("only screen booths"), "{}", stderr(&output));

    // A new link replaces the old one; revoking stops the page.
    let second = link("STAGE");
    assert_ne!(second, url);
    assert_eq!(get(&path).0, 404, "the first link stopped");
    let second_path = second.strip_prefix(&server.url()).unwrap().to_owned();
    assert_eq!(get(&format!("{second_path}/code")).0, 200);
    let output = run(
        &server,
        &["stamps", "booth-link", "STAGE", "--event", "stage", "--revoke"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(get(&second_path).0, 404);
    assert_eq!(get(&format!("{second_path}/code")).0, 404);
    let other_path = other.strip_prefix(&server.url()).unwrap().to_owned();
    assert_eq!(get(&format!("{other_path}/code")).0, 200, "other booths keep theirs");
    server.stop();
}
