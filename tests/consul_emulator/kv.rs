//! `/v1/kv`: the entry format and headers, missing keys, recurse/keys/separator, CAS, the value limit, blocking queries.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::consul_api::{Api, b64, emulator};

#[tokio::test]
async fn kv_entry_format_and_headers() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    let put = api.put("/v1/kv/a/b?flags=42", "hello").await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.json(), json!(true));
    let resp = api.get("/v1/kv/a/b").await;
    assert_eq!(resp.status, StatusCode::OK);
    let entry = &resp.json()[0];
    assert_eq!(entry["Key"], "a/b");
    assert_eq!(entry["Value"], b64("hello"));
    assert_eq!(entry["Flags"], 42);
    assert_eq!(entry["LockIndex"], 0);
    assert!(entry.get("Session").is_none(), "Session only while held");
    let modify = entry["ModifyIndex"].as_u64().unwrap();
    assert_eq!(entry["CreateIndex"].as_u64().unwrap(), modify);
    assert_eq!(
        resp.index(),
        modify,
        "X-Consul-Index is the key's ModifyIndex"
    );
    assert_eq!(resp.headers["X-Consul-KnownLeader"], "true");
    assert!(resp.headers.contains_key("X-Consul-LastContact"));

    // Update keeps CreateIndex, bumps ModifyIndex.
    api.put("/v1/kv/a/b?flags=42", "world").await;
    let updated = api.entry("a/b").await;
    assert_eq!(updated["CreateIndex"].as_u64().unwrap(), modify);
    let modify2 = updated["ModifyIndex"].as_u64().unwrap();
    assert!(modify2 > modify);
    // An identical write does not bump ModifyIndex.
    api.put("/v1/kv/a/b?flags=42", "world").await;
    assert_eq!(
        api.entry("a/b").await["ModifyIndex"].as_u64().unwrap(),
        modify2
    );

    // Empty value: null. Flags above 2^53 survive exactly.
    let big = (1u64 << 53) + 1;
    api.put(&format!("/v1/kv/empty?flags={big}"), "").await;
    let resp = api.get("/v1/kv/empty").await;
    assert!(resp.json()[0]["Value"].is_null());
    assert!(String::from_utf8_lossy(&resp.body).contains(&big.to_string()));
    assert_eq!(resp.json()[0]["Flags"].as_u64(), Some(big));
    // ?raw gives the bare value.
    let raw = api.get("/v1/kv/a/b?raw").await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(&raw.body[..], b"world");
}

#[tokio::test]
async fn missing_keys_are_404_with_the_table_index() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    let fresh = api.get("/v1/kv/nothing").await;
    assert_eq!(fresh.status, StatusCode::NOT_FOUND);
    assert!(fresh.body.is_empty());
    assert_eq!(fresh.index(), 1, "index 0 is sent as 1");

    api.put("/v1/kv/first", "x").await;
    let first = api.get("/v1/kv/nothing").await.index();
    api.put("/v1/kv/other", "x").await;
    let after_write = api.get("/v1/kv/nothing").await.index();
    assert!(
        after_write > first,
        "a write to an unrelated key raises the missing key's index"
    );
    api.delete("/v1/kv/other").await;
    let after_delete = api.get("/v1/kv/nothing").await.index();
    assert!(after_delete > after_write, "deletions count too");
    assert_eq!(
        api.get("/v1/kv/nothing?recurse").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/v1/kv/nothing?keys").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn recurse_keys_and_separator() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    for key in ["a", "ab", "a/b", "a/c/d", "a/c/e", "b"] {
        api.put(&format!("/v1/kv/{key}"), key).await;
    }
    let keys_of = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.get("Key").unwrap_or(e).as_str().unwrap().to_owned())
            .collect()
    };
    // A plain string prefix: `a` matches `ab`.
    let all_a = api.get("/v1/kv/a?recurse").await;
    assert_eq!(keys_of(all_a.json()), ["a", "a/b", "a/c/d", "a/c/e", "ab"]);
    let below = api.get("/v1/kv/a/?recurse").await;
    assert_eq!(keys_of(below.json()), ["a/b", "a/c/d", "a/c/e"]);
    let max_modify = below
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ModifyIndex"].as_u64().unwrap())
        .max();
    assert_eq!(Some(below.index()), max_modify);
    let names = api.get("/v1/kv/a/?keys").await.json();
    assert_eq!(names, json!(["a/b", "a/c/d", "a/c/e"]));
    let cut = api.get("/v1/kv/a/?keys&separator=/").await.json();
    assert_eq!(cut, json!(["a/b", "a/c/"]));
    let bad = api.get("/v1/kv/a?consistent&stale").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/v1/kv/a?consistent").await.status, StatusCode::OK);
}

