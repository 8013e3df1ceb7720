//! Operator identity and request checks on the hub's admin API.
//!
//! Every admin call (all routes but `/healthz` and `/metrics`) passes, in this order:
//!
//! 1. **Host and Origin** ([`precheck`]): `Host` must be the admin listener's address
//!    (`IP:PORT`, or `localhost:PORT` on loopback) and an `Origin`, when present, must be
//!    `http(s)://` one of those; otherwise 403 `cross_site` (a page in an operator's browser, or a
//!    DNS-rebinding name, cannot drive the API).
//! 2. **Operator token** ([`AdminAuth::authenticate`]): `Authorization: Bearer <operator token>`,
//!    verified with the fleet's operator public key (`[keys] operator_verify`) and checked
//!    against the fleet's signed deny list (the hub's one copy, `crate::denylist`);
//!    otherwise 401 (`no_token`, `wrong_token_kind` for a staff shift token, `invalid_token`,
//!    `revoked`).
//! 3. **Role** ([`required_role`]): `fleet` for ingest, devices, cohort, wipe; `privacy` for
//!    audit queries, verify, export, alerts, objection and the operator log; otherwise 403 `role`.
//! 4. **Body type**: a POST's `Content-Type` must be `application/json` or
//!    `application/x-ndjson` (415 `unsupported_media_type`), so no HTML form or `text/plain`
//!    "simple request" from a browser can reach a handler.
//!
//! The checks of 1, 2 (the header's shape) and 4 are pure functions of the request head,
//! fuzzed by `fuzz/fuzz_targets/admin_request.rs`.
//!
//! This module also watches the CRL's `nextUpdate` ([`AdminAuth::check_crl`]): past it, the hub
//! warns at every reload, lists a `crl_expired` hub alert in `GET /admin/alerts` and sets the
//! `kerbside_hub_crl_expired` gauge to 1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use edge_proto::time::UnixMillis;
use edge_proto::token::{verify_operator, OperatorClaims, OperatorRole, OperatorTokenError};
use edge_runtime::HubConfig;

use crate::denylist::TokenDenyList;

/// A refused admin request: HTTP status, error code and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }
}

/// What [`precheck`] found in an acceptable request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// The bearer token, if an `Authorization: Bearer …` header was given.
    pub bearer: Option<&'a str>,
}

/// The `Host` values the admin listener answers to: its own `IP:PORT`, and on loopback also
/// `localhost:PORT`.
pub fn allowed_hosts(admin: SocketAddr) -> Vec<String> {
    let mut v = vec![admin.to_string().to_ascii_lowercase()];
    if admin.ip().is_loopback() {
        v.push(format!("localhost:{}", admin.port()));
    }
    v
}

/// Whether a `Host` header names the admin listener.
pub fn host_ok(host: &str, allowed: &[String]) -> bool {
    let h = host.trim().to_ascii_lowercase();
    allowed.contains(&h)
}

/// Whether an `Origin` header is the admin listener itself (`http://` or `https://` one of
/// the allowed hosts, nothing after it).
pub fn origin_ok(origin: &str, allowed: &[String]) -> bool {
    let o = origin.trim().to_ascii_lowercase();
    let rest = match o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    {
        Some(r) => r,
        None => return false,
    };
    allowed.iter().any(|a| a == rest)
}

