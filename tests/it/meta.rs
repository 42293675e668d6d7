//! Configuration, migrations and the API document: the contracts around the code.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use upshot::config::{AppConfig, DatabaseUrl, Settings};
use upshot::db::Db;
use upshot::error::ErrorCode;

use crate::helpers::{base_figment, create_pg_database, Stack};

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// Each section of the settings with its keys and their defaults, as the code has them.
fn setting_sections() -> Vec<(&'static str, serde_json::Map<String, serde_json::Value>)> {
    fn to<T: serde::Serialize>(section: &T) -> serde_json::Map<String, serde_json::Value> {
        serde_json::to_value(section).unwrap().as_object().unwrap().clone()
    }
    let d = Settings::default();
    vec![
        ("database", to(&d.database)),
        ("store", to(&d.store)),
        ("reconcile", to(&d.reconcile)),
        ("keys", to(&d.keys)),
        ("uploads", to(&d.uploads)),
        ("images", to(&d.images)),
        ("direct_uploads", to(&d.direct_uploads)),
        ("inference", to(&d.inference)),
        ("notify", to(&d.notify)),
        ("outbox", to(&d.outbox)),
        ("web", to(&d.web)),
        ("connections", to(&d.connections)),
        ("clients", to(&d.clients)),
    ]
}

/// README.md's configuration tables: section name, then each row's key and default cell.
fn documented_sections(readme: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in readme.lines() {
        if let Some(heading) = line.strip_prefix("#### ") {
            let name = heading.rsplit('`').nth(1).unwrap_or_default();
            sections.push((name.to_owned(), Vec::new()));
        } else if let (Some(row), Some((_, rows))) = (line.strip_prefix("| `"), sections.last_mut()) {
            let cells: Vec<&str> = row.split(" | ").collect();
            if let (Some(key), Some(default)) = (cells[0].strip_suffix('`'), cells.get(2)) {
                rows.push((key.to_owned(), default.to_string()));
            }
        }
    }
    sections
}

#[test]
fn documented_configuration_matches_the_settings() {
    let readme = repo_file("README.md");
    let all: serde_json::Map<_, _> = serde_json::to_value(Settings::default()).unwrap().as_object().unwrap().clone();
    let code = setting_sections();
    let in_sections: BTreeSet<&String> = code.iter().flat_map(|(_, keys)| keys.keys()).collect();
    let flat: BTreeSet<&String> = all.keys().filter(|k| *k != "data_dir").collect();
    assert_eq!(in_sections, flat, "every setting but data_dir belongs to one section listed here");
    for key in all.keys() {
        let env = format!("UPSHOT_{}", key.to_uppercase());
        assert!(readme.contains(&env), "README.md does not name {env}");
    }
    // The README's tables hold each section's keys, in its own table, with the defaults the code has.
    let documented = documented_sections(&readme);
    for (section, keys) in &code {
        let Some((_, rows)) = documented.iter().find(|(name, _)| name == section) else {
            panic!("README.md has no table for the `{section}` section")
        };
        let listed: BTreeSet<&String> = rows.iter().map(|(key, _)| key).collect();
        assert_eq!(listed, keys.keys().collect(), "README.md's `{section}` table lists other keys than the code");
        for (key, cell) in rows {
            let default = &keys[key];
            let shown = match default {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if let Some(literal) = cell.strip_prefix('`').and_then(|c| c.split('`').next()) {
                if !default.is_null() {
                    assert_eq!(literal, shown, "README.md gives `{key}` the default {literal}, the code {shown}");
                }
            } else {
                assert!(
                    default.is_null() || shown.is_empty(),
                    "README.md does not give `{key}` its default {shown} as a literal"
                );
            }
        }
    }
    // Rocket.toml sets only what differs from the code's defaults: its [default] table holds Rocket's keys.
    let rocket_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("Rocket.toml");
    let file: serde_json::Map<String, serde_json::Value> =
        Figment::from(Toml::file(&rocket_toml)).extract_inner("default").unwrap();
    for key in file.keys() {
        assert!(!all.contains_key(key), "Rocket.toml [default] repeats the default of `{key}`: it lives in the code");
    }
}

#[test]
fn each_profile_of_the_example_config_loads() {
    let rocket_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("Rocket.toml");
    let file = || {
        Figment::from(Toml::file(&rocket_toml).nested())
            .join(figment::providers::Serialized::defaults(Settings::default()))
    };
    let config = AppConfig::from_figment(file().select("debug")).expect("the default profile is valid");
    assert_eq!(config.database, DatabaseUrl::Sqlite("data/upshot.sqlite3".into()));

    // Production refuses to start until the deployment provides its database, bucket and key...
    let error = AppConfig::from_figment(file().select("aws")).unwrap_err().to_string();
    assert!(error.contains("database_url"), "{error}");
    // ...and starts with them.
    let production = file()
        .select("aws")
        .merge(("database_url", "postgres://app@db.internal/upshot"))
        .merge(("s3_bucket", "upshot-images-prod"))
        .merge(("sns_topic_arn", "arn:aws:sns:eu-west-1:123456789012:upshot-uploads"))
        .merge(("secret_key", "k".repeat(40)));
    let error = AppConfig::from_figment(production.clone()).unwrap_err().to_string();
    assert!(error.contains("public_url"), "production needs the address people reach it at: {error}");
    let production = production.merge(("public_url", "https://upshot.example.com"));
    let config = AppConfig::from_figment(production).expect("production with its environment is valid");
    assert_eq!(config.database.backend_name(), "postgresql");
}

#[tokio::test]
async fn openapi_document_names_every_json_route() {
    let data_dir = tempfile::tempdir().unwrap();
    let (figment, _, _) = base_figment(Stack::Embedded, data_dir.path()).await;
    let config = AppConfig::from_figment(figment).unwrap();
    let document = upshot::api::openapi::document(&config, &["tabby".to_owned()]);
    let rocket = upshot::rocket(config);
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let mut checked = BTreeSet::new();
    for route in rocket.routes() {
        let path = route.uri.origin.path().as_str().replace('<', "{").replace('>', "}");
        // The WebSocket is named in the document's description: OpenAPI cannot describe it.
        let websocket = path == "/api/v1/ws";
        if websocket
            || upshot::responses::is_page_path(&path)
            || path.starts_with("/static")
            || path.starts_with("/images/")
        {
            continue;
        }
        let method = route.method.as_str().to_lowercase();
        assert!(paths.get(&path).and_then(|p| p.get(&method)).is_some(), "{method} {path} is not in openapi.json");
        checked.insert(format!("{method} {path}"));
    }
    assert!(checked.len() >= 10, "{checked:?}");
    // Every $ref resolves.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(document["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
    }
}

