//! Consul sessions: creating and destroying them, and the shared sessions that carry
//! TTL puts (one per TTL, reused within a one-second window).

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::Inner;
use super::client::{NAME, encode};
use crate::backend::PutOptions;
use crate::error::{Error, Result};

/// Consul's largest session TTL.
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Keys put with the same TTL within this window share one session.
const SHARE_WINDOW: Duration = Duration::from_secs(1);

impl Inner {
    /// Session for a TTL put: the shared one of this TTL if it is young enough
    /// (renewed first, so the key lives at least the TTL), or a new one.
    async fn ttl_session(&self, ttl: Duration) -> Result<String> {
        let secs = ttl.as_secs_f64().ceil() as u64;
        let shared = {
            let map = self.ttl_sessions.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&secs)
                .filter(|(_, created)| created.elapsed() < SHARE_WINDOW)
                .map(|(id, _)| id.clone())
        };
        if let Some(id) = shared {
            let resp = self
                .request(
                    Method::PUT,
                    &format!("/v1/session/renew/{}", encode(&id, false)),
                    Bytes::new(),
                )
                .await?;
            if resp.status == StatusCode::OK {
                return Ok(id);
            }
            resp.expect(&[StatusCode::OK, StatusCode::NOT_FOUND])?;
        }
        let id = self
            .create_session(
                &format!("kvkit-ttl-{secs}s"),
                Duration::from_secs(secs),
                "delete",
                Duration::ZERO,
            )
            .await?;
        let mut map = self.ttl_sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, created)| created.elapsed() < SHARE_WINDOW);
        map.insert(secs, (id.clone(), Instant::now()));
        Ok(id)
    }

    /// Creates a session.
    pub(crate) async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        behavior: &str,
        lock_delay: Duration,
    ) -> Result<String> {
        if ttl > MAX_TTL {
            return Err(Error::backend(
                NAME,
                format!("TTL {ttl:?} exceeds Consul's limit of 86400s"),
            ));
        }
        let secs = ttl.as_secs_f64().ceil() as u64;
        let body = json!({
            "Name": name,
            "TTL": format!("{secs}s"),
            "Behavior": behavior,
            "LockDelay": format!("{}ms", lock_delay.as_millis()),
        });
        let resp = self
            .request(
                Method::PUT,
                "/v1/session/create",
                Bytes::from(body.to_string()),
            )
            .await?
            .expect(&[StatusCode::OK])?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        Ok(resp.json::<Created>()?.id)
    }

    /// Destroys a session (idempotent).
    pub(crate) async fn destroy_session(&self, id: &str) -> Result<()> {
        self.client
            .request(
                Method::PUT,
                &format!("/v1/session/destroy/{}", encode(id, false)),
                Bytes::new(),
                Duration::ZERO,
            )
            .await?
            .expect(&[StatusCode::OK])?;
        Ok(())
    }

    /// The session a put with `options` writes under (`None` without TTL).
    pub(super) async fn session_for(&self, options: &PutOptions) -> Result<Option<String>> {
        match options.ttl {
            Some(ttl) => Ok(Some(
                self.ttl_session(ttl.max(self.config.min_session_ttl))
                    .await?,
            )),
            None => Ok(None),
        }
    }
}
