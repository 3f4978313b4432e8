//! The store URL grammar every backend shares,
//! `scheme[+https]://[user[:password]@]host,host/path?name=value&...`: split and
//! percent-decoded into [`UrlParts`], written back with [`QueryWriter`] and
//! [`network_url`]. Each backend maps the parts to its own config in its `config.rs`.

// Each part of the grammar serves some backends: with only some compiled in, parts
// go unused.
#![cfg_attr(
    not(all(feature = "etcd", feature = "consul", feature = "zookeeper")),
    allow(dead_code)
)]

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::duration::parse_duration;
use super::duration::{DurationSettings, format_duration};
use super::error::config_error;
use super::tls::TlsConfig;
use crate::error::{Error, Result};

/// The longest store URL accepted, in bytes.
const MAX_URL: usize = 8192;

/// What is percent-encoded when writing: all but RFC 3986's unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// A query value keeps the `:` and `/` of addresses and file paths readable.
const QUERY_VALUE: &AsciiSet = &UNRESERVED.remove(b':').remove(b'/');
/// A host keeps its port and IPv6 brackets.
const HOST: &AsciiSet = &UNRESERVED.remove(b':').remove(b'[').remove(b']');
/// A path keeps its separators.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

fn encode(text: &str, set: &'static AsciiSet) -> String {
    utf8_percent_encode(text, set).to_string()
}

/// Percent-encodes a path for the part after the hosts.
pub(crate) fn encode_path(path: &str) -> String {
    encode(path, PATH)
}

/// Decodes `%XX` escapes (and `+` as a space in the query), refusing a `%` not followed
/// by two hex digits and text that is not UTF-8; `what` names the part in errors.
fn decode(text: &str, what: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(at, &b)| {
        b != b'%'
            || bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(config_error(format!("bad percent-encoding in the {what}")));
    }
    let text: Cow<'_, str> = if what == "query" {
        Cow::Owned(text.replace('+', " "))
    } else {
        Cow::Borrowed(text)
    };
    percent_decode_str(&text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| config_error(format!("the {what} is not UTF-8")))
}

/// `scheme://authority/path?query` split into its parts, decoded.
pub(crate) struct UrlParts {
    /// The scheme without its transport, lower case (`etcd` of `etcd+https`).
    pub(crate) scheme: String,
    /// Whether the scheme ends in `+https`.
    pub(crate) tls: bool,
    /// `user` and the optional `password` before `@`.
    pub(crate) userinfo: Option<(String, Option<String>)>,
    /// The comma-separated hosts.
    pub(crate) hosts: Vec<String>,
    /// The path, with its leading `/` (empty when none).
    pub(crate) path: String,
    /// The options after `?`.
    pub(crate) query: Query,
}

impl UrlParts {
    /// Splits and decodes a store URL.
    pub(crate) fn split(url: &str) -> Result<UrlParts> {
        if url.len() > MAX_URL {
            return Err(config_error(format!(
                "store URL of {} bytes is too long (at most {MAX_URL})",
                url.len()
            )));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            config_error(
                "a store URL looks like scheme://..., e.g. memory://, redb:///data.redb, \
                 etcd://host:2379/prefix, zk://host:2181/root, consul://host:8500/prefix",
            )
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let (scheme, tls) = match scheme.split_once('+') {
            Some((base, "https")) => (base.to_owned(), true),
            Some((base, "http")) => (base.to_owned(), false),
            Some((_, other)) => {
                return Err(config_error(format!(
                    "unknown transport {other:?} in the scheme (use +https or +http)"
                )));
            }
            None => (scheme, false),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        if rest.contains('#') {
            return Err(config_error("a store URL has no #fragment"));
        }
        let query = Query::parse(query)?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => {
                let (name, password) = match user.split_once(':') {
                    Some((name, password)) => (name, Some(decode(password, "password")?)),
                    None => (user, None),
                };
                (Some((decode(name, "user name")?, password)), hosts)
            }
            None => (None, authority),
        };
        let hosts = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| decode(h, "host list"))
            .collect::<Result<Vec<_>>>()?;
        Ok(UrlParts {
            scheme,
            tls,
            userinfo,
            hosts,
            path: decode(path, "path")?,
            query,
        })
    }

