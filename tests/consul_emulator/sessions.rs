//! Sessions: acquire and release, TTLs, behaviours and lock-delay.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::json;

use crate::consul_api::{Api, b64, emulator};

#[tokio::test]
async fn acquire_and_release() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    let unknown = api
        .put("/v1/kv/l?acquire=00000000-0000-0000-0000-000000000000", "x")
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "unknown session is an error"
    );
    let s1 = api.session(json!({"LockDelay": "0s"})).await;
    let s2 = api.session(json!({"LockDelay": "0s"})).await;
    assert_eq!(
        api.put(&format!("/v1/kv/l?acquire={s1}"), "one")
            .await
            .json(),
        json!(true)
    );
    let held = api.entry("l").await;
    assert_eq!(held["Session"], s1.as_str());
    assert_eq!(held["LockIndex"], 1);
    assert_eq!(
        api.put(&format!("/v1/kv/l?acquire={s2}"), "two")
            .await
            .json(),
        json!(false)
    );
    // Re-acquire by the holder keeps LockIndex (server code).
    assert_eq!(
        api.put(&format!("/v1/kv/l?acquire={s1}"), "uno")
            .await
            .json(),
        json!(true)
    );
    assert_eq!(api.entry("l").await["LockIndex"], 1);
    // A plain PUT does not touch Session.
    api.put("/v1/kv/l", "plain").await;
    assert_eq!(api.entry("l").await["Session"], s1.as_str());
    // Release by another session: false.
    assert_eq!(
        api.put(&format!("/v1/kv/l?release={s2}"), "x").await.json(),
        json!(false)
    );
    let before = api.entry("l").await["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        api.put(&format!("/v1/kv/l?release={s1}"), "released")
            .await
            .json(),
        json!(true)
    );
    let released = api.entry("l").await;
    assert!(released.get("Session").is_none());
    assert_eq!(released["LockIndex"], 1);
    assert_eq!(released["Value"], b64("released"));
    assert!(released["ModifyIndex"].as_u64().unwrap() > before);
    // The next acquire increments LockIndex.
    assert_eq!(
        api.put(&format!("/v1/kv/l?acquire={s2}"), "two")
            .await
            .json(),
        json!(true)
    );
    assert_eq!(api.entry("l").await["LockIndex"], 2);
    for q in [
        format!("cas=0&acquire={s1}"),
        format!("acquire={s1}&release={s1}"),
        format!("cas=1&release={s1}"),
    ] {
        assert_eq!(
            api.put(&format!("/v1/kv/l?{q}"), "x").await.status,
            StatusCode::BAD_REQUEST,
            "{q}"
        );
    }
}

#[tokio::test]
async fn sessions_ttl_behaviour_and_lock_delay() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    // TTL bounds: below the configured minimum or above 86400s is a 500.
    assert_eq!(
        api.put("/v1/session/create", json!({"TTL": "500ms"}).to_string())
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        api.put("/v1/session/create", json!({"TTL": "86401s"}).to_string())
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let id = api
        .session(json!({"Name": "n", "TTL": "1s", "Behavior": "delete", "LockDelay": "0s"}))
        .await;
    let info = api.get(&format!("/v1/session/info/{id}")).await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json()[0]["ID"], id.as_str());
    assert_eq!(info.json()[0]["Behavior"], "delete");
    assert_eq!(info.json()[0]["TTL"], "1s");
    let renew = api.put(&format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(renew.status, StatusCode::OK);
    assert_eq!(renew.json()[0]["ID"], id.as_str());
    assert_eq!(
        api.put("/v1/session/renew/nope", "").await.status,
        StatusCode::NOT_FOUND
    );

    // Behavior=delete: held keys deleted when the TTL session expires, after at least
    // the TTL and at most 2 x TTL.
    assert_eq!(
        api.put(&format!("/v1/kv/ttl?acquire={id}"), "x")
            .await
            .json(),
        json!(true)
    );
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        api.get("/v1/kv/ttl").await.status,
        StatusCode::OK,
        "alive before the TTL"
    );
    let mut gone = None;
    for _ in 0..60 {
        if api.get("/v1/kv/ttl").await.status == StatusCode::NOT_FOUND {
            gone = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = gone.expect("deleted within 2 x TTL");
    assert!(
        gone >= Duration::from_millis(900) && gone <= Duration::from_millis(2600),
        "{gone:?}"
    );
    assert_eq!(
        api.get(&format!("/v1/session/info/{id}")).await.json(),
        json!([])
    );

    // Behavior=release with a lock-delay (a bare number under 1000 = seconds).
    let holder = api.session(json!({"LockDelay": 1})).await;
    assert_eq!(
        api.get(&format!("/v1/session/info/{holder}")).await.json()[0]["LockDelay"],
        1_000_000_000u64
    );
    api.put(&format!("/v1/kv/lk?acquire={holder}"), "v").await;
    let before = api.entry("lk").await["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        api.put(&format!("/v1/session/destroy/{holder}"), "")
            .await
            .json(),
        json!(true)
    );
    assert_eq!(
        api.put(&format!("/v1/session/destroy/{holder}"), "")
            .await
            .json(),
        json!(true),
        "idempotent"
    );
    let released = api.entry("lk").await;
    assert!(released.get("Session").is_none());
    assert!(released["ModifyIndex"].as_u64().unwrap() > before);
    let other = api.session(json!({"LockDelay": "0s"})).await;
    assert_eq!(
        api.put(&format!("/v1/kv/lk?acquire={other}"), "o")
            .await
            .json(),
        json!(false),
        "lock-delay in force"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        api.put(&format!("/v1/kv/lk?acquire={other}"), "o")
            .await
            .json(),
        json!(true)
    );
    // info supports blocking on the session table.
    let idx = api.get(&format!("/v1/session/info/{other}")).await.index();
    let (resp, _) = tokio::join!(
        api.get(format!("/v1/session/info/{other}?index={idx}&wait=10s")),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Api::new(&emu)
                .put(&format!("/v1/session/destroy/{other}"), "")
                .await;
        }
    );
    assert_eq!(resp.json(), json!([]));
    assert!(resp.index() > idx);
}