#[tokio::test]
async fn migrations_apply_from_empty_and_twice_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = DatabaseUrl::Sqlite(dir.path().join("fresh.sqlite3"));
    let postgres = DatabaseUrl::Postgres(create_pg_database());
    for url in [sqlite, postgres] {
        let first = upshot::db::migrate(&url).expect("migrations apply from empty");
        assert!(first >= 1, "{url:?}");
        assert_eq!(upshot::db::migrate(&url).unwrap(), 0, "a second run has nothing to do");
        Db::open(url, 1, std::time::Duration::from_secs(5)).await.expect("the server's start-up path too");
    }
}

#[test]
fn instances_starting_together_migrate_once() {
    let url = DatabaseUrl::Postgres(create_pg_database());
    let applied: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| upshot::db::migrate(&url).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(applied.iter().filter(|&&n| n > 0).count(), 1, "{applied:?}");
}

#[tokio::test]
async fn upload_spool_files_live_under_the_data_dir_and_are_swept_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let spool = data_dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("left-by-a-killed-process"), b"half an upload").unwrap();
    let (figment, _, _) = base_figment(Stack::Embedded, data_dir.path()).await;
    let config = AppConfig::from_figment(figment).unwrap();
    let temp_dir: std::path::PathBuf = config.rocket_figment().extract_inner("temp_dir").unwrap();
    assert_eq!(temp_dir, spool);
    let rocket = upshot::rocket(config).ignite().await.expect("ignites");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "the leftover was swept");
    drop(rocket);
}

#[test]
fn the_readme_lists_every_error_code_with_its_status() {
    let readme = repo_file("README.md");
    let listed: std::collections::BTreeMap<String, u16> = readme
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.split(" | ");
            let code = cells.next()?.strip_suffix('`')?;
            let status = cells.next()?.parse().ok()?;
            code.chars().all(|c| c.is_ascii_uppercase() || c == '_').then(|| (code.to_owned(), status))
        })
        .collect();
    let defined: std::collections::BTreeMap<String, u16> =
        ErrorCode::all().map(|code| (code.as_str().to_owned(), code.status().code)).collect();
    assert_eq!(listed, defined, "README.md's error table and ErrorCode disagree");
}

/// The top-level modules that each top-level module of `src/` names (`crate::x`, `use crate::{x, …}`).
fn module_references() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top_level: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".rs").to_owned())
        .filter(|name| name != "main" && name != "lib")
        .collect();
    let mut references: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let module = relative.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_owned();
            if !top_level.contains(&module) || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(group) => group.split(['}', ',']).map(|n| n.trim().split("::").next().unwrap()).collect(),
                        None => vec![rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap()],
                    };
                    for name in names.into_iter().filter(|n| top_level.contains(*n) && **n != module) {
                        references.entry(module.clone()).or_default().insert(name.to_owned());
                    }
                }
            }
        }
    }
    references
}

#[test]
fn top_level_modules_depend_one_way() {
    let references = module_references();
    // A module is in a cycle when it can reach itself.
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut next: Vec<&str> = vec![from];
        while let Some(module) = next.pop() {
            for target in references.get(module).into_iter().flatten() {
                if seen.insert(target.as_str()) {
                    next.push(target);
                }
            }
        }
        seen
    };
    let cyclic: Vec<String> = references
        .keys()
        .filter(|module| reaches(module).contains(module.as_str()))
        .map(|module| {
            let back: Vec<&String> =
                references[module].iter().filter(|target| reaches(target).contains(module.as_str())).collect();
            format!("{module} -> {back:?}")
        })
        .collect();
    assert!(cyclic.is_empty(), "import cycles between top-level modules of src/: {cyclic:#?}");
    // The layers the code is read in: nothing below names anything above.
    assert!(
        references.get("error").is_none_or(|r| r.is_empty()),
        "error.rs is pure data: {:?}",
        references.get("error")
    );
    assert!(!reaches("ingest").contains("app"), "ingest is the CPU half: it knows nothing of the app core");
    let core = reaches("app");
    for adapter in ["state", "api", "web", "responses", "telemetry", "connections"] {
        assert!(!core.contains(adapter), "the app core knows nothing of HTTP, yet reaches {adapter}");
    }
}
