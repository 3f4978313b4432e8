//! Helpers of the Consul tests: the emulator and client settings, certificates, raw
//! HTTP requests as other tools send them (the raw key space for the foreign-key
//! checks), and the emulator's request counters.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use kvkit::consul::{Consul, ConsulConfig};
use kvkit::testing::conformance::RawStore;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig, EmulatorTls};
use kvkit::{ErrorKind, Kv, KvPair};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::time::Instant;

/// The emulator the tests start: sessions may be as short as 1 s.
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig::default().session_ttl_min(Duration::from_secs(1))
}

/// A client of `emu` with short session TTLs, lock-delay and blocking-query waits.
pub fn client_config(emu: &ConsulEmulator) -> ConsulConfig {
    ConsulConfig::new(emu.url())
        .min_session_ttl(Duration::from_secs(1))
        .lock_ttl(Duration::from_secs(2))
        .lock_delay(Duration::from_millis(200))
        .wait(Duration::from_secs(5))
}

/// A fresh emulator and a handle on it.
pub async fn setup() -> (ConsulEmulator, Kv<Consul>) {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let kv = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    (emu, kv)
}

/// The real Consul named by `KVKIT_CONSUL_ADDR`, if any.
pub async fn real_consul() -> Option<Kv<Consul>> {
    let addr = std::env::var("KVKIT_CONSUL_ADDR").ok()?;
    let mut config = ConsulConfig::new(addr).prefix("kvkit-test");
    if let Ok(token) = std::env::var("KVKIT_CONSUL_TOKEN") {
        config = config.token(token);
    }
    if let Some(min) = std::env::var("KVKIT_CONSUL_MIN_TTL")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config = config.min_session_ttl(Duration::from_secs(min));
    }
    Some(Kv::new(
        Consul::connect(config)
            .await
            .expect("connect to KVKIT_CONSUL_ADDR"),
    ))
}

/// A CA (PEM) and the emulator's TLS settings: a certificate for `names` it signed.
pub fn certificates(names: &[&str]) -> (String, EmulatorTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    (
        ca.pem(),
        EmulatorTls {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_ca_pem: None,
        },
    )
}

/// Reads items until `done` holds or `limit` passes; returns what was read.
pub async fn read_until<S>(
    stream: &mut S,
    limit: Duration,
    done: impl Fn(&Option<KvPair>) -> bool,
) -> Vec<Option<KvPair>>
where
    S: futures::Stream<Item = kvkit::Result<Option<KvPair>>> + Unpin,
{
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match item {
            Ok(state) => {
                let finished = done(&state);
                seen.push(state);
                if finished {
                    return seen;
                }
            }
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::Unavailable,
                "only outages are reported: {e}"
            ),
        }
    }
    panic!("state not reached within {limit:?}; saw {seen:?}");
}

/// Requests the emulator received during `op`: (all requests, `GET /v1/kv/..` reads).
pub async fn counted<T, F: std::future::Future<Output = T>>(
    emu: &ConsulEmulator,
    op: F,
) -> (T, u64, u64) {
    let (requests, gets) = (emu.request_count(), emu.kv_get_count());
    let out = op.await;
    (
        out,
        emu.request_count() - requests,
        emu.kv_get_count() - gets,
    )
}

/// Waits (at most 5 s) until the emulator has received `gets` KV reads in all.
pub async fn until_kv_gets(emu: &ConsulEmulator, gets: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while emu.kv_get_count() < gets && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(emu.kv_get_count(), gets, "KV reads received");
}

/// Sends one HTTP request to the emulator at `url` as another client would, unchecked:
/// its status and body.
pub async fn raw_request(
    url: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .body(Full::new(body))
        .expect("a request");
    let response = client.request(request).await.expect("the emulator answers");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    (status, body)
}

/// Every byte of a key but letters, digits, `-`, `_` and `/` is percent-encoded, so a
/// key reaches the emulator exactly as written (`.` segments and controls included).
const KEY_PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'/');

/// The emulator's KV store as another tool sees it over HTTP, for the foreign-key
/// checks. Consul keys are text without a leading slash, and Consul refuses a `..`
/// segment (HTTP 400).
#[derive(Clone)]
pub struct ConsulRaw {
    url: String,
}

impl ConsulRaw {
    /// The raw key space of `emu` (no prefix).
    pub fn new(emu: &ConsulEmulator) -> Self {
        ConsulRaw { url: emu.url() }
    }
}

impl RawStore for ConsulRaw {
    fn put_raw(&self, key: &[u8], value: &[u8]) -> BoxFuture<'static, ()> {
        let url = self.url.clone();
        let key = String::from_utf8(key.to_vec()).expect("a Consul key is text");
        let value = Bytes::copy_from_slice(value);
        async move {
            let path = format!("/v1/kv/{}", utf8_percent_encode(&key, KEY_PATH));
            let (status, _) = raw_request(&url, Method::PUT, &path, value).await;
            assert_eq!(status, StatusCode::OK, "raw put of {key:?}");
        }
        .boxed()
    }

    fn raw_keys(&self, prefix: &[u8]) -> BoxFuture<'static, Vec<Vec<u8>>> {
        let url = self.url.clone();
        let prefix = String::from_utf8(prefix.to_vec()).expect("a Consul key is text");
        async move {
            let path = format!("/v1/kv/{}?keys", utf8_percent_encode(&prefix, KEY_PATH));
            let (status, body) = raw_request(&url, Method::GET, &path, Bytes::new()).await;
            if status == StatusCode::NOT_FOUND {
                return Vec::new();
            }
            assert_eq!(status, StatusCode::OK, "raw keys below {prefix:?}");
            let keys: Vec<String> = serde_json::from_slice(&body).expect("a list of keys");
            let mut keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
            keys.sort();
            keys
        }
        .boxed()
    }

    fn holds(&self, key: &[u8]) -> bool {
        std::str::from_utf8(key)
            .is_ok_and(|key| !key.starts_with('/') && !key.split('/').any(|s| s == ".."))
    }
}
