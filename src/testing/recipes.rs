//! Checks of the recipes built on `Kv` (leader election, service discovery, typed
//! values), generic over the backend like the conformance suite. Each check works
//! below [`RECIPES_ROOT`] and panics with a message naming the rule it saw broken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, PutOptions};
use crate::discovery::{Instance, Registry};
use crate::election::{Candidate, Follower};
use crate::error::ErrorKind;
use crate::kv::Kv;

/// Every check works below this directory.
pub const RECIPES_ROOT: &str = "kvkit-recipes";

/// Runs every recipe check in turn.
pub async fn run_all<B: Backend>(kv: &Kv<B>) {
    exactly_one_leader(kv).await;
    stopped_leader_is_replaced(kv).await;
    lost_leadership_is_noticed_and_recovered(kv).await;
    follower_sees_every_change(kv).await;
    discovery(kv).await;
    typed_values(kv).await;
}

async fn fresh<B: Backend>(kv: &Kv<B>, name: &str) -> String {
    let dir = format!("{RECIPES_ROOT}/{name}");
    kv.delete_tree(&dir)
        .await
        .expect("wipe the check's directory");
    dir
}

/// The TTL the checks use: short, but legal on the backend.
fn ttl<B: Backend>(kv: &Kv<B>) -> Duration {
    kv.capabilities().effective_ttl(Duration::from_secs(1))
}

/// How long a lost or resigned leadership may take to move on.
fn takeover_bound<B: Backend>(kv: &Kv<B>) -> Duration {
    let caps = kv.capabilities();
    ttl(kv) * (caps.ttl_expiry_factor + 2) + caps.ttl_granularity + Duration::from_secs(5)
}

/// Waits (bounded) until exactly one candidate is leader; returns its index.
async fn wait_for_leader<B: Backend>(
    candidates: &[Candidate<B>],
    bound: Duration,
    except: Option<usize>,
) -> usize {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let leaders: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].is_leader())
            .collect();
        if let [one] = leaders[..]
            && Some(one) != except
        {
            return one;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Samples every candidate's `is_leader` until stopped; counts moments with two.
fn count_overlapping_leaders<B: Backend>(
    candidates: Arc<Vec<Candidate<B>>>,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let mut overlaps = 0;
        while !done.load(Ordering::Acquire) {
            if candidates.iter().filter(|c| c.is_leader()).count() > 1 {
                overlaps += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        overlaps
    });
    (stop, task)
}

/// Among several candidates exactly one leads at a time, over many resignations, and
/// the lock key holds the leader's id.
pub async fn exactly_one_leader<B: Backend>(kv: &Kv<B>) {
    let dir = fresh(kv, "one_leader").await;
    let key = format!("{dir}/leader");
    let candidates: Arc<Vec<Candidate<B>>> = Arc::new(
        (0..3)
            .map(|i| {
                Candidate::new(kv.clone(), &key, format!("node-{i}"), ttl(kv))
                    .retry_after(Duration::from_millis(200))
            })
            .collect(),
    );
    let streams: Vec<_> = candidates.iter().map(|c| c.campaign()).collect();
    let (stop_monitor, overlaps) = count_overlapping_leaders(candidates.clone());
    let mut leaders = Vec::new();
    let mut previous = None;
    for _round in 0..6 {
        let leader = wait_for_leader(&candidates, takeover_bound(kv), previous).await;
        let value = kv
            .get(&key)
            .await
            .expect("the lock key exists while led")
            .value;
        assert_eq!(
            value,
            candidates[leader].node().as_bytes(),
            "the lock key holds the leader's id"
        );
        leaders.push(leader);
        candidates[leader].resign();
        previous = Some(leader);
    }
    stop_monitor.store(true, Ordering::Release);
    assert_eq!(
        overlaps.await.expect("the overlap counter"),
        0,
        "two candidates were leader at once"
    );
    assert!(
        leaders.windows(2).all(|w| w[0] != w[1]),
        "a resigned leader is replaced: {leaders:?}"
    );
    for c in candidates.iter() {
        c.stop();
    }
    for mut stream in streams {
        let mut events = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {
            events.push(event);
        }
        assert_eq!(
            events.first(),
            Some(&false),
            "a campaign starts with false: {events:?}"
        );
        assert_eq!(
            events.last(),
            Some(&false),
            "a campaign ends with false: {events:?}"
        );
        assert!(
            events.windows(2).all(|w| w[0] != w[1]),
            "events alternate: {events:?}"
        );
    }
}

/// A stopped leader is replaced and never reports leadership again.
pub async fn stopped_leader_is_replaced<B: Backend>(kv: &Kv<B>) {
    let dir = fresh(kv, "stopped_leader").await;
    let key = format!("{dir}/leader");
    let candidates: Vec<Candidate<B>> = (0..2)
        .map(|i| Candidate::new(kv.clone(), &key, format!("node-{i}"), ttl(kv)))
        .collect();
    let mut streams: Vec<_> = candidates.iter().map(|c| c.campaign()).collect();
    let first = wait_for_leader(&candidates, takeover_bound(kv), None).await;
    candidates[first].stop();
    let second = wait_for_leader(&candidates, takeover_bound(kv), Some(first)).await;
    assert_ne!(first, second);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut events = Vec::new();
        while let Some(event) = streams[first].next().await {
            events.push(event);
        }
        events
    })
    .await
    .expect("a stopped candidate's stream ends");
    assert_eq!(
        ended.last(),
        Some(&false),
        "the stopped candidate ends as follower: {ended:?}"
    );
    tokio::time::sleep(ttl(kv)).await;
    assert!(
        !candidates[first].is_leader(),
        "a stopped candidate never leads again"
    );
    assert!(candidates[second].is_leader());
    candidates[second].stop();
}

