//! The compiled route table: host, URI (exact and prefix), method, priority.
//!
//! Matching follows APISIX's radixtree router:
//! - `uri` is exact, or a prefix when it ends in `*` (`/api/*` matches `/api/` and below, not
//!   `/api`). Paths are compared as bytes: the caller passes the normal form of the path
//!   (`http1::path`: decoded, slashes merged, dot-segments resolved), or `/public/../private` would
//!   match `/public/*`.
//! - `host` is exact (ASCII case-insensitive; the port is stripped from the `Host` header) or
//!   `*.example.com`, which matches one or more labels before `.example.com` but not
//!   `example.com` itself. A route without hosts matches any host, or none.
//! - `methods`: empty matches every method; tokens are case-sensitive (RFC 9110).
//! - Disabled routes never match.
//!
//! Among the routes that match, the winner is decided by, in order: higher `priority`; exact URI
//! over prefix; longer prefix over shorter; exact host over wildcard host (longer wildcard over
//! shorter) over no host; then config order. radixtree only lets `priority` order routes that
//! share a URI; here it applies to every candidate, which gives the same answer whenever
//! priorities are left at 0 and a predictable one otherwise.
//!
//! `find` does not allocate: exact URIs are one hash lookup, prefixes one lookup per distinct
//! prefix length no longer than the path, and the host is lowercased into a stack buffer.

mod expr;
mod ip;
mod path;
mod vars;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

pub use expr::{Expr, ExprError, NoVars, VarSource};
pub use ip::IpSet;
pub use path::{Captures, MAX_PARAMS, ParamPattern};
pub use vars::{HeadVars, cookie_value, query_arg, var_names_field};

use crate::config::RouteConf;

/// The longest DNS name; a longer `Host` cannot equal any configured host pattern.
const MAX_HOST: usize = 253;

/// The request methods APISIX's `methods` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
    Options,
    Connect,
    Trace,
    Purge,
}

impl Method {
    const ALL: [(Method, &'static str); 10] = [
        (Method::Get, "GET"),
        (Method::Post, "POST"),
        (Method::Put, "PUT"),
        (Method::Delete, "DELETE"),
        (Method::Patch, "PATCH"),
        (Method::Head, "HEAD"),
        (Method::Options, "OPTIONS"),
        (Method::Connect, "CONNECT"),
        (Method::Trace, "TRACE"),
        (Method::Purge, "PURGE"),
    ];

    /// Case-sensitive, as method tokens are.
    pub fn from_token(token: &[u8]) -> Option<Method> {
        Method::ALL
            .iter()
            .find(|(_, name)| name.as_bytes() == token)
            .map(|(m, _)| *m)
    }

    pub fn as_str(self) -> &'static str {
        Method::ALL[self as usize].1
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of methods; empty means "any method", including ones not in [`Method`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u16);

impl MethodSet {
    pub const ANY: MethodSet = MethodSet(0);

    pub fn insert(&mut self, method: Method) {
        self.0 |= method.bit();
    }

    pub fn is_any(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, method: Method) -> bool {
        self.is_any() || self.0 & method.bit() != 0
    }

    /// Whether a request with this raw method token is allowed.
    pub fn allows(self, token: &[u8]) -> bool {
        self.is_any() || Method::from_token(token).is_some_and(|m| self.contains(m))
    }

    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL
            .into_iter()
            .map(|(m, _)| m)
            .filter(move |m| self.0 & m.bit() != 0)
    }
}

/// Why a `uri` or `host` pattern is refused; config reports it with the field's path.
pub fn check_uri_pattern(uri: &str) -> Result<(), &'static str> {
    if !uri.starts_with('/') {
        return Err("must start with `/`");
    }
    if uri
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?')
    {
        return Err("must be a path without spaces, control characters or a query");
    }
    if path::is_param_pattern(uri) {
        ParamPattern::compile(uri)?;
    }
    Ok(())
}

pub fn check_host_pattern(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > MAX_HOST {
        return Err("must be a host name (1-253 characters)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("must be a host name or `*.suffix` (no port, no other `*`)");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err("must not have empty labels");
    }
    Ok(())
}

#[derive(Debug)]
enum HostPattern {
    Exact(Box<[u8]>),
    /// `.example.com` for `*.example.com`.
    Suffix(Box<[u8]>),
}

#[derive(Debug)]
struct Entry {
    route: usize,
    priority: i64,
    /// 0 for an exact URI; for a prefix, smaller for longer prefixes.
    path_rank: u32,
    hosts: Range<usize>,
    methods: MethodSet,
    /// Index into `patterns` for a parameterised URI.
    pattern: Option<u32>,
    /// Index into `filters` for a route with `vars` or `remote_addrs`.
    filter: Option<u32>,
}

/// The per-request conditions of a route beyond host, URI and method.
#[derive(Debug)]
struct Filter {
    remote_addrs: IpSet,
    vars: Option<Arc<Expr>>,
}

/// What `find_match` is given about a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The raw `Host` header (may carry a port).
    pub host: Option<&'a [u8]>,
    /// The path without the query; see the module docs.
    pub path: &'a [u8],
    /// The raw method token.
    pub method: &'a [u8],
    /// The client address, for `remote_addrs`; None matches no route that has them.
    pub remote_addr: Option<IpAddr>,
}

