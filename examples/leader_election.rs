//! Leader election on the embedded store: three candidates in one process run for the
//! same key, one wins, the winner resigns, and another takes over.
//!
//! Run with `cargo run --example leader_election`.

use std::time::Duration;

use futures::StreamExt;
use kvkit::election::{Candidate, Follower};
use kvkit::redb::Redb;
use kvkit::{Error, Kv};

#[tokio::main]
async fn main() -> kvkit::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::backend("example", e))?;
    let kv = Kv::new(Redb::open(dir.path().join("election.redb"))?);
    let key = "services/scheduler/leader";

    // A follower prints every leader change.
    let mut leaders = Follower::new(kv.clone(), key).leaders();
    tokio::spawn(async move {
        while let Some(leader) = leaders.next().await {
            match leader {
                Ok(Some(id)) => println!("follower: leader is now {id}"),
                Ok(None) => println!("follower: no leader"),
                Err(err) => println!("follower: store error {err}, retrying"),
            }
        }
    });

    let candidates: Vec<_> = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(|node| {
            Candidate::new(kv.clone(), key, node, Duration::from_secs(2))
                .retry_after(Duration::from_millis(300))
        })
        .collect();
    for candidate in &candidates {
        let mut campaign = candidate.campaign();
        let node = candidate.node().to_owned();
        tokio::spawn(async move {
            while let Some(elected) = campaign.next().await {
                println!("{node}: {}", if elected { "elected" } else { "following" });
            }
        });
    }

    for round in 1..=3 {
        let leader = wait_for_leader(&candidates).await;
        println!(
            "round {round}: {} leads; it resigns",
            candidates[leader].node()
        );
        candidates[leader].resign();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = wait_for_leader(&candidates).await;
    println!("final leader: {}", candidates[leader].node());
    for candidate in &candidates {
        candidate.stop();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn wait_for_leader(candidates: &[Candidate<Redb>]) -> usize {
    for _ in 0..500 {
        if let Some(i) = candidates.iter().position(Candidate::is_leader) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 5 s");
}