/// Whether a POST body's `Content-Type` is one the admin API takes.
pub fn content_type_ok(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "application/x-ndjson"
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let v = value.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// The role a route needs, by its template; `None` for routes without one (`/healthz`,
/// `/metrics`).
pub fn required_role(route: &str) -> Option<OperatorRole> {
    match route {
        "/admin/ingest" | "/admin/devices" | "/admin/cohort" | "/admin/wipe" | "/admin/feeds"
        | "/admin/history" => Some(OperatorRole::Fleet),
        "/admin/audit"
        | "/admin/audit/verify"
        | "/admin/audit/export"
        | "/admin/alerts"
        | "/admin/alerts/review"
        | "/admin/objection"
        | "/admin/objection/status"
        | "/admin/operator-log" => Some(OperatorRole::Privacy),
        _ => None,
    }
}

/// The pure checks on an admin request's head: Host, Origin, the POST body type and the
/// Authorization header's shape. `headers` are (lower-case name, raw value); a header that
/// appears twice or is not visible ASCII is refused.
pub fn precheck<'a>(
    method: &str,
    headers: &[(&str, &'a [u8])],
    allowed: &[String],
) -> Result<RequestHead<'a>, Refusal> {
    let one = |name: &str| -> Result<Option<&'a str>, Refusal> {
        let mut found = None;
        for (n, v) in headers {
            if n.eq_ignore_ascii_case(name) {
                if found.is_some() {
                    return Err(Refusal::new(
                        400,
                        "bad_request",
                        format!("the {name} header is given more than once"),
                    ));
                }
                let s = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
                    .ok_or_else(|| {
                        Refusal::new(
                            400,
                            "bad_request",
                            format!("the {name} header is not visible ASCII"),
                        )
                    })?;
                found = Some(s);
            }
        }
        Ok(found)
    };
    match one("host")? {
        Some(h) if host_ok(h, allowed) => {}
        Some(h) => {
            return Err(Refusal::new(
                403,
                "cross_site",
                format!(
                    "Host {h:?} is not this admin listener ({}): call it by its own address",
                    allowed.join(" or ")
                ),
            ))
        }
        None => {
            return Err(Refusal::new(
                403,
                "cross_site",
                "the request names no Host: call the admin listener by its own address",
            ))
        }
    }
    if let Some(o) = one("origin")? {
        if !origin_ok(o, allowed) {
            return Err(Refusal::new(
                403,
                "cross_site",
                format!("a request from origin {o:?} may not call the admin API"),
            ));
        }
    }
    let auth = one("authorization")?;
    let bearer = match auth {
        None => None,
        Some(v) => Some(bearer(v).ok_or_else(|| {
            Refusal::new(
                401,
                "no_token",
                "the Authorization header must be `Bearer <operator token>`",
            )
        })?),
    };
    if method.eq_ignore_ascii_case("POST") {
        let ct = one("content-type")?;
        if !ct.is_some_and(content_type_ok) {
            return Err(Refusal::new(
                415,
                "unsupported_media_type",
                format!(
                    "POST bodies must be application/json or application/x-ndjson (got {})",
                    ct.map_or_else(|| "none".to_owned(), |c| format!("{c:?}"))
                ),
            ));
        }
    }
    Ok(RequestHead { bearer })
}

/// What the hub knows of its CRL's freshness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlStatus {
    /// The CRL's `nextUpdate`, when it has one.
    pub next_update: Option<UnixMillis>,
    /// `nextUpdate` has passed.
    pub expired: bool,
    /// Why the CRL could not be read, if it could not.
    pub error: Option<String>,
}

/// The admin API's operator keys, deny list, allowed hosts and CRL watch.
#[derive(Debug)]
pub struct AdminAuth {
    operator_key: Option<[u8; 32]>,
    token_verify: Option<[u8; 32]>,
    /// The hub's deny list (shared with the fetch gate; re-read by the revocation watch).
    denylist: Option<Arc<TokenDenyList>>,
    hosts: Vec<String>,
    crl: RwLock<CrlStatus>,
}

impl AdminAuth {
    /// Load the operator key named by `hub.toml`, checking operator tokens against the hub's
    /// `denylist`. Fails without `[keys] operator_verify` (the admin API cannot identify anyone
    /// without it), or when a deny list is configured and none is in force.
    pub fn load(cfg: &HubConfig, denylist: Arc<TokenDenyList>) -> anyhow::Result<AdminAuth> {
        let path = cfg.keys.operator_verify.as_ref().with_context(|| {
            format!(
                "{} has no [keys] operator_verify: the admin API needs the fleet's operator-token public key to identify operators. Re-run `edge-provision hub --force` with this fleet to write it into the hub bundle",
                cfg.file.display()
            )
        })?;
        let key = edge_runtime::keys::load_ed25519_public(path).with_context(|| {
            "cannot load the operator-token public key ([keys] operator_verify)"
        })?;
        let mut auth = AdminAuth::unconfigured(cfg);
        auth.operator_key = Some(key);
        // The shift-token key only tells a shift token from a forgery (401 `wrong_token_kind`)
        // unless the deny list needs it.
        auth.token_verify = edge_runtime::keys::load_ed25519_public(&cfg.keys.token_verify).ok();
        if denylist.missing() {
            let reason = denylist.reload().err().unwrap_or_default();
            anyhow::bail!(
                "cannot load the token deny list ([keys] token_denylist): {reason}; the admin API will not start without the revocations it names"
            );
        }
        auth.denylist = Some(denylist);
        Ok(auth)
    }