/// The winning route and its URI parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Index into the `routes` given to `build`.
    pub route: usize,
    entry: usize,
    /// Parameter values as ranges into the path given to `find_match`, in the order of
    /// [`RouteTable::param_names`].
    pub captures: Captures,
}

impl Match {
    /// The value of parameter `name` (`/:name`, `/*name`) in `path`, the path that was matched.
    pub fn param<'p>(&self, table: &RouteTable, path: &'p [u8], name: &str) -> Option<&'p [u8]> {
        let i = table.param_names(self).iter().position(|n| &**n == name)?;
        path.get(self.captures.get(i)?)
    }
}

/// Compiled once per config load; shared by every shard.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
    hosts: Vec<HostPattern>,
    patterns: Vec<ParamPattern>,
    filters: Vec<Filter>,
    exact: HashMap<Box<[u8]>, Vec<usize>, PathHash>,
    prefix: HashMap<Box<[u8]>, Vec<usize>, PathHash>,
    /// Distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
    /// The highest priority of any entry: once the best candidate has it, only a more specific
    /// path could beat it, and the lookups go from most to least specific.
    max_priority: i64,
}

/// Lower is better; see the module docs for the order.
type Rank = (std::cmp::Reverse<i64>, u32, u32, usize);

/// The best candidate so far.
struct Best {
    rank: Rank,
    route: usize,
    entry: usize,
    captures: Captures,
}