    /// Errors for `+https` on a store that has no TLS.
    pub(crate) fn refuse_tls(&self) -> Result<()> {
        if self.tls {
            return Err(config_error(format!(
                "{}+https makes no sense",
                self.scheme
            )));
        }
        Ok(())
    }

    /// Errors when no host is given (`scheme` as the message writes it).
    pub(crate) fn require_hosts(&self, scheme: &str) -> Result<()> {
        if self.hosts.is_empty() {
            return Err(config_error(format!(
                "{scheme}:// needs at least one host:port"
            )));
        }
        Ok(())
    }

    /// The path as a key prefix: without its leading `/`.
    pub(crate) fn prefix(&self) -> String {
        self.path.trim_start_matches('/').to_owned()
    }
}

/// The options of a URL's query, taken one by one by the backend that reads them.
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: &str) -> Result<Query> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for item in query.split('&').filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                config_error(format!("option {item:?} has no value (write name=value)"))
            })?;
            let name = decode(name, "query")?;
            if pairs.iter().any(|(known, _)| *known == name) {
                return Err(config_error(format!("option {name:?} is given twice")));
            }
            pairs.push((name, decode(value, "query")?));
        }
        Ok(Query { pairs })
    }

    /// Removes and returns the option `name`.
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        let at = self.pairs.iter().position(|(k, _)| k == name)?;
        Some(self.pairs.remove(at).1)
    }

    fn duration(&mut self, name: &str) -> Result<Option<Duration>> {
        self.take(name)
            .map(|text| {
                parse_duration(&text).map_err(|e| match e {
                    Error::Config { reason } => config_error(format!("option {name}: {reason}")),
                    other => other,
                })
            })
            .transpose()
    }

    /// Sets every duration setting of `config` given as an option of the same name.
    pub(crate) fn durations(&mut self, config: &mut impl DurationSettings) -> Result<()> {
        for (name, slot) in config.durations_mut() {
            if let Some(value) = self.duration(name)? {
                *slot = value;
            }
        }
        Ok(())
    }

    /// Takes a boolean option (`true`/`1`/`yes`, `false`/`0`/`no`).
    pub(crate) fn bool(&mut self, name: &str) -> Result<Option<bool>> {
        self.take(name)
            .map(|text| match text.as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(config_error(format!(
                    "option {name}: expected true or false, got {text:?}"
                ))),
            })
            .transpose()
    }

    /// Takes the TLS options (`ca`, `cert`, `key` as file paths, `server_name`): the
    /// TLS settings of a `scheme+https` URL (`https`), the defaults when none is given;
    /// `None` without `+https`, where giving one is an error listing `options`.
    pub(crate) fn tls(
        &mut self,
        https: bool,
        scheme: &str,
        options: &str,
    ) -> Result<Option<TlsConfig>> {
        let ca = self.take("ca").map(PathBuf::from);
        let cert = self.take("cert").map(PathBuf::from);
        let key = self.take("key").map(PathBuf::from);
        let server_name = self.take("server_name");
        let given = ca.is_some() || cert.is_some() || key.is_some() || server_name.is_some();
        if given && !https {
            return Err(config_error(format!(
                "TLS options ({options}) need {scheme}+https://"
            )));
        }
        Ok(https.then(|| TlsConfig {
            ca_file: ca,
            cert_file: cert,
            key_file: key,
            server_name,
            ..TlsConfig::default()
        }))
    }

    /// Errors when an option is left that the backend does not know.
    pub(crate) fn finish(self, backend: &str, known: &[&str]) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(config_error(format!(
                "unknown option {name:?} for {backend} (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }
}

/// Builds `?a=1&b=2` from the options that differ from the defaults.
#[derive(Default)]
pub(crate) struct QueryWriter(Vec<String>);

impl QueryWriter {
    /// Adds `name=value`.
    pub(crate) fn push(&mut self, name: &str, value: &str) {
        self.0
            .push(format!("{name}={}", encode(value, QUERY_VALUE)));
    }

    /// Adds each duration setting of `config` that differs from `defaults`.
    pub(crate) fn durations<C: DurationSettings>(&mut self, config: &C, defaults: &C) {
        for ((name, value), (_, default)) in
            config.durations().into_iter().zip(defaults.durations())
        {
            if value != default {
                self.push(name, &format_duration(value));
            }
        }
    }

    /// Adds the TLS settings that are file paths or names (inline PEMs are left out).
    pub(crate) fn tls(&mut self, tls: &Option<TlsConfig>) {
        let Some(tls) = tls else { return };
        fn path(p: &Option<PathBuf>) -> Option<Cow<'_, str>> {
            p.as_deref().map(Path::to_string_lossy)
        }
        if let Some(ca) = path(&tls.ca_file) {
            self.push("ca", &ca);
        }
        if let Some(cert) = path(&tls.cert_file) {
            self.push("cert", &cert);
        }
        if let Some(key) = path(&tls.key_file) {
            self.push("key", &key);
        }
        if let Some(name) = &tls.server_name {
            self.push("server_name", name);
        }
    }

    fn finish(self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("?{}", self.0.join("&"))
        }
    }
}

