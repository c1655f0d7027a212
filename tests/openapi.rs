//! The served OpenAPI document is valid OpenAPI, checked by a validator nobody on the team
//! wrote (`openapi-spec-validator`, from PyPI), and declares what clients generated from it
//! need: query parameters in the query, and the bearer-token scheme.

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_passes_a_real_openapi_validator() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let doc = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    let validator = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/openapi-spec-validator.sh"
    );
    let out = Command::new(validator)
        .arg(&file)
        .output()
        .expect("run tests/tools/openapi-spec-validator.sh");
    assert!(
        out.status.success(),
        "the validator refused /openapi.json:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{out:?}"
    );

    let doc: Value = serde_json::from_str(&doc).unwrap();
    // Every parameter that is not in a route template lives in the query.
    let mut query = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let place = p["in"].as_str().unwrap();
                let templated = path.contains(&format!("{{{name}}}"));
                let expected = if templated {
                    "path"
                } else if name == "Last-Event-ID" || name == "Idempotency-Key" {
                    "header"
                } else {
                    "query"
                };
                assert_eq!(place, expected, "{method} {path}: parameter {name}");
                if place == "query" {
                    query.push(name.to_owned());
                }
            }
            // Every operation says what a missing or insufficient token gets.
            for status in ["401", "403"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
    // The error responses come from the codes each route declares: a client reading the
    // document finds the code it will get under its status.
    let produce = &doc["paths"]["/v1/topics/{topic}/records"]["post"]["responses"];
    for (status, code) in [
        ("400", "bad_request"),
        ("404", "topic_not_found"),
        ("413", "payload_too_large"),
        ("503", "partition_unavailable"),
        ("507", "insufficient_storage"),
    ] {
        let description = produce[status]["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!("`{code}`")),
            "produce {status}: {description:?} lacks {code}"
        );
    }
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("the error codes are an enum in the document");
    for code in mapq::api::ErrorCode::ALL {
        assert!(
            codes.contains(&code.as_str().into()),
            "{code} not in the document"
        );
    }
    query.sort();
    query.dedup();
    for name in [
        "offset",
        "timestamp_ms",
        "max_records",
        "max_bytes",
        "wait_ms",
        "durability",
        "key",
        "partition",
        "topic",
    ] {
        assert!(
            query.iter().any(|q| q == name),
            "{name} not a query parameter: {query:?}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["security"],
        serde_json::json!([{"bearer": []}, {}]),
        "a bearer token, or none when the server has no tokens"
    );
}
