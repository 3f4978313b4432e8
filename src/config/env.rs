//! Secrets outside the configuration: the environment variables
//! [`StoreConfig::with_secrets_from_env`](super::StoreConfig::with_secrets_from_env) reads,
//! and what `Debug` shows in place of a secret.

/// etcd user name (when the config has none).
pub const ETCD_USERNAME: &str = "KVKIT_ETCD_USERNAME";
/// etcd password (when the config has none).
pub const ETCD_PASSWORD: &str = "KVKIT_ETCD_PASSWORD";
/// Consul ACL token (when the config has none).
pub const CONSUL_TOKEN: &str = "KVKIT_CONSUL_TOKEN";
/// Consul's own token variable, read after [`CONSUL_TOKEN`].
pub const CONSUL_HTTP_TOKEN: &str = "CONSUL_HTTP_TOKEN";
/// ZooKeeper digest credentials, `user:password` (when the config has none).
pub const ZK_DIGEST: &str = "KVKIT_ZK_DIGEST";

/// What `Debug` shows in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";
