//! A raw HTTP client of the Consul API emulator, for the tests that check the emulator
//! itself: requests with an optional ACL token, decoded responses, sessions.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig};
use serde_json::Value;

/// An answer, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn index(&self) -> u64 {
        self.headers
            .get("X-Consul-Index")
            .expect("X-Consul-Index header")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// A client of one emulator, sending `token` (when set) with every request.
pub struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    pub token: Option<String>,
}

impl Api {
    pub fn new(emu: &ConsulEmulator) -> Self {
        Api {
            base: emu.url(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            token: None,
        }
    }

    pub async fn try_call(
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

    pub async fn call(
        &self,
        method: Method,
        path: impl AsRef<str>,
        body: impl Into<Bytes>,
    ) -> Resp {
        self.try_call(method, path, body).await.expect("request")
    }

    pub async fn get(&self, path: impl AsRef<str>) -> Resp {
        self.call(Method::GET, path, Bytes::new()).await
    }

    pub async fn put(&self, path: impl AsRef<str>, body: impl Into<Bytes>) -> Resp {
        self.call(Method::PUT, path, body).await
    }

    pub async fn delete(&self, path: impl AsRef<str>) -> Resp {
        self.call(Method::DELETE, path, Bytes::new()).await
    }

    pub async fn entry(&self, key: &str) -> Value {
        let resp = self.get(&format!("/v1/kv/{key}")).await;
        assert_eq!(resp.status, StatusCode::OK, "GET {key}");
        resp.json()[0].clone()
    }

    pub async fn session(&self, body: Value) -> String {
        let resp = self.put("/v1/session/create", body.to_string()).await;
        assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
        resp.json()["ID"].as_str().unwrap().to_owned()
    }
}

/// An emulator whose sessions may be as short as 1 s.
pub async fn emulator() -> ConsulEmulator {
    ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
        .await
        .unwrap()
}

/// `v` base64-encoded, as a JSON string (how Consul carries values).
pub fn b64(v: &str) -> Value {
    Value::String(B64.encode(v))
}
