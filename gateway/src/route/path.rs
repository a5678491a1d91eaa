//! URI patterns with parameters, as lua-resty-radixtree: `/user/:id` (`:name` matches one
//! non-empty segment), `/files/*path` (`*name` matches the rest: any bytes, `/` included, possibly
//! empty), and a `*` segment inside a parameterised pattern (unnamed). Other segments match
//! literally (radixtree pastes them into a PCRE pattern unescaped; here `.` is just a dot).
//!
//! A pattern is registered under its literal prefix (everything before the first `:`/`*`, as
//! radixtree does) and checked against the whole path when that prefix matches.

/// Captures per pattern; a longer list is a config error.
pub const MAX_PARAMS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<[u8]>),
    /// Index into the pattern's names.
    Param(u8),
    /// `*name`, or a bare `*` (no name, not captured).
    Star(Option<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamPattern {
    /// Split on `/`; the first is the empty segment before the leading `/`.
    segs: Box<[Seg]>,
    /// Position of the star segment, if any.
    star: Option<usize>,
    pub names: Box<[Box<str>]>,
    /// The literal prefix the pattern is registered under.
    pub prefix: Box<str>,
}

/// Byte ranges into the matched path, one per name, in the pattern's name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Captures {
    len: u8,
    spans: [(u32, u32); MAX_PARAMS],
}

impl Captures {
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`th capture as a range into the path given to the match.
    pub fn get(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let (start, end) = *self.spans[..self.len()].get(i)?;
        Some(start as usize..end as usize)
    }

    fn set(&mut self, i: u8, start: usize, end: usize) -> bool {
        let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(end)) else {
            return false;
        };
        self.spans[usize::from(i)] = (start, end);
        true
    }
}

/// Whether `uri` needs parameter matching (else it is exact or a trailing-`*` prefix).
pub fn is_param_pattern(uri: &str) -> bool {
    uri.contains(':') || uri.find('*').is_some_and(|i| i + 1 != uri.len())
}

impl ParamPattern {
    /// `uri` must already have passed `check_uri_pattern`.
    pub fn compile(uri: &str) -> Result<ParamPattern, &'static str> {
        let prefix_end = uri.find([':', '*']).unwrap_or(uri.len());
        let mut segs = Vec::new();
        let mut names: Vec<Box<str>> = Vec::new();
        let mut star = None;
        for seg in uri.split('/') {
            let named = |names: &mut Vec<Box<str>>, name: &str| -> Result<u8, &'static str> {
                if names.len() == MAX_PARAMS {
                    return Err("at most 8 parameters per URI");
                }
                names.push(name.into());
                Ok((names.len() - 1) as u8)
            };
            if let Some(name) = seg.strip_prefix(':') {
                if name.is_empty() || name.contains([':', '*']) {
                    return Err("a `:name` parameter needs a name (and no `:` or `*` in it)");
                }
                segs.push(Seg::Param(named(&mut names, name)?));
            } else if let Some(name) = seg.strip_prefix('*') {
                if star.is_some() {
                    return Err("only one `*` segment per URI");
                }
                if name.contains([':', '*']) {
                    return Err("a `*name` parameter name cannot contain `:` or `*`");
                }
                star = Some(segs.len());
                let index = if name.is_empty() {
                    None
                } else {
                    Some(named(&mut names, name)?)
                };
                segs.push(Seg::Star(index));
            } else if seg.contains('*') {
                return Err("`*` must start a segment (`/*name`) or end the URI (`/prefix*`)");
            } else {
                segs.push(Seg::Lit(seg.as_bytes().into()));
            }
        }
        Ok(ParamPattern {
            segs: segs.into(),
            star,
            names: names.into(),
            prefix: uri[..prefix_end].into(),
        })
    }

    /// Whether the whole `path` matches; fills `caps` on success. No allocation.
    pub fn matches(&self, path: &[u8], caps: &mut Captures) -> bool {
        *caps = Captures {
            len: self.names.len() as u8,
            spans: [(0, 0); MAX_PARAMS],
        };
        let (head, tail) = match self.star {
            Some(star) => (&self.segs[..star], &self.segs[star + 1..]),
            None => (&self.segs[..], &[][..]),
        };
        // Left to right up to the star (or the end).
        let mut pos = 0usize;
        for (i, seg) in head.iter().enumerate() {
            if i > 0 {
                if path.get(pos) != Some(&b'/') {
                    return false;
                }
                pos += 1;
            }
            let end = path[pos..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |p| pos + p);
            if !seg_matches(seg, &path[pos..end], pos, caps) {
                return false;
            }
            pos = end;
        }
        let Some(_) = self.star else {
            return pos == path.len();
        };
        // The star's segment is preceded by `/` (the pattern starts with `/`, so the star is
        // never the first segment).
        if path.get(pos) != Some(&b'/') {
            return false;
        }
        pos += 1;
        // Right to left after the star.
        let mut end = path.len();
        for seg in tail.iter().rev() {
            let start = path[pos..end]
                .iter()
                .rposition(|&b| b == b'/')
                .map(|p| pos + p + 1);
            let Some(start) = start else {
                return false;
            };
            if !seg_matches(seg, &path[start..end], start, caps) {
                return false;
            }
            end = start - 1;
        }
        if let Some(Seg::Star(Some(i))) = self.star.map(|s| &self.segs[s]) {
            return caps.set(*i, pos, end);
        }
        true
    }
}

fn seg_matches(seg: &Seg, got: &[u8], at: usize, caps: &mut Captures) -> bool {
    match seg {
        Seg::Lit(lit) => **lit == *got,
        Seg::Param(i) => !got.is_empty() && caps.set(*i, at, at + got.len()),
        Seg::Star(_) => false,
    }
}