/// A leader whose lock is taken away (its key deleted by someone else) stops leading,
/// says so on its stream, and the election recovers with a leader again.
pub async fn lost_leadership_is_noticed_and_recovered<B: Backend>(kv: &Kv<B>) {
    let dir = fresh(kv, "lost_leadership").await;
    let key = format!("{dir}/leader");
    let candidates: Vec<Candidate<B>> = (0..2)
        .map(|i| {
            Candidate::new(kv.clone(), &key, format!("node-{i}"), ttl(kv))
                .retry_after(Duration::from_millis(200))
        })
        .collect();
    let mut streams: Vec<_> = candidates.iter().map(|c| c.campaign()).collect();
    let first = wait_for_leader(&candidates, takeover_bound(kv), None).await;
    let saw_lead = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = streams[first].next().await {
            if event {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        saw_lead,
        Ok(true),
        "the leader's stream reports the election"
    );
    kv.delete(&key)
        .await
        .expect("someone deletes the leader's lock key");
    let stepped_down = tokio::time::timeout(takeover_bound(kv), streams[first].next()).await;
    assert_eq!(
        stepped_down,
        Ok(Some(false)),
        "the leader reports losing leadership"
    );
    let next = wait_for_leader(&candidates, takeover_bound(kv), None).await;
    let value = kv.get(&key).await.expect("the new leader's lock key").value;
    assert_eq!(value, candidates[next].node().as_bytes());
    for c in &candidates {
        c.stop();
    }
}

/// A follower sees the leader of the key after every change, in order.
pub async fn follower_sees_every_change<B: Backend>(kv: &Kv<B>) {
    let dir = fresh(kv, "follower").await;
    let key = format!("{dir}/leader");
    let follower = Follower::new(kv.clone(), &key);
    assert_eq!(
        follower.leader().await.expect("leader()"),
        None,
        "no leader yet"
    );
    let mut leaders = follower.leaders();
    let first = tokio::time::timeout(Duration::from_secs(10), leaders.next()).await;
    assert_eq!(
        first
            .expect("first item")
            .expect("an item")
            .expect("no error"),
        None
    );
    let candidates: Vec<Candidate<B>> = (0..2)
        .map(|i| {
            Candidate::new(kv.clone(), &key, format!("node-{i}"), ttl(kv))
                .retry_after(Duration::from_millis(300))
        })
        .collect();
    let _streams: Vec<_> = candidates.iter().map(|c| c.campaign()).collect();
    let mut expected = Vec::new();
    let mut previous = None;
    for _ in 0..4 {
        let leader = wait_for_leader(&candidates, takeover_bound(kv), previous).await;
        expected.push(candidates[leader].node().to_owned());
        // Wait until the follower has seen this leader before the next change.
        let seen = tokio::time::timeout(takeover_bound(kv), async {
            loop {
                match leaders.next().await {
                    Some(Ok(Some(id))) if id == candidates[leader].node() => return id,
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => panic!("follower error: {err}"),
                    None => panic!("the follower's stream ended"),
                }
            }
        })
        .await
        .expect("the follower sees the new leader");
        assert_eq!(Some(&seen), expected.last());
        assert_eq!(
            follower.leader().await.expect("leader()").as_ref(),
            Some(&seen)
        );
        candidates[leader].resign();
        previous = Some(leader);
    }
    for c in &candidates {
        c.stop();
    }
    let none = tokio::time::timeout(takeover_bound(kv), async {
        loop {
            match leaders.next().await {
                Some(Ok(None)) => return,
                Some(Ok(Some(_))) => continue,
                other => panic!("unexpected follower item {other:?}"),
            }
        }
    })
    .await;
    assert!(
        none.is_ok(),
        "the follower sees that nobody leads after all stop"
    );
}

/// Registered instances are listed and watched, and disappear when deregistered,
/// dropped, or abandoned (TTL).
pub async fn discovery<B: Backend>(kv: &Kv<B>) {
    let dir = fresh(kv, "discovery").await;
    let registry = Registry::new(kv.clone(), &dir);
    let ttl = ttl(kv);
    let caps = kv.capabilities();
    let expiry = ttl * caps.ttl_expiry_factor + caps.ttl_granularity + Duration::from_secs(3);
    let mut watch = registry.watch("api").await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert_eq!(
        first.expect("first").expect("item").expect("ok"),
        Vec::<Instance>::new()
    );

    let a = registry
        .register("api", "a", "10.0.0.1:80", ttl)
        .await
        .expect("register a");
    let b = registry
        .register("api", "b", "10.0.0.2:80", ttl)
        .await
        .expect("register b");
    let _other = registry
        .register("db", "x", "10.0.0.9:5432", ttl)
        .await
        .expect("register db");
    let both = vec![
        Instance {
            id: "a".into(),
            address: "10.0.0.1:80".into(),
        },
        Instance {
            id: "b".into(),
            address: "10.0.0.2:80".into(),
        },
    ];
    assert_eq!(registry.instances("api").await.expect("instances"), both);
    wait_instances(&mut watch, &both, Duration::from_secs(10)).await;
    assert!(
        registry.register("api", "bad/id", "x", ttl).await.is_err(),
        "instance ids are single segments"
    );

    // Heartbeats keep instances alive past their TTL.
    tokio::time::sleep(expiry).await;
    assert_eq!(
        registry.instances("api").await.expect("instances"),
        both,
        "heartbeats keep instances"
    );

    drop(a);
    let only_b = vec![both[1].clone()];
    wait_instances(&mut watch, &only_b, Duration::from_secs(10)).await;
    assert_eq!(registry.instances("api").await.expect("instances"), only_b);

    b.abandon();
    wait_instances(&mut watch, &[], expiry + Duration::from_secs(2)).await;
    assert!(
        registry
            .instances("api")
            .await
            .expect("instances")
            .is_empty()
    );
    assert_eq!(
        registry.instances("db").await.expect("instances").len(),
        1,
        "other services untouched"
    );
}

async fn wait_instances<S>(watch: &mut S, want: &[Instance], bound: Duration)
where
    S: futures::Stream<Item = crate::Result<Vec<Instance>>> + Unpin,
{
    let reached = tokio::time::timeout(bound, async {
        loop {
            match watch.next().await {
                Some(Ok(now)) if now == want => return,
                Some(Ok(_)) => continue,
                other => panic!("unexpected discovery watch item {other:?}"),
            }
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "the watch did not reach {want:?} within {bound:?}"
    );
}

/// `put_json` / `get_json` round-trip, and undecodable data is a `Decode` error.
pub async fn typed_values<B: Backend>(kv: &Kv<B>) {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Config {
        name: String,
        replicas: u32,
    }
    let dir = fresh(kv, "typed").await;
    let key = format!("{dir}/config");
    let config = Config {
        name: "api".into(),
        replicas: 3,
    };
    kv.put_json(&key, &config, PutOptions::default())
        .await
        .expect("put_json");
    assert_eq!(kv.get_json::<Config>(&key).await.expect("get_json"), config);
    kv.put(&key, "not json", PutOptions::default())
        .await
        .expect("put");
    let err = kv.get_json::<Config>(&key).await.expect_err("undecodable");
    assert_eq!(err.kind(), ErrorKind::Decode);
    let missing = kv
        .get_json::<Config>(format!("{dir}/missing"))
        .await
        .expect_err("missing");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    // A value serde cannot encode (a map with non-string keys) is an `Encode` error,
    // and nothing is written.
    let unencodable: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let err = kv
        .put_json(
            format!("{dir}/unencodable"),
            &unencodable,
            PutOptions::default(),
        )
        .await
        .expect_err("unencodable");
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(
        !kv.exists(format!("{dir}/unencodable"))
            .await
            .expect("exists"),
        "a value that failed to encode was written"
    );
}

/// Closing the store ends every recipe: a lock guard reports `lost()`, a leading
/// candidate steps down and its campaign stream ends, a follower yields
/// `Err(Closed)` and ends, a watch yields `Err(Closed)` and ends. Closes `kv`: give it
/// a handle of its own and run it last.
pub async fn close_ends_recipes<B: Backend>(kv: &Kv<B>) {
    let dir = fresh(kv, "close").await;
    let key = format!("{dir}/leader");
    let bound = takeover_bound(kv);
    let candidate =
        Candidate::new(kv.clone(), &key, "node-1", ttl(kv)).retry_after(Duration::from_millis(50));
    let mut campaign = candidate.campaign();
    assert_eq!(
        campaign.next().await,
        Some(false),
        "a campaign starts with false"
    );
    let elected = tokio::time::timeout(bound, campaign.next()).await;
    assert_eq!(
        elected.ok().flatten(),
        Some(true),
        "the only candidate is elected"
    );
    let mut leaders = Follower::new(kv.clone(), &key)
        .retry_after(Duration::from_millis(20))
        .leaders();
    loop {
        let seen = tokio::time::timeout(bound, leaders.next()).await;
        match seen.expect("the follower reports the leader") {
            Some(Ok(Some(leader))) if leader == "node-1" => break,
            Some(_) => {}
            None => panic!("the follower ended before the store was closed"),
        }
    }
    let guard = kv
        .lock(format!("{dir}/lock"), crate::LockOptions::default())
        .await
        .expect("lock");
    let mut watch = kv.watch(format!("{dir}/watched")).await.expect("watch");
    assert!(matches!(watch.next().await, Some(Ok(None))), "watch starts");
    let registry = Registry::new(kv.clone(), format!("{dir}/services"));
    let mut instances = registry.watch("web").await.expect("instance watch");
    let first = tokio::time::timeout(bound, instances.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(ref set))) if set.is_empty()),
        "the instance watch starts empty: {first:?}"
    );

    kv.close().await.expect("close");

    tokio::time::timeout(bound, crate::LockGuard::lost(&guard))
        .await
        .expect("a lock guard reports lost() after close");
    let mut tail = Vec::new();
    let ended = tokio::time::timeout(bound, async {
        while let Some(event) = campaign.next().await {
            tail.push(event);
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the campaign did not end after close (events {tail:?})"
    );
    assert_eq!(
        tail,
        [false],
        "the leader steps down once, then the campaign ends"
    );
    assert!(
        !candidate.is_leader(),
        "a candidate of a closed store leads"
    );
    let mut errors = Vec::new();
    let ended = tokio::time::timeout(bound, async {
        while let Some(item) = leaders.next().await {
            if let Err(err) = item {
                errors.push(err.kind());
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the follower did not end after close (errors {errors:?})"
    );
    assert_eq!(errors.last(), Some(&ErrorKind::Closed), "{errors:?}");
    let item = tokio::time::timeout(bound, watch.next())
        .await
        .expect("the watch reports the close");
    assert!(
        matches!(&item, Some(Err(crate::Error::Closed))),
        "a watch yields Err(Closed) after close, got {item:?}"
    );
    let end = tokio::time::timeout(bound, watch.next())
        .await
        .expect("the watch ends after Err(Closed)");
    assert!(end.is_none(), "a watch ends after Err(Closed), got {end:?}");
    let item = tokio::time::timeout(bound, instances.next())
        .await
        .expect("the instance watch reports the close");
    assert!(
        matches!(&item, Some(Err(crate::Error::Closed))),
        "an instance watch yields Err(Closed) after close, got {item:?}"
    );
    let end = tokio::time::timeout(bound, instances.next())
        .await
        .expect("the instance watch ends");
    assert!(end.is_none(), "an instance watch ends after Err(Closed)");
}
