//! `/v1/txn`: all ops at one index or none.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::consul_api::{Api, b64, emulator};

#[tokio::test]
async fn transactions() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    let ok = api
        .put(
            "/v1/txn",
            json!([
                {"KV": {"Verb": "set", "Key": "x", "Value": B64.encode("1")}},
                {"KV": {"Verb": "cas", "Key": "y", "Value": B64.encode("2"), "Index": 0}},
                {"KV": {"Verb": "get", "Key": "x"}},
            ])
            .to_string(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let results = ok.json()["Results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert!(
        results[0]["KV"]["Value"].is_null(),
        "values only for get verbs"
    );
    assert_eq!(results[2]["KV"]["Value"], b64("1"));
    let x_index = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        results[1]["KV"]["ModifyIndex"].as_u64().unwrap(),
        x_index,
        "one index per txn"
    );

    // Rolled back as a whole; errors name the failing op.
    let failed = api
        .put(
            "/v1/txn",
            json!([
                {"KV": {"Verb": "set", "Key": "z", "Value": B64.encode("no")}},
                {"KV": {"Verb": "check-index", "Key": "x", "Index": x_index + 7}},
            ])
            .to_string(),
        )
        .await;
    assert_eq!(failed.status, StatusCode::CONFLICT);
    assert_eq!(failed.json()["Errors"][0]["OpIndex"], 1);
    assert!(failed.json()["Errors"][0]["What"].is_string());
    assert_eq!(
        api.get("/v1/kv/z").await.status,
        StatusCode::NOT_FOUND,
        "rolled back"
    );

    let verbs = api
        .put(
            "/v1/txn",
            json!([
                {"KV": {"Verb": "check-not-exists", "Key": "z"}},
                {"KV": {"Verb": "get-or-empty", "Key": "z"}},
                {"KV": {"Verb": "delete-cas", "Key": "x", "Index": x_index}},
                {"KV": {"Verb": "get-tree", "Key": "y"}},
                {"KV": {"Verb": "delete-tree", "Key": "y"}},
            ])
            .to_string(),
        )
        .await;
    assert_eq!(verbs.status, StatusCode::OK, "{:?}", verbs.body);
    let results = verbs.json()["Results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["KV"]["Key"], "z");
    assert_eq!(results[1]["KV"]["Value"], b64("2"));
    assert_eq!(api.get("/v1/kv/x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/v1/kv/y").await.status, StatusCode::NOT_FOUND);

    // Missing key for get / check-index / delete-cas: the txn fails.
    for verb in ["get", "check-index", "delete-cas"] {
        let resp = api
            .put(
                "/v1/txn",
                json!([{"KV": {"Verb": verb, "Key": "gone", "Index": 1}}]).to_string(),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{verb}");
    }
    // Lock verbs.
    let s = api.session(json!({"LockDelay": "0s"})).await;
    let locked = api
        .put(
            "/v1/txn",
            json!([{"KV": {"Verb": "lock", "Key": "l", "Value": B64.encode("me"), "Session": s}}])
                .to_string(),
        )
        .await;
    assert_eq!(locked.status, StatusCode::OK);
    assert_eq!(locked.json()["Results"][0]["KV"]["Session"], s.as_str());
    let check = api
        .put(
            "/v1/txn",
            json!([{"KV": {"Verb": "check-session", "Key": "l", "Session": s}}]).to_string(),
        )
        .await;
    assert_eq!(check.status, StatusCode::OK);
    let unlock = api
        .put(
            "/v1/txn",
            json!([{"KV": {"Verb": "unlock", "Key": "l", "Session": s}}]).to_string(),
        )
        .await;
    assert_eq!(unlock.status, StatusCode::OK);
    assert!(api.entry("l").await.get("Session").is_none());

    // Over 64 operations: 413.
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"KV": {"Verb": "get-or-empty", "Key": format!("k{i}")}}))
        .collect();
    assert_eq!(
        api.put("/v1/txn", Value::Array(many).to_string())
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}