    /// An admin API that identifies nobody (every admin call is refused with 401): what
    /// [`crate::admin::router`] falls back to for a configuration without an operator key.
    pub fn unconfigured(cfg: &HubConfig) -> AdminAuth {
        let hosts = cfg
            .admin
            .socket_addr()
            .map(allowed_hosts)
            .unwrap_or_default();
        AdminAuth {
            operator_key: None,
            token_verify: None,
            denylist: None,
            hosts,
            crl: RwLock::new(CrlStatus::default()),
        }
    }

    /// The Host values the admin listener answers to.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Verify an operator token at `now`.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        now: UnixMillis,
    ) -> Result<OperatorClaims, Refusal> {
        let Some(token) = token else {
            return Err(Refusal::new(
                401,
                "no_token",
                "every admin call needs `Authorization: Bearer <operator token>` (mint one with `edge-provision operator`)",
            ));
        };
        let Some(key) = &self.operator_key else {
            return Err(Refusal::new(
                401,
                "invalid_token",
                "this hub has no operator-token key ([keys] operator_verify) and can identify no operator",
            ));
        };
        let claims = verify_operator(token, key, now).map_err(|e| match e {
            OperatorTokenError::WrongKind => Refusal::new(
                401,
                "wrong_token_kind",
                "a staff shift token is not an operator token: mint one with `edge-provision operator`",
            ),
            OperatorTokenError::BadSignature if self.is_shift_token(token, now) => Refusal::new(
                401,
                "wrong_token_kind",
                "a staff shift token is not an operator token: mint one with `edge-provision operator`",
            ),
            e => Refusal::new(401, "invalid_token", e.to_string()),
        })?;
        if self
            .denylist
            .as_ref()
            .is_some_and(|l| l.denies_operator(&claims, now))
        {
            return Err(Refusal::new(
                401,
                "revoked",
                "this operator token has been revoked (token deny list)",
            ));
        }
        Ok(claims)
    }

    /// Whether `token` is signed by the fleet's shift-token key (whatever else is wrong with it).
    fn is_shift_token(&self, token: &str, now: UnixMillis) -> bool {
        use edge_proto::token::TokenError;
        let (Some(tv), Ok(any_unit)) = (
            &self.token_verify,
            edge_proto::ids::DeviceId::parse("hub-admin"),
        ) else {
            return false;
        };
        !matches!(
            edge_proto::token::verify(token, tv, now, &any_unit),
            Err(TokenError::BadSignature | TokenError::Malformed(_) | TokenError::WrongKind)
        )
    }

    /// Read the CRL's `nextUpdate` and record whether it has passed at `now`.
    pub fn check_crl(&self, path: &Path, now: UnixMillis) -> CrlStatus {
        self.check_crl_in_force(
            edge_runtime::keys::read(path).map_err(|e| e.to_string()),
            path,
            now,
        )
    }

    /// [`AdminAuth::check_crl`] of the CRL in force (`crl`: its bytes, or why they cannot be
    /// had), wherever it came from (`what`: the file, or the copy hubs share in their database).
    pub fn check_crl_in_force(
        &self,
        crl: Result<impl AsRef<[u8]>, String>,
        what: &Path,
        now: UnixMillis,
    ) -> CrlStatus {
        let status = match crl.and_then(|b| crl_next_update_of(b.as_ref(), what)) {
            Ok(next) => CrlStatus {
                next_update: next,
                expired: next.is_some_and(|n| now >= n),
                error: None,
            },
            Err(e) => CrlStatus {
                error: Some(e),
                ..CrlStatus::default()
            },
        };
        *self.crl.write().unwrap_or_else(|p| p.into_inner()) = status.clone();
        status
    }

    /// The last [`AdminAuth::check_crl`] result.
    pub fn crl_status(&self) -> CrlStatus {
        self.crl.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The earliest `nextUpdate` of the CRLs in a PEM file (`None` when none has one).
pub fn crl_next_update(path: &Path) -> Result<Option<UnixMillis>, String> {
    let bytes = edge_runtime::keys::read(path).map_err(|e| e.to_string())?;
    crl_next_update_of(&bytes, path)
}

/// [`crl_next_update`] of a CRL's bytes (`path`: where they came from, for errors).
pub fn crl_next_update_of(bytes: &[u8], path: &Path) -> Result<Option<UnixMillis>, String> {
    let crls = edge_runtime::keys::parse_crls(bytes, path).map_err(|e| e.to_string())?;
    let mut next: Option<UnixMillis> = None;
    for der in &crls {
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| format!("{}: not a valid CRL: {e}", path.display()))?;
        if let Some(t) = crl.next_update() {
            let ms = UnixMillis(t.timestamp().saturating_mul(1000));
            next = Some(next.map_or(ms, |n| n.min(ms)));
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        allowed_hosts("127.0.0.1:8443".parse().unwrap())
    }

    #[test]
    fn host_and_origin_must_be_the_admin_listener() {
        let h = hosts();
        let ok = precheck("GET", &[("host", b"127.0.0.1:8443")], &h);
        assert_eq!(ok, Ok(RequestHead { bearer: None }));
        assert!(precheck("GET", &[("host", b"LOCALHOST:8443")], &h).is_ok());
        for bad in [&b"evil.example"[..], b"127.0.0.1:8444", b"127.0.0.1"] {
            assert_eq!(
                precheck("GET", &[("host", bad)], &h).unwrap_err().code,
                "cross_site"
            );
        }
        assert_eq!(precheck("GET", &[], &h).unwrap_err().status, 403);
        let foreign = [
            ("host", &b"127.0.0.1:8443"[..]),
            ("origin", b"http://evil.example"),
        ];
        assert_eq!(
            precheck("GET", &foreign, &h).unwrap_err().code,
            "cross_site"
        );
        let own = [
            ("host", &b"127.0.0.1:8443"[..]),
            ("origin", b"http://localhost:8443"),
        ];
        assert!(precheck("GET", &own, &h).is_ok());
        let null = [("host", &b"127.0.0.1:8443"[..]), ("origin", b"null")];
        assert!(precheck("GET", &null, &h).is_err());
        let twice = [
            ("host", &b"127.0.0.1:8443"[..]),
            ("Host", b"127.0.0.1:8443"),
        ];
        assert_eq!(precheck("GET", &twice, &h).unwrap_err().status, 400);
    }

    #[test]
    fn posts_need_json_and_bearer_is_parsed() {
        let h = hosts();
        let post = |ct: &'static [u8]| {
            precheck(
                "POST",
                &[("host", &b"127.0.0.1:8443"[..]), ("content-type", ct)],
                &h,
            )
        };
        assert!(post(b"application/json").is_ok());
        assert!(post(b"application/x-ndjson; charset=utf-8").is_ok());
        assert_eq!(post(b"text/plain").unwrap_err().status, 415);
        assert_eq!(
            post(b"application/x-www-form-urlencoded")
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(
            precheck("POST", &[("host", &b"127.0.0.1:8443"[..])], &h)
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        let auth = [
            ("host", &b"127.0.0.1:8443"[..]),
            ("authorization", b"Bearer t.s"),
        ];
        assert_eq!(precheck("GET", &auth, &h).unwrap().bearer, Some("t.s"));
        let basic = [
            ("host", &b"127.0.0.1:8443"[..]),
            ("authorization", b"Basic x"),
        ];
        assert_eq!(precheck("GET", &basic, &h).unwrap_err().status, 401);
    }

    #[test]
    fn roles_by_route() {
        assert_eq!(required_role("/admin/wipe"), Some(OperatorRole::Fleet));
        assert_eq!(required_role("/admin/audit"), Some(OperatorRole::Privacy));
        assert_eq!(
            required_role("/admin/operator-log"),
            Some(OperatorRole::Privacy)
        );
        assert_eq!(required_role("/healthz"), None);
    }
}