#[tokio::test]
async fn cas_rules() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    assert_eq!(api.put("/v1/kv/k?cas=0", "1").await.json(), json!(true));
    assert_eq!(
        api.put("/v1/kv/k?cas=0", "2").await.json(),
        json!(false),
        "cas=0 only creates"
    );
    let index = api.entry("k").await["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        api.put(&format!("/v1/kv/k?cas={}", index + 100), "3")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        api.put(&format!("/v1/kv/k?cas={index}"), "3").await.json(),
        json!(true)
    );
    assert_eq!(api.entry("k").await["Value"], b64("3"));
    assert_eq!(
        api.put("/v1/kv/missing?cas=5", "x").await.json(),
        json!(false)
    );
    // DELETE: always true, cas on a missing key is true, cas mismatch false.
    assert_eq!(api.delete("/v1/kv/never").await.json(), json!(true));
    assert_eq!(api.delete("/v1/kv/never?cas=3").await.json(), json!(true));
    let index = api.entry("k").await["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        api.delete(&format!("/v1/kv/k?cas={}", index + 1))
            .await
            .json(),
        json!(false)
    );
    assert_eq!(api.get("/v1/kv/k").await.status, StatusCode::OK);
    assert_eq!(
        api.delete(&format!("/v1/kv/k?cas={index}")).await.json(),
        json!(true)
    );
    assert_eq!(api.get("/v1/kv/k").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.delete("/v1/kv/k?cas=1&recurse").await.status,
        StatusCode::BAD_REQUEST
    );
    // Recursive delete by prefix.
    for key in ["t/1", "t/2", "tt"] {
        api.put(&format!("/v1/kv/{key}"), "x").await;
    }
    assert_eq!(api.delete("/v1/kv/t/?recurse").await.json(), json!(true));
    assert_eq!(
        api.get("/v1/kv/t/?recurse").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.get("/v1/kv/tt").await.status, StatusCode::OK);
}

#[tokio::test]
async fn value_limit_is_413() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    let at_limit = vec![b'x'; 512 * 1024];
    assert_eq!(api.put("/v1/kv/big", at_limit).await.status, StatusCode::OK);
    let over = vec![b'x'; 512 * 1024 + 1];
    assert_eq!(
        api.put("/v1/kv/big", over).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(api.get("/v1/kv/big?raw").await.body.len(), 512 * 1024);
}

#[tokio::test]
async fn blocking_queries() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    api.put("/v1/kv/w", "1").await;
    let index = api.get("/v1/kv/w").await.index();

    // index=0 does not block.
    let start = Instant::now();
    api.get("/v1/kv/w?index=0&wait=5s").await;
    assert!(start.elapsed() < Duration::from_secs(2));

    // No change: returns after the wait (plus at most wait/16), with the same index.
    let start = Instant::now();
    let resp = api.get(&format!("/v1/kv/w?index={index}&wait=400ms")).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(resp.index(), index);

    // A write wakes it with a higher index.
    let api2 = Api::new(&emu);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api2.put("/v1/kv/w", "2").await;
    });
    let start = Instant::now();
    let resp = api.get(&format!("/v1/kv/w?index={index}&wait=10s")).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(resp.index() > index);
    assert_eq!(resp.json()[0]["Value"], b64("2"));
    writer.await.unwrap();

    // A write to an unrelated key wakes a blocking query on a missing key.
    let missing = api.get("/v1/kv/none").await.index();
    let api3 = Api::new(&emu);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api3.put("/v1/kv/unrelated", "x").await;
    });
    let start = Instant::now();
    let resp = api
        .get(&format!("/v1/kv/none?index={missing}&wait=10s"))
        .await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(resp.index() > missing);
    writer.await.unwrap();

    // Woken without a change: the same index comes back early.
    let current = api.get("/v1/kv/w").await.index();
    let emu_ref = &emu;
    let (resp, _) = tokio::join!(
        api.get(format!("/v1/kv/w?index={current}&wait=30s")),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            emu_ref.wake_blocking_queries();
        }
    );
    assert_eq!(resp.index(), current);
}
