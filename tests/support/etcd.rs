//! Helpers of the etcd tests: connecting, test certificates, counting the gRPC calls
//! an operation makes, writing from another runtime, and etcd's raw key space.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kvkit::Kv;
use kvkit::PutOptions;
use kvkit::etcd::{Etcd, EtcdConfig};
use kvkit::testing::conformance::RawStore;
use kvkit::testing::etcd_server::{ClientAuth, EtcdServer, ServerTls};

/// Bounds every wait in the etcd tests.
pub const STEP: Duration = Duration::from_secs(10);

/// A handle on the test etcd named by `config`.
pub async fn connect(config: EtcdConfig) -> Kv<Etcd> {
    Kv::new(
        Etcd::connect(config)
            .await
            .expect("connect to the test etcd"),
    )
}

/// A CA, and a certificate for 127.0.0.1 signed by it.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key (PEM) for 127.0.0.1 and localhost.
    pub fn issue(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The server side of TLS: a certificate from `ca`, client certificates checked as
/// `client_auth` says.
pub fn server_tls(ca: &TestCa, client_auth: Option<ClientAuth>) -> ServerTls {
    let (cert_pem, key_pem) = ca.issue();
    ServerTls {
        ca_pem: ca.pem(),
        cert_pem,
        key_pem,
        client_auth,
    }
}

/// The gRPC requests `op` made, counted on the server (its `/metrics`).
pub async fn round_trips<F, Fut, T>(server: &EtcdServer, op: F) -> (T, Vec<(String, u64)>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let before = server.grpc_calls();
    let out = op().await;
    let after = server.grpc_calls();
    let diff = after
        .iter()
        .filter_map(|(method, n)| {
            let delta = n - before.get(method).copied().unwrap_or(0);
            (delta > 0).then(|| (method.clone(), delta))
        })
        .collect();
    (out, diff)
}

/// Expected call counts, sorted like [`round_trips`] reports them.
pub fn calls(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut calls: Vec<(String, u64)> = expected.iter().map(|(m, n)| (m.to_string(), *n)).collect();
    calls.sort();
    calls
}

/// Writes and compacts from another thread (its own runtime) while this test's
/// current-thread runtime is blocked, so the watch tasks spawned here have not yet
/// opened their etcd watches: they will open them at a compacted revision.
pub fn write_and_compact_elsewhere(config: EtcdConfig) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let kv = connect(config).await;
            kv.put("c/k", "1", PutOptions::default()).await.unwrap();
            kv.put("c/k", "2", PutOptions::default()).await.unwrap();
            let last = kv.put("c/other", "x", PutOptions::default()).await.unwrap();
            let mut client = kv.backend().client().clone();
            client
                .compact(
                    last.last_index as i64,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
}

/// etcd's raw key space below a handle's prefix, through the etcd client: how other
/// tools write keys kvkit never writes.
#[derive(Clone)]
pub struct EtcdRaw {
    client: etcd_client::KvClient,
    prefix: Vec<u8>,
}

impl EtcdRaw {
    /// The raw key space of `kv`, whose prefix is `prefix` (`""` or ending in `/`).
    pub fn new(kv: &Kv<Etcd>, prefix: &str) -> Self {
        EtcdRaw {
            client: kv.backend().client().kv_client(),
            prefix: prefix.as_bytes().to_vec(),
        }
    }
}

impl RawStore for EtcdRaw {
    fn put_raw(&self, key: &[u8], value: &[u8]) -> BoxFuture<'static, ()> {
        let mut client = self.client.clone();
        let key = [self.prefix.as_slice(), key].concat();
        let value = value.to_vec();
        async move {
            client
                .put(key.clone(), value, None)
                .await
                .unwrap_or_else(|e| panic!("raw put of {:?}: {e}", String::from_utf8_lossy(&key)));
        }
        .boxed()
    }

    fn raw_keys(&self, prefix: &[u8]) -> BoxFuture<'static, Vec<Vec<u8>>> {
        let mut client = self.client.clone();
        let full = [self.prefix.as_slice(), prefix].concat();
        let strip = self.prefix.len();
        async move {
            // An empty prefix is every key: etcd takes no empty key, so from "\0" on.
            let (key, options) = if full.is_empty() {
                (vec![0], etcd_client::GetOptions::new().with_from_key())
            } else {
                (full, etcd_client::GetOptions::new().with_prefix())
            };
            let response = client
                .get(key, Some(options.with_keys_only()))
                .await
                .expect("raw get");
            let mut keys: Vec<Vec<u8>> = response
                .kvs()
                .iter()
                .map(|kv| kv.key()[strip..].to_vec())
                .collect();
            keys.sort();
            keys
        }
        .boxed()
    }
}