/// Writes `scheme[+https]://[user@]host,host[/prefix][?query]` for a network backend;
/// an endpoint's `http://` (or with `https`, `https://`) is left out.
pub(crate) fn network_url(
    scheme: &str,
    https: bool,
    user: Option<&str>,
    endpoints: &[String],
    prefix: &str,
    query: QueryWriter,
) -> String {
    let user = user
        .map(|u| format!("{}@", encode(u, UNRESERVED)))
        .unwrap_or_default();
    let hosts = endpoints
        .iter()
        .map(|e| {
            let bare = if https {
                e.strip_prefix("https://")
            } else {
                e.strip_prefix("http://")
            };
            encode(bare.unwrap_or(e), HOST)
        })
        .collect::<Vec<_>>()
        .join(",");
    let prefix = prefix.trim_matches('/');
    let path = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", encode_path(prefix))
    };
    format!(
        "{scheme}{}://{user}{hosts}{path}{}",
        if https { "+https" } else { "" },
        query.finish()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> String {
        match e {
            Error::Config { reason } => reason,
            other => panic!("not a configuration error: {other}"),
        }
    }

    #[test]
    fn decoding_reads_escapes_and_refuses_broken_ones() {
        assert_eq!(decode("a%2Fb%20c", "path").unwrap(), "a/b c");
        assert_eq!(decode("a+b%2B", "query").unwrap(), "a b+");
        assert_eq!(decode("a+b", "path").unwrap(), "a+b");
        assert_eq!(decode("%C3%A9", "host list").unwrap(), "é");
        for bad in ["%", "%Z1", "a%2", "%%41"] {
            let err = reason(decode(bad, "query").unwrap_err());
            assert_eq!(err, "bad percent-encoding in the query", "{bad}");
        }
        let err = reason(decode("%FF", "path").unwrap_err());
        assert_eq!(err, "the path is not UTF-8");
    }

    #[test]
    fn encoding_keeps_unreserved_characters_and_each_part_its_own() {
        assert_eq!(encode("a-b._~Z9", UNRESERVED), "a-b._~Z9");
        assert_eq!(encode("u:p@h", UNRESERVED), "u%3Ap%40h");
        assert_eq!(encode("/a b/c?d", QUERY_VALUE), "/a%20b/c%3Fd");
        assert_eq!(encode("[::1]:2379,x", HOST), "[::1]:2379%2Cx");
        assert_eq!(encode_path("dir/é#"), "dir/%C3%A9%23");
        for text in ["a b+c", "é/ü?&=", "%41"] {
            let encoded = encode(text, QUERY_VALUE);
            assert_eq!(decode(&encoded, "query").unwrap(), text);
        }
    }
}
