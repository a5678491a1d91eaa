//! HTTP/1.1 codec micro-benchmarks: typical request and response heads, and a chunked body.
//!
//! Before measuring, the binary checks that re-parsing into a warmed-up head allocates nothing
//! (it counts calls into the global allocator) and exits non-zero if it does.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use shardgate_gateway::http1::{
    ChunkEvent, ChunkedDecoder, LAST_CHUNK, Limits, Method, Parsed, RequestHead, ResponseHead,
    parse_request, parse_response, write_chunk_header,
};

#[global_allocator]
static GLOBAL: shardgate_benches::CountingAlloc = shardgate_benches::CountingAlloc;

/// A browser navigation: 12 header fields, a query, cookies.
const BROWSER_GET: &[u8] = b"GET /app/dashboard?tab=overview&range=7d HTTP/1.1\r\n\
Host: portal.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://portal.example.com/app/login\r\n\
Connection: keep-alive\r\n\
Cookie: session=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..u2Vh9K1ZxW0b3Q.ZW5jcnlwdGVk.dGFn; theme=dark\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
\r\n";

/// A small JSON API call with a bearer token.
const API_POST: &[u8] = b"POST /api/v1/orders HTTP/1.1\r\n\
Host: api.example.com\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl\r\n\
Content-Type: application/json\r\n\
Accept: application/json\r\n\
Content-Length: 27\r\n\
\r\n\
{\"sku\":\"A-100\",\"quantity\":2}";

/// What an upstream typically answers.
const UPSTREAM_200: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 1234\r\n\
Connection: keep-alive\r\n\
Cache-Control: no-store\r\n\
Vary: Accept-Encoding\r\n\
X-Request-Id: 5f2b7c1e-8a43-4d1b-9c7e-2f6a1b3c4d5e\r\n\
\r\n";

const BODY_LEN: usize = 64 * 1024;
const CHUNK_LEN: usize = 4 * 1024;

fn chunked_body() -> Vec<u8> {
    let payload: Vec<u8> = (0..BODY_LEN).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::with_capacity(BODY_LEN + 256);
    for chunk in payload.chunks(CHUNK_LEN) {
        write_chunk_header(&mut wire, chunk.len());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(LAST_CHUNK);
    wire.extend_from_slice(b"\r\n");
    wire
}

/// Decode a whole chunked body held in one buffer; returns the payload byte count.
fn decode_all(wire: &[u8]) -> usize {
    let mut decoder = ChunkedDecoder::new(1024);
    let mut pos = 0;
    let mut data = 0;
    // Each decode either consumes bytes or ends the body, so this bound is never reached.
    for _ in 0..wire.len() + 2 {
        match decoder.decode(&wire[pos..]) {
            Ok((n, ChunkEvent::Data(span))) => {
                data += black_box(span.len());
                pos += n;
            }
            Ok((_, ChunkEvent::Trailers(_) | ChunkEvent::End)) => return data,
            Ok((_, ChunkEvent::NeedMore)) | Err(_) => panic!("benchmark body is invalid"),
        }
    }
    panic!("decoder made no progress")
}

/// Parse each head once to size the reusable vectors, then count allocations over many parses.
fn check_no_steady_state_allocation() {
    let limits = Limits::default();
    let mut req = RequestHead::new();
    let mut resp = ResponseHead::new();
    for input in [BROWSER_GET, API_POST] {
        assert_eq!(
            parse_request(input, &limits, &mut req),
            Ok(Parsed::Complete)
        );
    }
    assert_eq!(
        parse_response(UPSTREAM_200, &limits, Method::Get, &mut resp),
        Ok(Parsed::Complete)
    );
    let wire = chunked_body();
    let before = shardgate_benches::allocations();
    for _ in 0..1000 {
        for input in [BROWSER_GET, API_POST] {
            let _ = black_box(parse_request(black_box(input), &limits, &mut req));
        }
        let _ = black_box(parse_response(
            black_box(UPSTREAM_200),
            &limits,
            Method::Get,
            &mut resp,
        ));
        black_box(decode_all(&wire));
    }
    let allocations = shardgate_benches::allocations() - before;
    println!(
        "http1 steady state: {allocations} allocations in 1000 rounds of 3 heads + 64 KiB body"
    );
    if allocations != 0 {
        eprintln!("http1 parse allocates in steady state");
        std::process::exit(1);
    }
}

fn heads(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("http1_head");
    let mut req = RequestHead::new();
    group.throughput(Throughput::Bytes(BROWSER_GET.len() as u64));
    group.bench_function("browser_get_12_headers", |b| {
        b.iter(|| parse_request(black_box(BROWSER_GET), &limits, &mut req))
    });
    group.throughput(Throughput::Bytes(API_POST.len() as u64));
    group.bench_function("api_post_content_length", |b| {
        b.iter(|| parse_request(black_box(API_POST), &limits, &mut req))
    });
    let mut resp = ResponseHead::new();
    group.throughput(Throughput::Bytes(UPSTREAM_200.len() as u64));
    group.bench_function("upstream_200_response", |b| {
        b.iter(|| parse_response(black_box(UPSTREAM_200), &limits, Method::Get, &mut resp))
    });
    group.finish();
}

fn chunked(c: &mut Criterion) {
    let wire = chunked_body();
    let mut group = c.benchmark_group("http1_chunked");
    group.throughput(Throughput::Bytes(BODY_LEN as u64));
    group.bench_function("decode_64k_in_4k_chunks", |b| {
        b.iter(|| decode_all(black_box(&wire)))
    });
    group.finish();
}

criterion_group!(benches, heads, chunked);

fn main() {
    check_no_steady_state_allocation();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
