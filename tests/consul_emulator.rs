//! Tests of the Consul API emulator against the reference document
//! (`shared/reference/consul-http-api.md`), through raw HTTP: they check the
//! emulator, not the backend, so that the backend's tests stand on a checked base.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig, EmulatorTls};
use serde_json::{Value, json};

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn index(&self) -> u64 {
        self.headers
            .get("X-Consul-Index")
            .expect("X-Consul-Index header")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
}

impl Api {
    fn new(emu: &ConsulEmulator) -> Self {
        Api {
            base: emu.url(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            token: None,
        }
    }

    async fn try_call(
        &self,
        method: Method,
        path: impl AsRef<str>,
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let mut req =
            Request::builder()
                .method(method)
                .uri(format!("{}{}", self.base, path.as_ref()));
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn call(&self, method: Method, path: impl AsRef<str>, body: impl Into<Bytes>) -> Resp {
        self.try_call(method, path, body).await.expect("request")
    }

    async fn get(&self, path: impl AsRef<str>) -> Resp {
        self.call(Method::GET, path, Bytes::new()).await
    }

    async fn put(&self, path: impl AsRef<str>, body: impl Into<Bytes>) -> Resp {
        self.call(Method::PUT, path, body).await
    }

    async fn delete(&self, path: impl AsRef<str>) -> Resp {
        self.call(Method::DELETE, path, Bytes::new()).await
    }

    async fn entry(&self, key: &str) -> Value {
        let resp = self.get(&format!("/v1/kv/{key}")).await;
        assert_eq!(resp.status, StatusCode::OK, "GET {key}");
        resp.json()[0].clone()
    }

    async fn session(&self, body: Value) -> String {
        let resp = self.put("/v1/session/create", body.to_string()).await;
        assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
        resp.json()["ID"].as_str().unwrap().to_owned()
    }
}

async fn emulator() -> ConsulEmulator {
    ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
        .await
        .unwrap()
}

fn b64(v: &str) -> Value {
    Value::String(B64.encode(v))
}

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
async fn acl_tokens() {
    let emu = ConsulEmulator::start(EmulatorConfig::default().acl_token("secret"))
        .await
        .unwrap();
    let mut api = Api::new(&emu);
    assert_eq!(api.get("/v1/kv/a").await.status, StatusCode::FORBIDDEN);
    assert_eq!(api.put("/v1/kv/a", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/v1/kv/a?token=secret").await.status,
        StatusCode::NOT_FOUND
    );
    api.token = Some("wrong".into());
    assert_eq!(api.get("/v1/kv/a").await.status, StatusCode::FORBIDDEN);
    api.token = Some("secret".into());
    assert_eq!(api.put("/v1/kv/a", "x").await.status, StatusCode::OK);
    assert_eq!(api.get("/v1/kv/a").await.status, StatusCode::OK);
    // Authorization: Bearer works too.
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("{}/v1/kv/a", emu.url()))
        .header("Authorization", "Bearer secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn tls_serves_https() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let emu = ConsulEmulator::start(EmulatorConfig::default().tls(EmulatorTls {
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        client_ca_pem: None,
    }))
    .await
    .unwrap();
    assert!(emu.url().starts_with("https://"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = Request::put(format!("{}/v1/kv/secure", emu.url()))
        .body(Full::new(Bytes::from_static(b"v")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{}/v1/kv/secure", emu.addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), plain.request(req)).await;
    assert!(!matches!(outcome, Ok(Ok(ref r)) if r.status() == StatusCode::OK));
}

#[tokio::test]
async fn fault_switches() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    api.put("/v1/kv/f", "v").await;
    emu.faults().fail_next(2);
    assert_eq!(
        api.get("/v1/kv/f").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        api.get("/v1/kv/f").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(api.get("/v1/kv/f").await.status, StatusCode::OK);
    emu.faults().set_failing(true);
    assert_eq!(
        api.get("/v1/kv/f").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    emu.faults().set_failing(false);

    emu.faults().drop_next(1);
    assert!(
        api.try_call(Method::GET, "/v1/kv/f", Bytes::new())
            .await
            .is_err(),
        "dropped"
    );
    assert_eq!(api.get("/v1/kv/f").await.status, StatusCode::OK);

    emu.faults().set_delay(Duration::from_millis(300));
    let start = Instant::now();
    api.get("/v1/kv/f").await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    emu.faults().set_delay(Duration::ZERO);

    // drop_connections cuts a pending blocking query.
    let index = api.get("/v1/kv/f").await.index();
    let emu_ref = &emu;
    let (outcome, _) = tokio::join!(
        api.try_call(
            Method::GET,
            format!("/v1/kv/f?index={index}&wait=30s"),
            Bytes::new()
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            emu_ref.drop_connections();
        }
    );
    assert!(outcome.is_err());
    assert!(emu.request_count() >= 10);
}

#[tokio::test]
async fn snapshot_restore_moves_the_index_back() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    api.put("/v1/kv/s", "old").await;
    let snapshot = emu.snapshot();
    for i in 0..5 {
        api.put("/v1/kv/s", format!("new{i}")).await;
    }
    let high = api.get("/v1/kv/s").await.index();
    let emu_ref = &emu;
    let (resp, _) = tokio::join!(api.get(format!("/v1/kv/s?index={high}&wait=30s")), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        emu_ref.restore(&snapshot);
    });
    assert!(resp.index() < high, "the index went backwards");
    assert_eq!(resp.json()[0]["Value"], b64("old"));
    assert_eq!(emu.index(), snapshot.index());
}
