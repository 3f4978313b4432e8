//! Conformance check of keys put with a TTL.

use std::time::Duration;

use super::support::{eventually, expect_kind, fresh_dir, ok};
use crate::backend::{Backend, PutOptions};
use crate::error::ErrorKind;
use crate::kv::Kv;

/// A key put with a TTL disappears after it; without one it stays.
pub async fn put_ttl<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "put_ttl").await;
    let caps = kv.capabilities();
    let ttl = caps.effective_ttl(Duration::from_millis(300));
    let bound = ttl * caps.ttl_expiry_factor + caps.ttl_granularity + Duration::from_secs(2);
    let short = format!("{dir}/short");
    let forever = format!("{dir}/forever");
    ok(
        "put ttl",
        kv.put(&short, "v", PutOptions::with_ttl(ttl)).await,
    );
    ok(
        "put forever",
        kv.put(&forever, "v", PutOptions::default()).await,
    );
    assert!(ok("readable before the ttl", kv.exists(&short).await));
    let gone = eventually(bound, || async { !kv.exists(&short).await.unwrap_or(true) }).await;
    assert!(gone, "a key with ttl {ttl:?} is gone within {bound:?}");
    expect_kind("get expired", kv.get(&short).await, ErrorKind::NotFound);
    assert!(ok("key without ttl stays", kv.exists(&forever).await));
    assert!(
        ok("list", kv.list(&dir).await)
            .iter()
            .all(|p| p.key != short),
        "expired keys are not listed"
    );
    // Overwriting without a TTL makes the key permanent again.
    ok(
        "put ttl",
        kv.put(&short, "v", PutOptions::with_ttl(ttl)).await,
    );
    ok(
        "put without ttl",
        kv.put(&short, "w", PutOptions::default()).await,
    );
    tokio::time::sleep(bound).await;
    assert_eq!(ok("rewritten key stays", kv.get(&short).await).value, "w");
}