impl RouteTable {
    /// Patterns must have passed `check_uri_pattern` (config does that); one that does not
    /// compile is left out of the table.
    pub fn build(routes: &[RouteConf]) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, route) in routes.iter().enumerate() {
            if !route.enabled {
                continue;
            }
            let start = table.hosts.len();
            for host in &route.hosts {
                let host = host.to_ascii_lowercase().into_bytes();
                table.hosts.push(match host.strip_prefix(b"*") {
                    Some(suffix) => HostPattern::Suffix(suffix.into()),
                    None => HostPattern::Exact(host.into()),
                });
            }
            let hosts = start..table.hosts.len();
            let filter = (route.vars.is_some() || !route.remote_addrs.is_empty()).then(|| {
                table.filters.push(Filter {
                    remote_addrs: route.remote_addrs.clone(),
                    vars: route.vars.clone(),
                });
                (table.filters.len() - 1) as u32
            });
            for uri in &route.uris {
                let entry = table.entries.len();
                let mut pattern = None;
                let (exact, path) = if path::is_param_pattern(uri) {
                    let Ok(compiled) = ParamPattern::compile(uri) else {
                        continue;
                    };
                    let prefix = compiled.prefix.clone();
                    table.patterns.push(compiled);
                    pattern = Some((table.patterns.len() - 1) as u32);
                    (false, prefix.into_string())
                } else {
                    match uri.strip_suffix('*') {
                        Some(prefix) => (false, prefix.to_owned()),
                        None => (true, uri.clone()),
                    }
                };
                let (map, path_rank) = if exact {
                    (&mut table.exact, 0)
                } else {
                    let rank = u32::MAX - u32::try_from(path.len()).unwrap_or(u32::MAX - 1);
                    (&mut table.prefix, rank)
                };
                map.entry(path.into_bytes().into()).or_default().push(entry);
                table.entries.push(Entry {
                    route: index,
                    priority: route.priority,
                    path_rank,
                    hosts: hosts.clone(),
                    methods: route.methods,
                    pattern,
                    filter,
                });
            }
        }
        table.prefix_lens = table.prefix.keys().map(|k| k.len()).collect();
        table.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        table.prefix_lens.dedup();
        table.max_priority = table.entries.iter().map(|e| e.priority).max().unwrap_or(0);
        table
    }

    /// The index (into the `routes` given to `build`) of the best matching route for a request
    /// without variables or client address (routes with `vars` see every variable missing,
    /// routes with `remote_addrs` never match).
    /// `host` is the raw `Host` header (may carry a port), `path` the raw path without the
    /// query, `method` the raw method token.
    pub fn find(&self, host: Option<&[u8]>, path: &[u8], method: &[u8]) -> Option<usize> {
        let req = Request {
            host,
            path,
            method,
            remote_addr: None,
        };
        self.find_match(&req, &NoVars).map(|m| m.route)
    }

    /// The best matching route, with its URI parameters. A route whose `remote_addrs`, `vars`
    /// or parameterised URI rejects the request is skipped and the next candidate wins.
    pub fn find_match<V: VarSource + ?Sized>(&self, req: &Request<'_>, vars: &V) -> Option<Match> {
        let mut buf = [0u8; MAX_HOST];
        let host = req.host.and_then(|h| normalize_host(h, &mut buf));
        let mut best: Option<Best> = None;
        if let Some(candidates) = self.exact.get(req.path) {
            self.consider(candidates, host, req, vars, &mut best);
        }
        for &len in &self.prefix_lens {
            if best
                .as_ref()
                .is_some_and(|b| b.rank.0.0 == self.max_priority)
            {
                break;
            }
            if let Some(prefix) = req.path.get(..len)
                && let Some(candidates) = self.prefix.get(prefix)
            {
                self.consider(candidates, host, req, vars, &mut best);
            }
        }
        best.map(|b| Match {
            route: b.route,
            entry: b.entry,
            captures: b.captures,
        })
    }

    /// The parameter names of the matched URI, in capture order.
    pub fn param_names(&self, m: &Match) -> &[Box<str>] {
        match self.entries.get(m.entry).and_then(|e| e.pattern) {
            Some(p) => &self.patterns[p as usize].names,
            None => &[],
        }
    }

    fn consider<V: VarSource + ?Sized>(
        &self,
        candidates: &[usize],
        host: Option<&[u8]>,
        req: &Request<'_>,
        vars: &V,
        best: &mut Option<Best>,
    ) {
        for &i in candidates {
            let entry = &self.entries[i];
            if !entry.methods.allows(req.method) {
                continue;
            }
            let Some(host_rank) = self.host_rank(entry, host) else {
                continue;
            };
            let rank = (
                std::cmp::Reverse(entry.priority),
                entry.path_rank,
                host_rank,
                i,
            );
            if best.as_ref().is_some_and(|b| rank >= b.rank) {
                continue;
            }
            // The costlier conditions only for a candidate that would win.
            if let Some(f) = entry.filter {
                let filter = &self.filters[f as usize];
                if !filter.remote_addrs.is_empty()
                    && !req
                        .remote_addr
                        .is_some_and(|ip| filter.remote_addrs.contains(ip))
                {
                    continue;
                }
                if filter.vars.as_ref().is_some_and(|e| !e.eval(vars)) {
                    continue;
                }
            }
            let mut captures = Captures::default();
            if let Some(p) = entry.pattern
                && !self.patterns[p as usize].matches(req.path, &mut captures)
            {
                continue;
            }
            *best = Some(Best {
                rank,
                route: entry.route,
                entry: i,
                captures,
            });
        }
    }

    /// None: the route's hosts exclude this request. 0 is the best rank.
    fn host_rank(&self, entry: &Entry, host: Option<&[u8]>) -> Option<u32> {
        if entry.hosts.is_empty() {
            return Some(u32::MAX);
        }
        let host = host?;
        let mut best: Option<u32> = None;
        for pattern in &self.hosts[entry.hosts.clone()] {
            let rank = match pattern {
                HostPattern::Exact(exact) if **exact == *host => 0,
                HostPattern::Suffix(suffix)
                    if host.len() > suffix.len() && host.ends_with(suffix) =>
                {
                    // Longer suffixes are more specific; MAX_HOST bounds the subtraction.
                    1 + (MAX_HOST - suffix.len().min(MAX_HOST)) as u32
                }
                _ => continue,
            };
            best = Some(best.map_or(rank, |b| b.min(rank)));
        }
        best
    }
}

/// The table's keys come from the config and lookups never insert, so a request cannot build
/// collision chains; a multiply-rotate hash (FxHash) is safe here and several times cheaper
/// than SipHash on short paths.
type PathHash = BuildHasherDefault<FxHasher>;

#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The host part of a `Host` header, lowercased into `buf`: port and a trailing dot removed.
/// None when empty or too long to equal any pattern.
fn normalize_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b [u8]> {
    let raw = raw.trim_ascii();
    let host = if raw.first() == Some(&b'[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        let end = raw.iter().position(|&b| b == b']')?;
        &raw[..=end]
    } else {
        let end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
        &raw[..end]
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host);
    out.make_ascii_lowercase();
    Some(out)
}

#[cfg(test)]
mod tests;
